// GELU, exact erf form, as torch.nn.GELU() (approximate='none').
//
// forward:  out = x * Phi(x) = 0.5 x (1 + erf(x / sqrt(2)))                 (=)
// backward: dx = dout * (Phi(x) + x phi(x)),  phi(x) = exp(-x^2/2)/sqrt(2 pi)
// (=) shapes: n elements, flat. out may alias x; dx may alias dout.
#pragma once

#include <cstdint>

namespace mingpt::cpu {

template <typename Real>
void GeluForward(Real* out, const Real* x, int64_t n);

template <typename Real>
void GeluBackward(Real* dx, const Real* x, const Real* dout, int64_t n);

}  // namespace mingpt::cpu
