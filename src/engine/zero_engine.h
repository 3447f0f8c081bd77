// ZeroEngine: the Strategy of ddp and ZeRO stages 1-3 on any Communicator
// (strategy.h says what each stage shards). One class, because the stages
// differ only in which of the three states is whole or a shard:
//
//                 params        grads                 AdamW moments
//   stage 0 (ddp) whole         whole, all-reduced    whole
//   stage 1       whole         whole, all-reduced    shard
//   stage 2       whole         shard, reduce-scat.   shard
//   stage 3       shard         shard, reduce-scat.   shard
//
// Storage. "Whole" buffers hold every unit back to back, unit u padded to
// ShardRange(u).padded = world*shard elements, so that rank r's shard of u is
// the contiguous block at offset r*shard: all-gathers run in place. "Shard"
// buffers hold every unit's shard (ShardRange(u).shard elements) back to
// back. Padding is zero and never stepped.
//
// Communication, overlapped with compute:
//   ddp, stage 1  GradsReady(u) of the step's last micro-batch starts an
//                 all-reduce of unit u's gradients (units are the buckets).
//   stage 2, 3    Grads(u) hands out one of two staging buffers of a whole
//                 unit; GradsReady(u) starts its reduce-scatter, whose result
//                 goes into the gradient shard when the staging buffer is
//                 next needed (or before the norm): copied over it for the
//                 step's first micro-batch (ZeroGrads zeroes no shard),
//                 added to it for later ones.
//   stage 1, 2    OptimizerStep ends by starting an in-place all-gather of
//                 each unit's parameters; Acquire(u) waits for unit u's only,
//                 so the gathers overlap the next forward.
//   stage 3       Acquire(u) gathers unit u into one of two slots (unless the
//                 prefetch already did) and starts the gather of the next
//                 unit in the pass direction into the other slot; a slot keeps
//                 its unit after Release, so the head is gathered once for
//                 the end of forward and the start of backward.
//
// Offload (deepspeed_stage_2_offload, deepspeed_stage_3_offload: stage 2 or
// 3 with a host backend): the gradient shard, the AdamW moments and the fp32
// parameters the optimizer steps live in host memory from the device
// backend's MallocHost (pinned on a GPU), and the host backend does the
// arithmetic on them
// (gradient norm, clipping, AdamW):
//                 on the device                    in host memory
//   stage 2 off.  whole params, gradient staging   master param shard, grad shard, moments
//   stage 3 off.  gathered units, grad staging     param shard, grad shard, moments
// The transfers are the backend's asynchronous ones (backend.h), which on a
// GPU run on a copy stream beside the compute, ordered on the device
// (OrderAfter); the host waits for them once a step (CompleteGrads):
//   - a unit's step's first gradient shard goes down into the host shard as
//     soon as it is final (at one rank when GradsReady, at several once the
//     reduce-scatter is waited for); the staging buffer's reuse follows it;
//     later micro-batches' come down into a host buffer and are added there;
//   - stage 3 copies a unit's host shard up into its slot when it is
//     prefetched, and the unit's compute (one rank) or gather follows it;
//   - after each unit's AdamW, stage 2 copies its updated master shard up
//     into the device's whole parameters (then all-gathers as stage 2 does).
// On the CPU backend the host is the device and the transfers are plain
// copies.
//
// NVMe offload (deepspeed_stage_3_offload_nvme: stage 3 with a host backend
// and an NvmeState): the gradient shard, the moments and (with
// --offload_params nvme) the parameter shard live in files (nvme_state.h);
// a unit's reduced gradient goes to disk as its staging buffer is next
// needed, the optimizer streams the files through a fixed pool, and a gather
// reads the unit's parameter shard when it is prefetched and all-gathers it
// when it is acquired. Memory no longer grows with the model, only the
// working buffers (one unit) and the pool.
//
// Communicators. The gradient all-reduces and reduce-scatters and the
// parameter all-gathers work on the backend's memory (offload copies a host
// shard up into its device slot before the gather and a reduced shard down
// after the reduce-scatter) and go to comms.device; the only collective on
// host memory, the gradient norm's sum of squares, and Abort go to
// comms.host. On the CPU backend both are
// the rank's one communicator (MPI's, or the local one); under CUDA with
// several ranks, NCCL and MPI.
//
// With world 1 and stage 0 this is the single-process trainer (no copies,
// the same layout as SingleProcess).
#pragma once

#include <array>
#include <memory>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "dist/communicator.h"
#include "engine/nvme_state.h"
#include "engine/shard.h"
#include "engine/strategy.h"
#include "model/layout.h"

namespace mingpt {

class ZeroEngine : public Strategy {
 public:
  // stage 0 is ddp. `name` is what the user asked for (e.g. "ddp"). With
  // training false only the parameters (and stage 3's gather slots) exist:
  // Forward works; nothing else may be called but Held/Upload/Download of
  // parameters. A non-null `host` (stages 2 and 3 only) offloads to its host
  // memory; it may be `backend` itself (the CPU backend).
  // A non-null `nvme` (stage 3 with a host backend) keeps that state on disk.
  // comms.host and comms.device span the same ranks.
  ZeroEngine(Backend* backend, const ModelLayout& layout, Communicators comms, int stage,
             std::string name, bool training = true, Backend* host = nullptr,
             std::unique_ptr<NvmeState> nvme = nullptr);
  ~ZeroEngine() override;

  // ParamProvider
  const float* Acquire(int unit) override;
  void Release(int unit) override;
  float* Grads(int unit) override;
  void GradsReady(int unit) override;

  // Strategy
  const std::string& name() const override { return name_; }
  int rank() const override { return device_comm_->rank(); }
  int world() const override { return device_comm_->world(); }
  void ZeroGrads() override;
  void BeginMicroBatch(bool last) override { last_micro_batch_ = last; }
  double GradNorm() override;
  void ScaleGrads(double factor) override;
  void OptimizerStep(const AdamWConfig& config, float lr, int t) override;
  MemoryAccount memory() const override;
  WaitTimes wait_times() const override;
  ElementRange Held(int unit, StateKind kind) const override;
  void Upload(int unit, StateKind kind, const float* host) override;
  void Download(int unit, StateKind kind, ElementRange range, float* host) const override;

  // What a rank of `world` would hold under `stage` for this layout: the
  // allocations the constructor makes, counted without making them.
  static MemoryAccount Account(const ModelLayout& layout, int rank, int world, int stage,
                               bool offload = false, const NvmeOptions* nvme = nullptr);

  int stage() const { return stage_; }
  bool offload() const { return host_ != nullptr; }
  const NvmeState* nvme() const { return nvme_.get(); }
  const ShardRange& shard(int unit) const { return shards_[unit]; }

 private:
  struct Slot {  // stage 3: one gathered unit
    Buffer memory;
    int unit = -1;
    bool in_use = false;
    Work gather;
    Backend::Transfer upload = 0;  // offload at one rank: the host shard on its way up
    AlignedBlock read_buffer;      // NVMe parameters: the shard read from disk
    AsyncFile::Ticket read = 0;    // its read in flight (then the gather is still to start)
    Backend::Transfer read_buffer_upload = 0;  // its copy up, which the next read follows
  };
  struct Staging {  // stages 2, 3: one unit's gradients on their way to the shard
    Buffer whole, reduced;  // reduced: none at one rank, where the shard is the whole
    int unit = -1;           // the unit it holds; -1 none
    bool in_flight = false;  // its reduce-scatter started; FinishStaging adds the result
    bool last = false;       // of the step's last micro-batch
    Work work;
    Backend::Transfer download = 0;  // offload: the copy of its gradient down to the host
  };
  int Index(const Staging& s) const { return static_cast<int>(&s - staging_.data()); }

  // A staging buffer's reduced shard: its own buffer, or at one rank (no
  // reduce-scatter to make) the whole gradient itself.
  const float* Reduced(const Staging& s) const {
    return world() > 1 ? s.reduced.f32() : s.whole.f32();
  }
  bool params_whole() const { return stage_ <= 2; }
  // Where the parameters AdamW steps are: the whole parameters (stages 0, 1,
  // 2), the shard (stage 3), or stage 2 offload's master shard on the host.
  bool master_separate() const { return offload() && stage_ == 2; }
  bool step_params_whole() const { return params_whole() && !master_separate(); }
  float* StepParams(int unit) const;
  // The backend whose arithmetic and memory the gradient shard, moments and
  // stepped parameters use: the host one under offload.
  Backend* state_backend() const { return offload() ? host_ : backend_; }
  // Whether a state lives in host memory: under offload all but stage 2's
  // (whole, device) parameters.
  bool on_host(StateKind kind) const {
    return offload() && (kind != StateKind::kParams || stage_ == 3) && !on_disk(kind);
  }
  // Whether a state lives in NVMe offload's files.
  bool on_disk(StateKind kind) const {
    return nvme_ && (kind != StateKind::kParams || nvme_->params_on_disk());
  }
  static NvmeState::Kind DiskKind(StateKind kind);
  // Ends the run on an I/O error of the offload files (a full disk): one
  // line, every rank stops; the last checkpoint is untouched.
  [[noreturn]] void Fatal(const Status& status) const;
  void Check(const Status& status) const {
    if (!status.ok()) Fatal(status);
  }
  // NVMe: the gather of a slot whose parameter shard was being read.
  void FinishSlotRead(int slot);
  // NVMe: s's reduced gradient starts down into the NvmeState's staging
  // buffer of the same index; NvmeFinishStaging adds it to the disk's.
  void NvmeStartDownload(Staging* s);
  void NvmeFinishStaging(Staging* s);
  void NvmeOptimizerStep(const AdamWConfig& config, float lr, int t);
  // Copies between the engine's state and the caller's host memory.
  void StateToHost(float* host, const float* state, bool on_host, int64_t n) const;
  void StateFromHost(float* state, const float* host, bool on_host, int64_t n);
  bool grads_whole() const { return stage_ <= 1; }
  bool moments_whole() const { return stage_ == 0; }
  bool whole(StateKind kind) const {
    return kind == StateKind::kParams ? params_whole() : moments_whole();
  }
  // Pointer to element 0 of unit u's storage of one state (for shard
  // storage: element shards_[u].offset).
  float* Base(StateKind kind, int unit) const;
  float* GradBase(int unit) const;
  // Pointer at element i (in [offset, offset+shard) for shard storage).
  static float* At(float* base, bool whole, const ShardRange& s, int64_t i) {
    return base + (whole ? i : i - s.offset);
  }
  // Waits for `work`, adding the time blocked to *seconds.
  static void TimedWait(Work& work, double* seconds);
  void WaitParams(int unit) const;
  void WaitAllParams() const;
  void FinishStaging(Staging* s);
  // Offload, the step's first gradient of s's unit: the copy down into the
  // host shard starts (the host waits for it in CompleteGrads).
  void StartDownload(Staging* s);
  // Starts an offload transfer (backend_'s asynchronous copies), noting it
  // as the latest, which CompleteGrads and the host state's users wait for.
  Backend::Transfer Track(Backend::Transfer t) {
    if (t != 0) last_transfer_ = t;
    return t;
  }
  void WaitTransfers() { backend_->WaitTransfer(last_transfer_); }
  void FinishGradComm();
  // FinishGradComm, then every gradient shard this step's (zero where no
  // micro-batch gave one): before anything reads them.
  void CompleteGrads();
  int GatherInto(int unit, int avoid_slot);
  void InvalidateSlots();

  Backend* backend_;
  const ModelLayout& layout_;
  Communicator* device_comm_;  // collectives on backend memory
  Communicator* host_comm_;    // collectives on host memory, Abort
  int stage_;
  std::string name_;
  std::vector<ShardRange> shards_;
  std::vector<int64_t> whole_base_, shard_base_;  // per unit, in floats
  int64_t whole_numel_ = 0, shard_numel_ = 0, max_padded_ = 0, max_shard_ = 0;

  Backend* host_ = nullptr;  // offload's host backend, else null
  Buffer params_, grads_, exp_avg_, exp_avg_sq_;
  Buffer master_;         // stage 2 offload: this rank's fp32 parameter shard, host
  Buffer host_reduced_;   // offload: a unit's reduced gradient shard, copied to the host
  std::unique_ptr<NvmeState> nvme_;
  // Stages 2, 3: unit's gradient shard (in memory or on disk) is this step's;
  // until then it holds a stale one, which the first reduced gradient
  // replaces instead of being added to zeroes (CompleteGrads zeroes what no
  // micro-batch wrote).
  std::vector<char> grads_written_;
  std::vector<Backend::Transfer> grad_downloads_;  // offload: per unit, its first gradient's copy
  Backend::Transfer last_transfer_ = 0;            // offload: the latest transfer started
  double grad_sumsq_ = 0;            // NVMe: of the step's final gradient shards
  double grad_scale_ = 1;            // ScaleGrads', applied as the optimizer reads them
  mutable std::vector<Work> param_gathers_;  // stages 1, 2: per unit
  std::vector<Work> grad_reduces_;           // ddp, stage 1: per unit
  std::array<Staging, 2> staging_;
  int next_staging_ = 0;
  std::array<Slot, 2> slots_;
  // NVMe offload's buffers that device copies use, page-locked through the
  // backend (PinHost) while the engine lives; last, so unpinned first.
  struct HostPin {
    Backend* backend = nullptr;
    void* p = nullptr;
    HostPin(Backend* b, void* ptr, size_t bytes) : backend(b), p(ptr) { b->PinHost(ptr, bytes); }
    HostPin(const HostPin&) = delete;
    HostPin& operator=(const HostPin&) = delete;
    ~HostPin() { backend->UnpinHost(p); }
  };
  int last_acquired_ = -1;
  mutable WaitTimes waits_;
  bool last_micro_batch_ = true;
  std::vector<std::unique_ptr<HostPin>> pins_;
};

}  // namespace mingpt
