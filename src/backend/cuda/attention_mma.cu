// Causal attention in the structure of FlashAttention-2 on mma.sync
// (m16n8k16, bf16 / fp16 operands, fp32 accumulation; mma.cuh), the path
// MINGPT_CUDA_ATTENTION=mma selects (attention.cu). The math is attention.cu's
// (and cpu/attention.h's): per batch b, head h, hs = C/NH, rows i (queries)
// and j (keys), j <= i:
//   S_ij = q_i . k_j / sqrt(hs);  lse_i = log sum_j exp(S_ij);
//   out_i = sum_j exp(S_ij - lse_i) mult_ij v_j;
//   dS_ij = P_ij (dP_ij - D_i), dP_ij = (dout_i . v_j) mult_ij, D_i = dout_i . out_i;
//   dq_i = sum_j dS_ij k_j / sqrt(hs);  dk_j = sum_i dS_ij q_i / sqrt(hs);
//   dv_j = sum_i P_ij mult_ij dout_i,
// mult_ij = keep/(1-p) of dropout mask element (h*T + i)*T + j of batch row b
// (backend/dropout.h, the CPU's Philox), or 1.
//
// Work split: a block of 4 warps owns 64 rows of one (b, h), a warp 16 of
// them. Unlike the WMMA kernels (attention.cu's namespace tc), whose
// fragments' layout is unspecified and which therefore go through shared
// memory in fp32 for everything but the products, here the layouts are the
// PTX ISA's (mma.cuh), and everything per element happens in registers:
//   forward: the warp's q as A fragments (registers, for the whole kernel);
//     per key tile (staged by the block in shared memory as operands: k
//     row-major, v transposed, so that each B fragment is two 32-bit loads),
//     S = q k^T into accumulators, the causal mask, the online softmax (each
//     lane holds 2 rows' elements, 2 adjacent columns of every 8; a row's
//     max and sum across its quad of lanes with __shfl_xor_sync 1 and 2),
//     P mult rounded to the operand type and packed straight into the A
//     fragments of P v (a C fragment pair is an A fragment: mma.cuh), and
//     out accumulated in registers, rescaled by exp(m_old - m_new) per tile.
//   backward, query-major (dq): q and dout as A fragments (registers); per
//     key tile (k row-major and transposed, v row-major) S and dP by mma,
//     dS = P (dP mult - D) in registers, dS as the A fragments of dS k.
//   backward, key-major (dk, dv): the block's keys and values stay in shared
//     memory (A fragments loaded per use: registers at head size 128 would
//     not fit beside the two accumulators); per query tile (q and dout
//     row-major and transposed, lse and D) S^T = k q^T and dP^T = v dout^T
//     by mma, P^T mult and dS^T in registers as A fragments of
//     dv += P^T dout and dk += dS^T q.
// Roundings to the operand type: the inputs (once, when staged or loaded),
// P mult and dS (once each), as the WMMA kernels round them. Head sizes 32,
// 64, 128 (a template parameter: fragment arrays are registers only when
// their indices are constants); key (query) tiles of 64 rows, 32 at head
// size 128. Ragged T: rows past T are staged as zeros and never written.
// Tiles are staged four floats at a time from 16-byte aligned rows, one at
// a time otherwise; the fragments of q and dout are read one float at a
// time: any alignment gives the same bits.
// Each gradient row is written by the one block that owns it: no atomics.
#include <cmath>
#include <cstdint>

#include "backend/cuda/attention_mma.h"
#include "backend/cuda/cuda_check.h"
#include "backend/cuda/device.cuh"
#include "backend/cuda/mma.cuh"
#include "backend/cuda/reduce.cuh"
#include "core/check.h"

namespace mingpt::cuda {
namespace {

using mma::FragA;
using mma::FragB;
using mma::FragC;

constexpr int kWarps = 4;
constexpr int kRows = 64;  // rows a block owns, 16 per warp

template <int HS>
constexpr int PartnerTile() {  // keys (forward, dq) or queries (dk, dv) per tile
  return HS <= 64 ? 64 : 32;
}
// Leading dimensions (elements) of operand tiles: row-major [rows][HS + 8]
// and transposed [HS][tile + 8]. Both are 4 words modulo 32 (or, at 20
// words, a permutation of the banks over a fragment's 8 rows x 4 lanes), so
// the 32 lanes' 32-bit fragment loads hit 32 banks.
template <int HS>
constexpr int LdRow() {
  return HS + 8;
}
template <int HS>
constexpr int LdCol() {
  return PartnerTile<HS>() + 8;
}

// A kernel's operand type and head size, one template argument (so that
// MINGPT_LAUNCH, a macro, sees no comma in the kernel's name).
template <typename OpType, int kHeadSize>
struct Shape {
  using Op = OpType;
  static constexpr int HS = kHeadSize;
};

struct Rows {
  int64_t batch_stride;  // T * C
  int C, T, NH;
  __device__ int64_t At(int b, int h, int hs, int64_t i) const {
    return b * batch_stride + i * C + int64_t{h} * hs;
  }
};

template <typename Op>
__device__ inline Op ToOperand(float x);
template <>
__device__ inline __nv_bfloat16 ToOperand<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}
template <>
__device__ inline __half ToOperand<__half>(float x) {
  return __float2half_rn(x);
}

// Four consecutive channels d .. d + 3 of tile row r, rounded once each to
// the operand type, into the row-major and/or transposed tiles.
template <typename Op, int HS>
__device__ inline void Put(Op* row_major, Op* transposed, int r, int d, const float4& x) {
  const Op o[4] = {ToOperand<Op>(x.x), ToOperand<Op>(x.y), ToOperand<Op>(x.z),
                   ToOperand<Op>(x.w)};
#pragma unroll
  for (int c = 0; c < 4; ++c) {
    if (row_major) row_major[r * LdRow<HS>() + d + c] = o[c];
    if (transposed) transposed[(d + c) * LdCol<HS>() + r] = o[c];
  }
}

// Rows [row0, row0 + rows) of one head of src into shared memory as
// operands: row-major at `row_major` (ld LdRow) and/or transposed at
// `transposed` (ld LdCol); zeros past T. Staging is bound by the latency of
// its loads, so where the rows are 16-byte aligned (src, C and T C multiples
// of 4; HS is) a thread issues four float4 loads before it converts and
// stores any; otherwise one float at a time, to the same bits.
template <typename Op, int HS>
__device__ inline void Stage(Op* row_major, Op* transposed, const float* __restrict__ src,
                             const Rows& at, int b, int h, int64_t row0, int rows) {
  const bool vector = reinterpret_cast<uintptr_t>(src) % 16 == 0 && at.C % 4 == 0 &&
                      at.batch_stride % 4 == 0;
  if (!vector) {
    for (int e = threadIdx.x; e < rows * HS; e += blockDim.x) {
      const int r = e / HS, d = e % HS;
      const int64_t i = row0 + r;
      const Op x = ToOperand<Op>(i < at.T ? src[at.At(b, h, HS, i) + d] : 0.0f);
      if (row_major) row_major[r * LdRow<HS>() + d] = x;
      if (transposed) transposed[d * LdCol<HS>() + r] = x;
    }
    return;
  }
  constexpr int kQuads = HS / 4, kInFlight = 4;
  const int n = rows * kQuads;
  for (int e0 = threadIdx.x; e0 < n; e0 += kInFlight * blockDim.x) {
    float4 x[kInFlight];
#pragma unroll
    for (int k = 0; k < kInFlight; ++k) {
      const int e = e0 + k * blockDim.x, r = e / kQuads, c = e % kQuads;
      x[k] = e < n && row0 + r < at.T
                 ? LoadVector<float4>(src + at.At(b, h, HS, row0 + r) + 4 * c)
                 : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    }
#pragma unroll
    for (int k = 0; k < kInFlight; ++k) {
      const int e = e0 + k * blockDim.x;
      if (e < n) Put<Op, HS>(row_major, transposed, e / kQuads, 4 * (e % kQuads), x[k]);
    }
  }
}

// The lane's A fragments of rows r0 .. r0 + 15 of one head, straight from
// the fp32 tensor (zeros past T): chunk c holds channels 16c .. 16c + 15.
template <typename Op, int HS>
__device__ inline void LoadRowsA(FragA (&f)[HS / 16], const float* src, const Rows& at, int b,
                                 int h, int64_t r0, int lane) {
  const int g = lane >> 2, t = lane & 3;
  const int64_t i0 = r0 + g, i1 = i0 + 8;
  const float* row0 = src + at.At(b, h, HS, i0);
  const float* row1 = src + at.At(b, h, HS, i1);
  const bool ok0 = i0 < at.T, ok1 = i1 < at.T;
#pragma unroll
  for (int c = 0; c < HS / 16; ++c) {
    const int d = 16 * c + 2 * t;
    f[c].x[0] = ok0 ? mma::Pack<Op>(row0[d], row0[d + 1]) : 0u;
    f[c].x[1] = ok1 ? mma::Pack<Op>(row1[d], row1[d + 1]) : 0u;
    f[c].x[2] = ok0 ? mma::Pack<Op>(row0[d + 8], row0[d + 9]) : 0u;
    f[c].x[3] = ok1 ? mma::Pack<Op>(row1[d + 8], row1[d + 9]) : 0u;
  }
}

// Bit k of the result: DropoutKeep4's decision for element 4 group + k
// (a mask of bits rather than the bool array, which indexed by a variable
// would live in local memory).
__device__ inline unsigned KeepBits(const DropoutSpec& dropout, int b, int64_t group) {
  bool keep[4];
  DropoutKeep4(dropout, b, group, keep);
  return unsigned{keep[0]} | unsigned{keep[1]} << 1 | unsigned{keep[2]} << 2 |
         unsigned{keep[3]} << 3;
}

// The dropout multipliers of mask elements e and e + 1 of batch row b (one
// Philox call for both unless they straddle a group of four).
__device__ inline void PairMultipliers(const DropoutSpec& dropout, int b, int64_t e, float* m0,
                                       float* m1) {
  const unsigned bits = KeepBits(dropout, b, e >> 2), k = static_cast<unsigned>(e & 3);
  *m0 = (bits >> k) & 1u ? dropout.scale() : 0.0f;
  const unsigned next = k != 3 ? bits >> (k + 1) : KeepBits(dropout, b, (e >> 2) + 1);
  *m1 = next & 1u ? dropout.scale() : 0.0f;
}

__device__ inline float Multiplier(const DropoutSpec& dropout, int b, int64_t e) {
  if (!dropout.enabled()) return 1.0f;
  return (KeepBits(dropout, b, e >> 2) >> (e & 3)) & 1u ? dropout.scale() : 0.0f;
}

// The maximum / sum of a row's values over the lane's quad (the 4 lanes
// that hold one row of an accumulator tile).
__device__ inline float QuadMax(float x) {
  x = fmaxf(x, __shfl_xor_sync(kFullMask, x, 1));
  return fmaxf(x, __shfl_xor_sync(kFullMask, x, 2));
}
__device__ inline float QuadSum(float x) {
  x += __shfl_xor_sync(kFullMask, x, 1);
  return x + __shfl_xor_sync(kFullMask, x, 2);
}

// acc[n] += A(c) B(c, n) over the 16-column chunks c of a tile that seen(c)
// (warp-uniform) admits: A(c) the accumulator pair s[2c], s[2c + 1] rounded
// into an A fragment (P mult or dS, the register reuse), B(c, n) columns
// 8n .. 8n + 7 of the transposed tile `bt` (ld LdCol), rows 16c .. 16c + 15.
template <typename Op, int HS, int NT, typename Seen>
__device__ inline void AccumulateFromPairs(FragC (&acc)[HS / 8], const FragC (&s)[NT],
                                           const Op* bt, int lane, Seen seen) {
#pragma unroll
  for (int c = 0; c < NT / 2; ++c) {
    if (!seen(c)) continue;
    const FragA a = mma::FromAccumulators<Op>(s[2 * c], s[2 * c + 1]);
#pragma unroll
    for (int n = 0; n < HS / 8; ++n) {
      mma::MmaAccumulate<Op>(acc[n], a, mma::LoadB(bt + 8 * n * LdCol<HS>() + 16 * c,
                                                   LdCol<HS>(), lane));
    }
  }
}

// The lane's two rows (rows[r]: accumulator elements 2r, 2r + 1 of every
// n-tile) of one head of `dst`, times factor[r]; rows past T not written.
template <int HS>
__device__ inline void StoreRows(float* dst, const FragC (&acc)[HS / 8], const int64_t (&rows)[2],
                                 const float (&factor)[2], const Rows& at, int b, int h, int t) {
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    if (rows[r] >= at.T) continue;
    float* row = dst + at.At(b, h, HS, rows[r]);
#pragma unroll
    for (int n = 0; n < HS / 8; ++n) {
      row[8 * n + 2 * t] = acc[n].x[2 * r] * factor[r];
      row[8 * n + 2 * t + 1] = acc[n].x[2 * r + 1] * factor[r];
    }
  }
}

// ---- forward ---------------------------------------------------------------------------

template <int HS>
constexpr size_t ForwardSmemBytes() {  // k [tile][LdRow], v^T [HS][LdCol]
  return 2 * (size_t{PartnerTile<HS>()} * LdRow<HS>() + size_t{HS} * LdCol<HS>());
}

template <typename S>
__global__ void __launch_bounds__(kWarps * 32)
    MmaForwardKernel(float* out, float* lse, const float* q, const float* k, const float* v,
                     Rows at, DropoutSpec dropout) {
  using Op = typename S::Op;
  constexpr int HS = S::HS, KT = PartnerTile<HS>(), NT = KT / 8, NO = HS / 8;
  MINGPT_DYNAMIC_SHARED(float, smem);
  Op* ks = reinterpret_cast<Op*>(smem);  // [KT][LdRow] keys of the tile
  Op* vt = ks + KT * LdRow<HS>();        // [HS][LdCol] values of the tile, transposed
  const int b = blockIdx.z, h = blockIdx.y, T = at.T;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane >> 2, t = lane & 3;
  const int64_t i_block = int64_t{blockIdx.x} * kRows, i_w = i_block + warp * 16;
  const int64_t rows[2] = {i_w + g, i_w + g + 8};  // the lane's rows: C elements 0-1, 2-3
  const float scale = 1.0f / sqrtf(static_cast<float>(HS));

  FragA qf[HS / 16];
  LoadRowsA<Op, HS>(qf, q, at, b, h, i_w, lane);
  FragC o[NO];
#pragma unroll
  for (int n = 0; n < NO; ++n) o[n] = mma::Zero();
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};

  const int64_t i_last = (i_block + kRows - 1 < T - 1) ? i_block + kRows - 1 : T - 1;
  for (int64_t j0 = 0; j0 <= i_last; j0 += KT) {
    __syncthreads();  // the previous tile is consumed
    Stage<Op, HS>(ks, nullptr, k, at, b, h, j0, KT);
    Stage<Op, HS>(nullptr, vt, v, at, b, h, j0, KT);
    __syncthreads();
    if (i_w >= T || j0 > i_w + 15) continue;  // warp-uniform: no key of the tile is seen
    // S = q k^T; n-tiles of 8 keys wholly above the warp's diagonal skipped
    // (warp-uniform), their scores masked below like any j > i.
    FragC s[NT];
#pragma unroll
    for (int n = 0; n < NT; ++n) {
      s[n] = mma::Zero();
      if (j0 + 8 * n <= i_w + 15) {
#pragma unroll
        for (int c = 0; c < HS / 16; ++c) {
          mma::MmaAccumulate<Op>(s[n], qf[c], mma::LoadB(ks + 8 * n * LdRow<HS>() + 16 * c,
                                                         LdRow<HS>(), lane));
        }
      }
    }
    // Scale, mask, the rows' maxima over the tile. Rows past T (padding in
    // the warp's last strip) see the zero keys past T: finite, never written.
    float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
    for (int n = 0; n < NT; ++n) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int64_t j = j0 + 8 * n + 2 * t + (e & 1);
        s[n].x[e] = j <= rows[e / 2] ? s[n].x[e] * scale : -INFINITY;
        mx[e / 2] = fmaxf(mx[e / 2], s[n].x[e]);
      }
    }
    float corr[2], sum[2] = {0.0f, 0.0f};
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      // Tile 0 holds key 0 of every row, so the maximum is finite from the
      // first tile on, and the first correction is exp(-inf) = 0.
      const float m_new = fmaxf(m[r], QuadMax(mx[r]));
      corr[r] = expf(m[r] - m_new);
      m[r] = m_new;
    }
    // P = exp(S - m) (0 where masked); the sum is of P, the output of P mult.
#pragma unroll
    for (int n = 0; n < NT; ++n) {
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        const int64_t i = rows[r], j = j0 + 8 * n + 2 * t;
        const float p0 = expf(s[n].x[2 * r] - m[r]), p1 = expf(s[n].x[2 * r + 1] - m[r]);
        sum[r] += p0 + p1;
        float m0 = 1.0f, m1 = 1.0f;
        if (dropout.enabled() && i < T && j <= i) {
          PairMultipliers(dropout, b, (int64_t{h} * T + i) * T + j, &m0, &m1);
        }
        s[n].x[2 * r] = p0 * m0;
        s[n].x[2 * r + 1] = p1 * m1;
      }
    }
#pragma unroll
    for (int r = 0; r < 2; ++r) l[r] = l[r] * corr[r] + QuadSum(sum[r]);
#pragma unroll
    for (int n = 0; n < NO; ++n) {
      o[n].x[0] *= corr[0];
      o[n].x[1] *= corr[0];
      o[n].x[2] *= corr[1];
      o[n].x[3] *= corr[1];
    }
    // out += (P mult) v, for the chunks of keys the warp's rows reach.
    AccumulateFromPairs<Op, HS>(o, s, vt, lane, [=](int c) { return j0 + 16 * c <= i_w + 15; });
  }
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    if (lse && t == 0 && rows[r] < T) {
      lse[(int64_t{b} * at.NH + h) * T + rows[r]] = m[r] + logf(l[r]);
    }
  }
  const float inv[2] = {1.0f / l[0], 1.0f / l[1]};
  StoreRows<HS>(out, o, rows, inv, at, b, h, t);
}

// ---- backward, query-major: dq -------------------------------------------------------

template <int HS>
constexpr size_t QuerySmemBytes() {  // k [tile][LdRow], v [tile][LdRow], k^T [HS][LdCol]
  return 2 * (2 * size_t{PartnerTile<HS>()} * LdRow<HS>() + size_t{HS} * LdCol<HS>());
}

template <typename S>
__global__ void __launch_bounds__(kWarps * 32)
    MmaBackwardQueryKernel(float* dq, const float* delta, const float* dout, const float* q,
                           const float* k, const float* v, const float* lse, Rows at,
                           DropoutSpec dropout) {
  using Op = typename S::Op;
  constexpr int HS = S::HS, KT = PartnerTile<HS>(), NT = KT / 8, NO = HS / 8;
  MINGPT_DYNAMIC_SHARED(float, smem);
  Op* ks = reinterpret_cast<Op*>(smem);  // [KT][LdRow] keys
  Op* vs = ks + KT * LdRow<HS>();        // [KT][LdRow] values
  Op* kt = vs + KT * LdRow<HS>();        // [HS][LdCol] keys, transposed
  const int b = blockIdx.z, h = blockIdx.y, T = at.T;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane >> 2, t = lane & 3;
  const int64_t i_block = int64_t{blockIdx.x} * kRows, i_w = i_block + warp * 16;
  const int64_t rows[2] = {i_w + g, i_w + g + 8};
  const int64_t bh = int64_t{b} * at.NH + h;
  const float scale = 1.0f / sqrtf(static_cast<float>(HS));

  FragA qf[HS / 16], df[HS / 16];
  LoadRowsA<Op, HS>(qf, q, at, b, h, i_w, lane);
  LoadRowsA<Op, HS>(df, dout, at, b, h, i_w, lane);
  float lse_r[2], D[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    lse_r[r] = rows[r] < T ? lse[bh * T + rows[r]] : 0.0f;
    D[r] = rows[r] < T ? delta[bh * T + rows[r]] : 0.0f;
  }
  FragC acc[NO];
#pragma unroll
  for (int n = 0; n < NO; ++n) acc[n] = mma::Zero();

  const int64_t i_last = (i_block + kRows - 1 < T - 1) ? i_block + kRows - 1 : T - 1;
  for (int64_t j0 = 0; j0 <= i_last; j0 += KT) {
    __syncthreads();
    Stage<Op, HS>(ks, kt, k, at, b, h, j0, KT);
    Stage<Op, HS>(vs, nullptr, v, at, b, h, j0, KT);
    __syncthreads();
    if (i_w >= T || j0 > i_w + 15) continue;  // warp-uniform
    FragC s[NT], dp[NT];
#pragma unroll
    for (int n = 0; n < NT; ++n) {
      s[n] = mma::Zero();
      dp[n] = mma::Zero();
      if (j0 + 8 * n <= i_w + 15) {
#pragma unroll
        for (int c = 0; c < HS / 16; ++c) {
          mma::MmaAccumulate<Op>(s[n], qf[c], mma::LoadB(ks + 8 * n * LdRow<HS>() + 16 * c,
                                                         LdRow<HS>(), lane));
          mma::MmaAccumulate<Op>(dp[n], df[c], mma::LoadB(vs + 8 * n * LdRow<HS>() + 16 * c,
                                                          LdRow<HS>(), lane));
        }
      }
    }
    // dS = P (dP mult - D), 0 where masked or past T; into s.
#pragma unroll
    for (int n = 0; n < NT; ++n) {
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        const int64_t i = rows[r], j = j0 + 8 * n + 2 * t;
        float m0 = 1.0f, m1 = 1.0f;
        if (dropout.enabled() && i < T && j <= i) {
          PairMultipliers(dropout, b, (int64_t{h} * T + i) * T + j, &m0, &m1);
        }
        const float p0 = expf(s[n].x[2 * r] * scale - lse_r[r]);
        const float p1 = expf(s[n].x[2 * r + 1] * scale - lse_r[r]);
        s[n].x[2 * r] = i < T && j <= i ? p0 * (dp[n].x[2 * r] * m0 - D[r]) : 0.0f;
        s[n].x[2 * r + 1] = i < T && j + 1 <= i ? p1 * (dp[n].x[2 * r + 1] * m1 - D[r]) : 0.0f;
      }
    }
    // dq sqrt(hs) += dS k.
    AccumulateFromPairs<Op, HS>(acc, s, kt, lane, [=](int c) { return j0 + 16 * c <= i_w + 15; });
  }
  const float scales[2] = {scale, scale};
  StoreRows<HS>(dq, acc, rows, scales, at, b, h, t);
}

// ---- backward, key-major: dk, dv ------------------------------------------------------

template <int HS>
constexpr size_t KeySmemBytes() {
  // k, v [kRows][LdRow]; q, dout [tile][LdRow]; q^T, dout^T [HS][LdCol];
  // lse, D [tile] (floats, after the operands: an even count of them).
  return 2 * (2 * size_t{kRows} * LdRow<HS>() + 2 * size_t{PartnerTile<HS>()} * LdRow<HS>() +
              2 * size_t{HS} * LdCol<HS>()) +
         4 * 2 * size_t{PartnerTile<HS>()};
}

template <typename S>
__global__ void __launch_bounds__(kWarps * 32)
    MmaBackwardKeyKernel(float* dk, float* dv, const float* dout, const float* q, const float* k,
                         const float* v, const float* lse, const float* delta, Rows at,
                         DropoutSpec dropout) {
  using Op = typename S::Op;
  constexpr int HS = S::HS, QT = PartnerTile<HS>(), NT = QT / 8, NO = HS / 8;
  MINGPT_DYNAMIC_SHARED(float, smem);
  float* lse_t = smem;                        // [QT]
  float* delta_t = lse_t + QT;                // [QT]
  Op* ks = reinterpret_cast<Op*>(delta_t + QT);  // [kRows][LdRow] the block's keys
  Op* vs = ks + kRows * LdRow<HS>();          // [kRows][LdRow] its values
  Op* qs = vs + kRows * LdRow<HS>();          // [QT][LdRow] q of the tile
  Op* ds = qs + QT * LdRow<HS>();             // [QT][LdRow] dout of the tile
  Op* qt = ds + QT * LdRow<HS>();             // [HS][LdCol] q, transposed
  Op* dt = qt + HS * LdCol<HS>();             // [HS][LdCol] dout, transposed
  const int b = blockIdx.z, h = blockIdx.y, T = at.T;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane >> 2, t = lane & 3;
  const int64_t j_block = int64_t{blockIdx.x} * kRows, j_w = j_block + warp * 16;
  const int64_t keys[2] = {j_w + g, j_w + g + 8};  // the lane's key rows
  const int64_t bh = int64_t{b} * at.NH + h;
  const float scale = 1.0f / sqrtf(static_cast<float>(HS));
  Stage<Op, HS>(ks, nullptr, k, at, b, h, j_block, kRows);
  Stage<Op, HS>(vs, nullptr, v, at, b, h, j_block, kRows);
  const Op* kw = ks + warp * 16 * LdRow<HS>();  // the warp's 16 keys
  const Op* vw = vs + warp * 16 * LdRow<HS>();

  FragC dka[NO], dva[NO];
#pragma unroll
  for (int n = 0; n < NO; ++n) dka[n] = dva[n] = mma::Zero();
  // Queries before the block's first key see none of its keys.
  for (int64_t i0 = j_block; i0 < T; i0 += QT) {
    __syncthreads();  // the previous tile is consumed (and ks, vs are staged)
    Stage<Op, HS>(qs, qt, q, at, b, h, i0, QT);
    Stage<Op, HS>(ds, dt, dout, at, b, h, i0, QT);
    if (threadIdx.x < QT) {
      const int64_t i = i0 + threadIdx.x;
      lse_t[threadIdx.x] = i < T ? lse[bh * T + i] : 0.0f;
      delta_t[threadIdx.x] = i < T ? delta[bh * T + i] : 0.0f;
    }
    __syncthreads();
    if (j_w >= T || i0 + QT - 1 < j_w) continue;  // warp-uniform: no pair i >= j
    // S^T = k q^T, dP^T = v dout^T; n-tiles of 8 queries wholly before the
    // warp's first key skipped (warp-uniform).
    FragC st[NT], dpt[NT];
#pragma unroll
    for (int n = 0; n < NT; ++n) {
      st[n] = mma::Zero();
      dpt[n] = mma::Zero();
      if (i0 + 8 * n + 7 >= j_w) {
#pragma unroll
        for (int c = 0; c < HS / 16; ++c) {
          mma::MmaAccumulate<Op>(st[n], mma::LoadA(kw + 16 * c, LdRow<HS>(), lane),
                                 mma::LoadB(qs + 8 * n * LdRow<HS>() + 16 * c, LdRow<HS>(), lane));
          mma::MmaAccumulate<Op>(dpt[n], mma::LoadA(vw + 16 * c, LdRow<HS>(), lane),
                                 mma::LoadB(ds + 8 * n * LdRow<HS>() + 16 * c, LdRow<HS>(), lane));
        }
      }
    }
    // P^T mult into st, dS^T into dpt (0 where i < j or past T).
#pragma unroll
    for (int n = 0; n < NT; ++n) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int c = 8 * n + 2 * t + (e & 1);
        const int64_t i = i0 + c, j = keys[e / 2];
        const bool seen = i < T && j < T && i >= j;
        const float mult = seen ? Multiplier(dropout, b, (int64_t{h} * T + i) * T + j) : 0.0f;
        const float p = expf(st[n].x[e] * scale - lse_t[c]);
        st[n].x[e] = seen ? p * mult : 0.0f;
        dpt[n].x[e] = seen ? p * (dpt[n].x[e] * mult - delta_t[c]) : 0.0f;
      }
    }
    // dk sqrt(hs) += dS^T q, dv += (P mult)^T dout, for the chunks of
    // queries that reach the warp's keys (dS^T first: so ordered, ptxas
    // fits head size 128 in 255 registers without spilling).
    const auto reach = [=](int c) { return i0 + 16 * c + 15 >= j_w; };
    AccumulateFromPairs<Op, HS>(dka, dpt, qt, lane, reach);
    AccumulateFromPairs<Op, HS>(dva, st, dt, lane, reach);
  }
  const float scales[2] = {scale, scale}, ones[2] = {1.0f, 1.0f};
  StoreRows<HS>(dk, dka, keys, scales, at, b, h, t);
  StoreRows<HS>(dv, dva, keys, ones, at, b, h, t);
}

// ---- launchers ---------------------------------------------------------------------------

template <typename Kernel>
void SetMaxDynamicShared(Kernel* kernel, size_t bytes) {
  MINGPT_CUDA_CHECK(cudaFuncSetAttribute(reinterpret_cast<const void*>(kernel),
                                         cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         static_cast<int>(bytes)));
}

unsigned RowBlocks(int T) { return static_cast<unsigned>((T + kRows - 1) / kRows); }

template <typename S>
void Init() {
  SetMaxDynamicShared(MmaForwardKernel<S>, ForwardSmemBytes<S::HS>());
  SetMaxDynamicShared(MmaBackwardQueryKernel<S>, QuerySmemBytes<S::HS>());
  SetMaxDynamicShared(MmaBackwardKeyKernel<S>, KeySmemBytes<S::HS>());
}

template <typename S>
void Forward(cudaStream_t stream, float* out, float* lse, const float* q, const float* k,
             const float* v, int B, const Rows& at, const DropoutSpec& dropout) {
  MINGPT_LAUNCH(MmaForwardKernel<S>, dim3(RowBlocks(at.T), at.NH, B), kWarps * 32,
                ForwardSmemBytes<S::HS>(), stream, out, lse, q, k, v, at, dropout);
  MINGPT_CUDA_CHECK_LAUNCH();
}

template <typename S>
void Backward(cudaStream_t stream, float* dq, float* dk, float* dv, const float* dout,
              const float* q, const float* k, const float* v, const float* lse,
              const float* delta, int B, const Rows& at, const DropoutSpec& dropout) {
  const dim3 grid(RowBlocks(at.T), at.NH, B);
  MINGPT_LAUNCH(MmaBackwardQueryKernel<S>, grid, kWarps * 32, QuerySmemBytes<S::HS>(), stream, dq,
                delta, dout, q, k, v, lse, at, dropout);
  MINGPT_CUDA_CHECK_LAUNCH();
  MINGPT_LAUNCH(MmaBackwardKeyKernel<S>, grid, kWarps * 32, KeySmemBytes<S::HS>(), stream, dk, dv,
                dout, q, k, v, lse, delta, at, dropout);
  MINGPT_CUDA_CHECK_LAUNCH();
}

// Calls Run::template Call<Shape<Op, HS>>(args...) for the precision and
// head size (CUDA code is C++17 here: no template lambdas).
template <typename Run, typename Op, typename... Args>
void ForHeadSize(int hs, Args&&... args) {
  switch (hs) {
    case 32:
      return Run::template Call<Shape<Op, 32>>(args...);
    case 64:
      return Run::template Call<Shape<Op, 64>>(args...);
    case 128:
      return Run::template Call<Shape<Op, 128>>(args...);
    default:
      MINGPT_CHECK(false, "the mma attention has no kernels for head size %d", hs);
  }
}
template <typename Run, typename... Args>
void Dispatch(MatmulPrecision precision, int hs, Args&&... args) {
  MINGPT_CHECK(precision != MatmulPrecision::kFp32, "the mma attention takes bf16 or fp16");
  if (precision == MatmulPrecision::kBf16) {
    ForHeadSize<Run, __nv_bfloat16>(hs, args...);
  } else {
    ForHeadSize<Run, __half>(hs, args...);
  }
}

struct RunInit {
  template <typename S>
  static void Call() {
    Init<S>();
  }
};
struct RunForward {
  template <typename S, typename... Args>
  static void Call(Args&&... args) {
    Forward<S>(args...);
  }
};
struct RunBackward {
  template <typename S, typename... Args>
  static void Call(Args&&... args) {
    Backward<S>(args...);
  }
};

}  // namespace

bool MmaAttentionSupports(int hs) { return hs == 32 || hs == 64 || hs == 128; }

void MmaAttentionInit() {
  for (int hs : {32, 64, 128}) {
    for (MatmulPrecision p : {MatmulPrecision::kBf16, MatmulPrecision::kFp16}) {
      Dispatch<RunInit>(p, hs);
    }
  }
}

void MmaAttentionForward(cudaStream_t stream, float* out, float* lse, const float* q,
                         const float* k, const float* v, int B, int T, int C, int NH,
                         const DropoutSpec& dropout, MatmulPrecision precision) {
  if (B == 0 || T == 0) return;
  const Rows at{int64_t{T} * C, C, T, NH};
  Dispatch<RunForward>(precision, C / NH, stream, out, lse, q, k, v, B, at, dropout);
}

void MmaAttentionBackward(cudaStream_t stream, float* dq, float* dk, float* dv, const float* dout,
                          const float* q, const float* k, const float* v, const float* lse,
                          const float* delta, int B, int T, int C, int NH,
                          const DropoutSpec& dropout, MatmulPrecision precision) {
  if (B == 0 || T == 0) return;
  const Rows at{int64_t{T} * C, C, T, NH};
  Dispatch<RunBackward>(precision, C / NH, stream, dq, dk, dv, dout, q, k, v, lse, delta, B, at,
                        dropout);
}

}  // namespace mingpt::cuda
