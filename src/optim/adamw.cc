#include "optim/adamw.h"

#include <algorithm>
#include <cmath>
#include <numbers>

namespace mingpt {

double LrSchedule::LearningRate(double tokens) const {
  if (!decay) return base_lr;
  double mult;
  if (tokens < warmup_tokens) {
    mult = tokens / std::max(1.0, warmup_tokens);
  } else {
    double progress = (tokens - warmup_tokens) / std::max(1.0, final_tokens - warmup_tokens);
    mult = std::max(0.1, 0.5 * (1.0 + std::cos(std::numbers::pi * progress)));
  }
  return base_lr * mult;
}

double ClipFactor(double grad_norm, double max_norm) {
  if (max_norm <= 0) return 1.0;
  return std::min(1.0, max_norm / (grad_norm + 1e-6));
}

}  // namespace mingpt
