// Launchers of the CUDA backend's element-wise, normalisation, loss and
// optimizer kernels (kernels.cu) and attention kernels (attention.cu). Each
// enqueues its kernels on `stream` and returns; the math, shapes and = / +=
// of every op are those of the Backend op of the same name (backend.h) and
// of its CPU reference (backend/cpu/*.h), which the cuda tests compare with.
//
// Reductions are deterministic: every sum is formed in a fixed order that
// depends only on the shapes (no atomics), so an op run twice on the same
// inputs gives the same bits.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>
#include <string>

#include "backend/backend.h"
#include "backend/dropout.h"

namespace mingpt::cuda {

// ---- encoder (cpu/encoder.h) ----------------------------------------------
void EncoderForward(cudaStream_t stream, float* out, const int32_t* idx, const float* wte,
                    const float* wpe, int B, int T, int C);
// dwte has V rows; `scratch` holds EncoderBackwardScratchBytes(B T, C, V)
// bytes. A token outside [0, V) traps the kernel.
void EncoderBackward(cudaStream_t stream, float* dwte, float* dwpe, const float* dout,
                     const int32_t* idx, int B, int T, int C, int V, void* scratch);
size_t EncoderBackwardScratchBytes(int64_t N, int C, int V);

// ---- layernorm (cpu/layernorm.h) ------------------------------------------
void LayerNormForward(cudaStream_t stream, float* out, float* mean, float* rstd, const float* x,
                      const float* w, const float* b, int N, int C);
void ResidualLayerNormForward(cudaStream_t stream, float* sum, float* out, float* mean,
                              float* rstd, const float* x, const float* branch, const float* w,
                              const float* b, int N, int C);
// The same, `out` stored in the matrix products' operand type for
// `precision` (each value rounded once, as ToOperand would).
void LayerNormForwardOperand(cudaStream_t stream, void* out, float* mean, float* rstd,
                             const float* x, const float* w, const float* b, int N, int C,
                             MatmulPrecision precision);
void ResidualLayerNormForwardOperand(cudaStream_t stream, float* sum, void* out, float* mean,
                                     float* rstd, const float* x, const float* branch,
                                     const float* w, const float* b, int N, int C,
                                     MatmulPrecision precision);
// `partials` holds ColumnPartialsFloats(N, C) floats.
void LayerNormBackward(cudaStream_t stream, float* dx, float* dw, float* db, const float* dout,
                       const float* x, const float* w, const float* mean, const float* rstd, int N,
                       int C, float* partials);

// dbias[OC] += sum_n dout[n, :]; `partials` holds ColumnPartialsFloats(N, OC).
void BiasBackward(cudaStream_t stream, float* dbias, const float* dout, int N, int OC,
                  float* partials);
// BiasBackward that also stores dout in the operand type for `precision`
// (dst: N*OC values, each rounded once), the conversion the product's
// backward makes of it anyway: one pass over dout instead of two.
void BiasBackwardOperand(cudaStream_t stream, float* dbias, void* dst, const float* dout, int N,
                         int OC, MatmulPrecision precision, float* partials);
// Scratch of the two-stage column sums (LayerNormBackward, BiasBackward).
int64_t ColumnPartialsFloats(int N, int C);

// ---- element-wise (cpu/gelu.h, residual.h, dropout.h, reductions.h) --------
void GeluForward(cudaStream_t stream, float* out, const float* x, int64_t n);
// GeluForward stored in the matrix products' operand type for `precision`
// (float, __nv_bfloat16 or __half).
void GeluForwardOperand(cudaStream_t stream, void* out, const float* x, int64_t n,
                        MatmulPrecision precision);
void GeluBackward(cudaStream_t stream, float* dx, const float* x, const float* dout, int64_t n);
// GeluBackward over [N,C] stored in the operand type for `precision`, with
// dbias[c] += sum_n dx[n,c] (of the fp32 values, in BiasBackward's order)
// when dbias is not null: one pass. `partials` holds ColumnPartialsFloats(N,
// C) floats. dx may alias dout under fp32.
void GeluBackwardOperand(cudaStream_t stream, void* dx, float* dbias, const float* x,
                         const float* dout, int N, int C, MatmulPrecision precision,
                         float* partials);
void Add(cudaStream_t stream, float* out, const float* a, const float* b, int64_t n);
void Scale(cudaStream_t stream, float* x, int64_t n, float s);
void Dropout(cudaStream_t stream, float* y, const float* x, int B, int64_t row_size,
             const DropoutSpec& dropout);

// ---- loss (cpu/crossentropy.h) ---------------------------------------------
// dlogits may alias logits; losses may be null in ForwardBackward. A target
// outside [0, V) traps the kernel (the next checked CUDA call aborts).
void CrossEntropyForward(cudaStream_t stream, float* losses, const float* logits,
                         const int32_t* targets, int N, int V);
void CrossEntropyForwardBackward(cudaStream_t stream, float* losses, float* dlogits,
                                 const float* logits, const int32_t* targets, int N, int V,
                                 float dloss);

// ---- optimizer (cpu/adamw.h) -----------------------------------------------
// The scalars of one AdamW step, formed in double on the host and rounded to
// float once, exactly as the CPU backend forms them.
struct AdamWScalars {
  float decay;      // 1 - lr*wd (exactly 1 when wd == 0)
  float w1;         // 1 - beta1, the lerp weight
  float b2, w2;     // beta2, 1 - beta2
  float step_size;  // lr / (1 - beta1^t)
  float bc2_sqrt;   // sqrt(1 - beta2^t)
  float eps;
  float grad_scale;   // g is read as g * grad_scale
  bool small_weight;  // |w1| < 0.5: torch.lerp's first form
};
AdamWScalars MakeAdamWScalars(double lr, double beta1, double beta2, double eps, double wd, int t,
                              float grad_scale);
// AdamW on up to kAdamWMaxTensors tensors of p, g, m and v in one launch:
// tensor k is elements [begin[k], begin[k] + n[k]), with decay[k] in place of
// s.decay (its weight decay's).
constexpr int kAdamWMaxTensors = 32;
struct AdamWTensorBatch {
  int count = 0;
  int64_t begin[kAdamWMaxTensors], n[kAdamWMaxTensors];
  float decay[kAdamWMaxTensors];
  int block_end[kAdamWMaxTensors];  // filled by AdamWTensors
};
void AdamWTensors(cudaStream_t stream, float* p, const float* g, float* m, float* v,
                  AdamWTensorBatch batch, const AdamWScalars& s);

// sum_i x[i]^2 in double into *result (device memory); `partials` holds
// SumSquaresPartials() doubles.
void SumSquares(cudaStream_t stream, double* result, const float* x, int64_t n, double* partials);
int SumSquaresPartials();

// ---- matrix-product operands (matmul.cc) -----------------------------------
// dst[i] = src[i] rounded to nearest even in bf16 (or fp16: overflow to inf,
// subnormals kept), dst being a __nv_bfloat16 / __half array.
void ConvertToBf16(cudaStream_t stream, void* dst, const float* src, int64_t n);
void ConvertToFp16(cudaStream_t stream, void* dst, const float* src, int64_t n);

// ---- attention (attention.cu; cpu/attention.h) -----------------------------
// Head sizes hs = C/NH up to kMaxHeadSize. Under a bf16 or fp16
// `precision` the forward and backward run on tensor cores (bf16 / fp16
// operands, fp32 accumulation and softmax) for head sizes that are multiples
// of 16 up to 128, and on the fp32 kernels otherwise, or always when the
// environment has MINGPT_CUDA_ATTENTION=fp32; MINGPT_CUDA_ATTENTION=mma
// (opt-in) takes attention_mma.h's mma.sync kernels instead of the
// tensor-core ones for head sizes 32, 64 and 128; decode is fp32 always.
inline constexpr int kMaxHeadSize = 512;
// Why head size hs cannot run on the devices AttentionInit has seen (above
// kMaxHeadSize, or more shared memory a block than one of them allows: head
// sizes above 256 need up to 129 KiB), or "" when it can.
std::string AttentionHeadSizeError(int hs);
// Once per device before the first attention launch: lets the kernels use
// more than 48 KiB of shared memory (head sizes above 96; the tensor-core
// kernels up to the device's opt-in maximum).
void AttentionInit();
void AttentionForward(cudaStream_t stream, float* out, float* lse, const float* q,
                      const float* k, const float* v, int B, int T, int C, int NH,
                      const DropoutSpec& dropout, MatmulPrecision precision);
void AttentionDecode(cudaStream_t stream, float* out, const float* q, const float* k_cache,
                     const float* v_cache, int T, int C, int NH);
// `out` is the forward's output; `delta` holds B*NH*T floats (D_i =
// dout_i . out_i, between the kernels).
void AttentionBackward(cudaStream_t stream, float* dq, float* dk, float* dv, const float* dout,
                       const float* q, const float* k, const float* v, const float* out,
                       const float* lse, int B, int T, int C, int NH, const DropoutSpec& dropout,
                       float* delta, MatmulPrecision precision);

}  // namespace mingpt::cuda
