// GELU, exact erf form, as torch.nn.GELU() (approximate='none').
//
// forward:  out = x * Phi(x) = 0.5 x (1 + erf(x / sqrt(2)))                 (=)
// backward: dx = dout * (Phi(x) + x phi(x)),  phi(x) = exp(-x^2/2)/sqrt(2 pi)
// (=) shapes: n elements, flat. out may alias x; dx may alias dout.
#pragma once

#include <cstdint>

#include "backend/cpu/span_sink.h"

namespace mingpt::cpu {

template <typename Real>
void GeluForward(Real* out, const Real* x, int64_t n);

template <typename Real>
void GeluBackward(Real* dx, const Real* x, const Real* dout, int64_t n);

// Fused forms handing their float results to a SpanSink (span_sink.h).

// GELU(x[0, n)), in parallel spans.
void GeluForwardSpans(const float* x, int64_t n, SpanSink sink, void* ctx);

// dx = dout * GELU'(x) over [N,C], each thread owning a range of columns
// and walking every row in order (ThreadSlice), so that dbias[c] += sum_n
// dx[n,c] (dbias may be null) is summed row after row into dbias, in
// BiasBackward's order. The sink gets row segments (offset n*C + c).
void GeluBackwardColumns(const float* x, const float* dout, int64_t N, int64_t C, float* dbias,
                         SpanSink sink, void* ctx);

}  // namespace mingpt::cpu
