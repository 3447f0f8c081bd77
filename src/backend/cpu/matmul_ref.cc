#include "backend/cpu/matmul_ref.h"

#include <cstdint>

#include "backend/cpu/omp_util.h"

namespace mingpt::cpu {

template <typename Real>
void MatmulForwardRef(Real* out, const Real* inp, const Real* W,
                      const Real* bias, int N, int IC, int OC) {
#pragma omp parallel for collapse(2) \
    schedule(static) if (Parallel(int64_t{N} * IC * OC))
  for (int64_t n = 0; n < N; ++n) {
    for (int o = 0; o < OC; ++o) {
      const Real* x = inp + n * IC;
      const Real* w = W + static_cast<int64_t>(o) * IC;
      Real acc = bias ? bias[o] : Real(0);
#pragma omp simd reduction(+ : acc)
      for (int i = 0; i < IC; ++i) acc += x[i] * w[i];
      out[n * OC + o] = acc;
    }
  }
}

template <typename Real>
void MatmulBackwardRef(Real* dinp, Real* dW, Real* dbias, const Real* dout,
                       const Real* inp, const Real* W, int N, int IC, int OC,
                       bool accumulate_dinp) {
  if (dinp) {
#pragma omp parallel for schedule(static) if (Parallel(int64_t{N} * IC * OC))
    for (int64_t n = 0; n < N; ++n) {
      Real* dx = dinp + n * IC;
      if (!accumulate_dinp) {
        for (int i = 0; i < IC; ++i) dx[i] = 0;
      }
      for (int o = 0; o < OC; ++o) {
        const Real d = dout[n * OC + o];
        const Real* w = W + static_cast<int64_t>(o) * IC;
#pragma omp simd
        for (int i = 0; i < IC; ++i) dx[i] += d * w[i];
      }
    }
  }
#pragma omp parallel for schedule(static) if (Parallel(int64_t{N} * IC * OC))
  for (int o = 0; o < OC; ++o) {
    Real* dw = dW + static_cast<int64_t>(o) * IC;
    for (int64_t n = 0; n < N; ++n) {
      const Real d = dout[n * OC + o];
      const Real* x = inp + n * IC;
#pragma omp simd
      for (int i = 0; i < IC; ++i) dw[i] += d * x[i];
    }
  }
  if (dbias) BiasBackward(dbias, dout, N, OC);
}

template <typename Real>
void BiasBackward(Real* dbias, const Real* dout, int N, int OC) {
#pragma omp parallel if (Parallel(int64_t{N} * OC))
  {
    int64_t o0, o1;
    ThreadSlice(OC, &o0, &o1);
    for (int64_t n = 0; n < N && o0 < o1; ++n) {
      const Real* d = dout + n * OC;
#pragma omp simd
      for (int64_t o = o0; o < o1; ++o) dbias[o] += d[o];
    }
  }
}

template void MatmulForwardRef<float>(float*, const float*, const float*,
                                      const float*, int, int, int);
template void MatmulForwardRef<double>(double*, const double*, const double*,
                                       const double*, int, int, int);
template void MatmulBackwardRef<float>(float*, float*, float*, const float*,
                                       const float*, const float*, int, int,
                                       int, bool);
template void MatmulBackwardRef<double>(double*, double*, double*,
                                        const double*, const double*,
                                        const double*, int, int, int, bool);
template void BiasBackward<float>(float*, const float*, int, int);
template void BiasBackward<double>(double*, const double*, int, int);

}  // namespace mingpt::cpu
