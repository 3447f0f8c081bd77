#include "engine/zero_engine.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <utility>

#include "core/check.h"

namespace mingpt {

ZeroEngine::ZeroEngine(Backend* backend, const ModelLayout& layout, Communicators comms,
                       int stage, std::string name, bool training, Backend* host,
                       std::unique_ptr<NvmeState> nvme)
    : backend_(backend),
      layout_(layout),
      device_comm_(comms.device),
      host_comm_(comms.host),
      stage_(stage),
      name_(std::move(name)),
      host_(host),
      nvme_(std::move(nvme)) {
  MINGPT_CHECK(stage >= 0 && stage <= 3, "ZeRO stage %d", stage);
  MINGPT_CHECK(comms.host && comms.device && comms.host->rank() == comms.device->rank() &&
                   comms.host->world() == comms.device->world(),
               "the host and device communicators span different ranks");
  MINGPT_CHECK(host == nullptr || stage >= 2, "offload needs ZeRO stage 2 or 3, not %d", stage);
  MINGPT_CHECK(!nvme_ || (host && stage == 3 && training), "NVMe offload is stage 3 training");
  const int U = layout.num_units();
  shards_ = RankShards(layout, rank(), world());
  for (int u = 0; u < U; ++u) {
    whole_base_.push_back(whole_numel_);
    shard_base_.push_back(shard_numel_);
    whole_numel_ += shards_[u].padded;
    shard_numel_ += shards_[u].shard;
    max_padded_ = std::max(max_padded_, shards_[u].padded);
    max_shard_ = std::max(max_shard_, shards_[u].shard);
  }
  // Host state is the device backend's host memory (page-locked on a GPU, so
  // that copies to and from it run at full speed and without staging) on
  // which the host backend computes.
  auto alloc = [&](Buffer* b, bool whole, bool on_host) {
    const size_t bytes = (whole ? whole_numel_ : shard_numel_) * sizeof(float);
    *b = on_host ? Buffer(backend, bytes, Buffer::kHost) : Buffer(backend, bytes);
    (on_host ? host_ : backend)->Memset0(b->f32(), bytes);
  };
  // A state in NVMe offload's files gets no buffer.
  if (!on_disk(StateKind::kParams)) alloc(&params_, params_whole(), on_host(StateKind::kParams));
  param_gathers_.resize(U);
  grad_reduces_.resize(U);
  if (training) {
    if (!nvme_) {
      alloc(&grads_, grads_whole(), offload());
      alloc(&exp_avg_, moments_whole(), on_host(StateKind::kExpAvg));
      alloc(&exp_avg_sq_, moments_whole(), on_host(StateKind::kExpAvgSq));
    }
    if (master_separate()) alloc(&master_, /*whole=*/false, /*on_host=*/true);
    if (offload() && !nvme_) {
      host_reduced_ = Buffer(backend, max_shard_ * sizeof(float), Buffer::kHost);
    }
  }
  grads_written_.assign(U, 0);
  grad_downloads_.assign(U, 0);
  if (stage_ >= 2 && training) {
    for (Staging& s : staging_) {
      s.whole = Buffer(backend, max_padded_ * sizeof(float));
      if (world() > 1) s.reduced = Buffer(backend, max_shard_ * sizeof(float));
    }
  }
  if (stage_ == 3) {
    for (Slot& s : slots_) {
      s.memory = Buffer(backend, max_padded_ * sizeof(float));
      backend->Memset0(s.memory.f32(), s.memory.bytes());
      if (on_disk(StateKind::kParams)) {
        s.read_buffer = AlignedBlock(static_cast<size_t>(max_shard_) * sizeof(float));
        pins_.push_back(std::make_unique<HostPin>(backend, s.read_buffer.data(),
                                                  s.read_buffer.bytes()));
      }
    }
  }
  if (nvme_) {
    for (const auto& [p, bytes] : nvme_->device_copy_buffers()) {
      pins_.push_back(std::make_unique<HostPin>(backend, p, bytes));
    }
  }
}

ZeroEngine::~ZeroEngine() {
  // No collective or read may still write into memory about to be freed.
  for (Slot& s : slots_) {
    if (s.read != 0) (void)nvme_->FinishRead(s.read);
  }
  WaitTransfers();
  WaitAllParams();
  for (Work& w : grad_reduces_) w.Wait();
  for (Staging& s : staging_) s.work.Wait();
  for (Slot& s : slots_) s.gather.Wait();
}

float* ZeroEngine::Base(StateKind kind, int unit) const {
  switch (kind) {
    case StateKind::kParams:
      return params_.f32() + (params_whole() ? whole_base_[unit] : shard_base_[unit]);
    case StateKind::kExpAvg:
      return exp_avg_.f32() + (moments_whole() ? whole_base_[unit] : shard_base_[unit]);
    case StateKind::kExpAvgSq:
      return exp_avg_sq_.f32() + (moments_whole() ? whole_base_[unit] : shard_base_[unit]);
  }
  return nullptr;
}

NvmeState::Kind ZeroEngine::DiskKind(StateKind kind) {
  switch (kind) {
    case StateKind::kParams:
      return NvmeState::kParams;
    case StateKind::kExpAvg:
      return NvmeState::kExpAvg;
    case StateKind::kExpAvgSq:
      return NvmeState::kExpAvgSq;
  }
  return NvmeState::kParams;
}

void ZeroEngine::Fatal(const Status& status) const {
  std::fflush(stdout);
  std::fprintf(stderr, "mingpt: error: %s\n", status.message().c_str());
  std::fflush(stderr);
  if (world() > 1) host_comm_->Abort(1);
  std::_Exit(1);
}

float* ZeroEngine::StepParams(int unit) const {
  return master_separate() ? master_.f32() + shard_base_[unit] : Base(StateKind::kParams, unit);
}

void ZeroEngine::StateToHost(float* host, const float* state, bool state_on_host,
                             int64_t n) const {
  if (n <= 0) return;
  if (state_on_host) {
    std::memcpy(host, state, n * sizeof(float));
  } else {
    backend_->CopyToHost(host, state, n * sizeof(float));
  }
}

void ZeroEngine::StateFromHost(float* state, const float* host, bool state_on_host, int64_t n) {
  if (n <= 0) return;
  if (state_on_host) {
    std::memcpy(state, host, n * sizeof(float));
  } else {
    backend_->CopyToDevice(state, host, n * sizeof(float));
  }
}

float* ZeroEngine::GradBase(int unit) const {
  return grads_.f32() + (grads_whole() ? whole_base_[unit] : shard_base_[unit]);
}

void ZeroEngine::TimedWait(Work& work, double* seconds) {
  if (work.completed()) return;
  const auto start = std::chrono::steady_clock::now();
  work.Wait();
  *seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

void ZeroEngine::WaitParams(int unit) const { TimedWait(param_gathers_[unit], &waits_.params); }

void ZeroEngine::WaitAllParams() const {
  for (Work& w : param_gathers_) TimedWait(w, &waits_.params);
}

// ---- ParamProvider ---------------------------------------------------------

const float* ZeroEngine::Acquire(int unit) {
  if (stage_ < 3) {
    WaitParams(unit);
    return params_.f32() + whole_base_[unit];
  }
  int s = -1;
  for (int i = 0; i < 2; ++i) {
    if (slots_[i].unit == unit) s = i;
  }
  if (s < 0) s = GatherInto(unit, -1);
  if (slots_[s].read != 0) FinishSlotRead(s);
  TimedWait(slots_[s].gather, &waits_.params);
  backend_->OrderAfter(slots_[s].upload);  // the unit's compute follows its upload
  slots_[s].upload = 0;
  slots_[s].in_use = true;
  // Prefetch the next unit of the pass: forward ascends; backward descends
  // from the head (acquired twice in a row) down to block 0 (the stem's
  // backward needs no parameters).
  const bool forward = unit == 0 || unit > last_acquired_;
  last_acquired_ = unit;
  const int next = forward ? unit + 1 : unit - 1;
  const bool valid = forward ? next < layout_.num_units() : next >= 1;
  if (valid && slots_[0].unit != next && slots_[1].unit != next && !slots_[1 - s].in_use) {
    GatherInto(next, s);
  }
  return slots_[s].memory.f32();
}

int ZeroEngine::GatherInto(int unit, int avoid_slot) {
  int s = -1;
  for (int i = 0; i < 2 && s < 0; ++i) {
    if (i != avoid_slot && !slots_[i].in_use) s = i;
  }
  MINGPT_CHECK(s >= 0, "no free slot to gather unit %d: the model holds two units", unit);
  Slot& slot = slots_[s];
  slot.gather.Wait();
  slot.unit = unit;
  const ShardRange& sr = shards_[unit];
  if (on_disk(StateKind::kParams)) {  // read now; gathered when acquired (FinishSlotRead)
    backend_->WaitTransfer(slot.read_buffer_upload);  // the last shard read went up
    slot.read_buffer_upload = 0;
    slot.read = nvme_->ReadParams(unit, slot.read_buffer.f32());
    return s;
  }
  const float* send = Base(StateKind::kParams, unit);
  if (offload()) {  // the host shard goes up into its place in the slot: gathered in place
    float* mine = slot.memory.f32() + sr.offset;
    // On the copy stream, beside the compute of the unit before (after the
    // compute that read the slot's last unit). At one rank nothing but the
    // unit's compute reads it (ordered in Acquire); a gather reads it at
    // once, and follows the compute stream, which waits for it here.
    slot.upload = Track(backend_->CopyToDeviceAsync(mine, send, sr.shard * sizeof(float)));
    if (world() > 1) {
      backend_->OrderAfter(slot.upload);
      slot.upload = 0;
    }
    send = mine;
  }
  slot.gather = device_comm_->AllGather(send, slot.memory.f32(), sr.shard);
  return s;
}

void ZeroEngine::FinishSlotRead(int s) {
  Slot& slot = slots_[s];
  Check(nvme_->FinishRead(slot.read));  // timed as I/O by the NvmeState
  slot.read = 0;
  const ShardRange& sr = shards_[slot.unit];
  float* mine = slot.memory.f32() + sr.offset;
  // Up on the copy stream, as offload's host shards go (GatherInto): the
  // unit's compute (Acquire) or its gather waits for it on the device.
  slot.upload = Track(backend_->CopyToDeviceAsync(mine, slot.read_buffer.data(),
                                                  sr.shard * sizeof(float)));
  slot.read_buffer_upload = slot.upload;
  if (world() > 1) {
    backend_->OrderAfter(slot.upload);
    slot.upload = 0;
  }
  slot.gather = device_comm_->AllGather(mine, slot.memory.f32(), sr.shard);
}

void ZeroEngine::InvalidateSlots() {
  for (Slot& s : slots_) {
    if (s.read != 0) Check(nvme_->FinishRead(s.read));
    s.read = 0;
    s.gather.Wait();
    s.unit = -1;
    s.upload = 0;  // (waited for before the step changed the host shards)
    s.read_buffer_upload = 0;
  }
}

void ZeroEngine::Release(int unit) {
  if (stage_ < 3) return;
  for (Slot& s : slots_) {
    if (s.unit == unit) s.in_use = false;
  }
}

float* ZeroEngine::Grads(int unit) {
  if (grads_whole()) return GradBase(unit);
  Staging& s = staging_[next_staging_];
  next_staging_ ^= 1;
  FinishStaging(&s);
  s.unit = unit;
  backend_->Memset0(s.whole.f32(), shards_[unit].padded * sizeof(float));
  return s.whole.f32();
}

void ZeroEngine::GradsReady(int unit) {
  const ShardRange& sr = shards_[unit];
  if (grads_whole()) {
    if (last_micro_batch_ && world() > 1) {
      grad_reduces_[unit] = device_comm_->AllReduce(GradBase(unit), sr.padded);
    }
    return;
  }
  for (Staging& s : staging_) {
    if (s.unit != unit || s.in_flight) continue;
    if (world() > 1) {
      backend_->OrderAfter(s.download);  // the last download from s.reduced read it
      s.download = 0;
      s.work = device_comm_->ReduceScatter(s.whole.f32(), s.reduced.f32(), sr.shard);
    }
    s.in_flight = true;
    s.last = last_micro_batch_;
    // At one rank the gradient is final now: under offload the step's first
    // one starts down to the host at once, beside the next unit's backward.
    if (world() == 1 && nvme_) {
      NvmeStartDownload(&s);
    } else if (world() == 1 && offload() && !grads_written_[unit]) {
      StartDownload(&s);
    }
    return;
  }
  MINGPT_CHECK(false, "GradsReady(%d) without Grads(%d)", unit, unit);
}

void ZeroEngine::FinishStaging(Staging* s) {
  TimedWait(s->work, &waits_.grads);
  if (s->in_flight && nvme_) {
    NvmeFinishStaging(s);
  } else if (s->in_flight) {
    const int unit = s->unit;
    float* shard = GradBase(unit);
    const size_t bytes = shards_[unit].shard * sizeof(float);
    const float* reduced = Reduced(*s);
    if (!grads_written_[unit]) {
      // The step's first gradient of the unit is the shard (ZeroGrads left
      // it unzeroed): one copy, straight into host memory under offload.
      if (offload()) {
        StartDownload(s);
      } else {
        backend_->Copy(shard, reduced, bytes);
        grads_written_[unit] = 1;
      }
    } else {
      if (offload()) {  // down to the host, where the gradient shard lives
        backend_->CopyToHost(host_reduced_.f32(), reduced, bytes);
        reduced = host_reduced_.f32();
        backend_->WaitTransfer(grad_downloads_[unit]);  // the first micro-batch's, added to
      }
      state_backend()->Add(shard, shard, reduced, static_cast<int64_t>(bytes / sizeof(float)));
    }
  }
  // What the download reads is written again next: at one rank the whole
  // gradient, by the next backward into the buffer (Grads), so that follows
  // the download; at several the reduced shard, by the next reduce-scatter
  // (GradsReady orders it), so the backward goes on beside the download.
  if (world() == 1) {
    backend_->OrderAfter(s->download);
    s->download = 0;
  }
  s->in_flight = false;
  s->unit = -1;
}

void ZeroEngine::StartDownload(Staging* s) {
  const int unit = s->unit;
  s->download = Track(backend_->CopyToHostAsync(GradBase(unit), Reduced(*s),
                                                shards_[unit].shard * sizeof(float)));
  grad_downloads_[unit] = s->download;
  grads_written_[unit] = 1;
  s->in_flight = false;  // nothing left to add
}

void ZeroEngine::NvmeStartDownload(Staging* s) {
  StatusOr<float*> staged = nvme_->StagingBuffer(Index(*s));  // its last write done
  Check(staged.status());
  s->download = Track(backend_->CopyToHostAsync(*staged, Reduced(*s),
                                                shards_[s->unit].shard * sizeof(float)));
}

void ZeroEngine::NvmeFinishStaging(Staging* s) {
  const int unit = s->unit;
  const int64_t n = shards_[unit].shard;
  // At one rank the download started when the gradient was final
  // (GradsReady); at several, now that the reduce-scatter is done.
  if (s->download == 0) NvmeStartDownload(s);
  backend_->WaitTransfer(s->download);
  StatusOr<float*> staged = nvme_->StagingBuffer(Index(*s));
  Check(staged.status());
  Check(nvme_->AddGrads(unit, Index(*s), /*first=*/!grads_written_[unit]));
  grads_written_[unit] = 1;
  // The step's final gradient of this shard: its part of the norm.
  if (s->last) grad_sumsq_ += host_->SumSquares(*staged, n);
}

void ZeroEngine::FinishGradComm() {
  if (grads_whole()) {
    for (Work& w : grad_reduces_) TimedWait(w, &waits_.grads);
  } else {
    for (Staging& s : staging_) FinishStaging(&s);
  }
}

void ZeroEngine::CompleteGrads() {
  FinishGradComm();
  WaitTransfers();  // the gradients' downloads landed, the parameters' uploads read their shards
  if (grads_whole() || nvme_) return;  // NVMe: its optimizer pass zeroes them as it reads
  for (int u = 0; u < layout_.num_units(); ++u) {
    if (grads_written_[u]) continue;  // a unit no micro-batch gave a gradient: zero
    state_backend()->Memset0(GradBase(u), shards_[u].shard * sizeof(float));
    grads_written_[u] = 1;
  }
}

// ---- Strategy --------------------------------------------------------------

void ZeroEngine::ZeroGrads() {
  FinishGradComm();
  if (grads_whole()) {  // the backward adds into them
    backend_->Memset0(grads_.f32(), grads_.bytes());
  } else {  // shards (in memory or on disk) are overwritten by the step's first gradients
    std::fill(grads_written_.begin(), grads_written_.end(), 0);
    grad_sumsq_ = 0;
  }
  grad_scale_ = 1;
  last_micro_batch_ = true;
}

double ZeroEngine::GradNorm() {
  CompleteGrads();
  if (stage_ == 0) return std::sqrt(backend_->SumSquares(grads_.f32(), whole_numel_));
  double sum = 0;
  if (nvme_) {
    sum = grad_sumsq_;
  } else if (stage_ == 1) {
    for (int u = 0; u < layout_.num_units(); ++u) {
      sum += backend_->SumSquares(GradBase(u) + shards_[u].offset, shards_[u].shard);
    }
  } else {
    sum = state_backend()->SumSquares(grads_.f32(), shard_numel_);
  }
  Work w = host_comm_->AllReduce(&sum, 1);  // a host double
  TimedWait(w, &waits_.other);
  return std::sqrt(sum);
}

// Not a pass over the gradients: AdamW reads each as g * grad_scale_.
void ZeroEngine::ScaleGrads(double f) { grad_scale_ *= f; }

void ZeroEngine::NvmeOptimizerStep(const AdamWConfig& c, float lr, int t) {
  Check(nvme_->Step([&](int u, int64_t from, int64_t n, float* p, float* g, float* m, float* v) {
    const ShardRange& sr = shards_[u];
    if (!grads_written_[u]) std::memset(g, 0, n * sizeof(float));
    if (p == nullptr) p = params_.f32() + shard_base_[u] + from;  // parameters in memory
    // Unit elements [lo, lo + n) are in these buffers; step each tensor's part.
    const int64_t lo = sr.offset + from;
    std::vector<Backend::AdamWTensor> tensors;
    for (const ParamEntry& e : layout_.units()[u].params) {
      const int64_t a = std::max({lo, e.offset, sr.begin});
      const int64_t b = std::min({lo + n, e.offset + e.numel, sr.end});
      if (a < b) tensors.push_back({a - lo, b - a, e.decay ? c.weight_decay : 0.0f});
    }
    host_->AdamWTensors(p, g, m, v, tensors.data(), tensors.size(), lr, c.beta1, c.beta2, c.eps,
                        t, static_cast<float>(grad_scale_));
  }));
  InvalidateSlots();
}

void ZeroEngine::OptimizerStep(const AdamWConfig& c, float lr, int t) {
  if (nvme_) {
    NvmeOptimizerStep(c, lr, t);
    return;
  }
  CompleteGrads();
  WaitAllParams();
  std::vector<Backend::AdamWTensor> tensors;
  for (int u = 0; u < layout_.num_units(); ++u) {
    const ShardRange& sr = shards_[u];
    const ElementRange mine = Held(u, StateKind::kExpAvg);
    float *p = StepParams(u), *g = GradBase(u);
    float *m = Base(StateKind::kExpAvg, u), *v = Base(StateKind::kExpAvgSq, u);
    tensors.clear();  // the unit's parameters in the range held, from its start
    for (const ParamEntry& e : layout_.units()[u].params) {
      const int64_t a = std::max(mine.begin, e.offset);
      const int64_t b = std::min(mine.end, e.offset + e.numel);
      if (a < b) tensors.push_back({a - mine.begin, b - a, e.decay ? c.weight_decay : 0.0f});
    }
    if (!tensors.empty()) {
      const int64_t o = mine.begin;
      state_backend()->AdamWTensors(At(p, step_params_whole(), sr, o), At(g, grads_whole(), sr, o),
                                    At(m, moments_whole(), sr, o), At(v, moments_whole(), sr, o),
                                    tensors.data(), tensors.size(), lr, c.beta1, c.beta2,
                                    c.eps, t, static_cast<float>(grad_scale_));
    }
    if (master_separate()) {  // the updated shard up into the device's whole parameters,
      // beside the AdamW of the next units; the next forward (and all-gather) follows it
      backend_->OrderAfter(Track(backend_->CopyToDeviceAsync(
          params_.f32() + whole_base_[u] + sr.offset, p, sr.shard * sizeof(float))));
    }
  }
  if ((stage_ == 1 || stage_ == 2) && world() > 1) {
    for (int u = 0; u < layout_.num_units(); ++u) {
      float* unit_params = params_.f32() + whole_base_[u];
      param_gathers_[u] =
          device_comm_->AllGather(unit_params + shards_[u].offset, unit_params, shards_[u].shard);
    }
  }
  if (stage_ == 3) InvalidateSlots();
}

MemoryAccount ZeroEngine::Account(const ModelLayout& layout, int rank, int world, int stage,
                                  bool offload, const NvmeOptions* nvme) {
  int64_t whole = 0, shard = 0, max_padded = 0, max_shard = 0;
  for (const Unit& u : layout.units()) {
    const ShardRange r(u.numel, rank, world);
    whole += r.padded;
    shard += r.shard;
    max_padded = std::max(max_padded, r.padded);
    max_shard = std::max(max_shard, r.shard);
  }
  MemoryAccount m;
  m.params = (stage <= 2 ? whole : shard) * sizeof(float);
  m.grads = (stage <= 1 ? whole : shard) * sizeof(float);
  m.optimizer = 2 * (stage == 0 ? whole : shard) * sizeof(float);
  // Two staging buffers, each a whole unit and (several ranks) its shard.
  if (stage >= 2) m.working += 2 * (max_padded + (world > 1 ? max_shard : 0)) * sizeof(float);
  if (stage == 3) m.working += 2 * max_padded * sizeof(float);
  if (offload) {
    const size_t master = stage == 2 ? shard * sizeof(float) : 0;
    const size_t reduced = max_shard * sizeof(float);
    m.params += master;
    m.working += reduced;
    m.host = master + reduced + m.grads + m.optimizer + (stage == 3 ? m.params : 0);
  }
  if (nvme) {  // gradients and moments (and the parameters) in files
    const std::vector<ShardRange> shards = RankShards(layout, rank, world);
    const size_t reduced = max_shard * sizeof(float);
    m.working -= reduced;  // the NVMe staging buffers replace it
    m.host -= reduced + m.grads + m.optimizer;
    m.grads = m.optimizer = 0;
    if (nvme->params) {
      m.host -= m.params;
      m.params = 0;
      m.working += 2 * DirectRound(max_shard * sizeof(float));  // the slots' read buffers
    }
    const size_t io = NvmeState::MemoryBytes(shards, nvme->buffer_bytes);
    m.working += io;
    m.host = m.host + io + (nvme->params ? 2 * DirectRound(max_shard * sizeof(float)) : 0);
    m.disk = NvmeState::DiskBytes(shards, nvme->params);
  }
  return m;
}

MemoryAccount ZeroEngine::memory() const {
  MemoryAccount m;
  m.params = params_.bytes() + master_.bytes();
  m.grads = grads_.bytes();
  m.optimizer = exp_avg_.bytes() + exp_avg_sq_.bytes();
  m.working = host_reduced_.bytes();
  for (const Staging& s : staging_) m.working += s.whole.bytes() + s.reduced.bytes();
  for (const Slot& s : slots_) m.working += s.memory.bytes() + s.read_buffer.bytes();
  for (const Buffer* b : {&params_, &master_, &grads_, &exp_avg_, &exp_avg_sq_, &host_reduced_}) {
    if (b->where() == Buffer::kHost) m.host += b->bytes();
  }
  if (nvme_) {
    m.working += nvme_->memory_bytes();
    m.host += nvme_->memory_bytes();
    for (const Slot& s : slots_) m.host += s.read_buffer.bytes();
    m.disk = nvme_->disk_bytes();
  }
  return m;
}

WaitTimes ZeroEngine::wait_times() const {
  WaitTimes w = waits_;
  if (nvme_) {
    w.io = nvme_->io_wait_seconds();
    w.io_bytes = static_cast<double>(nvme_->bytes_read() + nvme_->bytes_written());
  }
  return w;
}

// ---- state in and out ------------------------------------------------------

ElementRange ZeroEngine::Held(int unit, StateKind kind) const {
  if (whole(kind)) return {0, layout_.units()[unit].numel};
  return {shards_[unit].begin, shards_[unit].end};
}

void ZeroEngine::Upload(int unit, StateKind kind, const float* host) {
  WaitTransfers();  // none may still read host state about to change
  const ElementRange r = Held(unit, kind);
  if (kind == StateKind::kParams) {
    WaitParams(unit);
    if (stage_ == 3) InvalidateSlots();
  }
  const ShardRange& sr = shards_[unit];
  if (on_disk(kind)) {
    Check(nvme_->WriteShard(DiskKind(kind), unit, host, r.size()));
    return;
  }
  StateFromHost(At(Base(kind, unit), whole(kind), sr, r.begin), host, on_host(kind), r.size());
  if (kind == StateKind::kParams && master_.bytes() > 0) {  // and the master copy of the shard
    StateFromHost(master_.f32() + shard_base_[unit], host + (sr.begin - r.begin),
                  /*state_on_host=*/true, sr.size());
  }
}

void ZeroEngine::Download(int unit, StateKind kind, ElementRange range, float* host) const {
  const ElementRange held = Held(unit, kind);
  MINGPT_CHECK(range.begin >= held.begin && range.end <= held.end && range.begin <= range.end,
               "Download [%lld, %lld) outside the held [%lld, %lld)",
               static_cast<long long>(range.begin), static_cast<long long>(range.end),
               static_cast<long long>(held.begin), static_cast<long long>(held.end));
  if (kind == StateKind::kParams) WaitParams(unit);
  if (on_disk(kind)) {
    Check(nvme_->Read(DiskKind(kind), unit, range.begin - shards_[unit].offset, range.size(), host));
    return;
  }
  StateToHost(host, At(Base(kind, unit), whole(kind), shards_[unit], range.begin), on_host(kind),
              range.size());
}

}  // namespace mingpt
