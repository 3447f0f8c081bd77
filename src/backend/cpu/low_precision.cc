#include "backend/cpu/low_precision.h"

#include <cstring>

#if defined(__AVX512BF16__)
#include <immintrin.h>
#endif

#include "backend/cpu/omp_util.h"

namespace mingpt::cpu {

void ToBf16Array(uint16_t* dst, const float* src, int64_t n) {
#if defined(__AVX512BF16__)
  const int64_t blocks = n / 32;
#pragma omp parallel for schedule(static) if (Parallel(n))
  for (int64_t k = 0; k < blocks; ++k) {
    const float* s = src + 32 * k;
    const __m512bh h = _mm512_cvtne2ps_pbh(_mm512_loadu_ps(s + 16), _mm512_loadu_ps(s));
    _mm512_storeu_si512(dst + 32 * k, reinterpret_cast<__m512i>(h));
  }
  for (int64_t i = blocks * 32; i < n; ++i) dst[i] = ToBf16(src[i]);
#else
#pragma omp parallel for simd schedule(static) if (Parallel(n))
  for (int64_t i = 0; i < n; ++i) dst[i] = ToBf16(src[i]);
#endif
}

void RoundArray(float* dst, const float* src, int64_t n, MatmulPrecision precision) {
  switch (precision) {
    case MatmulPrecision::kFp32:
      if (dst != src && n > 0) std::memmove(dst, src, sizeof(float) * n);
      return;
    case MatmulPrecision::kBf16:
#pragma omp parallel for simd schedule(static) if (Parallel(n))
      for (int64_t i = 0; i < n; ++i) dst[i] = RoundToBf16(src[i]);
      return;
    case MatmulPrecision::kFp16:
#pragma omp parallel for simd schedule(static) if (Parallel(n))
      for (int64_t i = 0; i < n; ++i) dst[i] = RoundToFp16(src[i]);
      return;
  }
}

}  // namespace mingpt::cpu
