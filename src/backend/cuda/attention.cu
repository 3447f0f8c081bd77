// Causal multi-head self-attention, flash style: tiles of 32 keys (or
// queries) staged in shared memory, an online softmax over the tiles, and no
// T x T matrix anywhere. The math is cpu/attention.h's, per batch b and head
// h with hs = C/NH and rows i (queries), j (keys), j <= i:
//   forward:  S = q_i . k_j / sqrt(hs);  P = softmax_j(S);
//             lse_i = log sum_j exp(S_ij)                         (=) [B,NH,T]
//             out_i = sum_j P_ij mult_ij v_j                      (=) [B,T,C]
//   backward: P_ij = exp(S_ij - lse_i) recomputed;  dP_ij = (dout_i . v_j) mult_ij
//             D_i = sum_j P_ij dP_ij = dout_i . out_i;  dS_ij = P_ij (dP_ij - D_i)
//             dq_i = sum_j dS_ij k_j / sqrt(hs)                   (=)
//             dk_j = sum_i dS_ij q_i / sqrt(hs);  dv_j = sum_i P_ij mult_ij dout_i   (=)
// mult_ij = keep/(1-p) of dropout mask element (h*T + i)*T + j of batch row b
// (backend/dropout.h, the CPU's Philox), or 1 without dropout.
//
// Work split: a block owns 16 rows (4 warps x 4 rows) of one (b, h) and
// walks tiles of 32 partner rows. A warp computes one own row's 32 scores at
// a time, lane = partner row; the row's accumulators (output, dq, dk, dv)
// are spread over the lanes by channel (d = lane + 32 kk) and updated with
// the tile's probabilities broadcast by shuffles. The backward forms D from
// the forward's output (one warp per row), then runs two kernels,
// query-major (dq) then key-major (dk and dv), so that no gradient is
// accumulated by more than one block: no atomics, deterministic.
//
// Under bf16 or fp16 matrix precision the forward and backward take the
// tensor-core kernels of namespace tc below instead (WMMA, the same math and
// work split, fp32 softmax and accumulation), for head sizes that are
// multiples of 16 up to 128; the kernels above stay the fp32 reference, and
// MINGPT_CUDA_ATTENTION=fp32 forces them (AttentionForward, AttentionBackward).
// MINGPT_CUDA_ATTENTION=mma (opt-in until measured on a GPU) takes, under
// bf16 or fp16, the FlashAttention-2-structured kernels of attention_mma.cu
// instead (mma.sync, softmax and gradients in registers) for the head sizes
// they have (32, 64, 128; the others stay on the tensor-core kernels below).
#include <cmath>
#include <cstdlib>
#include <string>

#include "backend/cuda/attention_mma.h"
#include "backend/cuda/cuda_check.h"
#include "backend/cuda/device.cuh"
#include "backend/cuda/kernels.h"
#include "backend/cuda/reduce.cuh"
#include "core/check.h"

namespace mingpt::cuda {
namespace {

constexpr int kWarps = 4;
constexpr int kRowsPerWarp = 4;
constexpr int kOwnRows = kWarps * kRowsPerWarp;  // rows a block owns

// Channels per lane (d = lane + 32 kk) and partner rows per tile of the
// kernels below, by head size: up to 256, 8 a lane and tiles of 32 rows, a
// lane per partner row; up to 512 (the seed's 20B and 45B models: n_embd
// 8192 over 16 heads), 16 a lane and tiles of 16 rows, lanes 16..31 idle in
// the scores, so that the backward's shared memory (128 KiB at 512) fits an
// A100's 163 KiB.
constexpr int kSmallPerLane = 8, kLargePerLane = kMaxHeadSize / 32;
__host__ __device__ constexpr int TileRows(int per_lane) { return per_lane > kSmallPerLane ? 16 : 32; }
inline int PerLane(int hs) { return hs <= 32 * kSmallPerLane ? kSmallPerLane : kLargePerLane; }

// Shared-memory row stride of tiles: odd, so lane j reading row j, channel d
// hits a different bank for every lane.
__host__ __device__ inline int TileStride(int hs) { return hs | 1; }

// Where head h of row i of batch b lives in a [B,T,C] tensor.
struct HeadRows {
  int64_t batch_stride;  // T*C (0 for one batch row)
  int C, hs;
  __device__ int64_t At(int b, int h, int64_t i) const {
    return b * batch_stride + i * C + int64_t{h} * hs;
  }
};

// Copies rows [row0, row0 + rows) of one head into shared memory at
// `stride`, times `scale`, zeros past `valid_end`.
__device__ inline void StageRows(float* dst, int stride, const float* src, const HeadRows& at,
                                 int b, int h, int64_t row0, int rows, int64_t valid_end,
                                 float scale) {
  for (int e = threadIdx.x; e < rows * at.hs; e += blockDim.x) {
    const int r = e / at.hs, d = e % at.hs;
    const int64_t i = row0 + r;
    dst[r * stride + d] = i < valid_end ? src[at.At(b, h, i) + d] * scale : 0.0f;
  }
}

__device__ inline int64_t Min64(int64_t a, int64_t b) { return a < b ? a : b; }

__device__ inline float Dot(const float* a, const float* b, int hs) {
  float s = 0;
  for (int d = 0; d < hs; ++d) s += a[d] * b[d];
  return s;
}

// The dropout multiplier of attention element (i, j) of row b, head h.
__device__ inline float Multiplier(const DropoutSpec& dropout, int b, int h, int T, int64_t i,
                                   int64_t j) {
  if (!dropout.enabled()) return 1.0f;
  return DropoutKeep(dropout, b, (int64_t{h} * T + i) * T + j) ? dropout.scale() : 0.0f;
}

// acc[kk] += sum over the tile's partner rows jj < count of
// __shfl(weight, jj) * tile[jj][lane + 32 kk].
template <int kPerLane>
__device__ inline void AccumulateRows(float (&acc)[kPerLane], float weight, const float* tile,
                                      int stride, int count, int hs, int lane) {
  for (int jj = 0; jj < count; ++jj) {
    const float w = __shfl_sync(kFullMask, weight, jj);
    const float* row = tile + jj * stride;
#pragma unroll
    for (int kk = 0; kk < kPerLane; ++kk) {
      const int d = lane + 32 * kk;
      if (d < hs) acc[kk] += w * row[d];
    }
  }
}

// ---- forward (and decode) -----------------------------------------------------------
//
// Queries are rows first_query .. T-1 (0 for the forward, T-1 for decode);
// query row i is read from q at row i - first_query (and written to out
// likewise), keys from row j of k and v. lse may be null.
template <int kPerLane>
__global__ void __launch_bounds__(kWarps * 32)
    ForwardKernel(float* out, float* lse, const float* q, const float* k, const float* v,
                  HeadRows q_at, HeadRows kv_at, int T, int NH, int first_query,
                  DropoutSpec dropout) {
  constexpr int kTile = TileRows(kPerLane);
  MINGPT_DYNAMIC_SHARED(float, smem);
  const int hs = kv_at.hs, stride = TileStride(hs);
  float* qs = smem;                     // [kOwnRows][hs]  q / sqrt(hs)
  float* kt = qs + kOwnRows * hs;       // [kTile][stride] keys of the tile
  float* vt = kt + kTile * stride;      // [kTile][stride] values of the tile
  const int b = blockIdx.z, h = blockIdx.y;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t i_block = first_query + int64_t{blockIdx.x} * kOwnRows;
  const float scale = 1.0f / sqrtf(static_cast<float>(hs));
  StageRows(qs, hs, q, q_at, b, h, i_block - first_query, kOwnRows, T - first_query, scale);

  float m[kRowsPerWarp], l[kRowsPerWarp], o[kRowsPerWarp][kPerLane];
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
    m[r] = -INFINITY;
    l[r] = 0;
#pragma unroll
    for (int kk = 0; kk < kPerLane; ++kk) o[r][kk] = 0;
  }
  const int64_t i_last = Min64(i_block + kOwnRows - 1, int64_t{T} - 1);
  for (int64_t j0 = 0; j0 <= i_last; j0 += kTile) {
    __syncthreads();  // the previous tile is consumed (and qs is staged)
    StageRows(kt, stride, k, kv_at, b, h, j0, kTile, T, 1.0f);
    StageRows(vt, stride, v, kv_at, b, h, j0, kTile, T, 1.0f);
    __syncthreads();
#pragma unroll
    for (int r = 0; r < kRowsPerWarp; ++r) {
      const int own = warp * kRowsPerWarp + r;
      const int64_t i = i_block + own;
      if (i >= T || j0 > i) continue;  // warp-uniform
      const int64_t j = j0 + lane;
      const bool live = lane < kTile && j <= i;
      const float s = live ? Dot(qs + own * hs, kt + lane * stride, hs) : -INFINITY;
      // Tile 0 holds key 0 of every row, so m_new is finite from the first
      // tile on, and the first correction is exp(-inf) = 0.
      const float m_new = fmaxf(m[r], WarpMax(s));
      const float corr = expf(m[r] - m_new);
      const float p = live ? expf(s - m_new) : 0.0f;
      l[r] = l[r] * corr + WarpSum(p);  // the sum is of P; the output of dropped P
      const float pd = live ? p * Multiplier(dropout, b, h, T, i, j) : 0.0f;
#pragma unroll
      for (int kk = 0; kk < kPerLane; ++kk) o[r][kk] *= corr;
      AccumulateRows(o[r], pd, vt, stride, static_cast<int>(Min64(kTile, i - j0 + 1)), hs,
                     lane);
      m[r] = m_new;
    }
  }
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
    const int64_t i = i_block + warp * kRowsPerWarp + r;
    if (i >= T) continue;
    const float inv = 1.0f / l[r];
    float* orow = out + q_at.At(b, h, i - first_query);
#pragma unroll
    for (int kk = 0; kk < kPerLane; ++kk) {
      const int d = lane + 32 * kk;
      if (d < hs) orow[d] = o[r][kk] * inv;
    }
    if (lse && lane == 0) lse[(int64_t{b} * NH + h) * T + i] = m[r] + logf(l[r]);
  }
}

// ---- backward: D_i ------------------------------------------------------------------

// delta[(b NH + h) T + i] = D_i = dout_i . out_i, which is sum_j P_ij dP_ij
// (dropout included: out_i = sum_j P_ij mult_ij v_j): one warp per row,
// lanes over the channels, a fixed order. A sweep over the keys forming
// sum_j P_ij dP_ij would stage every key and value once more.
__global__ void AttentionDeltaKernel(float* delta, const float* dout, const float* out,
                                     HeadRows at, int T, int NH, int64_t rows) {
  const int64_t row = (int64_t{blockIdx.x} * blockDim.x + threadIdx.x) / 32;
  if (row >= rows) return;  // warp-uniform: a warp is one row
  const int lane = threadIdx.x % 32;
  const int64_t i = row % T, bh = row / T;
  const int64_t o = at.At(static_cast<int>(bh / NH), static_cast<int>(bh % NH), i);
  float sum = 0;
  for (int d = lane; d < at.hs; d += 32) sum += dout[o + d] * out[o + d];
  sum = WarpSum(sum);
  if (lane == 0) delta[row] = sum;
}

// ---- backward, query-major: dq_i ------------------------------------------------------

// P_ij and dP_ij (times the mask) of own query row i against the tile's key
// j = j0 + lane; both 0 unless `live` (the lane has a key of the tile, j <= i).
__device__ inline void ProbabilityAndGrad(float* p, float* dp, const float* qs_row,
                                          const float* do_row, const float* kt, const float* vt,
                                          int stride, int hs, float lse_i, int64_t i, int64_t j,
                                          bool live, const DropoutSpec& dropout, int b, int h,
                                          int T) {
  const int lane = threadIdx.x % 32;
  if (!live) {
    *p = 0;
    *dp = 0;
    return;
  }
  *p = expf(Dot(qs_row, kt + lane * stride, hs) - lse_i);
  *dp = Dot(do_row, vt + lane * stride, hs) * Multiplier(dropout, b, h, T, i, j);
}

template <int kPerLane>
__global__ void __launch_bounds__(kWarps * 32)
    BackwardQueryKernel(float* dq, const float* delta, const float* dout, const float* q,
                        const float* k, const float* v, const float* lse, HeadRows at, int T,
                        int NH, DropoutSpec dropout) {
  constexpr int kTile = TileRows(kPerLane);
  MINGPT_DYNAMIC_SHARED(float, smem);
  const int hs = at.hs, stride = TileStride(hs);
  float* qs = smem;                   // [kOwnRows][hs]  q / sqrt(hs)
  float* dos = qs + kOwnRows * hs;    // [kOwnRows][hs]  dout
  float* kt = dos + kOwnRows * hs;    // [kTile][stride]
  float* vt = kt + kTile * stride;    // [kTile][stride]
  const int b = blockIdx.z, h = blockIdx.y;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t i_block = int64_t{blockIdx.x} * kOwnRows;
  const int64_t bh = int64_t{b} * NH + h;
  const float scale = 1.0f / sqrtf(static_cast<float>(hs));
  StageRows(qs, hs, q, at, b, h, i_block, kOwnRows, T, scale);
  StageRows(dos, hs, dout, at, b, h, i_block, kOwnRows, T, 1.0f);

  float lse_r[kRowsPerWarp], D[kRowsPerWarp], acc[kRowsPerWarp][kPerLane];
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
    const int64_t i = i_block + warp * kRowsPerWarp + r;
    lse_r[r] = i < T ? lse[bh * T + i] : 0.0f;
    D[r] = i < T ? delta[bh * T + i] : 0.0f;
#pragma unroll
    for (int kk = 0; kk < kPerLane; ++kk) acc[r][kk] = 0;
  }
  const int64_t i_last = Min64(i_block + kOwnRows - 1, int64_t{T} - 1);
  // dq_i sqrt(hs) = sum_j dS_ij k_j.
  for (int64_t j0 = 0; j0 <= i_last; j0 += kTile) {
    __syncthreads();
    StageRows(kt, stride, k, at, b, h, j0, kTile, T, 1.0f);
    StageRows(vt, stride, v, at, b, h, j0, kTile, T, 1.0f);
    __syncthreads();
#pragma unroll
    for (int r = 0; r < kRowsPerWarp; ++r) {
      const int own = warp * kRowsPerWarp + r;
      const int64_t i = i_block + own;
      if (i >= T || j0 > i) continue;  // warp-uniform
      float p, dp;
      const int64_t j = j0 + lane;
      ProbabilityAndGrad(&p, &dp, qs + own * hs, dos + own * hs, kt, vt, stride, hs, lse_r[r], i,
                         j, lane < kTile && j <= i, dropout, b, h, T);
      AccumulateRows(acc[r], p * (dp - D[r]), kt, stride,
                     static_cast<int>(Min64(kTile, i - j0 + 1)), hs, lane);
    }
  }
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
    const int64_t i = i_block + warp * kRowsPerWarp + r;
    if (i >= T) continue;
    float* row = dq + at.At(b, h, i);
#pragma unroll
    for (int kk = 0; kk < kPerLane; ++kk) {
      const int d = lane + 32 * kk;
      if (d < hs) row[d] = acc[r][kk] * scale;
    }
  }
}

// ---- backward, key-major: dk_j and dv_j -------------------------------------------------

template <int kPerLane>
__global__ void __launch_bounds__(kWarps * 32)
    BackwardKeyKernel(float* dk, float* dv, const float* dout, const float* q, const float* k,
                      const float* v, const float* lse, const float* delta, HeadRows at, int T,
                      int NH, DropoutSpec dropout) {
  constexpr int kTile = TileRows(kPerLane);
  MINGPT_DYNAMIC_SHARED(float, smem);
  const int hs = at.hs, stride = TileStride(hs);
  float* ks = smem;                     // [kOwnRows][hs]  own keys
  float* vs = ks + kOwnRows * hs;       // [kOwnRows][hs]  own values
  float* qt = vs + kOwnRows * hs;       // [kTile][stride] q / sqrt(hs) of the tile
  float* dot = qt + kTile * stride;     // [kTile][stride] dout of the tile
  float* lse_t = dot + kTile * stride;  // [kTile]
  float* delta_t = lse_t + kTile;       // [kTile]
  const int b = blockIdx.z, h = blockIdx.y;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t j_block = int64_t{blockIdx.x} * kOwnRows;
  const int64_t bh = int64_t{b} * NH + h;
  const float scale = 1.0f / sqrtf(static_cast<float>(hs));
  StageRows(ks, hs, k, at, b, h, j_block, kOwnRows, T, 1.0f);
  StageRows(vs, hs, v, at, b, h, j_block, kOwnRows, T, 1.0f);

  float dk_acc[kRowsPerWarp][kPerLane], dv_acc[kRowsPerWarp][kPerLane];
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
#pragma unroll
    for (int kk = 0; kk < kPerLane; ++kk) dk_acc[r][kk] = dv_acc[r][kk] = 0;
  }
  // Queries before the tile holding j_block see none of the block's keys.
  for (int64_t i0 = j_block / kTile * kTile; i0 < T; i0 += kTile) {
    __syncthreads();
    StageRows(qt, stride, q, at, b, h, i0, kTile, T, scale);
    StageRows(dot, stride, dout, at, b, h, i0, kTile, T, 1.0f);
    if (threadIdx.x < kTile) {
      const int64_t i = i0 + threadIdx.x;
      lse_t[threadIdx.x] = i < T ? lse[bh * T + i] : 0.0f;
      delta_t[threadIdx.x] = i < T ? delta[bh * T + i] : 0.0f;
    }
    __syncthreads();
    const int count = static_cast<int>(Min64(kTile, T - i0));
#pragma unroll
    for (int r = 0; r < kRowsPerWarp; ++r) {
      const int own = warp * kRowsPerWarp + r;
      const int64_t j = j_block + own;
      if (j >= T) continue;  // warp-uniform
      const int64_t i = i0 + lane;
      float pd = 0, ds = 0;
      if (lane < kTile && i >= j && i < T) {
        const float p = expf(Dot(qt + lane * stride, ks + own * hs, hs) - lse_t[lane]);
        const float mult = Multiplier(dropout, b, h, T, i, j);
        const float dp = Dot(dot + lane * stride, vs + own * hs, hs) * mult;
        pd = p * mult;
        ds = p * (dp - delta_t[lane]);
      }
      AccumulateRows(dv_acc[r], pd, dot, stride, count, hs, lane);
      AccumulateRows(dk_acc[r], ds, qt, stride, count, hs, lane);  // the scale is in qt
    }
  }
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
    const int64_t j = j_block + warp * kRowsPerWarp + r;
    if (j >= T) continue;
    float* dk_row = dk + at.At(b, h, j);
    float* dv_row = dv + at.At(b, h, j);
#pragma unroll
    for (int kk = 0; kk < kPerLane; ++kk) {
      const int d = lane + 32 * kk;
      if (d < hs) {
        dk_row[d] = dk_acc[r][kk];
        dv_row[d] = dv_acc[r][kk];
      }
    }
  }
}

// ---- tensor-core path (bf16 / fp16 matrix precision) -------------------------------------
//
// The same math with the four products of each tile (S = q k^T, dP = dout v^T,
// out += P v, dq += dS k, dk += dS^T q, dv += P^T dout) on tensor cores
// through WMMA: 16x16x16 fragments of bf16 or fp16 operands, staged in
// shared memory from the fp32 inputs (rounded to nearest even), fp32
// accumulators. Everything else is fp32 SIMT code on tiles stored to shared
// memory: the scale 1/sqrt(hs), the causal mask, the softmax statistics
// (running max, sum, lse), exp, dropout and dS = P (dP - D); the layout of a
// fragment's elements over the lanes is never used. A block of 4 warps owns
// 64 rows, 16 per warp, each warp its own 16 x tile strip of every product;
// the accumulators (out, dq, dk, dv) live in shared memory in fp32 and go
// through the fragments tile by tile (the online softmax rescales out's rows
// between tiles in SIMT code). Head sizes multiples of 16 up to 128; no
// atomics, each gradient row written by the one block that owns it.
namespace tc {

constexpr int kWarps = 4;
constexpr int kRows = 64;        // rows a block owns, 16 per warp
constexpr int kKeyTile = 64;     // keys per tile (forward, query-major backward)
constexpr int kQueryTile = 32;   // queries per tile (key-major backward)
constexpr int kMaxHead = 128;
constexpr int kLdKeyTile = kKeyTile + 4;      // float tiles [kRows][kKeyTile]
constexpr int kLdKeyTileOp = kKeyTile + 8;    // operand tiles [kRows][kKeyTile]
constexpr int kLdQueryTile = kQueryTile + 4;  // float tiles [kRows][kQueryTile]
constexpr int kLdQueryTileOp = kQueryTile + 8;

using namespace nvcuda;

// Leading dimensions (elements) of [rows][hs] tiles: operands hs + 8
// (a multiple of 8, as WMMA requires of 16-bit types, and rows 16 bytes
// apart modulo 128 for the banks), fp32 accumulators hs + 4 (a multiple of 4).
__host__ __device__ inline int LdOp(int hs) { return hs + 8; }
__host__ __device__ inline int LdAcc(int hs) { return hs + 4; }

// Carves shared memory into regions each starting 32 bytes aligned (WMMA's
// 256-bit pointer alignment; every fragment pointer below is a region start
// plus a multiple of 32 bytes: 16 rows of a leading dimension that is a
// multiple of 16 bytes, and columns in steps of 16 elements). Regions are
// offsets from the shared array itself, never integers made pointers, so
// the compiler knows them for shared memory (shared loads and stores, not
// generic ones). With a null base it only measures.
struct Carver {
  char* base;
  size_t at;  // bytes from base
  template <typename T>
  __host__ __device__ T* Take(size_t n) {
    T* p = base ? reinterpret_cast<T*>(base + at) : nullptr;
    at += (n * sizeof(T) + 31) / 32 * 32;
    return p;
  }
};

__device__ inline Carver SharedCarver(void* raw) {
  char* base = static_cast<char*>(raw);
  return Carver{base, (32 - reinterpret_cast<uintptr_t>(base) % 32) % 32};
}

template <typename Op>
__host__ __device__ inline Op ToOp(float x);
template <>
__host__ __device__ inline __nv_bfloat16 ToOp<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}
template <>
__host__ __device__ inline __half ToOp<__half>(float x) {
  return __float2half_rn(x);
}

template <typename Op>
struct alignas(4 * sizeof(Op)) Op4 {
  Op v[4];
};

// Rows [row0, row0 + rows) of one head into an operand tile at `ld` (a
// multiple of 4), zeros past valid_end, each value rounded once to the
// operand type. Staging is bound by the latency of its loads, so when the
// rows are 16-byte aligned (src, and C and hs multiples of 4) a thread
// issues four float4 loads before it converts and stores any of them;
// otherwise one float at a time.
template <typename Op>
__device__ inline void StageOp(Op* dst, int ld, const float* __restrict__ src, const HeadRows& at,
                               int b, int h, int64_t row0, int rows, int64_t valid_end) {
  const bool vector = reinterpret_cast<uintptr_t>(src) % 16 == 0 && at.C % 4 == 0 &&
                      at.hs % 4 == 0 && at.batch_stride % 4 == 0;
  if (!vector) {
    for (int e = threadIdx.x; e < rows * at.hs; e += blockDim.x) {
      const int r = e / at.hs, d = e % at.hs;
      const int64_t i = row0 + r;
      dst[r * ld + d] = ToOp<Op>(i < valid_end ? src[at.At(b, h, i) + d] : 0.0f);
    }
    return;
  }
  constexpr int kInFlight = 4;
  const int quads = at.hs / 4, n = rows * quads;
  for (int e0 = threadIdx.x; e0 < n; e0 += kInFlight * blockDim.x) {
    float4 x[kInFlight];
#pragma unroll
    for (int k = 0; k < kInFlight; ++k) {
      const int e = e0 + k * blockDim.x, r = e / quads, c = e % quads;
      x[k] = e < n && row0 + r < valid_end
                 ? LoadVector<float4>(src + at.At(b, h, row0 + r) + 4 * c)
                 : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    }
#pragma unroll
    for (int k = 0; k < kInFlight; ++k) {
      const int e = e0 + k * blockDim.x, r = e / quads, c = e % quads;
      if (e < n) {
        const Op4<Op> ops{{ToOp<Op>(x[k].x), ToOp<Op>(x[k].y), ToOp<Op>(x[k].z), ToOp<Op>(x[k].w)}};
        StoreVector(dst + r * ld + 4 * c, ops);
      }
    }
  }
}

template <typename Op>
using FragA = wmma::fragment<wmma::matrix_a, 16, 16, 16, Op, wmma::row_major>;
template <typename Op>
using FragBRow = wmma::fragment<wmma::matrix_b, 16, 16, 16, Op, wmma::row_major>;
template <typename Op>
using FragBCol = wmma::fragment<wmma::matrix_b, 16, 16, 16, Op, wmma::col_major>;
using FragAcc = wmma::fragment<wmma::accumulator, 16, 16, 16, float>;

// out[16][16 * n_frags] (float, ld_out) = a[16][K] b[n][K]^T: a's rows and
// b's rows of K operands each (both row-major at their ld), the n-th
// fragment of the output from b's rows 16n .. 16n + 15.
template <typename Op>
__device__ inline void ProductABt(float* out, int ld_out, const Op* a, int lda, const Op* b,
                                  int ldb, int K, int n_frags) {
  for (int n = 0; n < n_frags; ++n) {
    FragAcc acc;
    wmma::fill_fragment(acc, 0.0f);
    for (int kk = 0; kk < K; kk += 16) {
      FragA<Op> fa;
      FragBCol<Op> fb;
      wmma::load_matrix_sync(fa, a + kk, lda);
      wmma::load_matrix_sync(fb, b + n * 16 * ldb + kk, ldb);
      wmma::mma_sync(acc, fa, fb, acc);
    }
    wmma::store_matrix_sync(out + n * 16, acc, ld_out, wmma::mem_row_major);
  }
}

// acc[16][hs] (float, ld_acc) += a[16][K] b[K][hs] (operands row-major).
template <typename Op>
__device__ inline void AccumulateAB(float* acc, int ld_acc, const Op* a, int lda, const Op* b,
                                    int ldb, int K, int hs) {
  for (int n = 0; n < hs; n += 16) {
    FragAcc c;
    wmma::load_matrix_sync(c, acc + n, ld_acc, wmma::mem_row_major);
    for (int kk = 0; kk < K; kk += 16) {
      FragA<Op> fa;
      FragBRow<Op> fb;
      wmma::load_matrix_sync(fa, a + kk, lda);
      wmma::load_matrix_sync(fb, b + kk * ldb + n, ldb);
      wmma::mma_sync(c, fa, fb, c);
    }
    wmma::store_matrix_sync(acc + n, c, ld_acc, wmma::mem_row_major);
  }
}

// Dropout multipliers along a row of consecutive elements: one Philox call
// per four (DropoutKeep4's group) instead of one per element.
struct KeepCache {
  int64_t group = -1;
  bool keep[4];
};
__device__ inline float RowMultiplier(const DropoutSpec& dropout, KeepCache& cache, int b,
                                      int64_t element) {
  if (!dropout.enabled()) return 1.0f;
  const int64_t g = element >> 2;
  if (g != cache.group) {
    DropoutKeep4(dropout, b, g, cache.keep);
    cache.group = g;
  }
  return cache.keep[element & 3] ? dropout.scale() : 0.0f;
}

// The SIMT code walks a tile with two lanes per row, each over half of the
// row's columns. fp32 tiles have a leading dimension of 4 modulo 32 (WMMA
// stores need a multiple of 4), so in column order the 16 rows fall on 8
// banks and both halves of a row on the same one: 4 lanes a bank. Each lane
// instead starts its walk at its own skew (2 per half, 1 for the upper 8
// rows), which puts the 32 lanes on 32 banks at every step. The t-th column
// of a lane's n, from its skew.
__device__ inline int LaneSkew(int lane) { return 2 * (lane % 2) + lane / 16; }
__device__ inline int Skewed(int t, int n, int skew) {
  const int c = t + skew;
  return c < n ? c : c - n;
}

template <typename Op>
struct ForwardLayout {
  Op *qs, *ks, *vs;  // [kRows][LdOp] q, [kKeyTile][LdOp] k and v of the tile
  float* ss;         // [kRows][kLdKeyTile] scores q . k (unscaled)
  Op* ps;            // [kRows][kLdKeyTileOp] probabilities times the mask
  float* os;         // [kRows][LdAcc] output accumulators
  __host__ __device__ ForwardLayout(Carver c, int hs, size_t* bytes = nullptr) {
    const size_t start = c.at;
    qs = c.Take<Op>(kRows * LdOp(hs));
    ks = c.Take<Op>(kKeyTile * LdOp(hs));
    vs = c.Take<Op>(kKeyTile * LdOp(hs));
    ss = c.Take<float>(kRows * kLdKeyTile);
    ps = c.Take<Op>(kRows * kLdKeyTileOp);
    os = c.Take<float>(kRows * LdAcc(hs));
    if (bytes) *bytes = c.at - start + 32;  // + 32: the base's alignment
  }
};

template <typename Op>
__global__ void __launch_bounds__(kWarps * 32)
    ForwardKernel(float* out, float* lse, const float* q, const float* k, const float* v,
                  HeadRows at, int T, int NH, DropoutSpec dropout) {
  MINGPT_DYNAMIC_SHARED(float, smem);
  const int hs = at.hs, ldo = LdOp(hs), lda = LdAcc(hs);
  const ForwardLayout<Op> s(SharedCarver(smem), hs);
  const int b = blockIdx.z, h = blockIdx.y;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t i_block = int64_t{blockIdx.x} * kRows;
  const float scale = 1.0f / sqrtf(static_cast<float>(hs));
  StageOp(s.qs, ldo, q, at, b, h, i_block, kRows, T);
  for (int e = threadIdx.x; e < kRows * lda; e += blockDim.x) s.os[e] = 0.0f;

  const int r0 = warp * 16;                  // the warp's rows in the block
  const int64_t i_w0 = i_block + r0;         // its first query
  const int rr = r0 + lane / 2, half = lane % 2;  // the lane's row and half of it
  const int skew = LaneSkew(lane);
  const int64_t i = i_block + rr;
  float m = -INFINITY, l = 0;
  const int64_t i_last = Min64(i_block + kRows - 1, int64_t{T} - 1);
  for (int64_t j0 = 0; j0 <= i_last; j0 += kKeyTile) {
    __syncthreads();  // the previous tile is consumed (and qs, os are staged)
    StageOp(s.ks, ldo, k, at, b, h, j0, kKeyTile, T);
    StageOp(s.vs, ldo, v, at, b, h, j0, kKeyTile, T);
    __syncthreads();
    if (i_w0 >= T || j0 > i_w0 + 15) continue;  // warp-uniform: no key of the tile is seen
    // Key fragments past the warp's last query are all masked: skipped.
    const int frags = static_cast<int>(Min64(kKeyTile / 16, (i_w0 + 15 - j0) / 16 + 1));
    ProductABt(s.ss + r0 * kLdKeyTile, kLdKeyTile, s.qs + r0 * ldo, ldo, s.ks, ldo, hs, frags);
    __syncwarp();
    // Online softmax of the lane's half row (keys j0 + c, c in [32 half, 32 half + 32)).
    const float* srow = s.ss + rr * kLdKeyTile;
    Op* prow = s.ps + rr * kLdKeyTileOp;
    const bool row = i < T;
    float mx = -INFINITY;
    for (int t = 0; t < 32; ++t) {
      const int c = 32 * half + Skewed(t, 32, skew);
      if (row && j0 + c <= i) mx = fmaxf(mx, srow[c] * scale);
    }
    mx = fmaxf(mx, __shfl_xor_sync(kFullMask, mx, 1));
    // Tile 0 holds key 0 of every row, so m_new is finite from the first
    // tile on (for rows < T), and the first correction is exp(-inf) = 0.
    const float m_new = fmaxf(m, mx);
    const float corr = row ? expf(m - m_new) : 1.0f;
    float sum = 0;
    KeepCache cache;
    for (int t = 0; t < 32; ++t) {
      const int c = 32 * half + Skewed(t, 32, skew);
      const int64_t j = j0 + c;
      float pd = 0;
      if (row && j <= i) {
        const float p = expf(srow[c] * scale - m_new);
        sum += p;  // the sum is of P; the output of dropped P
        pd = p * RowMultiplier(dropout, cache, b, (int64_t{h} * T + i) * T + j);
      }
      prow[c] = ToOp<Op>(pd);
    }
    sum += __shfl_xor_sync(kFullMask, sum, 1);
    if (row) {
      l = l * corr + sum;
      m = m_new;
    }
    float* orow_acc = s.os + rr * lda + half * (hs / 2);
    for (int t = 0; t < hs / 2; ++t) orow_acc[Skewed(t, hs / 2, skew)] *= corr;
    __syncwarp();
    AccumulateAB(s.os + r0 * lda, lda, s.ps + r0 * kLdKeyTileOp, kLdKeyTileOp, s.vs, ldo,
                 16 * frags, hs);
  }
  __syncthreads();
  if (i >= T) return;
  float* orow = out + at.At(b, h, i);
  const float inv = 1.0f / l;
  for (int d = half * (hs / 2); d < (half + 1) * (hs / 2); ++d) orow[d] = s.os[rr * lda + d] * inv;
  if (lse && half == 0) lse[(int64_t{b} * NH + h) * T + i] = m + logf(l);
}

template <typename Op>
struct BackwardQueryLayout {
  Op *qs, *dos, *ks, *vs;  // [kRows][LdOp] q, dout; [kKeyTile][LdOp] k, v of the tile
  float *ss, *dps;         // [kRows][kLdKeyTile] q . k (unscaled), dout . v
  Op* dss;                 // [kRows][kLdKeyTileOp] dS
  float* dqs;              // [kRows][LdAcc] dq sqrt(hs) accumulators
  __host__ __device__ BackwardQueryLayout(Carver c, int hs, size_t* bytes = nullptr) {
    const size_t start = c.at;
    qs = c.Take<Op>(kRows * LdOp(hs));
    dos = c.Take<Op>(kRows * LdOp(hs));
    ks = c.Take<Op>(kKeyTile * LdOp(hs));
    vs = c.Take<Op>(kKeyTile * LdOp(hs));
    ss = c.Take<float>(kRows * kLdKeyTile);
    dps = c.Take<float>(kRows * kLdKeyTile);
    dss = c.Take<Op>(kRows * kLdKeyTileOp);
    dqs = c.Take<float>(kRows * LdAcc(hs));
    if (bytes) *bytes = c.at - start + 32;
  }
};

template <typename Op>
__global__ void __launch_bounds__(kWarps * 32)
    BackwardQueryKernel(float* dq, const float* delta, const float* dout, const float* q,
                        const float* k, const float* v, const float* lse, HeadRows at, int T,
                        int NH, DropoutSpec dropout) {
  MINGPT_DYNAMIC_SHARED(float, smem);
  const int hs = at.hs, ldo = LdOp(hs), lda = LdAcc(hs);
  const BackwardQueryLayout<Op> s(SharedCarver(smem), hs);
  const int b = blockIdx.z, h = blockIdx.y;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t i_block = int64_t{blockIdx.x} * kRows;
  const int64_t bh = int64_t{b} * NH + h;
  const float scale = 1.0f / sqrtf(static_cast<float>(hs));
  StageOp(s.qs, ldo, q, at, b, h, i_block, kRows, T);
  StageOp(s.dos, ldo, dout, at, b, h, i_block, kRows, T);
  for (int e = threadIdx.x; e < kRows * lda; e += blockDim.x) s.dqs[e] = 0.0f;

  const int r0 = warp * 16;
  const int64_t i_w0 = i_block + r0;
  const int rr = r0 + lane / 2, half = lane % 2;
  const int skew = LaneSkew(lane);
  const int64_t i = i_block + rr;
  const bool row = i < T;
  const float lse_i = row ? lse[bh * T + i] : 0.0f;
  const float D = row ? delta[bh * T + i] : 0.0f;
  const int64_t i_last = Min64(i_block + kRows - 1, int64_t{T} - 1);
  // dq_i sqrt(hs) = sum_j dS_ij k_j.
  for (int64_t j0 = 0; j0 <= i_last; j0 += kKeyTile) {
    __syncthreads();
    StageOp(s.ks, ldo, k, at, b, h, j0, kKeyTile, T);
    StageOp(s.vs, ldo, v, at, b, h, j0, kKeyTile, T);
    __syncthreads();
    if (i_w0 >= T || j0 > i_w0 + 15) continue;  // warp-uniform
    const int frags = static_cast<int>(Min64(kKeyTile / 16, (i_w0 + 15 - j0) / 16 + 1));
    ProductABt(s.ss + r0 * kLdKeyTile, kLdKeyTile, s.qs + r0 * ldo, ldo, s.ks, ldo, hs, frags);
    ProductABt(s.dps + r0 * kLdKeyTile, kLdKeyTile, s.dos + r0 * ldo, ldo, s.vs, ldo, hs, frags);
    __syncwarp();
    const float* srow = s.ss + rr * kLdKeyTile;
    const float* dprow = s.dps + rr * kLdKeyTile;
    Op* dsrow = s.dss + rr * kLdKeyTileOp;
    KeepCache cache;
    for (int t = 0; t < 32; ++t) {
      const int c = 32 * half + Skewed(t, 32, skew);
      const int64_t j = j0 + c;
      float ds = 0;
      if (row && j <= i && c < 16 * frags) {
        const float p = expf(srow[c] * scale - lse_i);
        const float dp = dprow[c] * RowMultiplier(dropout, cache, b, (int64_t{h} * T + i) * T + j);
        ds = p * (dp - D);
      }
      dsrow[c] = ToOp<Op>(ds);
    }
    __syncwarp();
    AccumulateAB(s.dqs + r0 * lda, lda, s.dss + r0 * kLdKeyTileOp, kLdKeyTileOp, s.ks, ldo,
                 16 * frags, hs);
  }
  __syncthreads();
  if (!row) return;
  float* qrow = dq + at.At(b, h, i);
  for (int d = half * (hs / 2); d < (half + 1) * (hs / 2); ++d) {
    qrow[d] = s.dqs[rr * lda + d] * scale;
  }
}

template <typename Op>
struct BackwardKeyLayout {
  Op *ks, *vs;     // [kRows][LdOp] own keys and values
  Op *qt, *dot;    // [kQueryTile][LdOp] q and dout of the tile
  float *st, *dpt;  // [kRows][kLdQueryTile] k . q (unscaled), v . dout
  Op *pdt, *dst;    // [kRows][kLdQueryTileOp] P times the mask, dS (transposed)
  float *dks, *dvs;  // [kRows][LdAcc] dk sqrt(hs), dv accumulators
  float *lse_t, *delta_t;  // [kQueryTile]
  __host__ __device__ BackwardKeyLayout(Carver c, int hs, size_t* bytes = nullptr) {
    const size_t start = c.at;
    ks = c.Take<Op>(kRows * LdOp(hs));
    vs = c.Take<Op>(kRows * LdOp(hs));
    qt = c.Take<Op>(kQueryTile * LdOp(hs));
    dot = c.Take<Op>(kQueryTile * LdOp(hs));
    st = c.Take<float>(kRows * kLdQueryTile);
    dpt = c.Take<float>(kRows * kLdQueryTile);
    pdt = c.Take<Op>(kRows * kLdQueryTileOp);
    dst = c.Take<Op>(kRows * kLdQueryTileOp);
    dks = c.Take<float>(kRows * LdAcc(hs));
    dvs = c.Take<float>(kRows * LdAcc(hs));
    lse_t = c.Take<float>(kQueryTile);
    delta_t = c.Take<float>(kQueryTile);
    if (bytes) *bytes = c.at - start + 32;
  }
};

template <typename Op>
__global__ void __launch_bounds__(kWarps * 32)
    BackwardKeyKernel(float* dk, float* dv, const float* dout, const float* q, const float* k,
                      const float* v, const float* lse, const float* delta, HeadRows at, int T,
                      int NH, DropoutSpec dropout) {
  MINGPT_DYNAMIC_SHARED(float, smem);
  const int hs = at.hs, ldo = LdOp(hs), lda = LdAcc(hs);
  const BackwardKeyLayout<Op> s(SharedCarver(smem), hs);
  const int b = blockIdx.z, h = blockIdx.y;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t j_block = int64_t{blockIdx.x} * kRows;
  const int64_t bh = int64_t{b} * NH + h;
  const float scale = 1.0f / sqrtf(static_cast<float>(hs));
  StageOp(s.ks, ldo, k, at, b, h, j_block, kRows, T);
  StageOp(s.vs, ldo, v, at, b, h, j_block, kRows, T);
  for (int e = threadIdx.x; e < kRows * lda; e += blockDim.x) s.dks[e] = s.dvs[e] = 0.0f;

  const int r0 = warp * 16;
  const int64_t j_w0 = j_block + r0;
  const int rr = r0 + lane / 2, half = lane % 2;  // the lane's key row, half of the tile's queries
  const int skew = LaneSkew(lane);
  const int64_t j = j_block + rr;
  // Queries before the block's first key see none of its keys.
  for (int64_t i0 = j_block; i0 < T; i0 += kQueryTile) {
    __syncthreads();
    StageOp(s.qt, ldo, q, at, b, h, i0, kQueryTile, T);
    StageOp(s.dot, ldo, dout, at, b, h, i0, kQueryTile, T);
    if (threadIdx.x < kQueryTile) {
      const int64_t i = i0 + threadIdx.x;
      s.lse_t[threadIdx.x] = i < T ? lse[bh * T + i] : 0.0f;
      s.delta_t[threadIdx.x] = i < T ? delta[bh * T + i] : 0.0f;
    }
    __syncthreads();
    if (j_w0 >= T || i0 + kQueryTile - 1 < j_w0) continue;  // warp-uniform: no (i >= j) pair
    ProductABt(s.st + r0 * kLdQueryTile, kLdQueryTile, s.ks + r0 * ldo, ldo, s.qt, ldo, hs,
               kQueryTile / 16);
    ProductABt(s.dpt + r0 * kLdQueryTile, kLdQueryTile, s.vs + r0 * ldo, ldo, s.dot, ldo, hs,
               kQueryTile / 16);
    __syncwarp();
    const float* srow = s.st + rr * kLdQueryTile;
    const float* dprow = s.dpt + rr * kLdQueryTile;
    Op* pdrow = s.pdt + rr * kLdQueryTileOp;
    Op* dsrow = s.dst + rr * kLdQueryTileOp;
    for (int t = 0; t < 16; ++t) {
      const int c = 16 * half + Skewed(t, 16, skew);
      const int64_t i = i0 + c;
      float pd = 0, ds = 0;
      if (j < T && i < T && i >= j) {
        const float p = expf(srow[c] * scale - s.lse_t[c]);
        const float mult = Multiplier(dropout, b, h, T, i, j);
        pd = p * mult;
        ds = p * (dprow[c] * mult - s.delta_t[c]);
      }
      pdrow[c] = ToOp<Op>(pd);
      dsrow[c] = ToOp<Op>(ds);
    }
    __syncwarp();
    AccumulateAB(s.dvs + r0 * lda, lda, s.pdt + r0 * kLdQueryTileOp, kLdQueryTileOp, s.dot, ldo,
                 kQueryTile, hs);
    AccumulateAB(s.dks + r0 * lda, lda, s.dst + r0 * kLdQueryTileOp, kLdQueryTileOp, s.qt, ldo,
                 kQueryTile, hs);
  }
  __syncthreads();
  if (j >= T) return;
  float* krow = dk + at.At(b, h, j);
  float* vrow = dv + at.At(b, h, j);
  for (int d = half * (hs / 2); d < (half + 1) * (hs / 2); ++d) {
    krow[d] = s.dks[rr * lda + d] * scale;
    vrow[d] = s.dvs[rr * lda + d];
  }
}

template <typename Op>
size_t ForwardSmem(int hs) {
  size_t bytes = 0;
  ForwardLayout<Op>(Carver{nullptr, 0}, hs, &bytes);
  return bytes;
}
template <typename Op>
size_t BackwardQuerySmem(int hs) {
  size_t bytes = 0;
  BackwardQueryLayout<Op>(Carver{nullptr, 0}, hs, &bytes);
  return bytes;
}
template <typename Op>
size_t BackwardKeySmem(int hs) {
  size_t bytes = 0;
  BackwardKeyLayout<Op>(Carver{nullptr, 0}, hs, &bytes);
  return bytes;
}
size_t MaxSmem(int hs) {  // bf16 and fp16 operands take the same room
  const size_t f = ForwardSmem<__nv_bfloat16>(hs), q = BackwardQuerySmem<__nv_bfloat16>(hs),
               k = BackwardKeySmem<__nv_bfloat16>(hs);
  return f > q ? (f > k ? f : k) : (q > k ? q : k);
}

// The kernels' dynamic shared memory limit set by AttentionInit: the most
// that head size kMaxHead needs, or the device's opt-in maximum if lower
// (then the larger head sizes take the fp32 kernels).
int g_smem_limit = -1;

unsigned RowBlocks(int64_t rows) { return static_cast<unsigned>((rows + kRows - 1) / kRows); }

}  // namespace tc

// Shared memory of each kernel for head size hs, in bytes.
size_t ForwardSmem(int hs) {
  const int tile = TileRows(PerLane(hs));
  return sizeof(float) * (kOwnRows * hs + 2 * tile * TileStride(hs));
}
size_t BackwardSmem(int hs) {
  const int tile = TileRows(PerLane(hs));
  return sizeof(float) * (2 * kOwnRows * hs + 2 * tile * TileStride(hs) + 2 * tile);
}

// The device's opt-in maximum of dynamic shared memory a block, the least
// of the devices AttentionInit has seen (0 before).
int g_optin_smem = 0;

int HeadSize(int C, int NH) {
  MINGPT_CHECK(NH > 0 && C % NH == 0, "C=%d not divisible by NH=%d", C, NH);
  const int hs = C / NH;
  const std::string why = AttentionHeadSizeError(hs);
  MINGPT_CHECK(why.empty(), "%s", why.c_str());
  return hs;
}

unsigned RowBlocks(int64_t rows) { return static_cast<unsigned>((rows + kOwnRows - 1) / kOwnRows); }

// The runtime's C entry point takes the kernel as a const void* (the
// template overload of cuda_runtime.h is nvcc's only).
template <typename Kernel>
void SetMaxDynamicShared(Kernel* kernel, size_t bytes) {
  MINGPT_CUDA_CHECK(cudaFuncSetAttribute(reinterpret_cast<const void*>(kernel),
                                         cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         static_cast<int>(bytes)));
}

// MINGPT_CUDA_ATTENTION, read at each call: "" or auto, fp32 or mma.
std::string AttentionMode() {
  const char* env = std::getenv("MINGPT_CUDA_ATTENTION");
  const std::string mode = env ? env : "";
  MINGPT_CHECK(mode.empty() || mode == "auto" || mode == "fp32" || mode == "mma",
               "MINGPT_CUDA_ATTENTION=%s: expected auto, fp32 or mma", mode.c_str());
  return mode;
}

// The tensor-core kernels for this precision and head size, unless the
// precision is fp32, the head size is not a multiple of 16 up to 128, the
// device cannot give them the shared memory, or MINGPT_CUDA_ATTENTION=fp32
// forces the fp32 kernels.
bool UseTensorCores(MatmulPrecision precision, int hs) {
  if (precision == MatmulPrecision::kFp32 || hs % 16 != 0 || hs > tc::kMaxHead) return false;
  if (AttentionMode() == "fp32") return false;
  return tc::MaxSmem(hs) <= static_cast<size_t>(tc::g_smem_limit < 0 ? 0 : tc::g_smem_limit);
}

// attention_mma.cu's kernels: MINGPT_CUDA_ATTENTION=mma, bf16 or fp16, and
// a head size they have.
bool UseMma(MatmulPrecision precision, int hs) {
  return precision != MatmulPrecision::kFp32 && MmaAttentionSupports(hs) &&
         AttentionMode() == "mma";
}

// The fp32 kernels, instantiated for the head size's channels per lane.
template <int kPerLane>
void Fp32ForwardAt(cudaStream_t stream, dim3 grid, float* out, float* lse, const float* q,
                   const float* k, const float* v, const HeadRows& q_at, const HeadRows& kv_at,
                   int T, int NH, int first_query, const DropoutSpec& dropout) {
  MINGPT_LAUNCH(ForwardKernel<kPerLane>, grid, kWarps * 32, ForwardSmem(kv_at.hs), stream, out,
                lse, q, k, v, q_at, kv_at, T, NH, first_query, dropout);
  MINGPT_CUDA_CHECK_LAUNCH();
}
void Fp32Forward(cudaStream_t stream, dim3 grid, float* out, float* lse, const float* q,
                 const float* k, const float* v, const HeadRows& q_at, const HeadRows& kv_at,
                 int T, int NH, int first_query, const DropoutSpec& dropout) {
  if (PerLane(kv_at.hs) == kSmallPerLane) {
    Fp32ForwardAt<kSmallPerLane>(stream, grid, out, lse, q, k, v, q_at, kv_at, T, NH,
                                 first_query, dropout);
  } else {
    Fp32ForwardAt<kLargePerLane>(stream, grid, out, lse, q, k, v, q_at, kv_at, T, NH,
                                 first_query, dropout);
  }
}

template <int kPerLane>
void Fp32Backward(cudaStream_t stream, float* dq, float* dk, float* dv, const float* dout,
                  const float* q, const float* k, const float* v, const float* lse,
                  const float* delta, int B, int T, const HeadRows& at, int NH,
                  const DropoutSpec& dropout) {
  const dim3 grid(RowBlocks(T), NH, B);
  MINGPT_LAUNCH(BackwardQueryKernel<kPerLane>, grid, kWarps * 32, BackwardSmem(at.hs), stream, dq,
                delta, dout, q, k, v, lse, at, T, NH, dropout);
  MINGPT_CUDA_CHECK_LAUNCH();
  MINGPT_LAUNCH(BackwardKeyKernel<kPerLane>, grid, kWarps * 32, BackwardSmem(at.hs), stream, dk,
                dv, dout, q, k, v, lse, delta, at, T, NH, dropout);
  MINGPT_CUDA_CHECK_LAUNCH();
}

template <typename Op>
void SetTensorCoreLimits(int bytes) {
  SetMaxDynamicShared(tc::ForwardKernel<Op>, bytes);
  SetMaxDynamicShared(tc::BackwardQueryKernel<Op>, bytes);
  SetMaxDynamicShared(tc::BackwardKeyKernel<Op>, bytes);
}

template <typename Op>
void TensorCoreForward(cudaStream_t stream, float* out, float* lse, const float* q,
                       const float* k, const float* v, int B, int T, const HeadRows& at, int NH,
                       const DropoutSpec& dropout) {
  MINGPT_LAUNCH(tc::ForwardKernel<Op>, dim3(tc::RowBlocks(T), NH, B), tc::kWarps * 32,
                tc::ForwardSmem<Op>(at.hs), stream, out, lse, q, k, v, at, T, NH, dropout);
  MINGPT_CUDA_CHECK_LAUNCH();
}

template <typename Op>
void TensorCoreBackward(cudaStream_t stream, float* dq, float* dk, float* dv, const float* dout,
                        const float* q, const float* k, const float* v, const float* lse, int B,
                        int T, const HeadRows& at, int NH, const DropoutSpec& dropout,
                        const float* delta) {
  const dim3 grid(tc::RowBlocks(T), NH, B);
  MINGPT_LAUNCH(tc::BackwardQueryKernel<Op>, grid, tc::kWarps * 32,
                tc::BackwardQuerySmem<Op>(at.hs), stream, dq, delta, dout, q, k, v, lse, at, T,
                NH, dropout);
  MINGPT_CUDA_CHECK_LAUNCH();
  MINGPT_LAUNCH(tc::BackwardKeyKernel<Op>, grid, tc::kWarps * 32, tc::BackwardKeySmem<Op>(at.hs),
                stream, dk, dv, dout, q, k, v, lse, delta, at, T, NH, dropout);
  MINGPT_CUDA_CHECK_LAUNCH();
}

}  // namespace

std::string AttentionHeadSizeError(int hs) {
  if (hs > kMaxHeadSize) {
    return "head size " + std::to_string(hs) + " (n_embd / n_head) is above the CUDA backend's " +
           std::to_string(kMaxHeadSize);
  }
  const size_t need = BackwardSmem(hs) > ForwardSmem(hs) ? BackwardSmem(hs) : ForwardSmem(hs);
  if (need > static_cast<size_t>(g_optin_smem)) {
    return "head size " + std::to_string(hs) + " (n_embd / n_head) needs " +
           std::to_string((need + 1023) / 1024) + " KiB of shared memory a block, this GPU " +
           std::to_string(g_optin_smem / 1024) + " KiB";
  }
  return "";
}

void AttentionInit() {
  int device = 0, optin = 0;
  MINGPT_CUDA_CHECK(cudaGetDevice(&device));
  MINGPT_CUDA_CHECK(
      cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  // The smallest of the devices initialised (one process may drive several).
  if (g_optin_smem == 0 || optin < g_optin_smem) g_optin_smem = optin;
  // Each instantiation may use what its largest head size needs, or all the
  // device allows (a head size needing more is refused: AttentionHeadSizeError).
  auto allow = [optin](size_t bytes) { return bytes < size_t(optin) ? bytes : size_t(optin); };
  constexpr int kSmallMax = 32 * kSmallPerLane;
  SetMaxDynamicShared(ForwardKernel<kSmallPerLane>, ForwardSmem(kSmallMax));
  SetMaxDynamicShared(BackwardQueryKernel<kSmallPerLane>, BackwardSmem(kSmallMax));
  SetMaxDynamicShared(BackwardKeyKernel<kSmallPerLane>, BackwardSmem(kSmallMax));
  SetMaxDynamicShared(ForwardKernel<kLargePerLane>, allow(ForwardSmem(kMaxHeadSize)));
  SetMaxDynamicShared(BackwardQueryKernel<kLargePerLane>, allow(BackwardSmem(kMaxHeadSize)));
  SetMaxDynamicShared(BackwardKeyKernel<kLargePerLane>, allow(BackwardSmem(kMaxHeadSize)));
  const size_t want = tc::MaxSmem(tc::kMaxHead);
  const int limit = static_cast<int>(want < static_cast<size_t>(optin) ? want : optin);
  SetTensorCoreLimits<__nv_bfloat16>(limit);
  SetTensorCoreLimits<__half>(limit);
  if (tc::g_smem_limit < 0 || limit < tc::g_smem_limit) tc::g_smem_limit = limit;
  MmaAttentionInit();
}

void AttentionForward(cudaStream_t stream, float* out, float* lse, const float* q,
                      const float* k, const float* v, int B, int T, int C, int NH,
                      const DropoutSpec& dropout, MatmulPrecision precision) {
  const int hs = HeadSize(C, NH);
  if (B == 0 || T == 0) return;
  const HeadRows at{int64_t{T} * C, C, hs};
  if (UseMma(precision, hs)) {
    MmaAttentionForward(stream, out, lse, q, k, v, B, T, C, NH, dropout, precision);
    return;
  }
  if (UseTensorCores(precision, hs)) {
    if (precision == MatmulPrecision::kBf16) {
      TensorCoreForward<__nv_bfloat16>(stream, out, lse, q, k, v, B, T, at, NH, dropout);
    } else {
      TensorCoreForward<__half>(stream, out, lse, q, k, v, B, T, at, NH, dropout);
    }
    return;
  }
  Fp32Forward(stream, dim3(RowBlocks(T), NH, B), out, lse, q, k, v, at, at, T, NH, 0, dropout);
}

void AttentionDecode(cudaStream_t stream, float* out, const float* q, const float* k_cache,
                     const float* v_cache, int T, int C, int NH) {
  const int hs = HeadSize(C, NH);
  MINGPT_CHECK(T >= 1, "AttentionDecode needs at least one cached row");
  const HeadRows q_at{0, C, hs}, kv_at{int64_t{T} * C, C, hs};
  Fp32Forward(stream, dim3(1, NH, 1), out, nullptr, q, k_cache, v_cache, q_at, kv_at, T, NH, T - 1,
              DropoutSpec{});
}

void AttentionBackward(cudaStream_t stream, float* dq, float* dk, float* dv, const float* dout,
                       const float* q, const float* k, const float* v, const float* out,
                       const float* lse, int B, int T, int C, int NH, const DropoutSpec& dropout,
                       float* delta, MatmulPrecision precision) {
  const int hs = HeadSize(C, NH);
  if (B == 0 || T == 0) return;
  const HeadRows at{int64_t{T} * C, C, hs};
  const int64_t rows = int64_t{B} * NH * T;
  constexpr int kDeltaThreads = 256;  // 8 rows a block
  MINGPT_LAUNCH(AttentionDeltaKernel,
                static_cast<unsigned>((rows + kDeltaThreads / 32 - 1) / (kDeltaThreads / 32)),
                kDeltaThreads, 0, stream, delta, dout, out, at, T, NH, rows);
  MINGPT_CUDA_CHECK_LAUNCH();
  if (UseMma(precision, hs)) {
    MmaAttentionBackward(stream, dq, dk, dv, dout, q, k, v, lse, delta, B, T, C, NH, dropout,
                         precision);
    return;
  }
  if (UseTensorCores(precision, hs)) {
    if (precision == MatmulPrecision::kBf16) {
      TensorCoreBackward<__nv_bfloat16>(stream, dq, dk, dv, dout, q, k, v, lse, B, T, at, NH,
                                        dropout, delta);
    } else {
      TensorCoreBackward<__half>(stream, dq, dk, dv, dout, q, k, v, lse, B, T, at, NH, dropout,
                                 delta);
    }
    return;
  }
  if (PerLane(hs) == kSmallPerLane) {
    Fp32Backward<kSmallPerLane>(stream, dq, dk, dv, dout, q, k, v, lse, delta, B, T, at, NH,
                                dropout);
  } else {
    Fp32Backward<kLargePerLane>(stream, dq, dk, dv, dout, q, k, v, lse, delta, B, T, at, NH,
                                dropout);
  }
}

}  // namespace mingpt::cuda
