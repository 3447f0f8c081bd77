#include "backend/cpu/low_precision.h"

#include <algorithm>
#include <cstring>

#if defined(__AVX512BF16__)
#include <immintrin.h>
#endif

#include "backend/cpu/omp_util.h"

namespace mingpt::cpu {

void ToBf16Span(uint16_t* dst, const float* src, int64_t n) {
  int64_t done = 0;
#if defined(__AVX512BF16__)
  for (; done + 32 <= n; done += 32) {
    const __m512bh h =
        _mm512_cvtne2ps_pbh(_mm512_loadu_ps(src + done + 16), _mm512_loadu_ps(src + done));
    _mm512_storeu_si512(dst + done, reinterpret_cast<__m512i>(h));
  }
#endif
#pragma omp simd
  for (int64_t i = done; i < n; ++i) dst[i] = ToBf16(src[i]);
}

void RoundSpan(float* dst, const float* src, int64_t n, MatmulPrecision precision) {
  switch (precision) {
    case MatmulPrecision::kFp32:
      if (dst != src && n > 0) std::memmove(dst, src, sizeof(float) * n);
      return;
    case MatmulPrecision::kBf16:
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) dst[i] = RoundToBf16(src[i]);
      return;
    case MatmulPrecision::kFp16:
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) dst[i] = RoundToFp16(src[i]);
      return;
  }
}

namespace {
// Spans of this many elements (a multiple of 32) per parallel iteration.
constexpr int64_t kSpan = 4096;
}  // namespace

void ToBf16Array(uint16_t* dst, const float* src, int64_t n) {
  const int64_t spans = (n + kSpan - 1) / kSpan;
#pragma omp parallel for schedule(static) if (Parallel(n))
  for (int64_t k = 0; k < spans; ++k) {
    ToBf16Span(dst + k * kSpan, src + k * kSpan, std::min(kSpan, n - k * kSpan));
  }
}

void RoundArray(float* dst, const float* src, int64_t n, MatmulPrecision precision) {
  if (precision == MatmulPrecision::kFp32) {
    RoundSpan(dst, src, n, precision);
    return;
  }
  const int64_t spans = (n + kSpan - 1) / kSpan;
#pragma omp parallel for schedule(static) if (Parallel(n))
  for (int64_t k = 0; k < spans; ++k) {
    RoundSpan(dst + k * kSpan, src + k * kSpan, std::min(kSpan, n - k * kSpan), precision);
  }
}

}  // namespace mingpt::cpu
