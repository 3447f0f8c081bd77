// Dropout masks as a pure function of coordinates (see core/rng.h).
//
// Element e of global sample s at dropout site `site` in optimizer step `step`
// is kept iff U(Philox(seed; e/4, s, site, step)[e % 4]) >= p, and a kept
// value is scaled by 1/(1-p) (inverted dropout, as torch.nn.Dropout).
// Because the mask depends only on these coordinates, backward and activation
// recomputation regenerate it instead of storing it, a batch split across
// ranks sees the masks of the unsplit batch, and every backend agrees.
#pragma once

#include <cstdint>

#include "core/rng.h"

namespace mingpt {

struct DropoutSpec {
  float p = 0.0f;            // probability of zeroing; 0 disables the site
  uint64_t seed = 0;
  uint32_t step = 0;         // optimizer step
  uint32_t site = 0;         // which dropout site of the model
  uint64_t sample_base = 0;  // global sample index of batch row 0

  MINGPT_HOST_DEVICE bool enabled() const { return p > 0.0f; }
  MINGPT_HOST_DEVICE float scale() const { return 1.0f / (1.0f - p); }
};

// The four mask decisions for elements 4*group .. 4*group+3 of batch row b.
MINGPT_HOST_DEVICE inline void DropoutKeep4(const DropoutSpec& d, int64_t b, int64_t group,
                                            bool keep[4]) {
  auto r = Philox4x32(d.seed, static_cast<uint32_t>(group),
                      static_cast<uint32_t>(d.sample_base + b), d.site, d.step);
  for (int i = 0; i < 4; ++i) keep[i] = UniformFromBits(r[i]) >= d.p;
}

MINGPT_HOST_DEVICE inline bool DropoutKeep(const DropoutSpec& d, int64_t b, int64_t element) {
  bool keep[4];
  DropoutKeep4(d, b, element / 4, keep);
  return keep[element % 4];
}

}  // namespace mingpt
