// LayerNorm over the last dimension, as torch.nn.LayerNorm (eps 1e-5, biased
// variance).
//
// forward, per row n of x[N,C]:
//   mean = sum_c x / C;  var = sum_c (x - mean)^2 / C;  rstd = 1/sqrt(var+eps)
//   xhat = (x - mean) * rstd;  out = xhat * w + b                          (=)
//   mean[N] and rstd[N] are saved for backward (either may be null).
// backward, with g = dout * w:
//   dx += rstd * (g - mean_c(g) - xhat * mean_c(g * xhat))                 (+=)
//   dw += sum_n dout * xhat;  db += sum_n dout                             (+=)
// dx accumulates because LayerNorm reads the residual stream, whose gradient
// already holds the skip connection's contribution.
// shapes: x, out, dout, dx [N,C]; w, b, dw, db [C]; mean, rstd [N].
#pragma once

#include <cstdint>

#include "backend/cpu/span_sink.h"

namespace mingpt::cpu {

inline constexpr double kLayerNormEps = 1e-5;

template <typename Real>
void LayerNormForward(Real* out, Real* mean, Real* rstd, const Real* x,
                      const Real* w, const Real* b, int N, int C);

// The residual add fused with the layernorm that reads its result, in one
// pass over each row (the row is normalised while it is in cache):
//   sum = x + branch;  out = LayerNorm(sum)  (as LayerNormForward)          (=)
// The same floats as Add followed by LayerNormForward.
template <typename Real>
void ResidualLayerNormForward(Real* sum, Real* out, Real* mean, Real* rstd, const Real* x,
                              const Real* branch, const Real* w, const Real* b, int N, int C);

// The float forms with `out` handed to a SpanSink (span_sink.h) a span of a
// row at a time.
void LayerNormForwardSpans(float* mean, float* rstd, const float* x, const float* w,
                           const float* b, int N, int C, SpanSink sink, void* ctx);
void ResidualLayerNormForwardSpans(float* sum, float* mean, float* rstd, const float* x,
                                   const float* branch, const float* w, const float* b, int N,
                                   int C, SpanSink sink, void* ctx);

template <typename Real>
void LayerNormBackward(Real* dx, Real* dw, Real* db, const Real* dout,
                       const Real* x, const Real* w, const Real* mean,
                       const Real* rstd, int N, int C);

}  // namespace mingpt::cpu
