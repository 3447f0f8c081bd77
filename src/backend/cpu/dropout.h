// Dropout kernel (inverted dropout, as torch.nn.Dropout), masks from
// backend/dropout.h, recomputed from coordinates instead of stored.
//
// forward:  y[b,e] = x[b,e] * keep(b,e) / (1-p), or y = x when p == 0       (=)
// backward: the same call on the gradients (the mask is a pure function of
//           (seed, step, site, sample_base + b, e)).
// shapes: x, y [B,row_size]; y may alias x.
#pragma once

#include <algorithm>
#include <cstdint>

#include "backend/dropout.h"

namespace mingpt::cpu {

template <typename Real>
void DropoutForward(Real* y, const Real* x, int B, int64_t row_size,
                    const DropoutSpec& spec);

// Multipliers keep/(1-p) (0 where dropped) of elements 4*g0 .. 4*(g0+groups)-1
// of batch row b, bit-identical to DropoutKeep4; Philox runs on 8 groups at
// a time in lanes the compiler vectorises.
template <typename Real>
void DropoutMultipliers(const DropoutSpec& spec, int64_t b, int64_t g0,
                        int64_t groups, Real* mult);

// Calls fn(j0, n, mult) over consecutive chunks covering j = 0 .. len-1,
// mult[0..n) being the multipliers of elements e0+j0 .. e0+j0+n-1 of row b.
template <typename Real, typename Fn>
inline void ForEachMaskChunk(const DropoutSpec& spec, int64_t b, int64_t e0,
                             int64_t len, Fn&& fn) {
  constexpr int64_t kChunk = 128;
  alignas(64) Real buf[kChunk + 8];
  for (int64_t j0 = 0; j0 < len; j0 += kChunk) {
    const int64_t n = std::min(kChunk, len - j0);
    const int64_t e = e0 + j0;
    const int64_t offset = e & 3;
    DropoutMultipliers(spec, b, e >> 2, (offset + n + 3) / 4, buf);
    fn(j0, n, static_cast<const Real*>(buf + offset));
  }
}

}  // namespace mingpt::cpu
