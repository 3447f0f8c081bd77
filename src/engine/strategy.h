// Strategy: how one rank holds and updates the training state (parameters,
// gradients, AdamW moments) and what it communicates. The model sees only
// the ParamProvider half; the trainer drives the rest. Strategies, with
// Lightning's names:
//   ddp                full replicas; gradients all-reduced unit by unit,
//                      overlapped with backward
//   deepspeed_stage_1  + AdamW moments sharded; each rank steps its shard of
//                      the parameters, which are then all-gathered
//   deepspeed_stage_2  + gradients reduce-scattered, only the shard kept
//   deepspeed_stage_3  + parameters sharded: a unit is all-gathered before
//                      its forward and its backward (the next one prefetched)
//                      and freed after
// A rank's shard of unit u is ShardRange(unit numel, rank, world) (shard.h).
//
// One optimizer step, as the trainer calls it:
//   ZeroGrads();
//   for m in 0..k-1: BeginMicroBatch(m == k-1); model.ForwardBackward(this, ...)
//   norm = GradNorm(); ScaleGrads(ClipFactor(norm, clip)); OptimizerStep(adamw, lr, t)
// with the loss of every micro-batch scaled by 1/(k*world) so that the summed
// gradients are the mean over the global batch.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "model/param_provider.h"
#include "optim/adamw.h"

namespace mingpt {

enum class StateKind { kParams, kExpAvg, kExpAvgSq };

// Bytes this rank holds, by category (measured from its allocations).
struct MemoryAccount {
  size_t params = 0;     // parameters kept between steps (full or shard)
  size_t grads = 0;      // gradients kept between micro-batches (full or shard)
  size_t optimizer = 0;  // AdamW moments (full or shard)
  size_t working = 0;    // transient unit buffers: gathered parameters, gradient staging
  size_t host = 0;       // of the total, the bytes in host memory (offload strategies)
  size_t disk = 0;       // not in the total: bytes in NVMe offload's files
  size_t total() const { return params + grads + optimizer + working; }
};

// Seconds this rank spent blocked on communication, by what it waited for:
// what overlap did not hide.
struct WaitTimes {
  double params = 0;  // parameter all-gathers (stages 1-3)
  double grads = 0;   // gradient all-reduces / reduce-scatters
  double other = 0;   // norm and scalar all-reduces
  double io = 0;      // NVMe offload: blocked on its files
  double io_bytes = 0;  // NVMe offload: bytes read and written
};

// Elements [begin, end) of a unit's flat buffer.
struct ElementRange {
  int64_t begin = 0, end = 0;
  int64_t size() const { return end - begin; }
};

class Strategy : public ParamProvider {
 public:
  virtual const std::string& name() const = 0;
  virtual int rank() const = 0;
  virtual int world() const = 0;

  virtual void ZeroGrads() = 0;
  // The model's ForwardBackward follows; `last` marks the optimizer step's
  // final micro-batch (ddp and stage 1 communicate gradients only then).
  virtual void BeginMicroBatch(bool last) = 0;
  // Global L2 norm of the step's gradients over all ranks (waits for the
  // gradient communication). Every rank gets the same value.
  virtual double GradNorm() = 0;
  // Scales this rank's gradients by `factor` for the OptimizerStep that
  // follows: the clipping factor, times 1/scale under loss scaling. No pass
  // of its own: AdamW reads each gradient as g * factor.
  virtual void ScaleGrads(double factor) = 0;
  // AdamW (t 1-based) over this rank's part, then whatever communication
  // makes the parameters every rank needs current.
  virtual void OptimizerStep(const AdamWConfig& config, float lr, int t) = 0;

  virtual MemoryAccount memory() const = 0;
  virtual WaitTimes wait_times() const = 0;

  // State in and out, in host memory. Held(u, kind) is the part of unit u's
  // flat buffer this rank keeps; it always contains the rank's ShardRange.
  // Upload takes exactly Held(u, kind).size() floats; Download copies
  // [range) (inside Held) out.
  virtual ElementRange Held(int unit, StateKind kind) const = 0;
  virtual void Upload(int unit, StateKind kind, const float* host) = 0;
  virtual void Download(int unit, StateKind kind, ElementRange range, float* host) const = 0;
};

}  // namespace mingpt
