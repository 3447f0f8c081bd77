#include "backend/cpu/residual.h"

#include "backend/cpu/omp_util.h"

namespace mingpt::cpu {

template <typename Real>
void Add(Real* out, const Real* a, const Real* b, int64_t n) {
#pragma omp parallel for simd schedule(static) if (Parallel(n))
  for (int64_t i = 0; i < n; ++i) out[i] = a[i] + b[i];
}

template void Add<float>(float*, const float*, const float*, int64_t);
template void Add<double>(double*, const double*, const double*, int64_t);

}  // namespace mingpt::cpu
