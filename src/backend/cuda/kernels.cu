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
#include <cstdio>

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

// ---- encoder -----------------------------------------------------------------

__global__ void EncoderForwardKernel(float* out, const int32_t* idx, const float* wte,
                                     const float* wpe, int T, int C, int64_t total) {
  for (int64_t i = GlobalIndex(); i < total; i += GlobalStride()) {
    const int64_t n = i / C, c = i % C;
    out[i] = wte[static_cast<int64_t>(idx[n]) * C + c] + wpe[(n % T) * C + c];
  }
}

// One thread per channel walks the rows in order (as the CPU does): rows
// with the same token add into the same dwte row without a race.
__global__ void EncoderBackwardWteKernel(float* dwte, const float* dout, const int32_t* idx,
                                         int64_t N, int C) {
  const int64_t c = GlobalIndex();
  if (c >= C) return;
  for (int64_t n = 0; n < N; ++n) dwte[static_cast<int64_t>(idx[n]) * C + c] += dout[n * C + c];
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
__device__ inline void NormalizeRow(float* out, float* mean, float* rstd, const float* xr,
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
  for (int c = lane; c < C; c += 32) out[c] = (xr[c] - m) * s * w[c] + b[c];
  if (lane == 0 && mean) *mean = m;
  if (lane == 0 && rstd) *rstd = s;
}

__global__ void LayerNormForwardKernel(float* out, float* mean, float* rstd, const float* x,
                                       const float* w, const float* b, int N, int C) {
  const int64_t n = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.x / 32;
  if (n >= N) return;
  NormalizeRow(out + n * C, mean ? mean + n : nullptr, rstd ? rstd + n : nullptr, x + n * C, w,
               b, C, threadIdx.x % 32);
}

// The lane that writes sum[c] is the lane that reads it back in
// NormalizeRow (both stride by 32 from `lane`), so no barrier is needed, and
// the floats are those of Add followed by LayerNormForward.
__global__ void ResidualLayerNormKernel(float* sum, float* out, float* mean, float* rstd,
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

// dx += rstd (g - mean_c(g) - xhat mean_c(g xhat)), g = dout w, per row.
__global__ void LayerNormBackwardDxKernel(float* dx, const float* dout, const float* x,
                                          const float* w, const float* mean, const float* rstd,
                                          int N, int C) {
  const int64_t n = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.x / 32;
  if (n >= N) return;
  const int lane = threadIdx.x % 32;
  const float* xr = x + n * C;
  const float* d = dout + n * C;
  float* g = dx + n * C;
  const float m = mean[n], s = rstd[n], inv_c = 1.0f / C;
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

// The two terms of LayerNorm's parameter gradients: dout xhat and dout.
struct LayerNormGradTerms {
  const float *dout, *x, *mean, *rstd;
  int C;
  __device__ void operator()(int64_t n, int c, float* a, float* b) const {
    const float d = dout[n * C + c];
    *a = d * (x[n * C + c] - mean[n]) * rstd[n];
    *b = d;
  }
};

struct BiasGradTerms {
  const float* dout;
  int C;
  __device__ void operator()(int64_t n, int c, float* a, float* b) const {
    *a = dout[n * C + c];
    *b = 0;
  }
};

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
  acc[0][threadIdx.y][threadIdx.x] = a;
  acc[1][threadIdx.y][threadIdx.x] = b;
  __syncthreads();
  if (threadIdx.y == 0 && c < C) {
    for (int y = 1; y < kColumnRowLanes; ++y) {
      a += acc[0][y][threadIdx.x];
      b += acc[1][y][threadIdx.x];
    }
    partials[static_cast<int64_t>(r) * C + c] = a;
    partials[static_cast<int64_t>(chunks + r) * C + c] = b;
  }
}

// out_a[c] += sum_r partials[0][r][c]; out_b likewise (if not null).
__global__ void ColumnFinishKernel(float* out_a, float* out_b, const float* partials, int chunks,
                                   int C) {
  const int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= C) return;
  float a = 0, b = 0;
  for (int r = 0; r < chunks; ++r) {
    a += partials[static_cast<int64_t>(r) * C + c];
    b += partials[static_cast<int64_t>(chunks + r) * C + c];
  }
  out_a[c] += a;
  if (out_b) out_b[c] += b;
}

template <typename Terms>
void ColumnSums(cudaStream_t stream, float* out_a, float* out_b, Terms terms, int N, int C,
                float* partials) {
  if (N <= 0 || C <= 0) return;
  const int chunks = ColumnChunks(N);
  MINGPT_LAUNCH(ColumnPartialsKernel<Terms>, dim3((C + 31) / 32, chunks), dim3(32, kColumnRowLanes),
                0, stream, partials, terms, N, C);
  MINGPT_CUDA_CHECK_LAUNCH();
  MINGPT_LAUNCH(ColumnFinishKernel, (C + kThreads - 1) / kThreads, kThreads, 0, stream, out_a,
                out_b, partials, chunks, C);
  MINGPT_CUDA_CHECK_LAUNCH();
}

// ---- element-wise -------------------------------------------------------------

__device__ inline void StoreAs(float* p, float v) { *p = v; }
__device__ inline void StoreAs(__nv_bfloat16* p, float v) { *p = __float2bfloat16_rn(v); }
__device__ inline void StoreAs(__half* p, float v) { *p = __float2half_rn(v); }

// out[i] = GELU(x[i]) stored as Out (float, or a matrix-product operand type).
template <typename Out>
__global__ void GeluForwardKernel(Out* out, const float* x, int64_t n) {
  for (int64_t i = GlobalIndex(); i < n; i += GlobalStride()) {
    const float xi = x[i];
    StoreAs(out + i, 0.5f * xi * (1.0f + erff(xi * kInvSqrt2)));
  }
}

__global__ void GeluBackwardKernel(float* dx, const float* x, const float* dout, int64_t n) {
  for (int64_t i = GlobalIndex(); i < n; i += GlobalStride()) {
    const float xi = x[i];
    const float cdf = 0.5f * (1.0f + erff(xi * kInvSqrt2));
    const float pdf = kInvSqrt2Pi * expf(-0.5f * xi * xi);
    dx[i] = dout[i] * (cdf + xi * pdf);
  }
}

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

__global__ void AdamWKernel(float* p, const float* g, float* m, float* v, int64_t n,
                            AdamWScalars s) {
  for (int64_t i = GlobalIndex(); i < n; i += GlobalStride()) {
    const float gi = g[i];
    // torch.lerp: start + w (end - start), or end - (end - start)(1 - w).
    const float mi = s.small_weight ? m[i] + s.w1 * (gi - m[i]) : gi - (gi - m[i]) * (1.0f - s.w1);
    const float vi = v[i] * s.b2 + s.w2 * gi * gi;
    m[i] = mi;
    v[i] = vi;
    const float denom = sqrtf(vi) / s.bc2_sqrt + s.eps;
    p[i] = p[i] * s.decay + (-s.step_size * mi) / denom;
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

void EncoderBackward(cudaStream_t stream, float* dwte, float* dwpe, const float* dout,
                     const int32_t* idx, int B, int T, int C) {
  if (int64_t{B} * T * C == 0) return;
  MINGPT_LAUNCH(EncoderBackwardWteKernel, (C + 127) / 128, 128, 0, stream, dwte, dout, idx,
                int64_t{B} * T, C);
  MINGPT_CUDA_CHECK_LAUNCH();
  MINGPT_LAUNCH(EncoderBackwardWpeKernel, Blocks(int64_t{T} * C), kThreads, 0, stream, dwpe, dout,
                B, T, C);
  MINGPT_CUDA_CHECK_LAUNCH();
}

void LayerNormForward(cudaStream_t stream, float* out, float* mean, float* rstd, const float* x,
                      const float* w, const float* b, int N, int C) {
  if (N == 0) return;
  MINGPT_LAUNCH(LayerNormForwardKernel, RowBlocks(N), kThreads, 0, stream, out, mean, rstd, x, w, b,
                N, C);
  MINGPT_CUDA_CHECK_LAUNCH();
}

void ResidualLayerNormForward(cudaStream_t stream, float* sum, float* out, float* mean,
                              float* rstd, const float* x, const float* branch, const float* w,
                              const float* b, int N, int C) {
  if (N == 0) return;
  MINGPT_LAUNCH(ResidualLayerNormKernel, RowBlocks(N), kThreads, 0, stream, sum, out, mean, rstd, x,
                branch, w, b, N, C);
  MINGPT_CUDA_CHECK_LAUNCH();
}

void LayerNormBackward(cudaStream_t stream, float* dx, float* dw, float* db, const float* dout,
                       const float* x, const float* w, const float* mean, const float* rstd, int N,
                       int C, float* partials) {
  if (N == 0) return;
  MINGPT_LAUNCH(LayerNormBackwardDxKernel, RowBlocks(N), kThreads, 0, stream, dx, dout, x, w, mean,
                rstd, N, C);
  MINGPT_CUDA_CHECK_LAUNCH();
  ColumnSums(stream, dw, db, LayerNormGradTerms{dout, x, mean, rstd, C}, N, C, partials);
}

void BiasBackward(cudaStream_t stream, float* dbias, const float* dout, int N, int OC,
                  float* partials) {
  ColumnSums(stream, dbias, nullptr, BiasGradTerms{dout, OC}, N, OC, partials);
}

int64_t ColumnPartialsFloats(int N, int C) { return 2 * int64_t{ColumnChunks(N)} * C; }

void GeluForward(cudaStream_t stream, float* out, const float* x, int64_t n) {
  if (n == 0) return;
  MINGPT_LAUNCH(GeluForwardKernel<float>, Blocks(n), kThreads, 0, stream, out, x, n);
  MINGPT_CUDA_CHECK_LAUNCH();
}

void GeluForwardOperand(cudaStream_t stream, void* out, const float* x, int64_t n,
                        MatmulPrecision precision) {
  if (n == 0) return;
  switch (precision) {
    case MatmulPrecision::kBf16:
      MINGPT_LAUNCH(GeluForwardKernel<__nv_bfloat16>, Blocks(n), kThreads, 0, stream,
                    static_cast<__nv_bfloat16*>(out), x, n);
      break;
    case MatmulPrecision::kFp16:
      MINGPT_LAUNCH(GeluForwardKernel<__half>, Blocks(n), kThreads, 0, stream,
                    static_cast<__half*>(out), x, n);
      break;
    case MatmulPrecision::kFp32:
      MINGPT_LAUNCH(GeluForwardKernel<float>, Blocks(n), kThreads, 0, stream,
                    static_cast<float*>(out), x, n);
      break;
  }
  MINGPT_CUDA_CHECK_LAUNCH();
}

void GeluBackward(cudaStream_t stream, float* dx, const float* x, const float* dout, int64_t n) {
  if (n == 0) return;
  MINGPT_LAUNCH(GeluBackwardKernel, Blocks(n), kThreads, 0, stream, dx, x, dout, n);
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

AdamWScalars MakeAdamWScalars(double lr, double beta1, double beta2, double eps, double wd,
                              int t) {
  MINGPT_CHECK(t >= 1, "AdamW step t=%d must be 1-based", t);
  AdamWScalars s;
  s.decay = wd != 0.0 ? static_cast<float>(1.0 - lr * wd) : 1.0f;
  s.w1 = static_cast<float>(1.0 - beta1);
  s.b2 = static_cast<float>(beta2);
  s.w2 = static_cast<float>(1.0 - beta2);
  s.step_size = static_cast<float>(lr / (1.0 - std::pow(beta1, t)));
  s.bc2_sqrt = static_cast<float>(std::sqrt(1.0 - std::pow(beta2, t)));
  s.eps = static_cast<float>(eps);
  s.small_weight = std::abs(s.w1) < 0.5f;
  return s;
}

void AdamW(cudaStream_t stream, float* p, const float* g, float* m, float* v, int64_t n,
           const AdamWScalars& s) {
  if (n == 0) return;
  MINGPT_LAUNCH(AdamWKernel, Blocks(n), kThreads, 0, stream, p, g, m, v, n, s);
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
