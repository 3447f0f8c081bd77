#include "backend/cpu/layernorm.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>

#include "backend/cpu/omp_util.h"

namespace mingpt::cpu {

namespace {

template <typename Real>
struct RowStats {
  Real mean, rstd;
};

// A row's mean and rstd: a second sweep over the cached row centres exactly.
template <typename Real>
inline RowStats<Real> Statistics(const Real* xr, int C) {
  const Real inv_c = Real(1) / C;
  Real sum = 0;
#pragma omp simd reduction(+ : sum)
  for (int c = 0; c < C; ++c) sum += xr[c];
  const Real m = sum * inv_c;
  Real sq = 0;
#pragma omp simd reduction(+ : sq)
  for (int c = 0; c < C; ++c) {
    const Real d = xr[c] - m;
    sq += d * d;
  }
  return {m, Real(1) / std::sqrt(sq * inv_c + Real(kLayerNormEps))};
}

// o[c] = LayerNorm(x)[c] for c < count, xr, w and b at the same column.
template <typename Real>
inline void NormalizeSpan(Real* o, const Real* xr, const Real* w, const Real* b,
                          RowStats<Real> st, int count) {
#pragma omp simd
  for (int c = 0; c < count; ++c) o[c] = (xr[c] - st.mean) * st.rstd * w[c] + b[c];
}

// Row n of the output written to `out` (a Real*: the whole row at once) or
// handed to a SpanSink (`sink`, `ctx`: a span of 512 at a time), with the
// row's statistics saved where asked.
template <typename Real>
struct RowOutput {
  Real* out = nullptr;
  SpanSink sink = nullptr;
  void* ctx = nullptr;
};

template <typename Real>
inline void NormalizeRow(int64_t n, const RowOutput<Real>& dst, Real* mean, Real* rstd,
                         const Real* xr, const Real* w, const Real* b, int C) {
  const RowStats<Real> st = Statistics(xr, C);
  if (dst.out) {
    NormalizeSpan(dst.out + n * C, xr, w, b, st, C);
  } else if constexpr (std::is_same_v<Real, float>) {
    constexpr int kSpan = 512;
    alignas(64) float o[kSpan];
    for (int c0 = 0; c0 < C; c0 += kSpan) {
      const int width = std::min(kSpan, C - c0);
      NormalizeSpan(o, xr + c0, w + c0, b + c0, st, width);
      dst.sink(dst.ctx, n * C + c0, o, width);
    }
  }
  if (mean) mean[n] = st.mean;
  if (rstd) rstd[n] = st.rstd;
}

// LayerNorm over the rows of x, or of sum = x + branch (written) when branch
// is given, in parallel.
template <typename Real>
void LayerNormRows(const RowOutput<Real>& dst, Real* sum, Real* mean, Real* rstd, const Real* x,
                   const Real* branch, const Real* w, const Real* b, int N, int C) {
#pragma omp parallel for schedule(static) if (Parallel(int64_t{N} * C))
  for (int64_t n = 0; n < N; ++n) {
    const Real* xr = x + n * C;
    if (branch) {
      Real* sr = sum + n * C;
      const Real* br = branch + n * C;
#pragma omp simd
      for (int c = 0; c < C; ++c) sr[c] = xr[c] + br[c];
      xr = sr;
    }
    NormalizeRow(n, dst, mean, rstd, xr, w, b, C);
  }
}

}  // namespace

void LayerNormForwardSpans(float* mean, float* rstd, const float* x, const float* w,
                           const float* b, int N, int C, SpanSink sink, void* ctx) {
  LayerNormRows<float>({nullptr, sink, ctx}, nullptr, mean, rstd, x, nullptr, w, b, N, C);
}

void ResidualLayerNormForwardSpans(float* sum, float* mean, float* rstd, const float* x,
                                   const float* branch, const float* w, const float* b, int N,
                                   int C, SpanSink sink, void* ctx) {
  LayerNormRows<float>({nullptr, sink, ctx}, sum, mean, rstd, x, branch, w, b, N, C);
}

template <typename Real>
void LayerNormForward(Real* out, Real* mean, Real* rstd, const Real* x,
                      const Real* w, const Real* b, int N, int C) {
  LayerNormRows<Real>({out}, nullptr, mean, rstd, x, nullptr, w, b, N, C);
}

template <typename Real>
void ResidualLayerNormForward(Real* sum, Real* out, Real* mean, Real* rstd, const Real* x,
                              const Real* branch, const Real* w, const Real* b, int N, int C) {
  LayerNormRows<Real>({out}, sum, mean, rstd, x, branch, w, b, N, C);
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
