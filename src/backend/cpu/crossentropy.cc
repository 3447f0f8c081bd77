// clang-format off
#include "backend/cpu/fast_math_pragma.h"  // first: see there
// clang-format on
#include "backend/cpu/crossentropy.h"

#include <cmath>
#include <limits>

#include "backend/cpu/omp_util.h"
#include "backend/cpu/vec_math.h"
#include "core/check.h"

namespace mingpt::cpu {
namespace {

template <typename Real>
inline Real RowMax(const Real* x, int V) {
  Real m = -std::numeric_limits<Real>::infinity();
#pragma omp simd reduction(max : m)
  for (int j = 0; j < V; ++j) m = x[j] > m ? x[j] : m;
  return m;
}

inline void CheckTarget(int32_t target, int V) {
  MINGPT_CHECK(target >= 0 && target < V, "target %d outside [0, %d)", target,
               V);
}

}  // namespace

template <typename Real>
void CrossEntropyForward(Real* losses, const Real* logits,
                         const int32_t* targets, int N, int V) {
#pragma omp parallel for schedule(static) if (Parallel(4 * int64_t{N} * V))
  for (int64_t n = 0; n < N; ++n) {
    const Real* x = logits + n * V;
    CheckTarget(targets[n], V);
    const Real m = RowMax(x, V);
    Real sum = 0;
#pragma omp simd reduction(+ : sum)
    for (int j = 0; j < V; ++j) sum += Exp(x[j] - m);
    losses[n] = std::log(sum) - (x[targets[n]] - m);
  }
}

template <typename Real>
void CrossEntropyForwardBackward(Real* losses, Real* dlogits,
                                 const Real* logits, const int32_t* targets,
                                 int N, int V, Real dloss) {
#pragma omp parallel for schedule(static) if (Parallel(4 * int64_t{N} * V))
  for (int64_t n = 0; n < N; ++n) {
    const Real* x = logits + n * V;
    Real* d = dlogits + n * V;  // may be x itself: read before written
    const int32_t y = targets[n];
    CheckTarget(y, V);
    const Real x_y = x[y];
    const Real m = RowMax(x, V);
    Real sum = 0;
#pragma omp simd reduction(+ : sum)
    for (int j = 0; j < V; ++j) {
      const Real e = Exp(x[j] - m);
      d[j] = e;
      sum += e;
    }
    if (losses) losses[n] = std::log(sum) - (x_y - m);
    const Real s = dloss / sum;
#pragma omp simd
    for (int j = 0; j < V; ++j) d[j] *= s;
    d[y] -= dloss;
  }
}

template void CrossEntropyForward<float>(float*, const float*, const int32_t*,
                                         int, int);
template void CrossEntropyForward<double>(double*, const double*,
                                          const int32_t*, int, int);
template void CrossEntropyForwardBackward<float>(float*, float*, const float*,
                                                 const int32_t*, int, int,
                                                 float);
template void CrossEntropyForwardBackward<double>(double*, double*,
                                                  const double*, const int32_t*,
                                                  int, int, double);

}  // namespace mingpt::cpu
