// exp and erf written so that the compiler vectorises loops calling them
// (plain arithmetic and bit casts: no libm call, no errno). The float
// versions are what the float kernels use; double forwards to <cmath>, so
// the double reference kernels stay exact.
//   ExpF: Cephes expf range reduction + degree-6 polynomial, ~1 ulp on
//         [-87.3, 88.37]; 0 below, +inf above (expf overflows at 88.72).
//   ErfF: rational approximation x P(x^2) / Q(x^2) on [-4, 4] (the form
//         Eigen and XLA use for float erf), |error| < 5e-7; +-1 outside.
//   SqrtArray: y = sqrt(x) over an array, with explicit SSE for float,
//         since GCC keeps sqrt's errno branch (and so never vectorises a
//         loop containing sqrt) unless the whole build has -fno-math-errno.
#pragma once

#include <bit>
#include <cmath>
#include <cstdint>

#if defined(__SSE2__)
#include <immintrin.h>
#endif

namespace mingpt::cpu {

inline float ExpF(float x) {
  constexpr float kHi = 88.37f, kLo = -87.3365f;  // n stays in [-126, 127]
  const float xc = x > kHi ? kHi : (x < kLo ? kLo : x);
  // n = round(x / ln 2) (adding 1.5 * 2^23 rounds to an integer, where
  // std::floor would not vectorise); r = x - n ln 2 in two parts.
  constexpr float kRound = 12582912.0f;
  const float n = (xc * 1.44269504088896341f + kRound) - kRound;
  float r = xc - n * 0.693359375f;
  r = r + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  // Scale by 2^n through the exponent bits.
  const int32_t e = static_cast<int32_t>(n) + 127;
  const float scale = std::bit_cast<float>(e << 23);
  const float y = p * scale;
  return x < kLo ? 0.0f : (x > kHi ? INFINITY : y);
}

inline float ErfF(float x) {
  const float xc = x > 4.0f ? 4.0f : (x < -4.0f ? -4.0f : x);
  const float x2 = xc * xc;
  float p = -2.72614225801306e-10f;
  p = p * x2 + 2.77068142495902e-08f;
  p = p * x2 + -2.10102402082508e-06f;
  p = p * x2 + -5.69250639462346e-05f;
  p = p * x2 + -7.34990630326855e-04f;
  p = p * x2 + -2.95459980854025e-03f;
  p = p * x2 + -1.60960333262415e-02f;
  float q = -1.45660718464996e-05f;
  q = q * x2 + -2.13374055278905e-04f;
  q = q * x2 + -1.68282697438203e-03f;
  q = q * x2 + -7.37332916720468e-03f;
  q = q * x2 + -1.42647390514189e-02f;
  return xc * p / q;
}

template <typename Real>
inline Real Exp(Real x) {
  return std::exp(x);
}
template <>
inline float Exp<float>(float x) {
  return ExpF(x);
}

template <typename Real>
inline Real Erf(Real x) {
  return std::erf(x);
}
template <>
inline float Erf<float>(float x) {
  return ErfF(x);
}

template <typename Real>
inline void SqrtArray(Real* y, const Real* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = std::sqrt(x[i]);
}
template <>
inline void SqrtArray<float>(float* y, const float* x, int64_t n) {
  int64_t i = 0;
#if defined(__AVX__)
  for (; i + 8 <= n; i += 8) {
    _mm256_storeu_ps(y + i, _mm256_sqrt_ps(_mm256_loadu_ps(x + i)));
  }
#elif defined(__SSE2__)
  for (; i + 4 <= n; i += 4) {
    _mm_storeu_ps(y + i, _mm_sqrt_ps(_mm_loadu_ps(x + i)));
  }
#endif
  for (; i < n; ++i) y[i] = std::sqrt(x[i]);
}

}  // namespace mingpt::cpu
