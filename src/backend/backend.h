// Backend: the table of coarse ops the model is written in. One virtual call
// per op (never per element); each implementation (cpu/, later cuda/) is
// checked against the CPU reference kernels.
//
// Conventions for every op:
//   - all pointers are backend memory (host memory on the CPU backend);
//   - shapes are row-major; B batch, T time, C channels, NH heads, V vocab,
//     N = B*T rows, OC/IC output/input features; weights are PyTorch-shaped;
//   - parameter gradients accumulate (+=), which gradient accumulation and
//     several uses of one weight need; activation gradients overwrite (=)
//     except where an op says otherwise (LayerNormBackward adds into the
//     residual stream's gradient, MatmulBackward adds when asked);
//   - parameters, gradients and activations are fp32, except activations
//     that only feed matrix products, which may be kept in the products'
//     operand format (MatmulOperand); matrix-product precision is a backend
//     setting (SetMatmulPrecision).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>

#include "backend/dropout.h"
#include "core/status.h"

namespace mingpt {

// The precision of the matrix products' operands (--precision): kBf16 and
// kFp16 round both operands of MatmulForward / MatmulBackward to that type
// (round to nearest even; fp16 overflows to inf past 65504 and has
// subnormals) and accumulate in fp32 into fp32 results, as a bf16 / fp16 GEMM
// with fp32 accumulation does. Everything else (layernorm, softmax,
// attention, the loss, the optimizer) stays fp32.
enum class MatmulPrecision { kFp32, kBf16, kFp16 };

// An operand of MatmulForward / MatmulBackward: fp32 values (converted to the
// product's operand format inside the call, as a const float* converts
// implicitly), or values already in that format (Converted): what
// ToOperand, GeluForwardOperand and GeluBackwardOperand write, under the
// MatmulPrecision in effect when they ran. A model keeps an activation that
// only feeds products in that format, so that it is converted once, where it
// is made, rather than on every use.
struct MatmulOperand {
  MatmulOperand(const float* f32) : data(f32) {}  // NOLINT: implicit on purpose
  static MatmulOperand Converted(const void* p) {
    MatmulOperand o(nullptr);
    o.data = p;
    o.converted = true;
    return o;
  }
  const void* data;
  bool converted = false;
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual const char* name() const = 0;

  // ---- memory -------------------------------------------------------------
  virtual void* Malloc(size_t bytes) = 0;  // 64-byte aligned; aborts on OOM
  virtual void Free(void* p) = 0;
  virtual void Memset0(void* p, size_t bytes) = 0;
  virtual void CopyToDevice(void* dst, const void* host_src, size_t bytes) = 0;
  virtual void CopyToHost(void* host_dst, const void* src, size_t bytes) = 0;
  // Backend memory to backend memory.
  virtual void Copy(void* dst, const void* src, size_t bytes) = 0;
  // Host memory the device copies to and from directly (page-locked on a
  // GPU; ordinary 64-byte aligned memory on the CPU backend): where the
  // offload strategies keep the state they move off the device.
  virtual void* MallocHost(size_t bytes) = 0;
  virtual void FreeHost(void* p) = 0;
  // Page-locks host memory allocated elsewhere, for memory that must meet
  // other needs too (O_DIRECT's alignment), as MallocHost's is; UnpinHost
  // before it is freed. Nothing to do on the CPU backend.
  virtual void PinHost(void* /*p*/, size_t /*bytes*/) {}
  virtual void UnpinHost(void* /*p*/) {}
  virtual void Synchronize() = 0;

  // Asynchronous transfers between backend memory and page-locked host
  // memory (MallocHost's, or PinHost'd), for the offload strategies: on a
  // GPU they run on a copy stream beside the compute. A transfer starts after
  // the work issued before it (it reads what earlier ops wrote and overwrites
  // nothing they still read); work issued after it is not ordered after it
  // until OrderAfter(t), which makes the device wait (the host goes on).
  // WaitTransfer(t) blocks the host until t is done; until then the host
  // must not read a copy's host destination nor change its host source.
  // Transfers complete in the order issued (waiting for one waits for every
  // earlier one). 0 is a transfer that is done. On the CPU backend they are
  // the plain copies, done when issued.
  using Transfer = uint64_t;
  virtual Transfer CopyToDeviceAsync(void* dst, const void* host_src, size_t bytes) {
    CopyToDevice(dst, host_src, bytes);
    return 0;
  }
  virtual Transfer CopyToHostAsync(void* host_dst, const void* src, size_t bytes) {
    CopyToHost(host_dst, src, bytes);
    return 0;
  }
  virtual void OrderAfter(Transfer /*t*/) {}
  virtual void WaitTransfer(Transfer /*t*/) {}

  // The most device memory this process has held through its backends at
  // once (their allocations and scratch; not a GPU's context or libraries'
  // own), in bytes. 0 on the CPU backend, whose memory is host memory (peak
  // RSS counts it).
  virtual int64_t PeakDeviceBytes() const { return 0; }

  // ---- settings -----------------------------------------------------------
  virtual void SetMatmulPrecision(MatmulPrecision precision) = 0;
  virtual MatmulPrecision matmul_precision() const = 0;
  // Bytes per element of the products' operand format under the current
  // precision: 4 for fp32 operands (kFp32, and the low precisions where the
  // backend rounds fp32 values instead of storing 16-bit ones), 2 for bf16 or
  // fp16 storage.
  virtual size_t OperandBytes() const = 0;

  // ---- ops ----------------------------------------------------------------
  // out[B,T,C] = wte[idx[b,t], :] + wpe[t, :]                               (=)
  virtual void EncoderForward(float* out, const int32_t* idx, const float* wte,
                              const float* wpe, int B, int T, int C) = 0;
  // dwte[idx[b,t], :] += dout[b,t,:];  dwpe[t,:] += sum_b dout[b,t,:]      (+=)
  // dwte has V rows: every idx in [0, V).
  virtual void EncoderBackward(float* dwte, float* dwpe, const float* dout,
                               const int32_t* idx, int B, int T, int C, int V) = 0;

  // out = (x - mean) * rstd * w + b over the last dim, eps 1e-5; saves
  // mean[N] and rstd[N] for backward.                                       (=)
  virtual void LayerNormForward(float* out, float* mean, float* rstd,
                                const float* x, const float* w, const float* b,
                                int N, int C) = 0;
  // sum = x + branch, then out = LayerNorm(sum) as LayerNormForward: the
  // residual add fused with the layernorm that follows it.                  (=)
  virtual void ResidualLayerNormForward(float* sum, float* out, float* mean, float* rstd,
                                        const float* x, const float* branch, const float* w,
                                        const float* b, int N, int C) = 0;
  // Both with `out` written in the operand format: a layernorm's output is
  // read only by the products that follow it, forward and backward.         (=)
  virtual void LayerNormForwardOperand(void* out, float* mean, float* rstd, const float* x,
                                       const float* w, const float* b, int N, int C) = 0;
  virtual void ResidualLayerNormForwardOperand(float* sum, void* out, float* mean, float* rstd,
                                               const float* x, const float* branch,
                                               const float* w, const float* b, int N,
                                               int C) = 0;
  // dx += ..., dw += ..., db += ...                                         (+=)
  virtual void LayerNormBackward(float* dx, float* dw, float* db,
                                 const float* dout, const float* x,
                                 const float* w, const float* mean,
                                 const float* rstd, int N, int C) = 0;

  // out[N,OC] = inp[N,IC] @ W[OC,IC]^T + bias[OC] (bias may be null)        (=)
  virtual void MatmulForward(float* out, MatmulOperand inp, MatmulOperand W,
                             const float* bias, int N, int IC, int OC) = 0;
  // dinp[N,IC] (= or += by accumulate_dinp; may be null) = dout @ W;
  // dW += dout^T @ inp;  dbias += sum_n dout (may be null; only with an fp32
  // dout: a converted one has lost the precision the sum needs).
  // dinp may alias inp (not accumulating): inp is read before dinp is written.
  virtual void MatmulBackward(float* dinp, float* dW, float* dbias,
                              MatmulOperand dout, MatmulOperand inp,
                              MatmulOperand W, int N, int IC, int OC,
                              bool accumulate_dinp) = 0;
  // dst[n] = src[n] in the operand format (OperandBytes() each).           (=)
  virtual void ToOperand(void* dst, const float* src, int64_t n) = 0;

  // Causal self-attention over heads of size hs = C/NH:
  //   P = softmax(mask(Q K^T / sqrt(hs))),  out = dropout(P) V
  // q,k,v,out are [B,T,C] with head h in channels [h*hs, (h+1)*hs);
  // lse[B,NH,T] saves log sum_j exp(S[i,j]) per row for backward, which
  // recomputes P from it: no T x T matrix is kept.                        (=)
  // The attention dropout mask element index is (h*T + i)*T + j.
  virtual void AttentionForward(float* out, float* lse, const float* q,
                                const float* k, const float* v, int B, int T,
                                int C, int NH, const DropoutSpec& dropout) = 0;
  // An error naming the limit when this backend's attention cannot run
  // heads of size hs = C/NH (the CUDA kernels' largest head size, or the
  // shared memory it needs on this GPU); checked where a model is built on
  // the backend, before any step. The CPU's runs any.
  virtual Status CheckHeadSize(int /*hs*/) const { return Status::Ok(); }
  // One query position against cached keys and values (generation, no
  // dropout): q, out [C]; k_cache, v_cache [T,C], rows 0..T-1 the positions
  // up to and including the query's. Per head h:
  //   out_h = sum_j softmax_j(q_h . k_j,h / sqrt(hs)) v_j,h               (=)
  virtual void AttentionDecode(float* out, const float* q, const float* k_cache,
                               const float* v_cache, int T, int C, int NH) = 0;
  // dq, dk, dv (=) from dout, using the forward's output `out` (for
  // delta_i = dout_i . out_i = sum_j P_ij dP_ij, dropout included), the saved
  // lse and the same dropout.
  virtual void AttentionBackward(float* dq, float* dk, float* dv,
                                 const float* dout, const float* q,
                                 const float* k, const float* v,
                                 const float* out, const float* lse, int B,
                                 int T, int C, int NH,
                                 const DropoutSpec& dropout) = 0;

  // out = x * Phi(x), exact erf form (nn.GELU()). In place allowed.         (=)
  virtual void GeluForward(float* out, const float* x, int64_t n) = 0;
  // dx = dout * GELU'(x). dx may alias dout.                                (=)
  virtual void GeluBackward(float* dx, const float* x, const float* dout,
                            int64_t n) = 0;
  // GeluForward written in the operand format: the input of the MLP's
  // second product, made once and kept for its backward.                  (=)
  virtual void GeluForwardOperand(void* out, const float* x, int64_t n) = 0;
  // GeluBackward over [N,C] written in the operand format (the output
  // gradient of the MLP's first product), with that product's bias gradient
  // taken on the way from the fp32 values: dbias[c] += sum_n dx[n,c] (dbias
  // may be null). dx may alias dout when OperandBytes() is 4.        (=, +=)
  virtual void GeluBackwardOperand(void* dx, float* dbias, const float* x,
                                   const float* dout, int N, int C) = 0;

  // out = a + b. out may alias a or b.                                      (=)
  virtual void Add(float* out, const float* a, const float* b, int64_t n) = 0;

  // y = dropout(x) over B rows of `row_size` elements each (element index
  // within the row keys the mask); y may alias x. Backward is the same call
  // on the gradients.                                                       (=)
  virtual void Dropout(float* y, const float* x, int B, int64_t row_size,
                       const DropoutSpec& dropout) = 0;

  // losses[N] = -log softmax(logits[n])[targets[n]]                         (=)
  virtual void CrossEntropyForward(float* losses, const float* logits,
                                   const int32_t* targets, int N, int V) = 0;
  // As forward, and dlogits = (softmax(logits) - onehot(target)) * dloss,
  // where dloss is d(total loss)/d(losses[n]) (1/N for the mean). dlogits
  // may alias logits.                                                       (=)
  virtual void CrossEntropyForwardBackward(float* losses, float* dlogits,
                                           const float* logits,
                                           const int32_t* targets, int N,
                                           int V, float dloss) = 0;

  // PyTorch's AdamW, in place, on `count` tensors of one step: tensor k is
  // elements [begin, begin + n) of p, g, m and v, with its own weight decay
  // wd; t is the 1-based step; each gradient element is read as
  // g * grad_scale (the clipping factor and 1/loss scale, folded in so that
  // they cost no pass over the gradients of their own):
  //   p -= lr*wd*p;  m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2;
  //   p -= lr * (m/(1-b1^t)) / (sqrt(v/(1-b2^t)) + eps)
  // The tensors are stepped in one pass where the backend can (the CUDA
  // backend: one launch for up to 32 tensors, not one per tensor).
  struct AdamWTensor {
    int64_t begin, n;
    float wd;
  };
  virtual void AdamWTensors(float* p, const float* g, float* m, float* v,
                            const AdamWTensor* tensors, size_t count,
                            float lr, float beta1, float beta2, float eps,
                            int t, float grad_scale) = 0;
  // AdamWTensors on one tensor of n elements, unscaled.
  void AdamW(float* p, const float* g, float* m, float* v, int64_t n, float lr,
             float beta1, float beta2, float eps, float wd, int t) {
    const AdamWTensor whole{0, n, wd};
    AdamWTensors(p, g, m, v, &whole, 1, lr, beta1, beta2, eps, t, 1.0f);
  }

  // Sum of squares in double precision (gradient norm), and x *= s.
  virtual double SumSquares(const float* x, int64_t n) = 0;
  virtual void Scale(float* x, int64_t n, float s) = 0;
};

// The CPU backend (oneDNN + OpenMP), using `num_threads` threads.
std::unique_ptr<Backend> MakeCpuBackend(int num_threads);

// RAII backend memory (or with kHost, the backend's host memory), move-only.
class Buffer {
 public:
  enum Where { kDevice, kHost };
  Buffer() = default;
  Buffer(Backend* backend, size_t bytes, Where where = kDevice)
      : backend_(backend),
        ptr_(bytes == 0 ? nullptr
                        : (where == kHost ? backend->MallocHost(bytes) : backend->Malloc(bytes))),
        bytes_(bytes),
        where_(where) {}
  Buffer(Buffer&& o) noexcept { *this = std::move(o); }
  Buffer& operator=(Buffer&& o) noexcept {
    if (this != &o) {
      Reset();
      backend_ = o.backend_;
      ptr_ = o.ptr_;
      bytes_ = o.bytes_;
      where_ = o.where_;
      o.ptr_ = nullptr;
      o.bytes_ = 0;
    }
    return *this;
  }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  ~Buffer() { Reset(); }

  void Reset() {
    if (ptr_) where_ == kHost ? backend_->FreeHost(ptr_) : backend_->Free(ptr_);
    ptr_ = nullptr;
    bytes_ = 0;
  }
  template <typename T = float>
  T* as() const { return static_cast<T*>(ptr_); }
  float* f32() const { return static_cast<float*>(ptr_); }
  size_t bytes() const { return bytes_; }
  Where where() const { return where_; }

 private:
  Backend* backend_ = nullptr;
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
  Where where_ = kDevice;
};

}  // namespace mingpt
