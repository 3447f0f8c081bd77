// RAII owners of CUDA objects, move-only: a stream, an event, and device
// scratch that grows (never shrinks) to the largest size asked for, so that
// after the first training step the ops allocate nothing.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
#include <utility>

#include "backend/cuda/cuda_check.h"

namespace mingpt::cuda {

class Stream {
 public:
  Stream() { MINGPT_CUDA_CHECK(cudaStreamCreateWithFlags(&s_, cudaStreamNonBlocking)); }
  ~Stream() {
    if (s_) cudaStreamDestroy(s_);
  }
  Stream(Stream&& o) noexcept : s_(std::exchange(o.s_, nullptr)) {}
  Stream& operator=(Stream&&) = delete;
  Stream(const Stream&) = delete;
  cudaStream_t get() const { return s_; }

 private:
  cudaStream_t s_ = nullptr;
};

class Event {
 public:
  // cudaEventDisableTiming: cheaper, and all we use events for is ordering.
  explicit Event(unsigned flags = cudaEventDisableTiming) {
    MINGPT_CUDA_CHECK(cudaEventCreateWithFlags(&e_, flags));
  }
  ~Event() {
    if (e_) cudaEventDestroy(e_);
  }
  Event(Event&& o) noexcept : e_(std::exchange(o.e_, nullptr)) {}
  Event& operator=(Event&&) = delete;
  Event(const Event&) = delete;
  cudaEvent_t get() const { return e_; }

 private:
  cudaEvent_t e_ = nullptr;
};

// Every device allocation of the backend goes through these two, which keep
// the bytes held and their high-water mark (PeakDeviceBytes). DeviceMalloc
// aborts with the numbers when the device is full.
void* DeviceMalloc(size_t bytes);
void DeviceFree(void* p, size_t bytes);
int64_t PeakDeviceBytes();

// Device memory for an op's temporaries. Reserve(bytes) returns at least
// `bytes`; growing frees the old block (cudaFree waits for the device, so
// work in flight that used it is done first).
class DeviceScratch {
 public:
  DeviceScratch() = default;
  ~DeviceScratch() { DeviceFree(p_, bytes_); }
  DeviceScratch(DeviceScratch&& o) noexcept
      : p_(std::exchange(o.p_, nullptr)), bytes_(std::exchange(o.bytes_, 0)) {}
  DeviceScratch& operator=(DeviceScratch&&) = delete;
  DeviceScratch(const DeviceScratch&) = delete;

  void* Reserve(size_t bytes) {
    if (bytes > bytes_) {
      DeviceFree(p_, bytes_);
      p_ = nullptr;
      bytes_ = 0;
      p_ = DeviceMalloc(bytes);
      bytes_ = bytes;
    }
    return p_;
  }
  template <typename T>
  T* Reserve(size_t count) {
    return static_cast<T*>(Reserve(count * sizeof(T)));
  }
  size_t bytes() const { return bytes_; }

 private:
  void* p_ = nullptr;
  size_t bytes_ = 0;
};

}  // namespace mingpt::cuda
