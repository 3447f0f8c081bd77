// clang-format off
#include "backend/cpu/fast_math_pragma.h"  // first: see there
// clang-format on
#include "backend/cpu/gelu.h"

#include <algorithm>
#include <cmath>

#if defined(__AVX2__) && defined(__FMA__)
// GCC 12's AVX-512 headers start some intrinsics from _mm512_undefined_ps(),
// which -Wmaybe-uninitialized then reports inside the headers.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#endif

#include "backend/cpu/omp_util.h"
#include "backend/cpu/vec_math.h"

namespace mingpt::cpu {
namespace {
constexpr double kInvSqrt2 = 0.70710678118654752440;
constexpr double kInvSqrt2Pi = 0.39894228040143267794;

template <typename Real>
inline Real GeluScalar(Real xi) {
  const Real inv_sqrt2 = static_cast<Real>(kInvSqrt2);
  return Real(0.5) * xi * (Real(1) + Erf(xi * inv_sqrt2));
}

template <typename Real>
inline Real GeluGradScalar(Real xi) {
  const Real inv_sqrt2 = static_cast<Real>(kInvSqrt2);
  const Real inv_sqrt2pi = static_cast<Real>(kInvSqrt2Pi);
  const Real cdf = Real(0.5) * (Real(1) + Erf(xi * inv_sqrt2));
  const Real pdf = inv_sqrt2pi * Exp(Real(-0.5) * xi * xi);
  return cdf + xi * pdf;
}

#if defined(__AVX2__) && defined(__FMA__)
// The float GELU pieces on explicit vectors (the compiler's own
// vectorisation of the scalar loops above picks 128-bit vectors on some
// targets and keeps the clamps and selects of the general ExpF), written once
// over the vector type: V8 (AVX2 + FMA) or, where the build has it, V16
// (AVX-512), each a thin table of the intrinsics used.
//   ErfV: ErfF's rational x P(x^2) / Q(x^2) on [-4, 4], evaluated with FMA:
//         |erf error| < 5e-7 (measured max 4.6e-7 over [-12, 12]).
//   ExpNegV: e^x for x <= 0 only (here x = -x^2/2): ExpF's range reduction
//         and polynomial, clamped below at -87.3 (e^-87.3 ~ 1e-38 where the
//         exact value underflows; it is only ever multiplied by x, |x| > 13,
//         so the product stays < 1e-36). Relative error ~1-2 ulp.
// Measured over x in [-12, 12] step 1e-4 against double (this machine):
// |gelu error| <= 9.3e-7 (it is 0.5 x erf's error, largest at |x| ~ 2-4),
// |gelu' error| <= 2.3e-7. tests/backend/cpu_backend_test.cc checks both
// bounds (GeluFloatAccuracy).
struct V8 {
  using T = __m256;
  using I = __m256i;
  static constexpr int kWidth = 8;
  static T Set(float x) { return _mm256_set1_ps(x); }
  static T Load(const float* p) { return _mm256_loadu_ps(p); }
  static void Store(float* p, T x) { _mm256_storeu_ps(p, x); }
  static T Add(T a, T b) { return _mm256_add_ps(a, b); }
  static T Mul(T a, T b) { return _mm256_mul_ps(a, b); }
  static T Div(T a, T b) { return _mm256_div_ps(a, b); }
  static T Min(T a, T b) { return _mm256_min_ps(a, b); }
  static T Max(T a, T b) { return _mm256_max_ps(a, b); }
  static T Fma(T a, T b, T c) { return _mm256_fmadd_ps(a, b, c); }
  static T Fnma(T a, T b, T c) { return _mm256_fnmadd_ps(a, b, c); }
  static T Round(T x) { return _mm256_round_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
  // 2^n for integral n in [-126, 127], through the exponent bits.
  static T Pow2(T n) {
    const I e = _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127));
    return _mm256_castsi256_ps(_mm256_slli_epi32(e, 23));
  }
};

#if defined(__AVX512F__)
struct V16 {
  using T = __m512;
  using I = __m512i;
  static constexpr int kWidth = 16;
  static T Set(float x) { return _mm512_set1_ps(x); }
  static T Load(const float* p) { return _mm512_loadu_ps(p); }
  static void Store(float* p, T x) { _mm512_storeu_ps(p, x); }
  static T Add(T a, T b) { return _mm512_add_ps(a, b); }
  static T Mul(T a, T b) { return _mm512_mul_ps(a, b); }
  static T Div(T a, T b) { return _mm512_div_ps(a, b); }
  static T Min(T a, T b) { return _mm512_min_ps(a, b); }
  static T Max(T a, T b) { return _mm512_max_ps(a, b); }
  static T Fma(T a, T b, T c) { return _mm512_fmadd_ps(a, b, c); }
  static T Fnma(T a, T b, T c) { return _mm512_fnmadd_ps(a, b, c); }
  static T Round(T x) { return _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
  static T Pow2(T n) {
    const I e = _mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127));
    return _mm512_castsi512_ps(_mm512_slli_epi32(e, 23));
  }
};
using Vec = V16;
#else
using Vec = V8;
#endif

template <typename V>
inline typename V::T ErfV(typename V::T x) {
  const auto xc = V::Min(V::Max(x, V::Set(-4.0f)), V::Set(4.0f));
  const auto x2 = V::Mul(xc, xc);
  auto p = V::Set(-2.72614225801306e-10f);
  p = V::Fma(p, x2, V::Set(2.77068142495902e-08f));
  p = V::Fma(p, x2, V::Set(-2.10102402082508e-06f));
  p = V::Fma(p, x2, V::Set(-5.69250639462346e-05f));
  p = V::Fma(p, x2, V::Set(-7.34990630326855e-04f));
  p = V::Fma(p, x2, V::Set(-2.95459980854025e-03f));
  p = V::Fma(p, x2, V::Set(-1.60960333262415e-02f));
  auto q = V::Set(-1.45660718464996e-05f);
  q = V::Fma(q, x2, V::Set(-2.13374055278905e-04f));
  q = V::Fma(q, x2, V::Set(-1.68282697438203e-03f));
  q = V::Fma(q, x2, V::Set(-7.37332916720468e-03f));
  q = V::Fma(q, x2, V::Set(-1.42647390514189e-02f));
  return V::Div(V::Mul(xc, p), q);
}

template <typename V>
inline typename V::T ExpNegV(typename V::T x) {
  const auto xc = V::Max(x, V::Set(-87.3365f));
  const auto n = V::Round(V::Mul(xc, V::Set(1.44269504088896341f)));
  auto r = V::Fnma(n, V::Set(0.693359375f), xc);
  r = V::Fnma(n, V::Set(-2.12194440e-4f), r);
  auto p = V::Set(1.9875691500e-4f);
  p = V::Fma(p, r, V::Set(1.3981999507e-3f));
  p = V::Fma(p, r, V::Set(8.3334519073e-3f));
  p = V::Fma(p, r, V::Set(4.1665795894e-2f));
  p = V::Fma(p, r, V::Set(1.6666665459e-1f));
  p = V::Fma(p, r, V::Set(5.0000001201e-1f));
  p = V::Fma(V::Mul(p, r), r, V::Add(r, V::Set(1.0f)));
  return V::Mul(p, V::Pow2(n));
}

template <typename V>
inline typename V::T GeluV(typename V::T x) {
  const auto erf = ErfV<V>(V::Mul(x, V::Set(0.70710678118654752f)));
  const auto hx = V::Mul(x, V::Set(0.5f));
  return V::Fma(hx, erf, hx);
}

template <typename V>
inline typename V::T GeluGradV(typename V::T x) {
  const auto erf = ErfV<V>(V::Mul(x, V::Set(0.70710678118654752f)));
  const auto cdf = V::Fma(V::Set(0.5f), erf, V::Set(0.5f));
  const auto e = ExpNegV<V>(V::Mul(V::Mul(x, x), V::Set(-0.5f)));
  const auto xpdf = V::Mul(V::Mul(x, V::Set(0.39894228040143267794f)), e);
  return V::Add(cdf, xpdf);
}

#endif

// out[i] = GELU(x[i]) and dx[i] = dout[i] * GELU'(x[i]) for i < n on the
// calling thread: whole vectors, then the tail through a padded one (the
// same per-element arithmetic). out may alias x, dx may alias dout.
void GeluForwardRow(float* out, const float* x, int64_t n) {
#if defined(__AVX2__) && defined(__FMA__)
  constexpr int W = Vec::kWidth;
  int64_t i = 0;
  for (; i + W <= n; i += W) Vec::Store(out + i, GeluV<Vec>(Vec::Load(x + i)));
  if (i < n) {
    float t[W] = {};
    for (int64_t j = i; j < n; ++j) t[j - i] = x[j];
    Vec::Store(t, GeluV<Vec>(Vec::Load(t)));
    for (int64_t j = i; j < n; ++j) out[j] = t[j - i];
  }
#else
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) out[i] = GeluScalar(x[i]);
#endif
}

void GeluBackwardRow(float* dx, const float* x, const float* dout, int64_t n) {
#if defined(__AVX2__) && defined(__FMA__)
  constexpr int W = Vec::kWidth;
  int64_t i = 0;
  for (; i + W <= n; i += W) {
    Vec::Store(dx + i, Vec::Mul(GeluGradV<Vec>(Vec::Load(x + i)), Vec::Load(dout + i)));
  }
  if (i < n) {
    float t[W] = {};
    for (int64_t j = i; j < n; ++j) t[j - i] = x[j];
    Vec::Store(t, GeluGradV<Vec>(Vec::Load(t)));
    for (int64_t j = i; j < n; ++j) dx[j] = t[j - i] * dout[j];
  }
#else
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) dx[i] = dout[i] * GeluGradScalar(x[i]);
#endif
}

// fn(begin, count) over [0, n) in spans of kSpan, in parallel (static split).
constexpr int64_t kSpan = 1024;
template <typename Fn>
inline void ForEachSpan(int64_t n, Fn fn) {
  const int64_t spans = (n + kSpan - 1) / kSpan;
#pragma omp parallel for schedule(static) if (Parallel(8 * n))
  for (int64_t k = 0; k < spans; ++k) fn(k * kSpan, std::min(kSpan, n - k * kSpan));
}

}  // namespace

template <typename Real>
void GeluForward(Real* out, const Real* x, int64_t n) {
#pragma omp parallel for simd schedule(static) if (Parallel(8 * n))
  for (int64_t i = 0; i < n; ++i) out[i] = GeluScalar(x[i]);
}

template <typename Real>
void GeluBackward(Real* dx, const Real* x, const Real* dout, int64_t n) {
#pragma omp parallel for simd schedule(static) if (Parallel(8 * n))
  for (int64_t i = 0; i < n; ++i) dx[i] = dout[i] * GeluGradScalar(x[i]);
}

template <>
void GeluForward<float>(float* out, const float* x, int64_t n) {
  ForEachSpan(n, [&](int64_t b, int64_t count) { GeluForwardRow(out + b, x + b, count); });
}

template <>
void GeluBackward<float>(float* dx, const float* x, const float* dout, int64_t n) {
  ForEachSpan(n, [&](int64_t b, int64_t count) {
    GeluBackwardRow(dx + b, x + b, dout + b, count);
  });
}

void GeluForwardSpans(const float* x, int64_t n, SpanSink sink, void* ctx) {
  ForEachSpan(n, [&](int64_t b, int64_t count) {
    alignas(64) float values[kSpan];
    GeluForwardRow(values, x + b, count);
    sink(ctx, b, values, count);
  });
}

void GeluBackwardColumns(const float* x, const float* dout, int64_t N, int64_t C, float* dbias,
                         SpanSink sink, void* ctx) {
  constexpr int64_t kChunk = 512;
#pragma omp parallel if (Parallel(8 * N * C))
  {
    int64_t c0, c1;
    ThreadSlice(C, &c0, &c1);
    alignas(64) float values[kChunk];
    for (int64_t n = 0; n < N && c0 < c1; ++n) {
      for (int64_t c = c0; c < c1; c += kChunk) {
        const int64_t offset = n * C + c, width = std::min(kChunk, c1 - c);
        GeluBackwardRow(values, x + offset, dout + offset, width);
        if (dbias) {
          float* db = dbias + c;
#pragma omp simd
          for (int64_t i = 0; i < width; ++i) db[i] += values[i];
        }
        sink(ctx, offset, values, width);
      }
    }
  }
}

template void GeluForward<float>(float*, const float*, int64_t);
template void GeluForward<double>(double*, const double*, int64_t);
template void GeluBackward<float>(float*, const float*, const float*, int64_t);
template void GeluBackward<double>(double*, const double*, const double*,
                                   int64_t);

}  // namespace mingpt::cpu
