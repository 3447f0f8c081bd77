// CudaBackend: the Backend op table on one GPU (see cuda_backend.h). Every op
// is enqueued on the backend's stream, in call order; the host waits only
// where the contract hands data to the host (CopyToHost, SumSquares), takes
// it from the host (CopyToDevice: the caller may reuse its buffer at once),
// or asks (Synchronize). The asynchronous transfers of the offload
// strategies run on a second stream, the copy stream, ordered after the
// compute stream by an event and finished by a ring of events (Transfers
// below). Temporaries live in scratch that grows to the largest shape seen,
// so a repeated step allocates nothing.
#include "backend/cuda/cuda_backend.h"

#include <cuda_runtime_api.h>

#include <array>
#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <unordered_map>

#include "backend/cuda/cuda_check.h"
#include "backend/cuda/cuda_resources.h"
#include "backend/cuda/kernels.h"
#include "backend/cuda/matmul.h"
#include "core/check.h"

namespace mingpt {
namespace cuda {

namespace {
std::atomic<int64_t> g_device_bytes{0}, g_peak_device_bytes{0};
}  // namespace

void* DeviceMalloc(size_t bytes) {
  void* p = nullptr;
  const cudaError_t err = cudaMalloc(&p, bytes);
  if (err != cudaSuccess) {
    size_t free_bytes = 0, total = 0;
    cudaMemGetInfo(&free_bytes, &total);
    int device = -1;
    cudaGetDevice(&device);
    std::fprintf(stderr,
                 "%s:%d: cudaMalloc of %zu bytes on device %d failed: %s (%zu of %zu free; "
                 "mingpt holds %lld)\n",
                 __FILE__, __LINE__, bytes, device, cudaGetErrorString(err), free_bytes, total,
                 static_cast<long long>(g_device_bytes.load()));
    std::abort();
  }
  const int64_t held = g_device_bytes += static_cast<int64_t>(bytes);
  int64_t peak = g_peak_device_bytes.load();
  while (held > peak && !g_peak_device_bytes.compare_exchange_weak(peak, held)) {
  }
  return p;
}

void DeviceFree(void* p, size_t bytes) {
  if (p == nullptr) return;
  MINGPT_CUDA_CHECK(cudaFree(p));
  g_device_bytes -= static_cast<int64_t>(bytes);
}

int64_t PeakDeviceBytes() { return g_peak_device_bytes.load(); }

namespace {

// Makes `device` current before the members that need it are built.
struct DeviceSelector {
  explicit DeviceSelector(int device) {
    const int count = CudaDeviceCount();
    MINGPT_CHECK(device >= 0 && device < count, "CUDA device %d of %d", device, count);
    MINGPT_CUDA_CHECK(cudaSetDevice(device));
  }
};

// A pinned host value the device writes results into.
class PinnedDouble {
 public:
  PinnedDouble() { MINGPT_CUDA_CHECK(cudaMallocHost(reinterpret_cast<void**>(&p_), sizeof(double))); }
  ~PinnedDouble() { cudaFreeHost(p_); }
  PinnedDouble(const PinnedDouble&) = delete;
  PinnedDouble& operator=(const PinnedDouble&) = delete;
  double* get() const { return p_; }

 private:
  double* p_ = nullptr;
};

class CudaBackend final : public Backend {
 public:
  explicit CudaBackend(int device) : selector_(device), device_(device), matmul_(stream_.get()) {
    AttentionInit();
  }
  ~CudaBackend() override {
    cudaStreamSynchronize(stream_.get());
    cudaStreamSynchronize(copy_stream_.get());
  }

  const char* name() const override { return "cuda"; }
  cudaStream_t stream() const { return stream_.get(); }
  int device() const { return device_; }

  // ---- memory ----
  void* Malloc(size_t bytes) override;
  void Free(void* p) override;
  void Memset0(void* p, size_t bytes) override;
  void CopyToDevice(void* dst, const void* host_src, size_t bytes) override;
  void CopyToHost(void* host_dst, const void* src, size_t bytes) override;
  void Copy(void* dst, const void* src, size_t bytes) override;
  void* MallocHost(size_t bytes) override;
  void FreeHost(void* p) override;
  void PinHost(void* p, size_t bytes) override {
    if (bytes) MINGPT_CUDA_CHECK(cudaHostRegister(p, bytes, cudaHostRegisterDefault));
  }
  void UnpinHost(void* p) override { MINGPT_CUDA_CHECK(cudaHostUnregister(p)); }
  void Synchronize() override { MINGPT_CUDA_CHECK(cudaStreamSynchronize(stream())); }
  Transfer CopyToDeviceAsync(void* dst, const void* host_src, size_t bytes) override {
    return StartTransfer(dst, host_src, bytes, cudaMemcpyHostToDevice);
  }
  Transfer CopyToHostAsync(void* host_dst, const void* src, size_t bytes) override {
    return StartTransfer(host_dst, src, bytes, cudaMemcpyDeviceToHost);
  }
  void OrderAfter(Transfer t) override;
  void WaitTransfer(Transfer t) override;
  int64_t PeakDeviceBytes() const override { return cuda::PeakDeviceBytes(); }

  // ---- settings ----
  void SetMatmulPrecision(MatmulPrecision precision) override { matmul_.set_precision(precision); }
  MatmulPrecision matmul_precision() const override { return matmul_.precision(); }
  size_t OperandBytes() const override { return matmul_.operand_bytes(); }

  // ---- ops ----
  void EncoderForward(float* out, const int32_t* idx, const float* wte, const float* wpe, int B,
                      int T, int C) override {
    cuda::EncoderForward(stream(), out, idx, wte, wpe, B, T, C);
  }
  void EncoderBackward(float* dwte, float* dwpe, const float* dout, const int32_t* idx, int B,
                       int T, int C, int V) override {
    const int64_t N = int64_t{B} * T;
    cuda::EncoderBackward(stream(), dwte, dwpe, dout, idx, B, T, C, V,
                          token_buckets_.Reserve(cuda::EncoderBackwardScratchBytes(N, C, V)));
  }
  void LayerNormForward(float* out, float* mean, float* rstd, const float* x, const float* w,
                        const float* b, int N, int C) override {
    cuda::LayerNormForward(stream(), out, mean, rstd, x, w, b, N, C);
  }
  void ResidualLayerNormForward(float* sum, float* out, float* mean, float* rstd, const float* x,
                                const float* branch, const float* w, const float* b, int N,
                                int C) override {
    cuda::ResidualLayerNormForward(stream(), sum, out, mean, rstd, x, branch, w, b, N, C);
  }
  // The rows stored straight in the operand type (no fp32 staging pass).
  void LayerNormForwardOperand(void* out, float* mean, float* rstd, const float* x,
                               const float* w, const float* b, int N, int C) override {
    cuda::LayerNormForwardOperand(stream(), out, mean, rstd, x, w, b, N, C, matmul_.precision());
  }
  void ResidualLayerNormForwardOperand(float* sum, void* out, float* mean, float* rstd,
                                       const float* x, const float* branch, const float* w,
                                       const float* b, int N, int C) override {
    cuda::ResidualLayerNormForwardOperand(stream(), sum, out, mean, rstd, x, branch, w, b, N, C,
                                          matmul_.precision());
  }
  void LayerNormBackward(float* dx, float* dw, float* db, const float* dout, const float* x,
                         const float* w, const float* mean, const float* rstd, int N,
                         int C) override {
    cuda::LayerNormBackward(stream(), dx, dw, db, dout, x, w, mean, rstd, N, C,
                            column_partials_.Reserve<float>(ColumnPartialsFloats(N, C)));
  }
  void MatmulForward(float* out, MatmulOperand inp, MatmulOperand W, const float* bias, int N,
                     int IC, int OC) override {
    matmul_.Forward(out, inp, W, bias, N, IC, OC);
  }
  void MatmulBackward(float* dinp, float* dW, float* dbias, MatmulOperand dout, MatmulOperand inp,
                      MatmulOperand W, int N, int IC, int OC, bool accumulate_dinp) override {
    if (dbias) {
      MINGPT_CHECK(!dout.converted, "MatmulBackward: a bias gradient needs an fp32 dout");
      const auto* d = static_cast<const float*>(dout.data);
      float* partials = column_partials_.Reserve<float>(ColumnPartialsFloats(N, OC));
      if (matmul_.operand_bytes() == sizeof(float)) {
        BiasBackward(stream(), dbias, d, N, OC, partials);
      } else {  // the bias gradient and dout's conversion in one pass
        void* converted = dout_operand_.Reserve(size_t{matmul_.operand_bytes()} * N * OC);
        cuda::BiasBackwardOperand(stream(), dbias, converted, d, N, OC, matmul_.precision(),
                                  partials);
        dout = MatmulOperand::Converted(converted);
      }
    }
    matmul_.Backward(dinp, dW, dout, inp, W, N, IC, OC, accumulate_dinp);
  }
  void ToOperand(void* dst, const float* src, int64_t n) override {
    matmul_.ToOperand(dst, src, n);
  }
  Status CheckHeadSize(int hs) const override {
    const std::string why = cuda::AttentionHeadSizeError(hs);
    return why.empty() ? Status::Ok() : Status::Error("--accelerator cuda: " + why);
  }
  void AttentionForward(float* out, float* lse, const float* q, const float* k, const float* v,
                        int B, int T, int C, int NH, const DropoutSpec& dropout) override {
    cuda::AttentionForward(stream(), out, lse, q, k, v, B, T, C, NH, dropout,
                           matmul_.precision());
  }
  void AttentionDecode(float* out, const float* q, const float* k_cache, const float* v_cache,
                       int T, int C, int NH) override {
    cuda::AttentionDecode(stream(), out, q, k_cache, v_cache, T, C, NH);
  }
  void AttentionBackward(float* dq, float* dk, float* dv, const float* dout, const float* q,
                         const float* k, const float* v, const float* out, const float* lse,
                         int B, int T, int C, int NH, const DropoutSpec& dropout) override {
    float* delta = attention_delta_.Reserve<float>(static_cast<size_t>(B) * NH * T);
    cuda::AttentionBackward(stream(), dq, dk, dv, dout, q, k, v, out, lse, B, T, C, NH, dropout,
                            delta, matmul_.precision());
  }
  void GeluForward(float* out, const float* x, int64_t n) override {
    cuda::GeluForward(stream(), out, x, n);
  }
  void GeluBackward(float* dx, const float* x, const float* dout, int64_t n) override {
    cuda::GeluBackward(stream(), dx, x, dout, n);
  }
  void GeluForwardOperand(void* out, const float* x, int64_t n) override {
    cuda::GeluForwardOperand(stream(), out, x, n, matmul_.precision());
  }
  // The gradient made, summed into dbias and stored as operands in one pass.
  void GeluBackwardOperand(void* dx, float* dbias, const float* x, const float* dout, int N,
                           int C) override {
    cuda::GeluBackwardOperand(stream(), dx, dbias, x, dout, N, C, matmul_.precision(),
                              dbias ? column_partials_.Reserve<float>(ColumnPartialsFloats(N, C))
                                    : nullptr);
  }
  void Add(float* out, const float* a, const float* b, int64_t n) override {
    cuda::Add(stream(), out, a, b, n);
  }
  void Dropout(float* y, const float* x, int B, int64_t row_size,
               const DropoutSpec& dropout) override {
    cuda::Dropout(stream(), y, x, B, row_size, dropout);
  }
  void CrossEntropyForward(float* losses, const float* logits, const int32_t* targets, int N,
                           int V) override {
    cuda::CrossEntropyForward(stream(), losses, logits, targets, N, V);
  }
  void CrossEntropyForwardBackward(float* losses, float* dlogits, const float* logits,
                                   const int32_t* targets, int N, int V, float dloss) override {
    cuda::CrossEntropyForwardBackward(stream(), losses, dlogits, logits, targets, N, V, dloss);
  }
  void AdamWTensors(float* p, const float* g, float* m, float* v, const AdamWTensor* tensors,
                    size_t count, float lr, float beta1, float beta2, float eps, int t,
                    float grad_scale) override {
    const AdamWScalars s = MakeAdamWScalars(lr, beta1, beta2, eps, 0.0, t, grad_scale);
    AdamWTensorBatch batch;
    for (size_t k = 0; k < count; ++k) {
      const AdamWTensor& x = tensors[k];
      batch.begin[batch.count] = x.begin;
      batch.n[batch.count] = x.n;
      batch.decay[batch.count] = MakeAdamWScalars(lr, beta1, beta2, eps, x.wd, t, 1.0f).decay;
      if (++batch.count == kAdamWMaxTensors || k + 1 == count) {
        cuda::AdamWTensors(stream(), p, g, m, v, batch, s);
        batch.count = 0;
      }
    }
  }

  double SumSquares(const float* x, int64_t n) override;
  void Scale(float* x, int64_t n, float s) override { cuda::Scale(stream(), x, n, s); }

 private:
  Transfer StartTransfer(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind);
  // The event that finishes transfer t, or null when t is done for certain:
  // 0, or so old that its slot of the ring has been reused (which waited for it).
  cudaEvent_t TransferEvent(Transfer t) const {
    if (t == 0 || t + kTransferRing < next_transfer_) return nullptr;
    MINGPT_CHECK(t < next_transfer_, "transfer %llu was never started",
                 static_cast<unsigned long long>(t));
    return transfer_done_[t % kTransferRing].get();
  }

  static constexpr uint64_t kTransferRing = 64;
  DeviceSelector selector_;  // first: the members below live on the device
  int device_;
  Stream stream_;
  Stream copy_stream_;       // the asynchronous transfers
  Event compute_reached_;    // recorded on stream_ as each transfer starts
  std::array<Event, kTransferRing> transfer_done_;  // transfer t: [t % kTransferRing]
  Transfer next_transfer_ = 1;
  LtMatmul matmul_;
  DeviceScratch column_partials_;  // LayerNormBackward, bias gradients
  DeviceScratch dout_operand_;     // MatmulBackward's dout converted with its bias gradient
  DeviceScratch token_buckets_;    // EncoderBackward's sort of the rows by token
  DeviceScratch attention_delta_;  // [B,NH,T] between the backward kernels
  DeviceScratch sum_squares_;      // partials and the result
  PinnedDouble sum_squares_host_;
  std::unordered_map<void*, size_t> allocations_;  // Malloc's, by address
};

void* CudaBackend::Malloc(size_t bytes) {
  if (bytes == 0) return nullptr;
  void* p = DeviceMalloc(bytes);  // 256-byte aligned
  allocations_[p] = bytes;
  return p;
}

// cudaFree waits for the device: no op in flight still uses p afterwards.
void CudaBackend::Free(void* p) {
  if (p == nullptr) return;
  auto it = allocations_.find(p);
  MINGPT_CHECK(it != allocations_.end(), "Free of %p, which this backend did not allocate", p);
  DeviceFree(p, it->second);
  allocations_.erase(it);
}

void CudaBackend::Memset0(void* p, size_t bytes) {
  if (bytes) MINGPT_CUDA_CHECK(cudaMemsetAsync(p, 0, bytes, stream()));
}

// Synchronous: the caller may reuse (or free) host_src when this returns,
// and pageable host memory is not safe to copy from asynchronously.
void CudaBackend::CopyToDevice(void* dst, const void* host_src, size_t bytes) {
  if (bytes == 0) return;
  MINGPT_CUDA_CHECK(cudaMemcpyAsync(dst, host_src, bytes, cudaMemcpyHostToDevice, stream()));
  MINGPT_CUDA_CHECK(cudaStreamSynchronize(stream()));
}

void CudaBackend::CopyToHost(void* host_dst, const void* src, size_t bytes) {
  if (bytes == 0) return;
  MINGPT_CUDA_CHECK(cudaMemcpyAsync(host_dst, src, bytes, cudaMemcpyDeviceToHost, stream()));
  MINGPT_CUDA_CHECK(cudaStreamSynchronize(stream()));
}

// A transfer on the copy stream, after the work issued so far on the
// compute stream. Reusing a slot of the ring first waits (on the host) for
// the transfer kTransferRing before, long done in any real use.
Backend::Transfer CudaBackend::StartTransfer(void* dst, const void* src, size_t bytes,
                                             cudaMemcpyKind kind) {
  if (bytes == 0) return 0;
  const Transfer t = next_transfer_++;
  cudaEvent_t done = transfer_done_[t % kTransferRing].get();
  if (t > kTransferRing) MINGPT_CUDA_CHECK(cudaEventSynchronize(done));
  MINGPT_CUDA_CHECK(cudaEventRecord(compute_reached_.get(), stream()));
  MINGPT_CUDA_CHECK(cudaStreamWaitEvent(copy_stream_.get(), compute_reached_.get(), 0));
  MINGPT_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, kind, copy_stream_.get()));
  MINGPT_CUDA_CHECK(cudaEventRecord(done, copy_stream_.get()));
  return t;
}

void CudaBackend::OrderAfter(Transfer t) {
  if (cudaEvent_t done = TransferEvent(t)) {
    MINGPT_CUDA_CHECK(cudaStreamWaitEvent(stream(), done, 0));
  }
}

void CudaBackend::WaitTransfer(Transfer t) {
  if (cudaEvent_t done = TransferEvent(t)) MINGPT_CUDA_CHECK(cudaEventSynchronize(done));
}

// cudaMemcpy's regions must not overlap (the CPU backend's memmove allows
// it); no caller overlaps them, and one that did would be a bug.
// cudaMemcpyDefault: the pointers' kinds are known to CUDA (unified
// addressing), so pinned host memory works too.
void CudaBackend::Copy(void* dst, const void* src, size_t bytes) {
  if (bytes == 0 || dst == src) return;
  const auto d = reinterpret_cast<uintptr_t>(dst), s = reinterpret_cast<uintptr_t>(src);
  MINGPT_CHECK(d + bytes <= s || s + bytes <= d, "Copy of %zu bytes between overlapping regions",
               bytes);
  MINGPT_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault, stream()));
}

void* CudaBackend::MallocHost(size_t bytes) {
  if (bytes == 0) return nullptr;
  void* p = nullptr;
  MINGPT_CUDA_CHECK(cudaMallocHost(&p, bytes));  // page-locked, 4 KiB aligned
  return p;
}

void CudaBackend::FreeHost(void* p) {
  if (p) MINGPT_CUDA_CHECK(cudaFreeHost(p));
}

double CudaBackend::SumSquares(const float* x, int64_t n) {
  double* partials = sum_squares_.Reserve<double>(SumSquaresPartials() + 1);
  double* result = partials + SumSquaresPartials();
  cuda::SumSquares(stream(), result, x, n, partials);
  MINGPT_CUDA_CHECK(cudaMemcpyAsync(sum_squares_host_.get(), result, sizeof(double),
                                    cudaMemcpyDeviceToHost, stream()));
  MINGPT_CUDA_CHECK(cudaStreamSynchronize(stream()));
  return *sum_squares_host_.get();
}

}  // namespace
}  // namespace cuda

int CudaDeviceCount() {
  int count = 0;
  // No driver (cudaErrorInsufficientDriver), no device (cudaErrorNoDevice)
  // and the like all mean: no CUDA device here.
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();  // clear it, so that later calls do not report it
    return 0;
  }
  return count;
}

std::unique_ptr<Backend> MakeCudaBackend(int device) {
  return std::make_unique<cuda::CudaBackend>(device);
}

void* CudaStreamOf(Backend* backend) {
  auto* cuda_backend = dynamic_cast<cuda::CudaBackend*>(backend);
  return cuda_backend ? static_cast<void*>(cuda_backend->stream()) : nullptr;
}

int CudaDeviceOf(Backend* backend) {
  auto* cuda_backend = dynamic_cast<cuda::CudaBackend*>(backend);
  return cuda_backend ? cuda_backend->device() : -1;
}

}  // namespace mingpt
