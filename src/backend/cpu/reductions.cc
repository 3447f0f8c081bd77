#include "backend/cpu/reductions.h"

#include "backend/cpu/omp_util.h"

namespace mingpt::cpu {

template <typename Real>
double SumSquares(const Real* x, int64_t n) {
  double sum = 0;
#pragma omp parallel for simd reduction(+ : sum) schedule(static) \
    if (Parallel(n))
  for (int64_t i = 0; i < n; ++i) {
    const double xi = x[i];
    sum += xi * xi;
  }
  return sum;
}

template <typename Real>
void Scale(Real* x, int64_t n, Real s) {
#pragma omp parallel for simd schedule(static) if (Parallel(n))
  for (int64_t i = 0; i < n; ++i) x[i] *= s;
}

template double SumSquares<float>(const float*, int64_t);
template double SumSquares<double>(const double*, int64_t);
template void Scale<float>(float*, int64_t, float);
template void Scale<double>(double*, int64_t, double);

}  // namespace mingpt::cpu
