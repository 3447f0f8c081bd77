#include "engine/single_process.h"

#include <cmath>

namespace mingpt {

SingleProcess::SingleProcess(Backend* backend, const ModelLayout& layout, bool training)
    : backend_(backend), layout_(layout) {
  const size_t bytes = layout.total_numel() * sizeof(float);
  for (Buffer* b : {&params_, &grads_, &exp_avg_, &exp_avg_sq_}) {
    if (!training && b != &params_) continue;
    *b = Buffer(backend, bytes);
    backend->Memset0(b->f32(), bytes);
  }
}

void SingleProcess::ZeroGrads() { backend_->Memset0(grads_.f32(), numel() * sizeof(float)); }

double SingleProcess::GradNorm() { return std::sqrt(backend_->SumSquares(grads_.f32(), numel())); }

void SingleProcess::ClipGrads(double grad_norm, double max_norm) {
  double f = ClipFactor(grad_norm, max_norm);
  if (f < 1.0) backend_->Scale(grads_.f32(), numel(), static_cast<float>(f));
}

void SingleProcess::OptimizerStep(const AdamWConfig& c, float lr, int t) {
  std::vector<Backend::AdamWTensor> tensors;
  for (int u = 0; u < layout_.num_units(); ++u) {
    const int64_t base = layout_.unit_offset(u);
    for (const ParamEntry& e : layout_.units()[u].params) {
      tensors.push_back({base + e.offset, e.numel, e.decay ? c.weight_decay : 0.0f});
    }
  }
  backend_->AdamWTensors(params_.f32(), grads_.f32(), exp_avg_.f32(), exp_avg_sq_.f32(),
                         tensors.data(), tensors.size(), lr, c.beta1, c.beta2, c.eps, t,
                         1.0f);
}

size_t SingleProcess::state_bytes() const {
  return params_.bytes() + grads_.bytes() + exp_avg_.bytes() + exp_avg_sq_.bytes();
}

}  // namespace mingpt
