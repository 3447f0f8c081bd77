// Reductions and scaling for gradient clipping.
//
// SumSquares: returns sum_i x[i]^2, accumulated in double (the squared
//             gradient norm; its square root is what clip_grad_norm_ uses).
// Scale:      x[i] *= s, in place.                                          (=)
// shapes: n elements, flat. No backward (not part of the model graph).
#pragma once

#include <cstdint>

namespace mingpt::cpu {

template <typename Real>
double SumSquares(const Real* x, int64_t n);

template <typename Real>
void Scale(Real* x, int64_t n, Real s);

}  // namespace mingpt::cpu
