// clang-format off
#include "backend/cpu/fast_math_pragma.h"  // first: see there
// clang-format on
#include "backend/cpu/adamw.h"

#include <algorithm>
#include <cmath>

#include "backend/cpu/omp_util.h"
#include "backend/cpu/vec_math.h"
#include "core/check.h"

namespace mingpt::cpu {

namespace {

constexpr int64_t kBlock = 256;  // elements per cache-resident block

// Blocks of kBlock elements: moments first, then sqrt over the block
// (SqrtArray: vectorised), then the parameter. The lerp form is a template
// argument so that no loop has a per-element branch.
template <typename Real, bool kSmallWeight>
void AdamWLoop(Real* p, const Real* g, Real* m, Real* v, int64_t n, Real decay,
               Real w1, Real b2, Real w2, Real step_size, Real bc2_sqrt,
               Real eps, Real grad_scale) {
  const int64_t blocks = (n + kBlock - 1) / kBlock;
#pragma omp parallel for schedule(static) if (Parallel(4 * n))
  for (int64_t blk = 0; blk < blocks; ++blk) {
    const int64_t i0 = blk * kBlock;
    const int64_t len = std::min(kBlock, n - i0);
    Real* pb = p + i0;
    Real* mb = m + i0;
    Real* vb = v + i0;
    const Real* gb = g + i0;
    alignas(64) Real denom[kBlock];
#pragma omp simd
    for (int64_t i = 0; i < len; ++i) {
      const Real gi = gb[i] * grad_scale;
      // torch.lerp: start + w (end - start), or end - (end - start)(1 - w).
      mb[i] = kSmallWeight ? mb[i] + w1 * (gi - mb[i])
                           : gi - (gi - mb[i]) * (Real(1) - w1);
      vb[i] = vb[i] * b2 + w2 * gi * gi;
    }
    SqrtArray(denom, vb, len);
#pragma omp simd
    for (int64_t i = 0; i < len; ++i) {
      const Real d = denom[i] / bc2_sqrt + eps;
      pb[i] = pb[i] * decay +
              (-step_size * mb[i]) / d;  // decay exactly 1 if wd == 0
    }
  }
}

}  // namespace

template <typename Real>
void AdamW(Real* p, const Real* g, Real* m, Real* v, int64_t n, double lr,
           double beta1, double beta2, double eps, double wd, int t,
           Real grad_scale) {
  MINGPT_CHECK(t >= 1, "AdamW step t=%d must be 1-based", t);
  const Real decay = wd != 0.0 ? static_cast<Real>(1.0 - lr * wd) : Real(1);
  const Real w1 = static_cast<Real>(1.0 - beta1);  // lerp weight
  const Real b2 = static_cast<Real>(beta2);
  const Real w2 = static_cast<Real>(1.0 - beta2);
  const Real step_size = static_cast<Real>(lr / (1.0 - std::pow(beta1, t)));
  const Real bc2_sqrt = static_cast<Real>(std::sqrt(1.0 - std::pow(beta2, t)));
  const Real e = static_cast<Real>(eps);
  if (std::abs(w1) < Real(0.5)) {
    AdamWLoop<Real, true>(p, g, m, v, n, decay, w1, b2, w2, step_size, bc2_sqrt,
                          e, grad_scale);
  } else {
    AdamWLoop<Real, false>(p, g, m, v, n, decay, w1, b2, w2, step_size,
                           bc2_sqrt, e, grad_scale);
  }
}

template void AdamW<float>(float*, const float*, float*, float*, int64_t,
                           double, double, double, double, double, int, float);
template void AdamW<double>(double*, const double*, double*, double*, int64_t,
                            double, double, double, double, double, int,
                            double);

}  // namespace mingpt::cpu
