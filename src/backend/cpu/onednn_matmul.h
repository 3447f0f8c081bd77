// oneDNN matrix products for the CPU backend's linear layers, fp32.
//
//   Forward:         out[N,OC]  = inp[N,IC] @ W[OC,IC]^T + bias[OC]         (=)
//   Backward:        dW[OC,IC] += dout[N,OC]^T @ inp[N,IC]                (+=)
//                    dinp[N,IC] = dout[N,OC] @ W[OC,IC]  (= or +=; may be null)
// Transposes are expressed as strides (never copied; one exception, PackB,
// packs a wide fp32 B into the primitive's format); accumulation is
// oneDNN's sum post-op. Primitives are cached by (kind of product, shape,
// accumulate, bias) together with their memory objects, and run with a user
// scratchpad owned here, grown only when a new primitive needs more: once a
// shape has been seen, a call creates no primitive and allocates no buffer.
// Under bf16 precision on a CPU with bf16 dot products (AVX512-BF16, AMX) both
// operands are converted to bf16 arrays in two more owned scratch buffers and
// a bf16 x bf16 -> fp32 primitive runs on them (native_bf16). Elsewhere, and
// for fp16 (oneDNN 2.x has no CPU f16 matmul), the operands are rounded to
// the low precision but kept as floats (low_precision.h) and the fp32
// primitive runs on the rounded copies: the same arithmetic, as a product of
// two bf16 or fp16 values is exact in fp32, at fp32 speed.
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
  void Forward(float* out, MatmulOperand inp, MatmulOperand W, const float* bias,
               int N, int IC, int OC);
  // dinp may alias inp: inp is read before dinp is written.
  void Backward(float* dinp, float* dW, MatmulOperand dout, MatmulOperand inp,
                MatmulOperand W, int N, int IC, int OC, bool accumulate);

  void set_precision(MatmulPrecision p) { precision_ = p; }
  MatmulPrecision precision() const { return precision_; }

  // The operand format under the current precision: bf16 storage (2 bytes)
  // for native bf16 products, else fp32 values (4 bytes; rounded to bf16 or
  // fp16 for the emulated low precisions).
  size_t operand_bytes() const { return bf16_operands() ? 2 : 4; }
  // dst[i] = src[i] in the operand format: in parallel, or on the calling
  // thread (Span: for kernels that convert what they have just computed).
  void ToOperand(void* dst, const float* src, int64_t n) const;
  void ToOperandSpan(void* dst, const float* src, int64_t n) const;
  // Whether oneDNN finds bf16 dot-product instructions on this CPU.
  static bool CpuHasBf16Matmul();
  // bf16 products on bf16 operands where the CPU has them (the default), or
  // always through rounded fp32 operands (off; tests compare the two).
  void set_native_bf16(bool on);
  bool native_bf16() const { return native_bf16_; }

  // Primitives created so far (one per distinct key), and the scratchpad.
  size_t num_primitives() const { return cache_.size(); }
  size_t scratchpad_bytes() const { return scratchpad_.capacity(); }

 private:
  // dst[M,Ncol] (+)= A[M,K] @ B[K,Ncol] (+ bias[Ncol]); A or B given through
  // transposed strides when a_trans / b_trans.
  struct Key {
    long M, K, Ncol;
    bool a_trans, b_trans, accumulate, bias;
    bool bf16 = false;  // operands stored as bf16 (else fp32)
    auto Tie() const {
      return std::tie(M, K, Ncol, a_trans, b_trans, accumulate, bias, bf16);
    }
    bool operator<(const Key& o) const { return Tie() < o.Tie(); }
  };
  struct Entry;

  Entry& Get(const Key& key);
  // Whether the product packs B before it runs (see the .cc).
  static bool PackB(const Key& key);
  bool bf16_operands() const { return precision_ == MatmulPrecision::kBf16 && native_bf16_; }
  // x[n] as the primitives take it under precision_: itself (fp32, or
  // already converted), or converted into `buf` (bf16 storage, or fp32
  // rounded to bf16 / fp16).
  const void* Operand(ScratchBuffer& buf, MatmulOperand x, int64_t n);
  // The cached primitive for `key` (its bf16 field set here) on operands
  // from Operand.
  void Run(Key key, const void* a, const void* b, const float* bias, float* dst);

  dnnl::engine engine_;
  dnnl::stream stream_;
  std::map<Key, std::unique_ptr<Entry>> cache_;
  ScratchBuffer scratchpad_;
  MatmulPrecision precision_ = MatmulPrecision::kFp32;
  bool native_bf16_ = CpuHasBf16Matmul();
  ScratchBuffer a_, b_, dout_;  // operands converted to precision_ (Operand)
  ScratchBuffer packed_b_;      // B in the primitive's format (PackB)
};

}  // namespace mingpt::cpu
