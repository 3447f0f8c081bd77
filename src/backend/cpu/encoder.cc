#include "backend/cpu/encoder.h"

#include "backend/cpu/omp_util.h"

namespace mingpt::cpu {

template <typename Real>
void EncoderForward(Real* out, const int32_t* idx, const Real* wte,
                    const Real* wpe, int B, int T, int C) {
  const int64_t N = static_cast<int64_t>(B) * T;
#pragma omp parallel for schedule(static) if (Parallel(N * C))
  for (int64_t n = 0; n < N; ++n) {
    const int64_t t = n % T;
    Real* o = out + n * C;
    const Real* wt = wte + static_cast<int64_t>(idx[n]) * C;
    const Real* wp = wpe + t * C;
#pragma omp simd
    for (int c = 0; c < C; ++c) o[c] = wt[c] + wp[c];
  }
}

template <typename Real>
void EncoderBackward(Real* dwte, Real* dwpe, const Real* dout,
                     const int32_t* idx, int B, int T, int C) {
  const int64_t N = static_cast<int64_t>(B) * T;
#pragma omp parallel if (Parallel(N * C))
  {
    int64_t c0, c1;
    ThreadSlice(C, &c0, &c1);
    for (int64_t n = 0; n < N && c0 < c1; ++n) {
      const Real* d = dout + n * C;
      Real* wt = dwte + static_cast<int64_t>(idx[n]) * C;
      Real* wp = dwpe + (n % T) * C;
#pragma omp simd
      for (int64_t c = c0; c < c1; ++c) {
        wt[c] += d[c];
        wp[c] += d[c];
      }
    }
  }
}

template void EncoderForward<float>(float*, const int32_t*, const float*,
                                    const float*, int, int, int);
template void EncoderForward<double>(double*, const int32_t*, const double*,
                                     const double*, int, int, int);
template void EncoderBackward<float>(float*, float*, const float*,
                                     const int32_t*, int, int, int);
template void EncoderBackward<double>(double*, double*, const double*,
                                      const int32_t*, int, int, int);

}  // namespace mingpt::cpu
