// SingleProcess: the strategy of one process holding everything. Parameters,
// gradients and both AdamW moments are flat buffers in layout order (all
// units back to back); Acquire/Release are free and GradsReady has nothing to
// communicate. The sharded strategies implement the same ParamProvider.
#pragma once

#include <vector>

#include "backend/backend.h"
#include "model/layout.h"
#include "model/param_provider.h"
#include "optim/adamw.h"

namespace mingpt {

class SingleProcess : public ParamProvider {
 public:
  // With training false only the parameters are allocated (inference).
  SingleProcess(Backend* backend, const ModelLayout& layout, bool training = true);

  // ParamProvider
  const float* Acquire(int unit) override { return params_.f32() + layout_.unit_offset(unit); }
  void Release(int unit) override {}
  float* Grads(int unit) override { return grads_.f32() + layout_.unit_offset(unit); }
  void GradsReady(int unit) override {}

  // Flat buffers of layout_.total_numel() floats (backend memory).
  float* params() { return params_.f32(); }
  float* grads() { return grads_.f32(); }
  float* exp_avg() { return exp_avg_.f32(); }
  float* exp_avg_sq() { return exp_avg_sq_.f32(); }
  int64_t numel() const { return layout_.total_numel(); }

  void ZeroGrads();
  // Global L2 norm of all gradients.
  double GradNorm();
  // Multiplies every gradient by ClipFactor(grad_norm, max_norm).
  void ClipGrads(double grad_norm, double max_norm);
  // One AdamW step (t is 1-based) over every tensor, with weight decay on
  // the tensors whose layout entry says so.
  void OptimizerStep(const AdamWConfig& config, float lr, int t);

  // Bytes of parameters, gradients and optimizer state held.
  size_t state_bytes() const;

 private:
  Backend* backend_;
  const ModelLayout& layout_;
  Buffer params_, grads_, exp_avg_, exp_avg_sq_;
};

}  // namespace mingpt
