// Causal multi-head self-attention, flash style: tiles of 32 keys (or
// queries) staged in shared memory, an online softmax over the tiles, and no
// T x T matrix anywhere. The math is cpu/attention.h's, per batch b and head
// h with hs = C/NH and rows i (queries), j (keys), j <= i:
//   forward:  S = q_i . k_j / sqrt(hs);  P = softmax_j(S);
//             lse_i = log sum_j exp(S_ij)                         (=) [B,NH,T]
//             out_i = sum_j P_ij mult_ij v_j                      (=) [B,T,C]
//   backward: P_ij = exp(S_ij - lse_i) recomputed;  dP_ij = (dout_i . v_j) mult_ij
//             D_i = sum_j P_ij dP_ij;  dS_ij = P_ij (dP_ij - D_i)
//             dq_i = sum_j dS_ij k_j / sqrt(hs)                   (=)
//             dk_j = sum_i dS_ij q_i / sqrt(hs);  dv_j = sum_i P_ij mult_ij dout_i   (=)
// mult_ij = keep/(1-p) of dropout mask element (h*T + i)*T + j of batch row b
// (backend/dropout.h, the CPU's Philox), or 1 without dropout.
//
// Work split: a block owns 16 rows (4 warps x 4 rows) of one (b, h) and
// walks tiles of 32 partner rows. A warp computes one own row's 32 scores at
// a time, lane = partner row; the row's accumulators (output, dq, dk, dv)
// are spread over the lanes by channel (d = lane + 32 kk) and updated with
// the tile's probabilities broadcast by shuffles. The backward runs two
// kernels, query-major (D and dq) then key-major (dk and dv), so that no
// gradient is accumulated by more than one block: no atomics, deterministic.
#include <cmath>

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
constexpr int kTile = 32;                        // partner rows per tile (= lanes)
constexpr int kMaxPerLane = kMaxHeadSize / 32;   // channels per lane

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
__device__ inline void AccumulateRows(float (&acc)[kMaxPerLane], float weight, const float* tile,
                                      int stride, int count, int hs, int lane) {
  for (int jj = 0; jj < count; ++jj) {
    const float w = __shfl_sync(kFullMask, weight, jj);
    const float* row = tile + jj * stride;
#pragma unroll
    for (int kk = 0; kk < kMaxPerLane; ++kk) {
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
__global__ void __launch_bounds__(kWarps * 32)
    ForwardKernel(float* out, float* lse, const float* q, const float* k, const float* v,
                  HeadRows q_at, HeadRows kv_at, int T, int NH, int first_query,
                  DropoutSpec dropout) {
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

  float m[kRowsPerWarp], l[kRowsPerWarp], o[kRowsPerWarp][kMaxPerLane];
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
    m[r] = -INFINITY;
    l[r] = 0;
#pragma unroll
    for (int kk = 0; kk < kMaxPerLane; ++kk) o[r][kk] = 0;
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
      const float s = j <= i ? Dot(qs + own * hs, kt + lane * stride, hs) : -INFINITY;
      // Tile 0 holds key 0 of every row, so m_new is finite from the first
      // tile on, and the first correction is exp(-inf) = 0.
      const float m_new = fmaxf(m[r], WarpMax(s));
      const float corr = expf(m[r] - m_new);
      const float p = j <= i ? expf(s - m_new) : 0.0f;
      l[r] = l[r] * corr + WarpSum(p);  // the sum is of P; the output of dropped P
      const float pd = j <= i ? p * Multiplier(dropout, b, h, T, i, j) : 0.0f;
#pragma unroll
      for (int kk = 0; kk < kMaxPerLane; ++kk) o[r][kk] *= corr;
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
    for (int kk = 0; kk < kMaxPerLane; ++kk) {
      const int d = lane + 32 * kk;
      if (d < hs) orow[d] = o[r][kk] * inv;
    }
    if (lse && lane == 0) lse[(int64_t{b} * NH + h) * T + i] = m[r] + logf(l[r]);
  }
}

// ---- backward, query-major: D_i and dq_i ----------------------------------------------

// P_ij and dP_ij (times the mask) of own query row i against the tile's key
// j = j0 + lane; both 0 where j > i.
__device__ inline void ProbabilityAndGrad(float* p, float* dp, const float* qs_row,
                                          const float* do_row, const float* kt, const float* vt,
                                          int stride, int hs, float lse_i, int64_t i, int64_t j,
                                          const DropoutSpec& dropout, int b, int h, int T) {
  const int lane = threadIdx.x % 32;
  if (j > i) {
    *p = 0;
    *dp = 0;
    return;
  }
  *p = expf(Dot(qs_row, kt + lane * stride, hs) - lse_i);
  *dp = Dot(do_row, vt + lane * stride, hs) * Multiplier(dropout, b, h, T, i, j);
}

__global__ void __launch_bounds__(kWarps * 32)
    BackwardQueryKernel(float* dq, float* delta, const float* dout, const float* q,
                        const float* k, const float* v, const float* lse, HeadRows at, int T,
                        int NH, DropoutSpec dropout) {
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

  float lse_r[kRowsPerWarp], D[kRowsPerWarp], acc[kRowsPerWarp][kMaxPerLane];
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
    const int64_t i = i_block + warp * kRowsPerWarp + r;
    lse_r[r] = i < T ? lse[bh * T + i] : 0.0f;
    D[r] = 0;
#pragma unroll
    for (int kk = 0; kk < kMaxPerLane; ++kk) acc[r][kk] = 0;
  }
  const int64_t i_last = Min64(i_block + kOwnRows - 1, int64_t{T} - 1);
  // Pass 0 forms D_i (the output is not an argument, so not dout_i . out_i);
  // pass 1 accumulates dq_i sqrt(hs) = sum_j dS_ij k_j.
  for (int pass = 0; pass < 2; ++pass) {
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
        ProbabilityAndGrad(&p, &dp, qs + own * hs, dos + own * hs, kt, vt, stride, hs, lse_r[r],
                           i, j0 + lane, dropout, b, h, T);
        if (pass == 0) {
          D[r] += WarpSum(p * dp);
        } else {
          AccumulateRows(acc[r], p * (dp - D[r]), kt, stride,
                         static_cast<int>(Min64(kTile, i - j0 + 1)), hs, lane);
        }
      }
    }
  }
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
    const int64_t i = i_block + warp * kRowsPerWarp + r;
    if (i >= T) continue;
    float* row = dq + at.At(b, h, i);
#pragma unroll
    for (int kk = 0; kk < kMaxPerLane; ++kk) {
      const int d = lane + 32 * kk;
      if (d < hs) row[d] = acc[r][kk] * scale;
    }
    if (lane == 0) delta[bh * T + i] = D[r];
  }
}

// ---- backward, key-major: dk_j and dv_j -------------------------------------------------

__global__ void __launch_bounds__(kWarps * 32)
    BackwardKeyKernel(float* dk, float* dv, const float* dout, const float* q, const float* k,
                      const float* v, const float* lse, const float* delta, HeadRows at, int T,
                      int NH, DropoutSpec dropout) {
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

  float dk_acc[kRowsPerWarp][kMaxPerLane], dv_acc[kRowsPerWarp][kMaxPerLane];
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
#pragma unroll
    for (int kk = 0; kk < kMaxPerLane; ++kk) dk_acc[r][kk] = dv_acc[r][kk] = 0;
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
      if (i >= j && i < T) {
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
    for (int kk = 0; kk < kMaxPerLane; ++kk) {
      const int d = lane + 32 * kk;
      if (d < hs) {
        dk_row[d] = dk_acc[r][kk];
        dv_row[d] = dv_acc[r][kk];
      }
    }
  }
}

// Shared memory of each kernel for head size hs, in bytes.
size_t ForwardSmem(int hs) {
  return sizeof(float) * (kOwnRows * hs + 2 * kTile * TileStride(hs));
}
size_t BackwardSmem(int hs) {
  return sizeof(float) * (2 * kOwnRows * hs + 2 * kTile * TileStride(hs) + 2 * kTile);
}

int HeadSize(int C, int NH) {
  MINGPT_CHECK(NH > 0 && C % NH == 0, "C=%d not divisible by NH=%d", C, NH);
  const int hs = C / NH;
  MINGPT_CHECK(hs <= kMaxHeadSize, "head size %d above the CUDA kernels' %d", hs, kMaxHeadSize);
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

}  // namespace

void AttentionInit() {
  SetMaxDynamicShared(ForwardKernel, ForwardSmem(kMaxHeadSize));
  SetMaxDynamicShared(BackwardQueryKernel, BackwardSmem(kMaxHeadSize));
  SetMaxDynamicShared(BackwardKeyKernel, BackwardSmem(kMaxHeadSize));
}

void AttentionForward(cudaStream_t stream, float* out, float* lse, const float* q,
                      const float* k, const float* v, int B, int T, int C, int NH,
                      const DropoutSpec& dropout) {
  const int hs = HeadSize(C, NH);
  if (B == 0 || T == 0) return;
  const HeadRows at{int64_t{T} * C, C, hs};
  MINGPT_LAUNCH(ForwardKernel, dim3(RowBlocks(T), NH, B), kWarps * 32, ForwardSmem(hs), stream, out,
                lse, q, k, v, at, at, T, NH, 0, dropout);
  MINGPT_CUDA_CHECK_LAUNCH();
}

void AttentionDecode(cudaStream_t stream, float* out, const float* q, const float* k_cache,
                     const float* v_cache, int T, int C, int NH) {
  const int hs = HeadSize(C, NH);
  MINGPT_CHECK(T >= 1, "AttentionDecode needs at least one cached row");
  const HeadRows q_at{0, C, hs}, kv_at{int64_t{T} * C, C, hs};
  MINGPT_LAUNCH(ForwardKernel, dim3(1, NH, 1), kWarps * 32, ForwardSmem(hs), stream, out, nullptr,
                q, k_cache, v_cache, q_at, kv_at, T, NH, T - 1, DropoutSpec{});
  MINGPT_CUDA_CHECK_LAUNCH();
}

void AttentionBackward(cudaStream_t stream, float* dq, float* dk, float* dv, const float* dout,
                       const float* q, const float* k, const float* v, const float* lse,
                       int B, int T, int C, int NH, const DropoutSpec& dropout, float* delta) {
  const int hs = HeadSize(C, NH);
  if (B == 0 || T == 0) return;
  const HeadRows at{int64_t{T} * C, C, hs};
  const dim3 grid(RowBlocks(T), NH, B);
  MINGPT_LAUNCH(BackwardQueryKernel, grid, kWarps * 32, BackwardSmem(hs), stream, dq, delta, dout,
                q, k, v, lse, at, T, NH, dropout);
  MINGPT_CUDA_CHECK_LAUNCH();
  MINGPT_LAUNCH(BackwardKeyKernel, grid, kWarps * 32, BackwardSmem(hs), stream, dk, dv, dout, q, k,
                v, lse, delta, at, T, NH, dropout);
  MINGPT_CUDA_CHECK_LAUNCH();
}

}  // namespace mingpt::cuda
