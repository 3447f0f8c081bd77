#include "optim/loss_scaler.h"

#include <algorithm>
#include <cmath>

namespace mingpt {

DynamicLossScaler::DynamicLossScaler(const LossScalerConfig& config) : config_(config) {
  state_.scale = std::ldexp(1.0, config.initial_scale_power);
  state_.hysteresis = config.hysteresis;
}

bool DynamicLossScaler::Update(bool overflow) {
  bool ok = true;
  if (overflow) {
    ++state_.skipped_steps;
    if (config_.hysteresis <= 1 || state_.hysteresis <= 1) {
      ok = state_.scale > config_.min_scale;
      state_.scale = std::max(state_.scale / 2.0, config_.min_scale);
    } else {
      --state_.hysteresis;
    }
    state_.last_overflow = state_.iteration;
  } else if ((state_.iteration - state_.last_overflow) % config_.window == 0) {
    state_.hysteresis = config_.hysteresis;
    state_.scale *= 2.0;
  }
  ++state_.iteration;
  return ok;
}

}  // namespace mingpt
