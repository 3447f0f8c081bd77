// Catching host/device mix-ups on the CPU: a backend whose Malloc'd memory
// is recorded as "device" memory, and communicators that check every buffer
// a collective is handed against that record.
//
//   DeviceMemory         the record: [begin, begin + bytes) of every live
//                        Malloc of the recording backend (never MallocHost)
//   RecordingBackend     a backend that forwards every op to a real one and
//                        records its Malloc / Free in a DeviceMemory
//   CheckingCommunicator forwards every collective to a real communicator;
//                        kDevice: each buffer must lie inside one recorded
//                        allocation (what NCCL needs); kHost: no byte of a
//                        buffer may lie inside one (what MPI on host memory
//                        needs). A buffer that breaks the rule is a
//                        violation, kept in a CheckLog with the
//                        collective's name.
//
// On a GPU the first kind of mix-up is an NCCL error on a host pointer, the
// second MPI reading device memory from the host: a crash or wrong sums.
// Here both only count, so a test can run a whole training and then require
// none. RecordingBackend forwards every op of backend.h: an op added there
// must be forwarded here too (the compiler says so).
#pragma once

#include <cstdint>
#include <cstdlib>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "dist/communicator.h"

namespace mingpt::test {

class DeviceMemory {
 public:
  void Add(const void* p, size_t bytes) {
    std::lock_guard<std::mutex> lock(mu_);
    live_[Address(p)] = bytes;
  }
  void Remove(const void* p) {
    std::lock_guard<std::mutex> lock(mu_);
    live_.erase(Address(p));
  }
  // [p, p + bytes) lies inside one live allocation.
  bool Contains(const void* p, size_t bytes) const {
    std::lock_guard<std::mutex> lock(mu_);
    const uintptr_t a = Address(p);
    auto it = live_.upper_bound(a);
    if (it == live_.begin()) return false;
    --it;
    return a >= it->first && a + bytes <= it->first + it->second;
  }
  // Some byte of [p, p + max(bytes, 1)) lies inside a live allocation.
  bool Overlaps(const void* p, size_t bytes) const {
    std::lock_guard<std::mutex> lock(mu_);
    const uintptr_t a = Address(p), end = a + (bytes == 0 ? 1 : bytes);
    auto it = live_.lower_bound(end);  // first allocation starting at or after end
    if (it == live_.begin()) return false;
    --it;
    return it->first + it->second > a;
  }

 private:
  static uintptr_t Address(const void* p) { return reinterpret_cast<uintptr_t>(p); }
  mutable std::mutex mu_;
  std::map<uintptr_t, size_t> live_;
};

class RecordingBackend final : public Backend {
 public:
  RecordingBackend(std::unique_ptr<Backend> inner, DeviceMemory* memory)
      : inner_(std::move(inner)), memory_(memory) {}
  const char* name() const override { return inner_->name(); }

  void* Malloc(size_t bytes) override {
    void* p = inner_->Malloc(bytes);
    memory_->Add(p, bytes);
    return p;
  }
  void Free(void* p) override {
    memory_->Remove(p);
    inner_->Free(p);
  }
  void Memset0(void* p, size_t bytes) override { inner_->Memset0(p, bytes); }
  void CopyToDevice(void* dst, const void* src, size_t bytes) override {
    inner_->CopyToDevice(dst, src, bytes);
  }
  void CopyToHost(void* dst, const void* src, size_t bytes) override {
    inner_->CopyToHost(dst, src, bytes);
  }
  void Copy(void* dst, const void* src, size_t bytes) override { inner_->Copy(dst, src, bytes); }
  void* MallocHost(size_t bytes) override { return inner_->MallocHost(bytes); }
  void FreeHost(void* p) override { inner_->FreeHost(p); }
  void PinHost(void* p, size_t bytes) override { inner_->PinHost(p, bytes); }
  void UnpinHost(void* p) override { inner_->UnpinHost(p); }
  int64_t PeakDeviceBytes() const override { return inner_->PeakDeviceBytes(); }
  void Synchronize() override { inner_->Synchronize(); }

  void SetMatmulPrecision(MatmulPrecision p) override { inner_->SetMatmulPrecision(p); }
  MatmulPrecision matmul_precision() const override { return inner_->matmul_precision(); }
  size_t OperandBytes() const override { return inner_->OperandBytes(); }

  void EncoderForward(float* out, const int32_t* idx, const float* wte, const float* wpe, int B,
                      int T, int C) override {
    inner_->EncoderForward(out, idx, wte, wpe, B, T, C);
  }
  void EncoderBackward(float* dwte, float* dwpe, const float* dout, const int32_t* idx, int B,
                       int T, int C, int V) override {
    inner_->EncoderBackward(dwte, dwpe, dout, idx, B, T, C, V);
  }
  void LayerNormForward(float* out, float* mean, float* rstd, const float* x, const float* w,
                        const float* b, int N, int C) override {
    inner_->LayerNormForward(out, mean, rstd, x, w, b, N, C);
  }
  void ResidualLayerNormForward(float* sum, float* out, float* mean, float* rstd, const float* x,
                                const float* branch, const float* w, const float* b, int N,
                                int C) override {
    inner_->ResidualLayerNormForward(sum, out, mean, rstd, x, branch, w, b, N, C);
  }
  void LayerNormForwardOperand(void* out, float* mean, float* rstd, const float* x,
                               const float* w, const float* b, int N, int C) override {
    inner_->LayerNormForwardOperand(out, mean, rstd, x, w, b, N, C);
  }
  void ResidualLayerNormForwardOperand(float* sum, void* out, float* mean, float* rstd,
                                       const float* x, const float* branch, const float* w,
                                       const float* b, int N, int C) override {
    inner_->ResidualLayerNormForwardOperand(sum, out, mean, rstd, x, branch, w, b, N, C);
  }
  void LayerNormBackward(float* dx, float* dw, float* db, const float* dout, const float* x,
                         const float* w, const float* mean, const float* rstd, int N,
                         int C) override {
    inner_->LayerNormBackward(dx, dw, db, dout, x, w, mean, rstd, N, C);
  }
  void MatmulForward(float* out, MatmulOperand inp, MatmulOperand W, const float* bias, int N,
                     int IC, int OC) override {
    inner_->MatmulForward(out, inp, W, bias, N, IC, OC);
  }
  void MatmulBackward(float* dinp, float* dW, float* dbias, MatmulOperand dout, MatmulOperand inp,
                      MatmulOperand W, int N, int IC, int OC, bool accumulate_dinp) override {
    inner_->MatmulBackward(dinp, dW, dbias, dout, inp, W, N, IC, OC, accumulate_dinp);
  }
  void ToOperand(void* dst, const float* src, int64_t n) override {
    inner_->ToOperand(dst, src, n);
  }
  void AttentionForward(float* out, float* lse, const float* q, const float* k, const float* v,
                        int B, int T, int C, int NH, const DropoutSpec& dropout) override {
    inner_->AttentionForward(out, lse, q, k, v, B, T, C, NH, dropout);
  }
  void AttentionDecode(float* out, const float* q, const float* k_cache, const float* v_cache,
                       int T, int C, int NH) override {
    inner_->AttentionDecode(out, q, k_cache, v_cache, T, C, NH);
  }
  void AttentionBackward(float* dq, float* dk, float* dv, const float* dout, const float* q,
                         const float* k, const float* v, const float* out, const float* lse,
                         int B, int T, int C, int NH, const DropoutSpec& dropout) override {
    inner_->AttentionBackward(dq, dk, dv, dout, q, k, v, out, lse, B, T, C, NH, dropout);
  }
  void GeluForward(float* out, const float* x, int64_t n) override {
    inner_->GeluForward(out, x, n);
  }
  void GeluBackward(float* dx, const float* x, const float* dout, int64_t n) override {
    inner_->GeluBackward(dx, x, dout, n);
  }
  void GeluForwardOperand(void* out, const float* x, int64_t n) override {
    inner_->GeluForwardOperand(out, x, n);
  }
  void GeluBackwardOperand(void* dx, float* dbias, const float* x, const float* dout, int N,
                           int C) override {
    inner_->GeluBackwardOperand(dx, dbias, x, dout, N, C);
  }
  void Add(float* out, const float* a, const float* b, int64_t n) override {
    inner_->Add(out, a, b, n);
  }
  void Dropout(float* y, const float* x, int B, int64_t row_size,
               const DropoutSpec& dropout) override {
    inner_->Dropout(y, x, B, row_size, dropout);
  }
  void CrossEntropyForward(float* losses, const float* logits, const int32_t* targets, int N,
                           int V) override {
    inner_->CrossEntropyForward(losses, logits, targets, N, V);
  }
  void CrossEntropyForwardBackward(float* losses, float* dlogits, const float* logits,
                                   const int32_t* targets, int N, int V, float dloss) override {
    inner_->CrossEntropyForwardBackward(losses, dlogits, logits, targets, N, V, dloss);
  }
  void AdamWTensors(float* p, const float* g, float* m, float* v, const AdamWTensor* tensors,
                    size_t count, float lr, float beta1, float beta2, float eps, int t,
                    float grad_scale) override {
    inner_->AdamWTensors(p, g, m, v, tensors, count, lr, beta1, beta2, eps, t, grad_scale);
  }
  double SumSquares(const float* x, int64_t n) override { return inner_->SumSquares(x, n); }
  void Scale(float* x, int64_t n, float s) override { inner_->Scale(x, n, s); }

 private:
  std::unique_ptr<Backend> inner_;
  DeviceMemory* memory_;
};

// What a CheckingCommunicator saw; it may outlive the communicator.
class CheckLog {
 public:
  void Call() {
    std::lock_guard<std::mutex> lock(mu_);
    ++calls_;
  }
  void Violation(std::string what) {
    std::lock_guard<std::mutex> lock(mu_);
    violations_.push_back(std::move(what));
  }
  // Collectives forwarded, and the buffers that broke the rule.
  int64_t calls() const {
    std::lock_guard<std::mutex> lock(mu_);
    return calls_;
  }
  std::vector<std::string> violations() const {
    std::lock_guard<std::mutex> lock(mu_);
    return violations_;
  }

 private:
  mutable std::mutex mu_;
  int64_t calls_ = 0;
  std::vector<std::string> violations_;
};

class CheckingCommunicator final : public Communicator {
 public:
  enum Kind { kHost, kDevice };
  CheckingCommunicator(Communicator* inner, const DeviceMemory* memory, Kind kind, CheckLog* log)
      : inner_(inner), memory_(memory), kind_(kind), log_(log) {}

  int rank() const override { return inner_->rank(); }
  int world() const override { return inner_->world(); }
  const char* name() const override { return kind_ == kDevice ? "checked-device" : "checked-host"; }

  Work AllReduce(float* data, int64_t n) override {
    log_->Call();
    Check("AllReduce(float)", data, n * sizeof(float));
    return inner_->AllReduce(data, n);
  }
  Work AllReduce(double* data, int64_t n) override {
    log_->Call();
    Check("AllReduce(double)", data, n * sizeof(double));
    return inner_->AllReduce(data, n);
  }
  Work ReduceScatter(const float* send, float* recv, int64_t n) override {
    log_->Call();
    Check("ReduceScatter send", send, world() * n * sizeof(float));
    Check("ReduceScatter recv", recv, n * sizeof(float));
    return inner_->ReduceScatter(send, recv, n);
  }
  Work AllGather(const float* send, float* recv, int64_t n) override {
    log_->Call();
    Check("AllGather send", send, n * sizeof(float));
    Check("AllGather recv", recv, world() * n * sizeof(float));
    return inner_->AllGather(send, recv, n);
  }
  Work Broadcast(void* data, size_t bytes, int root) override {
    log_->Call();
    Check("Broadcast", data, bytes);
    return inner_->Broadcast(data, bytes, root);
  }
  void Barrier() override {
    log_->Call();
    inner_->Barrier();
  }
  [[noreturn]] void Abort(int code) override {
    inner_->Abort(code);
    std::abort();  // not reached
  }

 private:
  void Check(const char* what, const void* p, size_t bytes) {
    const bool device = kind_ == kDevice;
    if (device ? memory_->Contains(p, bytes) : !memory_->Overlaps(p, bytes)) return;
    log_->Violation(std::string(what) + " of " + std::to_string(bytes) + " bytes on the " +
                    (device ? "device communicator outside device memory"
                            : "host communicator inside device memory"));
  }

  Communicator* inner_;
  const DeviceMemory* memory_;
  Kind kind_;
  CheckLog* log_;
};

}  // namespace mingpt::test
