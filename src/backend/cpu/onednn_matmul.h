// oneDNN matrix products for the CPU backend's linear layers, fp32.
//
//   Forward:         out[N,OC]  = inp[N,IC] @ W[OC,IC]^T + bias[OC]         (=)
//   BackwardData:    dinp[N,IC] = dout[N,OC] @ W[OC,IC]            (= or +=)
//   BackwardWeights: dW[OC,IC] += dout[N,OC]^T @ inp[N,IC] (+=)
// Transposes are expressed as strides (never copied); accumulation is
// oneDNN's sum post-op. Primitives are cached by (kind of product, shape,
// accumulate, bias) together with their memory objects, and run with a user
// scratchpad owned here, grown only when a new primitive needs more: once a
// shape has been seen, a call creates no primitive and allocates no buffer.
// Under bf16 / fp16 precision (set_precision) both operands are first
// rounded into two more owned scratch buffers (low_precision.h) and the fp32
// primitive runs on the rounded copies: this CPU has no bf16 or fp16 GEMM.
// Not thread-safe (one backend, one stream), like the backend itself.
#pragma once

#include <cstddef>
#include <map>
#include <memory>
#include <tuple>

#include "backend/backend.h"
#include "backend/cpu/aligned_buffer.h"
#include "dnnl.hpp"

namespace mingpt::cpu {

class OnednnMatmul {
 public:
  OnednnMatmul();
  ~OnednnMatmul();
  OnednnMatmul(const OnednnMatmul&) = delete;
  OnednnMatmul& operator=(const OnednnMatmul&) = delete;

  // bias may be null.
  void Forward(float* out, const float* inp, const float* W, const float* bias,
               int N, int IC, int OC);
  void BackwardData(float* dinp, const float* dout, const float* W, int N,
                    int IC, int OC, bool accumulate);
  void BackwardWeights(float* dW, const float* dout, const float* inp, int N,
                       int IC, int OC);

  void set_precision(MatmulPrecision p) { precision_ = p; }
  MatmulPrecision precision() const { return precision_; }

  // Primitives created so far (one per distinct key), and the scratchpad.
  size_t num_primitives() const { return cache_.size(); }
  size_t scratchpad_bytes() const { return scratchpad_.capacity(); }

 private:
  // dst[M,Ncol] (+)= A[M,K] @ B[K,Ncol] (+ bias[Ncol]); A or B given through
  // transposed strides when a_trans / b_trans.
  struct Key {
    long M, K, Ncol;
    bool a_trans, b_trans, accumulate, bias;
    auto Tie() const {
      return std::tie(M, K, Ncol, a_trans, b_trans, accumulate, bias);
    }
    bool operator<(const Key& o) const { return Tie() < o.Tie(); }
  };
  struct Entry;

  Entry& Get(const Key& key);
  void Run(const Key& key, const float* a, const float* b, const float* bias,
           float* dst);

  dnnl::engine engine_;
  dnnl::stream stream_;
  std::map<Key, std::unique_ptr<Entry>> cache_;
  ScratchBuffer scratchpad_;
  MatmulPrecision precision_ = MatmulPrecision::kFp32;
  ScratchBuffer rounded_a_, rounded_b_;  // operands rounded to precision_
};

}  // namespace mingpt::cpu
