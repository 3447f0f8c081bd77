// Causal multi-head self-attention (the core of minGPT's
// CausalSelfAttention, after the q/k/v projections), with attention dropout.
//
// Per batch b and head h, with hs = C/NH, rows i and columns j of T x T:
//   S[i,j] = q_i . k_j / sqrt(hs)  for j <= i (masked, -inf, for j > i)
//   P = softmax_j(S);  lse_i = log sum_j exp(S[i,j])  saved: lse only     (=)
//   D = P * keep / (1-p)           mask element (h*T + i)*T + j of row b
//   out_i = sum_j D[i,j] v_j                                               (=)
// backward (P recomputed as exp(S - lse), masks recomputed):
//   dD[i,j] = dout_i . v_j;  dv_j = sum_i D[i,j] dout_i                    (=)
//   dP = dD * keep / (1-p);  dS[i,j] = P[i,j] (dP[i,j] - delta_i),
//   delta_i = sum_k P[i,k] dP[i,k] = dout_i . out_i
//   dq_i = sum_j dS[i,j] k_j / sqrt(hs);  dk_j = sum_i dS[i,j] q_i / sqrt(hs)
//   (=)
// shapes: q, k, v, out, dq, dk, dv, dout [B,T,C], head h in channels
// [h*hs, (h+1)*hs); lse [B,NH,T]. No T x T matrix of scores is stored:
// between forward and backward a head keeps T numbers.
//
// Flash-attention style, one (b, h) pair per thread at a time, in tiles of
// 32 queries x 32 keys; tiles above the diagonal are skipped and only the
// diagonal one is masked. Forward: per block of 32 query rows, an online
// softmax over the key tiles (running max and sum per row, the output
// accumulator rescaled when the max grows); lse_i = max_i + log(sum_i).
// Backward: delta_i = sum_j P[i,j] dP[i,j] = dout_i . out_i from the
// forward's output (one dot product per row, where recomputing it would take
// a sweep over every tile), then, key tiles outermost, P recomputed from lse,
// dS per tile, and dq, dk, dv accumulated; each tile's dropout mask is drawn
// once. Tiles are held transposed (queries along vectors), so the
// softmax's row reductions are vector operations. The head's rows are
// staged zero-padded in the thread's part of `scratch`, and the products
// run in register tiles of the build's vector width (8 x 32 floats under
// AVX-512, 4 x 16 under AVX2). Work per element follows the same order for
// every thread count, so results do not depend on it.
#pragma once

#include <cstdint>

#include "backend/dropout.h"

namespace mingpt::cpu {

// One query row against cached keys and values (Backend::AttentionDecode):
// per head, scores over the T cached rows, softmax, weighted sum of values.
// Heads run in parallel; no scratch.
template <typename Real>
void AttentionDecode(Real* out, const Real* q, const Real* k_cache, const Real* v_cache, int T,
                     int C, int NH);

// Elements of scratch either direction needs when run on `threads` threads.
int64_t AttentionScratchSize(int T, int C, int NH, int threads);

// Runs on (at most) `threads` threads; scratch holds
// AttentionScratchSize(T, C, NH, threads) elements.
template <typename Real>
void AttentionForward(Real* out, Real* lse, const Real* q, const Real* k,
                      const Real* v, int B, int T, int C, int NH,
                      const DropoutSpec& dropout, Real* scratch, int threads);

// `out` is the forward's output: delta_i = dout_i . out_i.
template <typename Real>
void AttentionBackward(Real* dq, Real* dk, Real* dv, const Real* dout,
                       const Real* q, const Real* k, const Real* v, const Real* out,
                       const Real* lse, int B, int T, int C, int NH,
                       const DropoutSpec& dropout, Real* scratch, int threads);

}  // namespace mingpt::cpu
