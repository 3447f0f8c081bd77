// CpuBackend: the Backend on host memory. Matrix products go to oneDNN
// (OnednnMatmul); every other op is the float instantiation of the reference
// kernels in this directory, parallel with OpenMP.
// Once warm (every shape seen once) an op creates no oneDNN primitive and
// allocates no buffer: the matmul scratchpad and the attention kernels'
// per-thread staging buffers are owned here and only grow. (oneDNN's execute
// itself still makes a few small bookkeeping allocations per call, its
// exec-args map; its API offers no way around that.)
// Not thread-safe: one backend is driven by one thread (which fans out to
// OpenMP inside each op). The constructor sets OpenMP's thread count.
#pragma once

#include "backend/backend.h"
#include "backend/cpu/aligned_buffer.h"
#include "backend/cpu/onednn_matmul.h"

namespace mingpt::cpu {

class CpuBackend final : public Backend {
 public:
  // num_threads <= 0 keeps OpenMP's default.
  explicit CpuBackend(int num_threads);

  const char* name() const override { return "cpu"; }

  void* Malloc(size_t bytes) override;
  void Free(void* p) override;
  void Memset0(void* p, size_t bytes) override;
  void CopyToDevice(void* dst, const void* host_src, size_t bytes) override;
  void CopyToHost(void* host_dst, const void* src, size_t bytes) override;
  void Copy(void* dst, const void* src, size_t bytes) override;
  void* MallocHost(size_t bytes) override { return Malloc(bytes); }
  void FreeHost(void* p) override { Free(p); }
  void Synchronize() override {}

  void SetMatmulPrecision(MatmulPrecision precision) override {
    matmul_.set_precision(precision);
  }
  MatmulPrecision matmul_precision() const override { return matmul_.precision(); }
  size_t OperandBytes() const override { return matmul_.operand_bytes(); }

  void EncoderForward(float* out, const int32_t* idx, const float* wte,
                      const float* wpe, int B, int T, int C) override;
  void EncoderBackward(float* dwte, float* dwpe, const float* dout,
                       const int32_t* idx, int B, int T, int C, int V) override;
  void LayerNormForward(float* out, float* mean, float* rstd, const float* x,
                        const float* w, const float* b, int N, int C) override;
  void ResidualLayerNormForward(float* sum, float* out, float* mean, float* rstd, const float* x,
                                const float* branch, const float* w, const float* b, int N,
                                int C) override;
  void LayerNormForwardOperand(void* out, float* mean, float* rstd, const float* x,
                               const float* w, const float* b, int N, int C) override;
  void ResidualLayerNormForwardOperand(float* sum, void* out, float* mean, float* rstd,
                                       const float* x, const float* branch, const float* w,
                                       const float* b, int N, int C) override;
  void LayerNormBackward(float* dx, float* dw, float* db, const float* dout,
                         const float* x, const float* w, const float* mean,
                         const float* rstd, int N, int C) override;
  void MatmulForward(float* out, MatmulOperand inp, MatmulOperand W,
                     const float* bias, int N, int IC, int OC) override;
  void MatmulBackward(float* dinp, float* dW, float* dbias, MatmulOperand dout,
                      MatmulOperand inp, MatmulOperand W, int N, int IC, int OC,
                      bool accumulate_dinp) override;
  void ToOperand(void* dst, const float* src, int64_t n) override {
    matmul_.ToOperand(dst, src, n);
  }
  void AttentionForward(float* out, float* lse, const float* q,
                        const float* k, const float* v, int B, int T, int C,
                        int NH, const DropoutSpec& dropout) override;
  void AttentionDecode(float* out, const float* q, const float* k_cache, const float* v_cache,
                       int T, int C, int NH) override;
  void AttentionBackward(float* dq, float* dk, float* dv, const float* dout,
                         const float* q, const float* k, const float* v, const float* out,
                         const float* lse, int B, int T, int C, int NH,
                         const DropoutSpec& dropout) override;
  void GeluForward(float* out, const float* x, int64_t n) override;
  void GeluBackward(float* dx, const float* x, const float* dout,
                    int64_t n) override;
  void GeluForwardOperand(void* out, const float* x, int64_t n) override;
  void GeluBackwardOperand(void* dx, float* dbias, const float* x, const float* dout, int N,
                           int C) override;
  void Add(float* out, const float* a, const float* b, int64_t n) override;
  void Dropout(float* y, const float* x, int B, int64_t row_size,
               const DropoutSpec& dropout) override;
  void CrossEntropyForward(float* losses, const float* logits,
                           const int32_t* targets, int N, int V) override;
  void CrossEntropyForwardBackward(float* losses, float* dlogits,
                                   const float* logits, const int32_t* targets,
                                   int N, int V, float dloss) override;
  void AdamWTensors(float* p, const float* g, float* m, float* v,
                    const AdamWTensor* tensors, size_t count, float lr,
                    float beta1, float beta2, float eps, int t,
                    float grad_scale) override;
  double SumSquares(const float* x, int64_t n) override;
  void Scale(float* x, int64_t n, float s) override;

  // For tests: oneDNN primitives created so far, and their scratchpad.
  size_t num_matmul_primitives() const { return matmul_.num_primitives(); }
  size_t matmul_scratchpad_bytes() const { return matmul_.scratchpad_bytes(); }
  // bf16 products on bf16 operands where the CPU has them (default), or off:
  // rounded fp32 operands everywhere (see OnednnMatmul).
  void set_native_bf16(bool on) { matmul_.set_native_bf16(on); }
  bool native_bf16() const { return matmul_.native_bf16(); }

 private:
  // The attention kernels' per-thread staging buffers (grown, never shrunk).
  float* AttentionScratch(int T, int C, int NH, int threads);

  OnednnMatmul matmul_;
  ScratchBuffer attention_scratch_;
};

}  // namespace mingpt::cpu
