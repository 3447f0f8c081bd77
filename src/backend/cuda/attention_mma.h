// The FlashAttention-2-structured attention on mma.sync (attention_mma.cu):
// bf16 / fp16 operands, fp32 accumulation, the scores, probabilities and
// their gradients in registers. The same math, outputs and Philox dropout
// as attention.cu's kernels (see there): out [B,T,C] and lse [B,NH,T]
// (natural log) from the forward; the backward reads `delta` (D_i =
// dout_i . out_i, [B,NH,T], formed by attention.cu before it calls these)
// and writes dq, dk and dv, each row by one block, without atomics.
// attention.cu takes them under MINGPT_CUDA_ATTENTION=mma for the head
// sizes MmaAttentionSupports.
#pragma once

#include <cuda_runtime.h>

#include "backend/backend.h"
#include "backend/dropout.h"

namespace mingpt::cuda {

// Head sizes with kernels: 32, 64 and 128.
bool MmaAttentionSupports(int hs);
// Once per device before the first launch (the shared memory above 48 KiB
// that the key-major backward takes at head size 128).
void MmaAttentionInit();
// precision: kBf16 or kFp16. hs = C / NH must be supported.
void MmaAttentionForward(cudaStream_t stream, float* out, float* lse, const float* q,
                         const float* k, const float* v, int B, int T, int C, int NH,
                         const DropoutSpec& dropout, MatmulPrecision precision);
void MmaAttentionBackward(cudaStream_t stream, float* dq, float* dk, float* dv, const float* dout,
                          const float* q, const float* k, const float* v, const float* lse,
                          const float* delta, int B, int T, int C, int NH,
                          const DropoutSpec& dropout, MatmulPrecision precision);

}  // namespace mingpt::cuda
