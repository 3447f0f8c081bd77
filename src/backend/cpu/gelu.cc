// clang-format off
#include "backend/cpu/fast_math_pragma.h"  // first: see there
// clang-format on
#include "backend/cpu/gelu.h"

#include <cmath>

#include "backend/cpu/omp_util.h"
#include "backend/cpu/vec_math.h"

namespace mingpt::cpu {
namespace {
constexpr double kInvSqrt2 = 0.70710678118654752440;
constexpr double kInvSqrt2Pi = 0.39894228040143267794;
}  // namespace

template <typename Real>
void GeluForward(Real* out, const Real* x, int64_t n) {
  const Real inv_sqrt2 = static_cast<Real>(kInvSqrt2);
#pragma omp parallel for simd schedule(static) if (Parallel(8 * n))
  for (int64_t i = 0; i < n; ++i) {
    const Real xi = x[i];
    out[i] = Real(0.5) * xi * (Real(1) + Erf(xi * inv_sqrt2));
  }
}

template <typename Real>
void GeluBackward(Real* dx, const Real* x, const Real* dout, int64_t n) {
  const Real inv_sqrt2 = static_cast<Real>(kInvSqrt2);
  const Real inv_sqrt2pi = static_cast<Real>(kInvSqrt2Pi);
#pragma omp parallel for simd schedule(static) if (Parallel(8 * n))
  for (int64_t i = 0; i < n; ++i) {
    const Real xi = x[i];
    const Real cdf = Real(0.5) * (Real(1) + Erf(xi * inv_sqrt2));
    const Real pdf = inv_sqrt2pi * Exp(Real(-0.5) * xi * xi);
    dx[i] = dout[i] * (cdf + xi * pdf);
  }
}

template void GeluForward<float>(float*, const float*, int64_t);
template void GeluForward<double>(double*, const double*, int64_t);
template void GeluBackward<float>(float*, const float*, const float*, int64_t);
template void GeluBackward<double>(double*, const double*, const double*,
                                   int64_t);

}  // namespace mingpt::cpu
