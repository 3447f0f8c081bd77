// Dynamic loss scaling for --precision 16, with DeepSpeed's rules and
// defaults (its fp16 config: initial_scale_power 16, loss_scale_window 1000,
// hysteresis 2, min_loss_scale 1):
//   - the loss is multiplied by scale() before backward, and the gradients by
//     1/scale() (together with the clipping factor) before the step;
//   - a step whose gradients hold an inf or NaN is skipped (no update, Adam's
//     step count unchanged). The scale is halved, unless hysteresis still has
//     credit: then the credit drops by one and the scale stays. The scale
//     never goes below min_scale; an overflow at min_scale is an error (the
//     model overflows fp16 whatever the scale);
//   - after `window` consecutive steps without overflow the scale doubles and
//     the hysteresis credit is restored.
// The state is five numbers, kept in checkpoints so that a resumed run scales
// exactly as the uninterrupted one.
#pragma once

#include <cstdint>

namespace mingpt {

struct LossScalerConfig {
  int initial_scale_power = 16;
  int64_t window = 1000;
  int hysteresis = 2;
  double min_scale = 1.0;
};

struct LossScalerState {
  double scale = 65536.0;
  int hysteresis = 2;             // credit left before an overflow halves
  int64_t iteration = 0;          // Update() calls so far
  int64_t last_overflow = -1;     // iteration of the last overflow
  int64_t skipped_steps = 0;      // overflowed (skipped) steps so far
};

class DynamicLossScaler {
 public:
  explicit DynamicLossScaler(const LossScalerConfig& config = {});
  DynamicLossScaler(const LossScalerConfig& config, const LossScalerState& state)
      : config_(config), state_(state) {}

  double scale() const { return state_.scale; }
  const LossScalerState& state() const { return state_; }

  // After a step's backward: `overflow` when its gradients are not finite.
  // Returns false when the overflow happened at min_scale (the run cannot
  // go on in fp16).
  bool Update(bool overflow);

 private:
  LossScalerConfig config_;
  LossScalerState state_;
};

}  // namespace mingpt
