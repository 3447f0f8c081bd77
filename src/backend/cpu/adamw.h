// AdamW exactly as torch.optim.AdamW's single-tensor path (decoupled weight
// decay, bias correction folded into the step size and the denominator), on
// n elements in place; t is the 1-based step:
//   p = p * (1 - lr*wd)                       (skipped when wd == 0)
//   m = lerp(m, g, 1 - b1)                    (= b1 m + (1-b1) g)
//   v = v * b2 + (1 - b2) g^2
//   denom = sqrt(v) / sqrt(1 - b2^t) + eps
//   p = p - (lr / (1 - b1^t)) * m / denom
// i.e. p -= lr * m_hat / (sqrt(v_hat) + eps). Scalars are formed in double
// (as Python does) and rounded to Real once, as PyTorch passes them. g is
// read as g * grad_scale (clipping and loss scaling folded in; exactly g at
// 1).
// shapes: p, g, m, v [n]; p, m, v updated (=), g read.
#pragma once

#include <cstdint>

namespace mingpt::cpu {

template <typename Real>
void AdamW(Real* p, const Real* g, Real* m, Real* v, int64_t n, double lr,
           double beta1, double beta2, double eps, double wd, int t,
           Real grad_scale = 1);

}  // namespace mingpt::cpu
