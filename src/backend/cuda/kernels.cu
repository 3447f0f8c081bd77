// The CUDA backend's kernels other than attention and the matrix products.
// Each mirrors its CPU reference (backend/cpu/<op>.h, which states the math)
// operation for operation where that is cheap, so that results agree to
// float rounding; the ops and their = / += are those of backend.h:
//
//   EncoderForward     out[b,t,:] = wte[idx[b,t],:] + wpe[t,:]                        (=)
//   EncoderBackward    dwte[idx[b,t],:] += dout[b,t,:];  dwpe[t,:] += sum_b dout      (+=)
//   LayerNormForward   out = (x - mean) rstd w + b; mean[N], rstd[N] saved           (=)
//   ResidualLayerNorm  sum = x + branch; out = LayerNorm(sum)                        (=)
//   LayerNormBackward  g = dout w: dx += rstd (g - mean(g) - xhat mean(g xhat));
//                      dw += sum_n dout xhat;  db += sum_n dout                      (+=)
//   BiasBackward       dbias[OC] += sum_n dout[n,:]                                  (+=)
//   GeluForward        out = x Phi(x) = 0.5 x (1 + erf(x / sqrt 2))                  (=)
//   GeluBackward       dx = dout (Phi(x) + x phi(x))                                 (=)
//   Add / Scale        out = a + b / x *= s                                          (=)
//   Dropout            y = x keep/(1-p), keep from backend/dropout.h                  (=)
//   CrossEntropy       losses[n] = log sum_j exp(x_j - m) - (x_y - m);
//                      dlogits = (softmax(x) - onehot(y)) dloss                      (=)
//   AdamW              torch.optim.AdamW's single-tensor formula (cpu/adamw.h)        (=)
//   SumSquares         sum_i x_i^2 in double                                          (=)
//
// Shapes: [N,C] rows for the normalisations, [N,V] for the loss, flat n for
// the element-wise ops. Sums over rows (dw, db, dbias, dwpe, dwte) run in a
// fixed order without atomics: deterministic.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <type_traits>

#include "backend/cuda/cuda_check.h"
#include "backend/cuda/device.cuh"
#include "backend/cuda/kernels.h"
#include "backend/cuda/reduce.cuh"
#include "core/check.h"

namespace mingpt::cuda {
namespace {

constexpr int kThreads = 256;
constexpr float kLayerNormEps = 1e-5f;
constexpr float kInvSqrt2 = 0.70710678118654752440f;
constexpr float kInvSqrt2Pi = 0.39894228040143267794f;

// Blocks for a grid-stride loop over n items (the cap keeps the grid small;
// every loop strides, so any count is correct).
unsigned Blocks(int64_t n, int threads = kThreads) {
  const int64_t b = (n + threads - 1) / threads;
  return static_cast<unsigned>(std::clamp<int64_t>(b, 1, 65536));
}

__device__ inline int64_t GlobalIndex() {
  return static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
}
__device__ inline int64_t GlobalStride() { return static_cast<int64_t>(gridDim.x) * blockDim.x; }

// A float stored as Out: itself, or rounded to nearest even to a matrix
// product's operand type (as ToOperand rounds).
__device__ inline void StoreAs(float* p, float v) { *p = v; }
__device__ inline void StoreAs(__nv_bfloat16* p, float v) { *p = __float2bfloat16_rn(v); }
__device__ inline void StoreAs(__half* p, float v) { *p = __float2half_rn(v); }

// Calls f with `p` as a pointer to the operand type of `precision` (float,
// __nv_bfloat16 or __half): the launchers of the kernels that write operands.
template <typename F>
void WithOperandType(MatmulPrecision precision, void* p, F&& f) {
  switch (precision) {
    case MatmulPrecision::kBf16:
      f(static_cast<__nv_bfloat16*>(p));
      break;
    case MatmulPrecision::kFp16:
      f(static_cast<__half*>(p));
      break;
    case MatmulPrecision::kFp32:
      f(static_cast<float*>(p));
      break;
  }
}

// ---- encoder -----------------------------------------------------------------

__global__ void EncoderForwardKernel(float* out, const int32_t* idx, const float* wte,
                                     const float* wpe, int T, int C, int64_t total) {
  for (int64_t i = GlobalIndex(); i < total; i += GlobalStride()) {
    const int64_t n = i / C, c = i % C;
    out[i] = wte[static_cast<int64_t>(idx[n]) * C + c] + wpe[(n % T) * C + c];
  }
}

// dwte: the rows of each token summed in a fixed order, in parallel and
// without atomics (as PyTorch's deterministic embedding backward does). One
// thread per channel walking all N rows, as the CPU does, would leave the GPU
// idle: C / 128 blocks, each N dependent read-modify-writes of global memory,
// milliseconds a step at N = 16K. Instead:
//   1. a stable counting sort of the rows by token: the rows are cut into G
//      groups; TokenCount counts each group's rows of each token
//      (counts[g][v]), TokenColumnScan turns the counts into each group's
//      start within its token, TokenOffsets finds where each token's rows
//      begin (offsets[v], an exclusive scan) and TokenScatter writes the row
//      numbers in token order, ascending within a token (order[N]);
//   2. a token of more than kBucketChunk rows is cut into chunks of
//      kBucketChunk rows (chunk_offsets[v], an exclusive scan), which
//      TokenChunkSum sums in row order into partials, one block per chunk;
//   3. TokenRowSum adds each token's sum to its dwte row: its rows in order,
//      or its chunks' partials in order.
// Every sum has an order fixed by the tokens, so the bits repeat; they differ
// from the CPU's serial sums by rounding only.
constexpr int kBucketChunk = 32;              // rows a chunk of a token sums
constexpr int64_t kBucketCountCells = 1 << 22;  // the most counts[g][v] (16 MiB)
constexpr int kBucketThreads = 128;           // channels a block sums at once

struct TokenBuckets {
  int64_t groups, rows_per_group, max_chunks;
  size_t counts, totals, offsets, chunk_offsets, order, partials, bytes;  // byte offsets; size
};

TokenBuckets PlanTokenBuckets(int64_t N, int C, int V) {
  TokenBuckets p{};
  // Each group's thread counts and scatters its rows one after another, and
  // each token's thread scans the groups one after another: about sqrt(N)
  // of each balances the two (128 at N = 16K), within the count cells.
  const int64_t rows = std::max<int64_t>(32, std::llround(std::sqrt(static_cast<double>(N))));
  const int64_t most_groups = std::max<int64_t>(1, kBucketCountCells / V);
  p.groups = std::clamp<int64_t>((N + rows - 1) / rows, 1, most_groups);
  p.rows_per_group = (N + p.groups - 1) / p.groups;
  // A token of t > kBucketChunk rows has ceil(t / kBucketChunk) < 2 t / kBucketChunk chunks.
  p.max_chunks = (2 * N + kBucketChunk - 1) / kBucketChunk;
  auto take = [&](int64_t bytes) {
    const size_t at = p.bytes;
    p.bytes += (static_cast<size_t>(bytes) + 255) / 256 * 256;
    return at;
  };
  p.counts = take(p.groups * V * 4);
  p.totals = take(int64_t{V} * 4);
  p.offsets = take((int64_t{V} + 1) * 4);
  p.chunk_offsets = take((int64_t{V} + 1) * 4);
  p.order = take(N * 4);
  p.partials = take(p.max_chunks * C * 4);
  return p;
}

// counts[g][v] = the rows of group g (rows [g S, (g+1) S)) that hold token v;
// a token outside [0, V) traps.
__global__ void TokenCountKernel(int32_t* counts, const int32_t* idx, int64_t N, int V, int64_t S,
                                 int64_t groups) {
  const int64_t g = GlobalIndex();
  if (g >= groups) return;
  int32_t* count = counts + g * V;
  for (int64_t n = g * S, end = std::min<int64_t>(N, n + S); n < end; ++n) {
    const int32_t v = idx[n];
    if (v < 0 || v >= V) __trap();
    ++count[v];
  }
}

// counts[g][v] becomes the rows of token v in the groups before g; the
// column's total goes to totals[v].
__global__ void TokenColumnScanKernel(int32_t* counts, int32_t* totals, int64_t groups, int V) {
  constexpr int kAhead = 8;  // loads in flight before their stores
  for (int64_t v = GlobalIndex(); v < V; v += GlobalStride()) {
    int32_t run = 0;
    for (int64_t g0 = 0; g0 < groups; g0 += kAhead) {
      int32_t k[kAhead];
      for (int i = 0; i < kAhead; ++i) k[i] = g0 + i < groups ? counts[(g0 + i) * V + v] : 0;
      for (int i = 0; i < kAhead && g0 + i < groups; ++i) {
        counts[(g0 + i) * V + v] = run;
        run += k[i];
      }
    }
    totals[v] = run;
  }
}

// Exclusive prefix sum over the block's threads; `smem` holds 2 blockDim.x
// values. Integer sums, exact in any order.
__device__ inline int32_t BlockExclusiveScan(int32_t v, int32_t* smem) {
  const int t = threadIdx.x, n = blockDim.x;
  int32_t* in = smem;
  int32_t* out = smem + n;
  __syncthreads();  // smem may still be read by a previous call
  in[t] = v;
  __syncthreads();
  for (int d = 1; d < n; d *= 2) {
    out[t] = in[t] + (t >= d ? in[t - d] : 0);
    __syncthreads();
    int32_t* swap = in;
    in = out;
    out = swap;
  }
  return in[t] - v;
}

// The sum, in order, of dout[order[i]][c] for i in [first, last): the loads
// run ahead of the additions, which keep their order.
__device__ inline float SumRows(const float* dout, const int32_t* order, int64_t first,
                                int64_t last, int C, int c) {
  constexpr int kAhead = 4;
  float acc = 0;
  for (int64_t i = first; i < last; i += kAhead) {
    float x[kAhead];
    for (int k = 0; k < kAhead; ++k) {
      x[k] = i + k < last ? dout[int64_t{order[i + k]} * C + c] : 0.0f;
    }
    for (int k = 0; k < kAhead && i + k < last; ++k) acc += x[k];
  }
  return acc;
}

__device__ inline int32_t TokenChunks(int32_t rows) {
  return rows > kBucketChunk ? (rows + kBucketChunk - 1) / kBucketChunk : 0;
}

// One block: offsets[v] = sum_{u<v} totals[u], and chunk_offsets[v] the same
// over TokenChunks(totals[u]), each for v in [0, V].
__global__ void __launch_bounds__(1024)
    TokenOffsetsKernel(int32_t* offsets, int32_t* chunk_offsets, const int32_t* totals, int V) {
  __shared__ int32_t smem[2 * 1024];
  const int64_t per = (int64_t{V} + blockDim.x - 1) / blockDim.x;
  const int64_t v0 = std::min<int64_t>(V, threadIdx.x * per), v1 = std::min<int64_t>(V, v0 + per);
  int32_t rows = 0, chunks = 0;
  for (int64_t v = v0; v < v1; ++v) {
    rows += totals[v];
    chunks += TokenChunks(totals[v]);
  }
  int32_t row_at = BlockExclusiveScan(rows, smem);
  int32_t chunk_at = BlockExclusiveScan(chunks, smem);
  for (int64_t v = v0; v < v1; ++v) {
    offsets[v] = row_at;
    chunk_offsets[v] = chunk_at;
    row_at += totals[v];
    chunk_at += TokenChunks(totals[v]);
  }
  if (threadIdx.x == blockDim.x - 1) {
    offsets[V] = row_at;
    chunk_offsets[V] = chunk_at;
  }
}

// order[offsets[v] + i] = the i-th row (ascending) holding token v.
__global__ void TokenScatterKernel(int32_t* order, int32_t* counts, const int32_t* offsets,
                                   const int32_t* idx, int64_t N, int V, int64_t S,
                                   int64_t groups) {
  const int64_t g = GlobalIndex();
  if (g >= groups) return;
  int32_t* before = counts + g * V;
  for (int64_t n = g * S, end = std::min<int64_t>(N, n + S); n < end; ++n) {
    const int32_t v = idx[n];
    order[offsets[v] + before[v]++] = static_cast<int32_t>(n);
  }
}

// partials[j][c], for each chunk j of a token v with more than kBucketChunk
// rows (j = chunk_offsets[v] + k): the sum of the token's rows
// order[offsets[v] + k kBucketChunk ...] in row order. Blocks stride over the
// chunks; blockIdx.y picks kBucketThreads channels.
__global__ void TokenChunkSumKernel(float* partials, const float* dout, const int32_t* order,
                                    const int32_t* offsets, const int32_t* chunk_offsets, int V,
                                    int C) {
  const int c = blockIdx.y * blockDim.x + threadIdx.x;
  if (c >= C) return;
  const int32_t chunks = chunk_offsets[V];
  for (int32_t j = blockIdx.x; j < chunks; j += gridDim.x) {
    // The token of chunk j: the last v with chunk_offsets[v] <= j (a token
    // without chunks shares its offset with the next, so the last one's
    // range [chunk_offsets[v], chunk_offsets[v + 1]) holds j).
    int lo = 0, hi = V - 1;
    while (lo < hi) {
      const int mid = lo + (hi - lo + 1) / 2;
      if (chunk_offsets[mid] <= j) {
        lo = mid;
      } else {
        hi = mid - 1;
      }
    }
    const int64_t first = offsets[lo] + int64_t{j - chunk_offsets[lo]} * kBucketChunk;
    const int64_t last = std::min<int64_t>(first + kBucketChunk, offsets[lo + 1]);
    partials[int64_t{j} * C + c] = SumRows(dout, order, first, last, C, c);
  }
}

// dwte[v][c] += the sum of token v's rows: the rows themselves in order, or
// the token's chunk partials in order. Blocks stride over the tokens.
__global__ void TokenRowSumKernel(float* dwte, const float* partials, const float* dout,
                                  const int32_t* order, const int32_t* offsets,
                                  const int32_t* chunk_offsets, int V, int C) {
  const int c = blockIdx.y * blockDim.x + threadIdx.x;
  if (c >= C) return;
  for (int v = blockIdx.x; v < V; v += gridDim.x) {
    const int32_t r0 = offsets[v], r1 = offsets[v + 1];
    if (r0 == r1) continue;
    const int32_t j0 = chunk_offsets[v], j1 = chunk_offsets[v + 1];
    float acc = 0;
    if (j0 == j1) {
      acc = SumRows(dout, order, r0, r1, C, c);
    } else {
      for (int32_t j = j0; j < j1; ++j) acc += partials[int64_t{j} * C + c];
    }
    dwte[int64_t{v} * C + c] += acc;
  }
}

__global__ void EncoderBackwardWpeKernel(float* dwpe, const float* dout, int B, int T, int C) {
  const int64_t TC = static_cast<int64_t>(T) * C;
  for (int64_t i = GlobalIndex(); i < TC; i += GlobalStride()) {
    float acc = dwpe[i];
    for (int b = 0; b < B; ++b) acc += dout[b * TC + i];
    dwpe[i] = acc;
  }
}

// ---- layernorm: one warp per row ------------------------------------------------

constexpr int kRowsPerBlock = kThreads / 32;

// out = LayerNorm(xr) for one row, by the 32 lanes of a warp; two sweeps
// over the row (mean, then the centred variance) as the CPU does.
template <typename Out>
__device__ inline void NormalizeRow(Out* out, float* mean, float* rstd, const float* xr,
                                    const float* w, const float* b, int C, int lane) {
  const float inv_c = 1.0f / C;
  float sum = 0;
  for (int c = lane; c < C; c += 32) sum += xr[c];
  const float m = WarpSum(sum) * inv_c;
  float sq = 0;
  for (int c = lane; c < C; c += 32) {
    const float d = xr[c] - m;
    sq += d * d;
  }
  const float s = 1.0f / sqrtf(WarpSum(sq) * inv_c + kLayerNormEps);
  for (int c = lane; c < C; c += 32) StoreAs(out + c, (xr[c] - m) * s * w[c] + b[c]);
  if (lane == 0 && mean) *mean = m;
  if (lane == 0 && rstd) *rstd = s;
}

// out stored as Out: fp32 rows, or the next product's operands directly.
template <typename Out>
__global__ void LayerNormForwardKernel(Out* out, float* mean, float* rstd, const float* x,
                                       const float* w, const float* b, int N, int C) {
  const int64_t n = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.x / 32;
  if (n >= N) return;
  NormalizeRow(out + n * C, mean ? mean + n : nullptr, rstd ? rstd + n : nullptr, x + n * C, w,
               b, C, threadIdx.x % 32);
}

// The lane that writes sum[c] is the lane that reads it back in
// NormalizeRow (both stride by 32 from `lane`), so no barrier is needed, and
// the floats are those of Add followed by LayerNormForward.
template <typename Out>
__global__ void ResidualLayerNormKernel(float* sum, Out* out, float* mean, float* rstd,
                                        const float* x, const float* branch, const float* w,
                                        const float* b, int N, int C) {
  const int64_t n = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.x / 32;
  if (n >= N) return;
  const int lane = threadIdx.x % 32;
  float* sr = sum + n * C;
  for (int c = lane; c < C; c += 32) sr[c] = x[n * C + c] + branch[n * C + c];
  NormalizeRow(out + n * C, mean ? mean + n : nullptr, rstd ? rstd + n : nullptr, sr, w, b, C,
               lane);
}

// ---- column sums: out[c] += sum_n f(n, c), in two deterministic stages ----------
//
// Stage 1: block (32 columns x 8 row lanes) of chunk r sums its rows into
// partials[k][r][c] (k: which of the two outputs); stage 2: one thread per
// column adds the chunks in order. The chunking depends on N only.

constexpr int kColumnRowLanes = 8;
constexpr int kRowsPerChunk = 256;
constexpr int kMaxChunks = 64;

int ColumnChunks(int N) {
  return static_cast<int>(std::clamp<int64_t>((int64_t{N} + kRowsPerChunk - 1) / kRowsPerChunk,
                                              1, kMaxChunks));
}

struct BiasGradTerms {
  const float* dout;
  int C;
  __device__ void operator()(int64_t n, int c, float* a, float* b) const {
    *a = dout[n * C + c];
    *b = 0;
  }
};

// Lane y of a column holds (a, b); all threads call it. Lane 0 returns with
// the sums over the lanes, added in lane order.
__device__ inline void SumRowLanes(float (&acc)[2][kColumnRowLanes][32], float* a, float* b) {
  acc[0][threadIdx.y][threadIdx.x] = *a;
  acc[1][threadIdx.y][threadIdx.x] = *b;
  __syncthreads();
  if (threadIdx.y != 0) return;
  for (int y = 1; y < kColumnRowLanes; ++y) {
    *a += acc[0][y][threadIdx.x];
    *b += acc[1][y][threadIdx.x];
  }
}

template <typename Terms>
__global__ void ColumnPartialsKernel(float* partials, Terms terms, int N, int C) {
  __shared__ float acc[2][kColumnRowLanes][32];
  const int c = blockIdx.x * 32 + threadIdx.x;
  const int chunks = gridDim.y, r = blockIdx.y;
  const int64_t rows_per = (int64_t{N} + chunks - 1) / chunks;
  const int64_t n0 = r * rows_per, n1 = std::min<int64_t>(N, n0 + rows_per);
  float a = 0, b = 0;
  if (c < C) {
    for (int64_t n = n0 + threadIdx.y; n < n1; n += kColumnRowLanes) {
      float ta, tb;
      terms(n, c, &ta, &tb);
      a += ta;
      b += tb;
    }
  }
  SumRowLanes(acc, &a, &b);
  if (threadIdx.y == 0 && c < C) {
    partials[static_cast<int64_t>(r) * C + c] = a;
    partials[static_cast<int64_t>(chunks + r) * C + c] = b;
  }
}

// out_a[c] += sum_r partials[0][r][c]; out_b likewise (if not null). The
// same block shape: row lane y adds chunks y, y + 8, ... in order, so a
// thread loads chunks / 8 partials however many chunks there are.
__global__ void ColumnFinishKernel(float* out_a, float* out_b, const float* partials, int chunks,
                                   int C) {
  __shared__ float acc[2][kColumnRowLanes][32];
  const int c = blockIdx.x * 32 + threadIdx.x;
  float a = 0, b = 0;
  if (c < C) {
    for (int r = threadIdx.y; r < chunks; r += kColumnRowLanes) {
      a += partials[static_cast<int64_t>(r) * C + c];
      b += partials[static_cast<int64_t>(chunks + r) * C + c];
    }
  }
  SumRowLanes(acc, &a, &b);
  if (threadIdx.y == 0 && c < C) {
    out_a[c] += a;
    if (out_b) out_b[c] += b;
  }
}

void ColumnFinish(cudaStream_t stream, float* out_a, float* out_b, const float* partials,
                  int chunks, int C) {
  MINGPT_LAUNCH(ColumnFinishKernel, (C + 31) / 32, dim3(32, kColumnRowLanes), 0, stream, out_a,
                out_b, partials, chunks, C);
  MINGPT_CUDA_CHECK_LAUNCH();
}

// ---- LayerNorm backward: dx and the column partials in one pass -------------
//
// Block r owns a chunk of rows: its warps first form dx row by row,
//   dx += rstd (g - mean_c(g) - xhat mean_c(g xhat)),  g = dout w,
// then its threads (one column each, striding by the block) sum the chunk's
// rows in order into partials[0][r][c] = sum dout xhat and partials[1][r][c]
// = sum dout, for ColumnFinishKernel. The second phase reads only dout and x
// (no barrier between the phases), rows the first phase has just read, from
// L2: one pass over dout and x from memory, not two. Chunks of about
// kLayerNormChunkRows rows, their number a function of N only: deterministic.
// 32 rows keep the grid large (16K rows: 512 blocks of 8 warps, four rows a
// warp) while the finish reads 512 partials a column, 64 a thread.

constexpr int kLayerNormChunkRows = 32;
constexpr int kLayerNormMaxChunks = 1024;

int LayerNormChunks(int N) {
  return static_cast<int>(std::clamp<int64_t>(
      (int64_t{N} + kLayerNormChunkRows - 1) / kLayerNormChunkRows, 1, kLayerNormMaxChunks));
}

__global__ void LayerNormBackwardKernel(float* dx, float* partials, const float* dout,
                                        const float* x, const float* w, const float* mean,
                                        const float* rstd, int N, int C) {
  const int chunks = gridDim.x, r = blockIdx.x;
  const int64_t rows_per = (int64_t{N} + chunks - 1) / chunks;
  const int64_t n0 = r * rows_per, n1 = std::min<int64_t>(N, n0 + rows_per);
  const int lane = threadIdx.x % 32, warps = blockDim.x / 32;
  const float inv_c = 1.0f / C;
  for (int64_t n = n0 + threadIdx.x / 32; n < n1; n += warps) {
    const float* xr = x + n * C;
    const float* d = dout + n * C;
    float* g = dx + n * C;
    const float m = mean[n], s = rstd[n];
    float g_sum = 0, gx_sum = 0;
    for (int c = lane; c < C; c += 32) {
      const float gc = d[c] * w[c];
      g_sum += gc;
      gx_sum += gc * (xr[c] - m) * s;
    }
    const float g_mean = WarpSum(g_sum) * inv_c, gx_mean = WarpSum(gx_sum) * inv_c;
    for (int c = lane; c < C; c += 32) {
      const float xhat = (xr[c] - m) * s;
      g[c] += s * (d[c] * w[c] - g_mean - xhat * gx_mean);
    }
  }
  for (int c = threadIdx.x; c < C; c += blockDim.x) {
    float a = 0, b = 0;
    for (int64_t n = n0; n < n1; ++n) {
      const float d = dout[n * C + c];
      a += d * (x[n * C + c] - mean[n]) * rstd[n];
      b += d;
    }
    partials[static_cast<int64_t>(r) * C + c] = a;
    partials[static_cast<int64_t>(chunks + r) * C + c] = b;
  }
}

template <typename Terms>
void ColumnSums(cudaStream_t stream, float* out_a, float* out_b, Terms terms, int N, int C,
                float* partials) {
  if (N <= 0 || C <= 0) return;
  const int chunks = ColumnChunks(N);
  MINGPT_LAUNCH(ColumnPartialsKernel<Terms>, dim3((C + 31) / 32, chunks), dim3(32, kColumnRowLanes),
                0, stream, partials, terms, N, C);
  MINGPT_CUDA_CHECK_LAUNCH();
  ColumnFinish(stream, out_a, out_b, partials, chunks, C);
}

// ---- element-wise -------------------------------------------------------------

// out[i] = GELU(x[i]) stored as Out (float, or a matrix-product operand type).
template <typename Out>
__global__ void GeluForwardKernel(Out* out, const float* x, int64_t n) {
  for (int64_t i = GlobalIndex(); i < n; i += GlobalStride()) {
    const float xi = x[i];
    StoreAs(out + i, 0.5f * xi * (1.0f + erff(xi * kInvSqrt2)));
  }
}

__device__ inline float GeluGrad(float xi, float douti) {
  const float cdf = 0.5f * (1.0f + erff(xi * kInvSqrt2));
  const float pdf = kInvSqrt2Pi * expf(-0.5f * xi * xi);
  return douti * (cdf + xi * pdf);
}

// ColumnSums' terms for BiasBackwardOperand: dout[n, c], also stored as Out
// (the conversion the matrix product's backward would make of it).
template <typename Out>
struct BiasOperandTerms {
  Out* dst;
  const float* dout;
  int C;
  __device__ void operator()(int64_t n, int c, float* a, float* b) const {
    const int64_t i = n * C + c;
    *a = dout[i];
    *b = 0;
    StoreAs(dst + i, *a);
  }
};

template <typename Out>
__global__ void GeluBackwardKernel(Out* dx, const float* x, const float* dout, int64_t n) {
  for (int64_t i = GlobalIndex(); i < n; i += GlobalStride()) {
    StoreAs(dx + i, GeluGrad(x[i], dout[i]));
  }
}

// ColumnSums' terms for GeluBackwardOperand: the gradient of element (n, c),
// stored as Out as it is summed into the bias gradient, so that the
// gradient is made, summed and converted in one pass (each element is
// visited once, by the thread that reads its x and dout: dx may alias dout
// under fp32).
template <typename Out>
struct GeluGradTerms {
  Out* dx;
  const float* x;
  const float* dout;
  int C;
  __device__ void operator()(int64_t n, int c, float* a, float* b) const {
    const int64_t i = n * C + c;
    *a = GeluGrad(x[i], dout[i]);
    *b = 0;
    StoreAs(dx + i, *a);
  }
};

__global__ void AddKernel(float* out, const float* a, const float* b, int64_t n) {
  for (int64_t i = GlobalIndex(); i < n; i += GlobalStride()) out[i] = a[i] + b[i];
}

__global__ void ScaleKernel(float* x, int64_t n, float s) {
  for (int64_t i = GlobalIndex(); i < n; i += GlobalStride()) x[i] *= s;
}

// One thread per group of 4 elements of a row: one Philox call
// (DropoutKeep4, shared with the CPU) decides all four.
__global__ void DropoutKernel(float* y, const float* x, int B, int64_t row_size,
                              DropoutSpec spec) {
  const int64_t groups = (row_size + 3) / 4;
  const float scale = spec.scale();
  for (int64_t i = GlobalIndex(); i < B * groups; i += GlobalStride()) {
    const int64_t b = i / groups, g = i % groups;
    bool keep[4];
    DropoutKeep4(spec, b, g, keep);
    for (int k = 0; k < 4; ++k) {
      const int64_t e = 4 * g + k;
      if (e < row_size) y[b * row_size + e] = x[b * row_size + e] * (keep[k] ? scale : 0.0f);
    }
  }
}

// ---- cross-entropy: one block per row ---------------------------------------------

__global__ void CrossEntropyKernel(float* losses, float* dlogits, const float* logits,
                                   const int32_t* targets, int V, float dloss, bool backward) {
  __shared__ float smem[32];
  const int64_t n = blockIdx.x;
  const float* x = logits + n * V;
  const int32_t y = targets[n];
  if (y < 0 || y >= V) {
    if (threadIdx.x == 0) printf("cross-entropy: target %d outside [0, %d)\n", y, V);
    __trap();
  }
  float m = -INFINITY;
  for (int j = threadIdx.x; j < V; j += blockDim.x) m = fmaxf(m, x[j]);
  m = BlockReduce<float, true>(m, smem);
  // Read before the barriers of the next reduction: with dlogits == logits,
  // x[y] is overwritten after them.
  const float x_y = x[y];
  float sum = 0;
  for (int j = threadIdx.x; j < V; j += blockDim.x) sum += expf(x[j] - m);
  sum = BlockReduce<float>(sum, smem);
  if (losses && threadIdx.x == 0) losses[n] = logf(sum) - (x_y - m);
  if (!backward) return;
  float* d = dlogits + n * V;
  const float s = dloss / sum;
  for (int j = threadIdx.x; j < V; j += blockDim.x) d[j] = expf(x[j] - m) * s;
  __syncthreads();
  if (threadIdx.x == 0) d[y] -= dloss;
}

// ---- AdamW ------------------------------------------------------------------------

__device__ inline void AdamWElement(float* p, const float* g, float* m, float* v, int64_t i,
                                    const AdamWScalars& s, float decay) {
  const float gi = g[i] * s.grad_scale;
  // torch.lerp: start + w (end - start), or end - (end - start)(1 - w).
  const float mi = s.small_weight ? m[i] + s.w1 * (gi - m[i]) : gi - (gi - m[i]) * (1.0f - s.w1);
  const float vi = v[i] * s.b2 + s.w2 * gi * gi;
  m[i] = mi;
  v[i] = vi;
  const float denom = sqrtf(vi) / s.bc2_sqrt + s.eps;
  p[i] = p[i] * decay + (-s.step_size * mi) / denom;
}

// Block b works on kAdamWBlockItems elements of the tensor whose blocks
// (block_end, a running sum) hold it: all of a unit's tensors in one launch,
// instead of one launch per tensor, most of them microsecond-sized.
constexpr int kAdamWBlockItems = 4 * kThreads;

__global__ void AdamWTensorsKernel(float* p, const float* g, float* m, float* v,
                                   AdamWTensorBatch batch, AdamWScalars s) {
  int k = 0;
  while (static_cast<int>(blockIdx.x) >= batch.block_end[k]) ++k;
  const int first = k == 0 ? 0 : batch.block_end[k - 1];
  const int64_t lo = batch.begin[k] + int64_t{kAdamWBlockItems} * (blockIdx.x - first);
  const int64_t hi = std::min(lo + kAdamWBlockItems, batch.begin[k] + batch.n[k]);
  for (int64_t i = lo + threadIdx.x; i < hi; i += blockDim.x) {
    AdamWElement(p, g, m, v, i, s, batch.decay[k]);
  }
}

// ---- sum of squares ------------------------------------------------------------------

constexpr int kSumSquaresBlocks = 256;

__global__ void SumSquaresPartialKernel(double* partials, const float* x, int64_t n) {
  __shared__ double smem[32];
  double acc = 0;
  for (int64_t i = GlobalIndex(); i < n; i += GlobalStride()) {
    const double xi = x[i];
    acc += xi * xi;
  }
  acc = BlockReduce<double>(acc, smem);
  if (threadIdx.x == 0) partials[blockIdx.x] = acc;
}

__global__ void SumSquaresFinishKernel(double* result, const double* partials, int count) {
  __shared__ double smem[32];
  double acc = 0;
  for (int i = threadIdx.x; i < count; i += blockDim.x) acc += partials[i];
  acc = BlockReduce<double>(acc, smem);
  if (threadIdx.x == 0) *result = acc;
}

// ---- conversions -----------------------------------------------------------------------

__global__ void ToBf16Kernel(__nv_bfloat16* dst, const float* src, int64_t n) {
  for (int64_t i = GlobalIndex(); i < n; i += GlobalStride()) dst[i] = __float2bfloat16_rn(src[i]);
}

__global__ void ToFp16Kernel(__half* dst, const float* src, int64_t n) {
  for (int64_t i = GlobalIndex(); i < n; i += GlobalStride()) dst[i] = __float2half_rn(src[i]);
}

unsigned RowBlocks(int N) { return static_cast<unsigned>((N + kRowsPerBlock - 1) / kRowsPerBlock); }

}  // namespace

// ---- launchers ------------------------------------------------------------------------

void EncoderForward(cudaStream_t stream, float* out, const int32_t* idx, const float* wte,
                    const float* wpe, int B, int T, int C) {
  const int64_t total = int64_t{B} * T * C;
  if (total == 0) return;
  MINGPT_LAUNCH(EncoderForwardKernel, Blocks(total), kThreads, 0, stream, out, idx, wte, wpe, T, C,
                total);
  MINGPT_CUDA_CHECK_LAUNCH();
}

size_t EncoderBackwardScratchBytes(int64_t N, int C, int V) {
  return PlanTokenBuckets(N, C, V).bytes;
}

void EncoderBackward(cudaStream_t stream, float* dwte, float* dwpe, const float* dout,
                     const int32_t* idx, int B, int T, int C, int V, void* scratch) {
  const int64_t N = int64_t{B} * T;
  if (N * C == 0) return;
  MINGPT_CHECK(V > 0 && N < (int64_t{1} << 31), "EncoderBackward: V %d, %lld rows", V,
               static_cast<long long>(N));
  const TokenBuckets p = PlanTokenBuckets(N, C, V);
  char* base = static_cast<char*>(scratch);
  auto* counts = reinterpret_cast<int32_t*>(base + p.counts);
  auto* offsets = reinterpret_cast<int32_t*>(base + p.offsets);
  auto* chunk_offsets = reinterpret_cast<int32_t*>(base + p.chunk_offsets);
  auto* order = reinterpret_cast<int32_t*>(base + p.order);
  auto* partials = reinterpret_cast<float*>(base + p.partials);
  auto* totals = reinterpret_cast<int32_t*>(base + p.totals);
  MINGPT_CUDA_CHECK(cudaMemsetAsync(counts, 0, static_cast<size_t>(p.groups) * V * 4, stream));
  const unsigned group_blocks = static_cast<unsigned>((p.groups + 127) / 128);
  MINGPT_LAUNCH(TokenCountKernel, group_blocks, 128, 0, stream, counts, idx, N, V,
                p.rows_per_group, p.groups);
  MINGPT_CUDA_CHECK_LAUNCH();
  MINGPT_LAUNCH(TokenColumnScanKernel, Blocks(V), kThreads, 0, stream, counts, totals, p.groups,
                V);
  MINGPT_CUDA_CHECK_LAUNCH();
  MINGPT_LAUNCH(TokenOffsetsKernel, 1, 1024, 0, stream, offsets, chunk_offsets, totals, V);
  MINGPT_CUDA_CHECK_LAUNCH();
  MINGPT_LAUNCH(TokenScatterKernel, group_blocks, 128, 0, stream, order, counts, offsets, idx, N, V,
                p.rows_per_group, p.groups);
  MINGPT_CUDA_CHECK_LAUNCH();
  const unsigned channel_tiles = static_cast<unsigned>((C + kBucketThreads - 1) / kBucketThreads);
  MINGPT_LAUNCH(TokenChunkSumKernel,
                dim3(static_cast<unsigned>(std::clamp<int64_t>(p.max_chunks, 1, 4096)),
                     channel_tiles),
                kBucketThreads, 0, stream, partials, dout, order, offsets, chunk_offsets, V, C);
  MINGPT_CUDA_CHECK_LAUNCH();
  MINGPT_LAUNCH(TokenRowSumKernel,
                dim3(static_cast<unsigned>(std::min(V, 4096)), channel_tiles), kBucketThreads, 0,
                stream, dwte, partials, dout, order, offsets, chunk_offsets, V, C);
  MINGPT_CUDA_CHECK_LAUNCH();
  MINGPT_LAUNCH(EncoderBackwardWpeKernel, Blocks(int64_t{T} * C), kThreads, 0, stream, dwpe, dout,
                B, T, C);
  MINGPT_CUDA_CHECK_LAUNCH();
}

void LayerNormForward(cudaStream_t stream, float* out, float* mean, float* rstd, const float* x,
                      const float* w, const float* b, int N, int C) {
  if (N == 0) return;
  MINGPT_LAUNCH(LayerNormForwardKernel<float>, RowBlocks(N), kThreads, 0, stream, out, mean, rstd,
                x, w, b, N, C);
  MINGPT_CUDA_CHECK_LAUNCH();
}

void LayerNormForwardOperand(cudaStream_t stream, void* out, float* mean, float* rstd,
                             const float* x, const float* w, const float* b, int N, int C,
                             MatmulPrecision precision) {
  if (N == 0) return;
  WithOperandType(precision, out, [&](auto* o) {
    using Out = std::remove_pointer_t<decltype(o)>;
    MINGPT_LAUNCH(LayerNormForwardKernel<Out>, RowBlocks(N), kThreads, 0, stream, o, mean, rstd, x,
                  w, b, N, C);
  });
  MINGPT_CUDA_CHECK_LAUNCH();
}

void ResidualLayerNormForward(cudaStream_t stream, float* sum, float* out, float* mean,
                              float* rstd, const float* x, const float* branch, const float* w,
                              const float* b, int N, int C) {
  if (N == 0) return;
  MINGPT_LAUNCH(ResidualLayerNormKernel<float>, RowBlocks(N), kThreads, 0, stream, sum, out, mean,
                rstd, x, branch, w, b, N, C);
  MINGPT_CUDA_CHECK_LAUNCH();
}

void ResidualLayerNormForwardOperand(cudaStream_t stream, float* sum, void* out, float* mean,
                                     float* rstd, const float* x, const float* branch,
                                     const float* w, const float* b, int N, int C,
                                     MatmulPrecision precision) {
  if (N == 0) return;
  WithOperandType(precision, out, [&](auto* o) {
    using Out = std::remove_pointer_t<decltype(o)>;
    MINGPT_LAUNCH(ResidualLayerNormKernel<Out>, RowBlocks(N), kThreads, 0, stream, sum, o, mean,
                  rstd, x, branch, w, b, N, C);
  });
  MINGPT_CUDA_CHECK_LAUNCH();
}

void LayerNormBackward(cudaStream_t stream, float* dx, float* dw, float* db, const float* dout,
                       const float* x, const float* w, const float* mean, const float* rstd, int N,
                       int C, float* partials) {
  if (N == 0) return;
  const int chunks = LayerNormChunks(N);
  MINGPT_LAUNCH(LayerNormBackwardKernel, chunks, kThreads, 0, stream, dx, partials, dout, x, w,
                mean, rstd, N, C);
  MINGPT_CUDA_CHECK_LAUNCH();
  ColumnFinish(stream, dw, db, partials, chunks, C);
}

void BiasBackward(cudaStream_t stream, float* dbias, const float* dout, int N, int OC,
                  float* partials) {
  ColumnSums(stream, dbias, nullptr, BiasGradTerms{dout, OC}, N, OC, partials);
}

int64_t ColumnPartialsFloats(int N, int C) {
  return 2 * int64_t{std::max(ColumnChunks(N), LayerNormChunks(N))} * C;
}

void GeluForward(cudaStream_t stream, float* out, const float* x, int64_t n) {
  if (n == 0) return;
  MINGPT_LAUNCH(GeluForwardKernel<float>, Blocks(n), kThreads, 0, stream, out, x, n);
  MINGPT_CUDA_CHECK_LAUNCH();
}

void GeluForwardOperand(cudaStream_t stream, void* out, const float* x, int64_t n,
                        MatmulPrecision precision) {
  if (n == 0) return;
  WithOperandType(precision, out, [&](auto* o) {
    using Out = std::remove_pointer_t<decltype(o)>;
    MINGPT_LAUNCH(GeluForwardKernel<Out>, Blocks(n), kThreads, 0, stream, o, x, n);
  });
  MINGPT_CUDA_CHECK_LAUNCH();
}

void BiasBackwardOperand(cudaStream_t stream, float* dbias, void* dst, const float* dout, int N,
                         int OC, MatmulPrecision precision, float* partials) {
  WithOperandType(precision, dst, [&](auto* d) {
    using Out = std::remove_pointer_t<decltype(d)>;
    ColumnSums(stream, dbias, nullptr, BiasOperandTerms<Out>{d, dout, OC}, N, OC, partials);
  });
}

void GeluBackwardOperand(cudaStream_t stream, void* dx, float* dbias, const float* x,
                         const float* dout, int N, int C, MatmulPrecision precision,
                         float* partials) {
  const int64_t n = int64_t{N} * C;
  if (n == 0) return;
  WithOperandType(precision, dx, [&](auto* d) {
    using Out = std::remove_pointer_t<decltype(d)>;
    if (dbias) {
      ColumnSums(stream, dbias, nullptr, GeluGradTerms<Out>{d, x, dout, C}, N, C, partials);
    } else {
      MINGPT_LAUNCH(GeluBackwardKernel<Out>, Blocks(n), kThreads, 0, stream, d, x, dout, n);
    }
  });
  MINGPT_CUDA_CHECK_LAUNCH();
}

void GeluBackward(cudaStream_t stream, float* dx, const float* x, const float* dout, int64_t n) {
  if (n == 0) return;
  MINGPT_LAUNCH(GeluBackwardKernel<float>, Blocks(n), kThreads, 0, stream, dx, x, dout, n);
  MINGPT_CUDA_CHECK_LAUNCH();
}

void Add(cudaStream_t stream, float* out, const float* a, const float* b, int64_t n) {
  if (n == 0) return;
  MINGPT_LAUNCH(AddKernel, Blocks(n), kThreads, 0, stream, out, a, b, n);
  MINGPT_CUDA_CHECK_LAUNCH();
}

void Scale(cudaStream_t stream, float* x, int64_t n, float s) {
  if (n == 0) return;
  MINGPT_LAUNCH(ScaleKernel, Blocks(n), kThreads, 0, stream, x, n, s);
  MINGPT_CUDA_CHECK_LAUNCH();
}

void Dropout(cudaStream_t stream, float* y, const float* x, int B, int64_t row_size,
             const DropoutSpec& dropout) {
  const int64_t n = int64_t{B} * row_size;
  if (n == 0) return;
  if (!dropout.enabled()) {
    if (y != x) {
      MINGPT_CUDA_CHECK(
          cudaMemcpyAsync(y, x, n * sizeof(float), cudaMemcpyDeviceToDevice, stream));
    }
    return;
  }
  MINGPT_LAUNCH(DropoutKernel, Blocks(int64_t{B} * ((row_size + 3) / 4)), kThreads, 0, stream, y, x,
                B, row_size, dropout);
  MINGPT_CUDA_CHECK_LAUNCH();
}

void CrossEntropyForward(cudaStream_t stream, float* losses, const float* logits,
                         const int32_t* targets, int N, int V) {
  if (N == 0) return;
  MINGPT_LAUNCH(CrossEntropyKernel, N, kThreads, 0, stream, losses, nullptr, logits, targets, V,
                0.0f, false);
  MINGPT_CUDA_CHECK_LAUNCH();
}

void CrossEntropyForwardBackward(cudaStream_t stream, float* losses, float* dlogits,
                                 const float* logits, const int32_t* targets, int N, int V,
                                 float dloss) {
  if (N == 0) return;
  MINGPT_LAUNCH(CrossEntropyKernel, N, kThreads, 0, stream, losses, dlogits, logits, targets, V,
                dloss, true);
  MINGPT_CUDA_CHECK_LAUNCH();
}

AdamWScalars MakeAdamWScalars(double lr, double beta1, double beta2, double eps, double wd, int t,
                              float grad_scale) {
  MINGPT_CHECK(t >= 1, "AdamW step t=%d must be 1-based", t);
  AdamWScalars s;
  s.decay = wd != 0.0 ? static_cast<float>(1.0 - lr * wd) : 1.0f;
  s.w1 = static_cast<float>(1.0 - beta1);
  s.b2 = static_cast<float>(beta2);
  s.w2 = static_cast<float>(1.0 - beta2);
  s.step_size = static_cast<float>(lr / (1.0 - std::pow(beta1, t)));
  s.bc2_sqrt = static_cast<float>(std::sqrt(1.0 - std::pow(beta2, t)));
  s.eps = static_cast<float>(eps);
  s.grad_scale = grad_scale;
  s.small_weight = std::abs(s.w1) < 0.5f;
  return s;
}

void AdamWTensors(cudaStream_t stream, float* p, const float* g, float* m, float* v,
                  AdamWTensorBatch batch, const AdamWScalars& s) {
  MINGPT_CHECK(batch.count >= 0 && batch.count <= kAdamWMaxTensors,
               "AdamWTensors: %d tensors, at most %d a launch", batch.count, kAdamWMaxTensors);
  int64_t blocks = 0;
  for (int k = 0; k < batch.count; ++k) {
    blocks += (batch.n[k] + kAdamWBlockItems - 1) / kAdamWBlockItems;
    MINGPT_CHECK(blocks <= INT32_MAX, "AdamWTensors: %lld blocks, more than a grid holds",
                 static_cast<long long>(blocks));
    batch.block_end[k] = static_cast<int>(blocks);
  }
  if (blocks == 0) return;
  MINGPT_LAUNCH(AdamWTensorsKernel, static_cast<unsigned>(blocks), kThreads, 0, stream, p, g, m, v,
                batch, s);
  MINGPT_CUDA_CHECK_LAUNCH();
}

int SumSquaresPartials() { return kSumSquaresBlocks; }

void SumSquares(cudaStream_t stream, double* result, const float* x, int64_t n,
                double* partials) {
  // A fixed grid: the order of the sum depends on n only.
  MINGPT_LAUNCH(SumSquaresPartialKernel, kSumSquaresBlocks, kThreads, 0, stream, partials, x, n);
  MINGPT_CUDA_CHECK_LAUNCH();
  MINGPT_LAUNCH(SumSquaresFinishKernel, 1, kThreads, 0, stream, result, partials,
                kSumSquaresBlocks);
  MINGPT_CUDA_CHECK_LAUNCH();
}

void ConvertToBf16(cudaStream_t stream, void* dst, const float* src, int64_t n) {
  if (n == 0) return;
  MINGPT_LAUNCH(ToBf16Kernel, Blocks(n), kThreads, 0, stream, static_cast<__nv_bfloat16*>(dst), src,
                n);
  MINGPT_CUDA_CHECK_LAUNCH();
}

void ConvertToFp16(cudaStream_t stream, void* dst, const float* src, int64_t n) {
  if (n == 0) return;
  MINGPT_LAUNCH(ToFp16Kernel, Blocks(n), kThreads, 0, stream, static_cast<__half*>(dst), src, n);
  MINGPT_CUDA_CHECK_LAUNCH();
}

}  // namespace mingpt::cuda
