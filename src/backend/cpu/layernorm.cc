#include "backend/cpu/layernorm.h"

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "backend/cpu/omp_util.h"

namespace mingpt::cpu {

namespace {

// One row: out = LayerNorm(x) with the row's mean and rstd.
template <typename Real>
inline void NormalizeRow(Real* o, Real* mean, Real* rstd, const Real* xr, const Real* w,
                         const Real* b, int C) {
  const Real inv_c = Real(1) / C;
  Real sum = 0;
#pragma omp simd reduction(+ : sum)
  for (int c = 0; c < C; ++c) sum += xr[c];
  const Real m = sum * inv_c;
  Real sq = 0;  // second sweep over the cached row: exact centring
#pragma omp simd reduction(+ : sq)
  for (int c = 0; c < C; ++c) {
    const Real d = xr[c] - m;
    sq += d * d;
  }
  const Real s = Real(1) / std::sqrt(sq * inv_c + Real(kLayerNormEps));
#pragma omp simd
  for (int c = 0; c < C; ++c) o[c] = (xr[c] - m) * s * w[c] + b[c];
  if (mean) *mean = m;
  if (rstd) *rstd = s;
}

// The fp32 rows of LayerNormForward handed to a sink a span at a time
// (NormalizeRow's arithmetic, split into the statistics and the output).
inline void NormalizeRowToSink(int64_t row, float* mean, float* rstd, const float* xr,
                               const float* w, const float* b, int C, SpanSink sink, void* ctx) {
  constexpr int kSpan = 512;
  const float inv_c = 1.0f / C;
  float sum = 0;
#pragma omp simd reduction(+ : sum)
  for (int c = 0; c < C; ++c) sum += xr[c];
  const float m = sum * inv_c;
  float sq = 0;
#pragma omp simd reduction(+ : sq)
  for (int c = 0; c < C; ++c) {
    const float d = xr[c] - m;
    sq += d * d;
  }
  const float s = 1.0f / std::sqrt(sq * inv_c + static_cast<float>(kLayerNormEps));
  alignas(64) float o[kSpan];
  for (int c0 = 0; c0 < C; c0 += kSpan) {
    const int width = std::min(kSpan, C - c0);
#pragma omp simd
    for (int c = 0; c < width; ++c) o[c] = (xr[c0 + c] - m) * s * w[c0 + c] + b[c0 + c];
    sink(ctx, row * C + c0, o, width);
  }
  if (mean) *mean = m;
  if (rstd) *rstd = s;
}

}  // namespace

void LayerNormForwardSpans(float* mean, float* rstd, const float* x, const float* w,
                           const float* b, int N, int C, SpanSink sink, void* ctx) {
#pragma omp parallel for schedule(static) if (Parallel(int64_t{N} * C))
  for (int64_t n = 0; n < N; ++n) {
    NormalizeRowToSink(n, mean ? mean + n : nullptr, rstd ? rstd + n : nullptr, x + n * C, w, b,
                       C, sink, ctx);
  }
}

void ResidualLayerNormForwardSpans(float* sum, float* mean, float* rstd, const float* x,
                                   const float* branch, const float* w, const float* b, int N,
                                   int C, SpanSink sink, void* ctx) {
#pragma omp parallel for schedule(static) if (Parallel(int64_t{N} * C))
  for (int64_t n = 0; n < N; ++n) {
    float* sr = sum + n * C;
    const float* xr = x + n * C;
    const float* br = branch + n * C;
#pragma omp simd
    for (int c = 0; c < C; ++c) sr[c] = xr[c] + br[c];
    NormalizeRowToSink(n, mean ? mean + n : nullptr, rstd ? rstd + n : nullptr, sr, w, b, C,
                       sink, ctx);
  }
}

template <typename Real>
void LayerNormForward(Real* out, Real* mean, Real* rstd, const Real* x,
                      const Real* w, const Real* b, int N, int C) {
#pragma omp parallel for schedule(static) if (Parallel(int64_t{N} * C))
  for (int64_t n = 0; n < N; ++n) {
    NormalizeRow(out + n * C, mean ? mean + n : nullptr, rstd ? rstd + n : nullptr, x + n * C, w,
                 b, C);
  }
}

template <typename Real>
void ResidualLayerNormForward(Real* sum, Real* out, Real* mean, Real* rstd, const Real* x,
                              const Real* branch, const Real* w, const Real* b, int N, int C) {
#pragma omp parallel for schedule(static) if (Parallel(int64_t{N} * C))
  for (int64_t n = 0; n < N; ++n) {
    Real* sr = sum + n * C;
    const Real* xr = x + n * C;
    const Real* br = branch + n * C;
#pragma omp simd
    for (int c = 0; c < C; ++c) sr[c] = xr[c] + br[c];
    NormalizeRow(out + n * C, mean ? mean + n : nullptr, rstd ? rstd + n : nullptr, sr, w, b, C);
  }
}

template <typename Real>
void LayerNormBackward(Real* dx, Real* dw, Real* db, const Real* dout,
                       const Real* x, const Real* w, const Real* mean,
                       const Real* rstd, int N, int C) {
  const Real inv_c = Real(1) / C;
  // dx: rows in parallel.
#pragma omp parallel for schedule(static) if (Parallel(int64_t{N} * C))
  for (int64_t n = 0; n < N; ++n) {
    const Real* xr = x + n * C;
    const Real* d = dout + n * C;
    Real* g = dx + n * C;
    const Real m = mean[n], s = rstd[n];
    Real g_mean = 0, gx_mean = 0;
#pragma omp simd reduction(+ : g_mean, gx_mean)
    for (int c = 0; c < C; ++c) {
      const Real gc = d[c] * w[c];
      g_mean += gc;
      gx_mean += gc * (xr[c] - m) * s;
    }
    g_mean *= inv_c;
    gx_mean *= inv_c;
#pragma omp simd
    for (int c = 0; c < C; ++c) {
      const Real xhat = (xr[c] - m) * s;
      g[c] += s * (d[c] * w[c] - g_mean - xhat * gx_mean);
    }
  }
  // dw, db: each thread owns a column slice and walks the rows in order.
#pragma omp parallel if (Parallel(int64_t{N} * C))
  {
    int64_t c0, c1;
    ThreadSlice(C, &c0, &c1);
    for (int64_t n = 0; n < N && c0 < c1; ++n) {
      const Real* xr = x + n * C;
      const Real* d = dout + n * C;
      const Real m = mean[n], s = rstd[n];
#pragma omp simd
      for (int64_t c = c0; c < c1; ++c) {
        dw[c] += d[c] * (xr[c] - m) * s;
        db[c] += d[c];
      }
    }
  }
}

template void LayerNormForward<float>(float*, float*, float*, const float*,
                                      const float*, const float*, int, int);
template void LayerNormForward<double>(double*, double*, double*, const double*,
                                       const double*, const double*, int, int);
template void ResidualLayerNormForward<float>(float*, float*, float*, float*, const float*,
                                              const float*, const float*, const float*, int,
                                              int);
template void ResidualLayerNormForward<double>(double*, double*, double*, double*,
                                               const double*, const double*, const double*,
                                               const double*, int, int);
template void LayerNormBackward<float>(float*, float*, float*, const float*,
                                       const float*, const float*, const float*,
                                       const float*, int, int);
template void LayerNormBackward<double>(double*, double*, double*,
                                        const double*, const double*,
                                        const double*, const double*,
                                        const double*, int, int);

}  // namespace mingpt::cpu
