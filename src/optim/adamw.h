// AdamW hyper-parameters (the seed's recipe), the learning-rate schedule and
// gradient clipping by global norm.
#pragma once

#include <cstdint>

namespace mingpt {

struct AdamWConfig {
  float learning_rate = 6e-4f;
  float beta1 = 0.9f;
  float beta2 = 0.95f;
  float eps = 1e-8f;
  float weight_decay = 0.1f;  // on Linear and Embedding weights only
};

// The seed's LearningRateDecayCallback, counted in tokens: linear warmup to
// base_lr over warmup_tokens, then cosine down to a floor of 10% at
// final_tokens. The learning rate of an optimizer step is taken at the token
// count *including* that step's batch (the seed applies it from the second
// step on; its first step ran at the undecayed base rate).
struct LrSchedule {
  double base_lr = 6e-4;
  double warmup_tokens = 512.0 * 20;
  double final_tokens = 0;  // 2 * len(train_dataset) * block_size
  bool decay = true;

  double LearningRate(double tokens) const;
};

// torch.nn.utils.clip_grad_norm_'s factor: min(1, max_norm / (norm + 1e-6)).
// max_norm <= 0 disables clipping (factor 1).
double ClipFactor(double grad_norm, double max_norm);

}  // namespace mingpt
