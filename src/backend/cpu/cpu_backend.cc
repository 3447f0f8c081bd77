#include "backend/cpu/cpu_backend.h"

#include <omp.h>

#include <cstdlib>
#include <cstring>

#include "backend/cpu/adamw.h"
#include "backend/cpu/attention.h"
#include "backend/cpu/crossentropy.h"
#include "backend/cpu/dropout.h"
#include "backend/cpu/encoder.h"
#include "backend/cpu/gelu.h"
#include "backend/cpu/layernorm.h"
#include "backend/cpu/matmul_ref.h"
#include "backend/cpu/reductions.h"
#include "backend/cpu/residual.h"
#include "core/check.h"

namespace mingpt {
namespace cpu {

CpuBackend::CpuBackend(int num_threads) {
  if (num_threads > 0) omp_set_num_threads(num_threads);
}

void* CpuBackend::Malloc(size_t bytes) { return AlignedAlloc(bytes); }
void CpuBackend::Free(void* p) { std::free(p); }
void CpuBackend::Memset0(void* p, size_t bytes) {
  if (bytes) std::memset(p, 0, bytes);
}
void CpuBackend::CopyToDevice(void* dst, const void* host_src, size_t bytes) {
  if (bytes) std::memcpy(dst, host_src, bytes);
}
void CpuBackend::Copy(void* dst, const void* src, size_t bytes) {
  if (bytes) std::memmove(dst, src, bytes);
}
void CpuBackend::CopyToHost(void* host_dst, const void* src, size_t bytes) {
  if (bytes) std::memcpy(host_dst, src, bytes);
}

void CpuBackend::EncoderForward(float* out, const int32_t* idx,
                                const float* wte, const float* wpe, int B,
                                int T, int C) {
  cpu::EncoderForward(out, idx, wte, wpe, B, T, C);
}
void CpuBackend::EncoderBackward(float* dwte, float* dwpe, const float* dout,
                                 const int32_t* idx, int B, int T, int C, int /*V*/) {
  cpu::EncoderBackward(dwte, dwpe, dout, idx, B, T, C);
}

void CpuBackend::LayerNormForward(float* out, float* mean, float* rstd,
                                  const float* x, const float* w,
                                  const float* b, int N, int C) {
  cpu::LayerNormForward(out, mean, rstd, x, w, b, N, C);
}
void CpuBackend::ResidualLayerNormForward(float* sum, float* out, float* mean, float* rstd,
                                          const float* x, const float* branch, const float* w,
                                          const float* b, int N, int C) {
  cpu::ResidualLayerNormForward(sum, out, mean, rstd, x, branch, w, b, N, C);
}
namespace {

// Where a fused kernel's spans go: `dst` in the matmul's operand format.
struct OperandSink {
  OperandSink(const OnednnMatmul& m, void* out)
      : matmul(&m), dst(static_cast<char*>(out)), bytes(m.operand_bytes()) {}

  static void Store(void* ctx, int64_t offset, const float* values, int64_t count) {
    const auto* s = static_cast<const OperandSink*>(ctx);
    s->matmul->ToOperandSpan(s->dst + offset * s->bytes, values, count);
  }

  const OnednnMatmul* matmul;
  char* dst;
  size_t bytes;  // per element
};

}  // namespace

void CpuBackend::LayerNormForwardOperand(void* out, float* mean, float* rstd, const float* x,
                                         const float* w, const float* b, int N, int C) {
  if (matmul_.precision() == MatmulPrecision::kFp32) {
    cpu::LayerNormForward(static_cast<float*>(out), mean, rstd, x, w, b, N, C);
    return;
  }
  OperandSink sink(matmul_, out);
  LayerNormForwardSpans(mean, rstd, x, w, b, N, C, &OperandSink::Store, &sink);
}
void CpuBackend::ResidualLayerNormForwardOperand(float* sum, void* out, float* mean, float* rstd,
                                                 const float* x, const float* branch,
                                                 const float* w, const float* b, int N, int C) {
  if (matmul_.precision() == MatmulPrecision::kFp32) {
    cpu::ResidualLayerNormForward(sum, static_cast<float*>(out), mean, rstd, x, branch, w, b, N,
                                  C);
    return;
  }
  OperandSink sink(matmul_, out);
  ResidualLayerNormForwardSpans(sum, mean, rstd, x, branch, w, b, N, C, &OperandSink::Store,
                                &sink);
}

void CpuBackend::LayerNormBackward(float* dx, float* dw, float* db,
                                   const float* dout, const float* x,
                                   const float* w, const float* mean,
                                   const float* rstd, int N, int C) {
  cpu::LayerNormBackward(dx, dw, db, dout, x, w, mean, rstd, N, C);
}

void CpuBackend::MatmulForward(float* out, MatmulOperand inp, MatmulOperand W,
                               const float* bias, int N, int IC, int OC) {
  matmul_.Forward(out, inp, W, bias, N, IC, OC);
}
void CpuBackend::MatmulBackward(float* dinp, float* dW, float* dbias,
                                MatmulOperand dout, MatmulOperand inp,
                                MatmulOperand W, int N, int IC, int OC,
                                bool accumulate_dinp) {
  if (dbias) {
    MINGPT_CHECK(!dout.converted, "MatmulBackward: a bias gradient needs an fp32 dout");
    BiasBackward(dbias, static_cast<const float*>(dout.data), N, OC);
  }
  matmul_.Backward(dinp, dW, dout, inp, W, N, IC, OC, accumulate_dinp);
}

float* CpuBackend::AttentionScratch(int T, int C, int NH, int threads) {
  return static_cast<float*>(attention_scratch_.Reserve(
      sizeof(float) * AttentionScratchSize(T, C, NH, threads)));
}

void CpuBackend::AttentionForward(float* out, float* lse, const float* q,
                                  const float* k, const float* v, int B, int T,
                                  int C, int NH, const DropoutSpec& dropout) {
  const int threads = omp_get_max_threads();
  cpu::AttentionForward(out, lse, q, k, v, B, T, C, NH, dropout,
                        AttentionScratch(T, C, NH, threads), threads);
}
void CpuBackend::AttentionDecode(float* out, const float* q, const float* k_cache,
                                 const float* v_cache, int T, int C, int NH) {
  cpu::AttentionDecode(out, q, k_cache, v_cache, T, C, NH);
}
void CpuBackend::AttentionBackward(float* dq, float* dk, float* dv,
                                   const float* dout, const float* q,
                                   const float* k, const float* v, const float* out,
                                   const float* lse, int B, int T, int C,
                                   int NH, const DropoutSpec& dropout) {
  const int threads = omp_get_max_threads();
  cpu::AttentionBackward(dq, dk, dv, dout, q, k, v, out, lse, B, T, C, NH, dropout,
                         AttentionScratch(T, C, NH, threads), threads);
}

void CpuBackend::GeluForward(float* out, const float* x, int64_t n) {
  cpu::GeluForward(out, x, n);
}
void CpuBackend::GeluBackward(float* dx, const float* x, const float* dout,
                              int64_t n) {
  cpu::GeluBackward(dx, x, dout, n);
}

void CpuBackend::GeluForwardOperand(void* out, const float* x, int64_t n) {
  if (matmul_.precision() == MatmulPrecision::kFp32) {
    cpu::GeluForward(static_cast<float*>(out), x, n);
    return;
  }
  OperandSink sink(matmul_, out);
  GeluForwardSpans(x, n, &OperandSink::Store, &sink);
}

void CpuBackend::GeluBackwardOperand(void* dx, float* dbias, const float* x, const float* dout,
                                     int N, int C) {
  OperandSink sink(matmul_, dx);
  GeluBackwardColumns(x, dout, N, C, dbias, &OperandSink::Store, &sink);
}

void CpuBackend::Add(float* out, const float* a, const float* b, int64_t n) {
  cpu::Add(out, a, b, n);
}
void CpuBackend::Dropout(float* y, const float* x, int B, int64_t row_size,
                         const DropoutSpec& dropout) {
  cpu::DropoutForward(y, x, B, row_size, dropout);
}

void CpuBackend::CrossEntropyForward(float* losses, const float* logits,
                                     const int32_t* targets, int N, int V) {
  cpu::CrossEntropyForward(losses, logits, targets, N, V);
}
void CpuBackend::CrossEntropyForwardBackward(float* losses, float* dlogits,
                                             const float* logits,
                                             const int32_t* targets, int N,
                                             int V, float dloss) {
  cpu::CrossEntropyForwardBackward(losses, dlogits, logits, targets, N, V,
                                   dloss);
}

void CpuBackend::AdamWTensors(float* p, const float* g, float* m, float* v,
                              const AdamWTensor* tensors, size_t count,
                              float lr, float beta1, float beta2, float eps,
                              int t, float grad_scale) {
  for (size_t k = 0; k < count; ++k) {
    const AdamWTensor& x = tensors[k];
    cpu::AdamW(p + x.begin, g + x.begin, m + x.begin, v + x.begin, x.n, lr,
               beta1, beta2, eps, x.wd, t, grad_scale);
  }
}
double CpuBackend::SumSquares(const float* x, int64_t n) {
  return cpu::SumSquares(x, n);
}
void CpuBackend::Scale(float* x, int64_t n, float s) { cpu::Scale(x, n, s); }

}  // namespace cpu

std::unique_ptr<Backend> MakeCpuBackend(int num_threads) {
  return std::make_unique<cpu::CpuBackend>(num_threads);
}

}  // namespace mingpt
