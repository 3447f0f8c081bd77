// The CUDA backend's linear layers through cuBLASLt (row-major, PyTorch
// weight layout, as cpu/onednn_matmul.h):
//
//   Forward:   out[N,OC]  = inp[N,IC] @ W[OC,IC]^T + bias[OC]   (bias epilogue; may be null) (=)
//   Backward:  dW[OC,IC] += dout[N,OC]^T @ inp[N,IC]                                        (+=)
//              dinp[N,IC] = dout[N,OC] @ W[OC,IC]   (= or += by `accumulate`; may be null)
//
// cuBLASLt is column-major, so each row-major product is computed as its
// transpose: a row-major X[r,c] is a column-major X^T[c,r] with ld c.
// Precision: kFp32 runs fp32 operands with CUBLAS_COMPUTE_32F (no TF32);
// kBf16 / kFp16 convert both operands (round to nearest even) into owned
// scratch and run a bf16 / fp16 x bf16 / fp16 -> fp32 product with fp32
// accumulation, C and D fp32. Descriptors and the heuristic's algorithm are
// cached per (shape, precision, accumulate, bias, pointer alignments); the
// workspace (32 MiB) and the operand scratch are owned here and grow only
// when a larger shape first appears. The heuristic is kept from split-K
// reductions that accumulate in place (atomics), so a product's bits
// repeat. Not thread-safe: one backend, one stream.
#pragma once

#include <cublasLt.h>
#include <cuda_runtime_api.h>

#include <map>
#include <memory>
#include <tuple>

#include "backend/backend.h"
#include "backend/cuda/cuda_resources.h"

namespace mingpt::cuda {

class LtMatmul {
 public:
  explicit LtMatmul(cudaStream_t stream);
  ~LtMatmul();
  LtMatmul(const LtMatmul&) = delete;
  LtMatmul& operator=(const LtMatmul&) = delete;

  void Forward(float* out, MatmulOperand inp, MatmulOperand W, const float* bias, int N, int IC,
               int OC);
  // dinp may alias inp: the dW product, which reads inp, runs first.
  void Backward(float* dinp, float* dW, MatmulOperand dout, MatmulOperand inp, MatmulOperand W,
                int N, int IC, int OC, bool accumulate);
  // dst[n] = src[n] in the operand type (a copy under kFp32).
  void ToOperand(void* dst, const float* src, int64_t n);
  size_t operand_bytes() const { return precision_ == MatmulPrecision::kFp32 ? 4 : 2; }

  void set_precision(MatmulPrecision p) { precision_ = p; }
  MatmulPrecision precision() const { return precision_; }

 private:
  // Column-major D[m,n] (+)= op(A)[m,k] op(B)[k,n] (+ bias[m]), A stored
  // [k,m] when a_trans (else [m,k]) with leading dimension lda; B likewise.
  struct Gemm {
    int m, n, k;
    bool a_trans, b_trans;
    int lda, ldb, ldd;
    bool accumulate, bias;
  };
  struct Key {
    Gemm g;
    MatmulPrecision precision;
    // The heuristic's choice may assume these of the pointers (the bias's
    // too: it reads the bias pointer set on the descriptor).
    unsigned align_a, align_b, align_d, align_bias;
    auto Tie() const {
      return std::tie(g.m, g.n, g.k, g.a_trans, g.b_trans, g.lda, g.ldb, g.ldd, g.accumulate,
                      g.bias, precision, align_a, align_b, align_d, align_bias);
    }
    bool operator<(const Key& o) const { return Tie() < o.Tie(); }
  };
  struct Plan;

  Plan& GetPlan(const Key& key, const float* bias);
  // x[n] as the product takes it: itself (kFp32, or already converted) or
  // converted into `buf`.
  const void* Operand(DeviceScratch& buf, MatmulOperand x, int64_t n);
  void Run(const Gemm& g, const void* a, const void* b, float* d, const float* bias);

  cudaStream_t stream_;
  cublasLtHandle_t handle_ = nullptr;
  DeviceScratch workspace_;
  DeviceScratch a_, b_, dout_;  // converted operands
  std::map<Key, std::unique_ptr<Plan>> plans_;
  MatmulPrecision precision_ = MatmulPrecision::kFp32;
};

}  // namespace mingpt::cuda
