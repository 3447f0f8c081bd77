// The CUDA runtime functions the backend calls, for the emulator: devices
// whose memory is host memory. Allocations are registered, so that a
// copy in the wrong direction, out of an allocation's bounds or between
// overlapping regions, a free of a pointer never allocated and a stream
// used after its destruction are errors here, as they are (or should be)
// on a GPU. Work on a created stream waits in its queue until something
// waits for it (runtime_state.h).
#include <cuda_runtime.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <functional>
#include <iterator>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include "backend/cuda/emulation/emulator.h"
#include "backend/cuda/emulation/runtime_state.h"

// A stream: its queue of work not run yet, and how much it has enqueued and
// run.
struct CUstream_st {
  unsigned flags;
  std::mutex queue_mu;
  std::deque<std::function<void()>> queue;  // guarded by queue_mu
  uint64_t enqueued = 0;                    // guarded by queue_mu
  bool compute = false;                     // has run kernels or products; guarded by queue_mu
  uint64_t executed = 0;                    // guarded by ExecMutex()
};
// An event: the work of `stream` up to `position` when it was recorded.
struct CUevent_st {
  unsigned flags;
  cudaStream_t stream = nullptr;
  uint64_t position = 0;
};

namespace mingpt::cuda::emu {
namespace {

struct Registry {
  std::mutex mutex;
  std::map<uintptr_t, size_t> device, pinned;  // base -> bytes
  std::set<uintptr_t> registered;               // of pinned: cudaHostRegister's
  std::set<const CUstream_st*> streams;
  std::set<const CUevent_st*> events;
  size_t device_bytes = 0;
};

Registry& R() {
  static Registry r;
  return r;
}

thread_local cudaError_t g_last_error = cudaSuccess;

struct Stats {
  std::atomic<long long> device_mallocs{0}, device_frees{0}, host_mallocs{0}, host_registers{0},
      launches{0}, stream_syncs{0};
  ~Stats() {
    const char* path = std::getenv("MINGPT_CUDA_EMULATOR_STATS");
    if (path == nullptr) return;
    if (std::FILE* f = std::fopen(path, "a")) {
      std::fprintf(f,
                   "device_mallocs=%lld device_frees=%lld host_mallocs=%lld host_registers=%lld "
                   "launches=%lld stream_syncs=%lld\n",
                   device_mallocs.load(), device_frees.load(), host_mallocs.load(),
                   host_registers.load(), launches.load(), stream_syncs.load());
      std::fclose(f);
    }
  }
};
Stats g_stats;

// The allocation of `kind` holding [p, p + bytes), if any: 1 when one holds
// all of it, -1 when p is inside one that ends too soon, 0 when none.
int Holds(const std::map<uintptr_t, size_t>& allocs, const void* p, size_t bytes) {
  const auto a = reinterpret_cast<uintptr_t>(p);
  auto it = allocs.upper_bound(a);
  if (it == allocs.begin()) return 0;
  --it;
  if (a >= it->first + it->second && !(a == it->first && it->second == 0)) return 0;
  return a + bytes <= it->first + it->second ? 1 : -1;
}

[[noreturn]] void Misuse(const char* call, const char* what, const void* a, const void* b,
                         size_t bytes) {
  std::fprintf(stderr, "CUDA emulator: %s of %zu bytes (%p, %p): %s\n", call, bytes, a, b, what);
  std::abort();
}

// Device memory must lie inside one live device allocation; an error names
// the call.
void CheckDevice(const char* call, const void* p, const void* other, size_t bytes) {
  const int held = Holds(R().device, p, bytes);
  if (held == 1) return;
  Misuse(call,
         held < 0 ? "runs past the end of its device allocation"
                  : "device pointer not inside any device allocation",
         p, other, bytes);
}

// Exactly `bytes` (not rounded up to the alignment, as aligned_alloc would
// need), so that under AddressSanitizer a kernel, copy or product that runs
// past the end of its buffer is caught at the first byte.
void* AlignedAlloc(size_t alignment, size_t bytes) {
  void* p = nullptr;
  return posix_memalign(&p, alignment, bytes == 0 ? 1 : bytes) == 0 ? p : nullptr;
}

}  // namespace

cudaError_t Record(cudaError_t err) {
  if (err != cudaSuccess) g_last_error = err;
  return err;
}

void CountLaunch() { ++g_stats.launches; }

bool SkipCompute() {
  static const bool skip = [] {
    const char* env = std::getenv("MINGPT_CUDA_EMULATOR_SKIP_COMPUTE");
    return env != nullptr && std::string(env) == "1";
  }();
  return skip;
}

namespace {
// $MINGPT_CUDA_EMULATOR_SCHEDULE: "lazy" (the default) or "compute_first".
bool ComputeFirst() {
  static const bool compute_first = [] {
    const char* env = std::getenv("MINGPT_CUDA_EMULATOR_SCHEDULE");
    const std::string schedule = env == nullptr ? "" : env;
    if (schedule.empty() || schedule == "lazy") return false;
    if (schedule == "compute_first") return true;
    std::fprintf(stderr,
                 "CUDA emulator: MINGPT_CUDA_EMULATOR_SCHEDULE=%s: expected lazy or compute_first\n",
                 schedule.c_str());
    std::abort();
  }();
  return compute_first;
}
}  // namespace

void Enqueue(cudaStream_t stream, std::function<void()> work, bool compute) {
  if (stream == nullptr) {
    work();
    return;
  }
  bool run_now = false;
  {
    std::lock_guard<std::mutex> lock(stream->queue_mu);
    stream->queue.push_back(std::move(work));
    ++stream->enqueued;
    stream->compute = stream->compute || compute;
    run_now = stream->compute && ComputeFirst();
  }
  if (run_now) Drain(stream);
}

namespace {
// Held while any stream's work runs, by one thread of the process at a time
// (the host thread waiting for a stream, a communicator's completion thread):
// recursively, since work that waits for an event runs the other stream's
// work. One lock for every stream, because a lock per stream deadlocks: a
// thread running the copy stream (which waits for the compute stream) and
// another running the collectives' stream into the compute stream (which
// waits for a copy) would each hold what the other needs.
std::recursive_mutex& ExecMutex() {
  static std::recursive_mutex mu;
  return mu;
}

// Runs the work of `stream` up to `position` (what it had enqueued then).
void RunUntil(cudaStream_t stream, uint64_t position) {
  if (stream == nullptr) return;
  std::lock_guard<std::recursive_mutex> exec(ExecMutex());
  while (stream->executed < position) {
    std::function<void()> work;
    {
      std::lock_guard<std::mutex> lock(stream->queue_mu);
      work = std::move(stream->queue.front());
      stream->queue.pop_front();
    }
    ++stream->executed;
    work();
  }
}

uint64_t Enqueued(cudaStream_t stream) {
  std::lock_guard<std::mutex> lock(stream->queue_mu);
  return stream->enqueued;
}

// cudaFree, cudaFreeHost, cudaDeviceSynchronize: every stream's work.
void DrainAll() {
  std::vector<cudaStream_t> streams;
  {
    std::lock_guard<std::mutex> lock(R().mutex);
    for (const CUstream_st* s : R().streams) streams.push_back(const_cast<cudaStream_t>(s));
  }
  for (cudaStream_t s : streams) Drain(s);
}
}  // namespace

void Drain(cudaStream_t stream) {
  if (stream != nullptr) RunUntil(stream, Enqueued(stream));
}

bool IsLiveStream(cudaStream_t stream) {
  if (stream == nullptr) return true;
  std::lock_guard<std::mutex> lock(R().mutex);
  return R().streams.count(stream) > 0;
}

}  // namespace mingpt::cuda::emu

using mingpt::cuda::emu::R;
using mingpt::cuda::emu::Record;

// ---- errors and devices ----------------------------------------------------------

cudaError_t cudaGetLastError() {
  const cudaError_t err = mingpt::cuda::emu::g_last_error;
  mingpt::cuda::emu::g_last_error = cudaSuccess;
  return err;
}

cudaError_t cudaPeekAtLastError() { return mingpt::cuda::emu::g_last_error; }

const char* cudaGetErrorName(cudaError_t err) {
  switch (err) {
    case cudaSuccess:
      return "cudaSuccess";
    case cudaErrorInvalidValue:
      return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation:
      return "cudaErrorMemoryAllocation";
    case cudaErrorInvalidConfiguration:
      return "cudaErrorInvalidConfiguration";
    case cudaErrorInvalidDevice:
      return "cudaErrorInvalidDevice";
    case cudaErrorInvalidDevicePointer:
      return "cudaErrorInvalidDevicePointer";
    case cudaErrorInvalidResourceHandle:
      return "cudaErrorInvalidResourceHandle";
    case cudaErrorInvalidDeviceFunction:
      return "cudaErrorInvalidDeviceFunction";
    default:
      return "cudaError (other)";
  }
}

const char* cudaGetErrorString(cudaError_t err) {
  switch (err) {
    case cudaSuccess:
      return "no error";
    case cudaErrorInvalidValue:
      return "invalid argument";
    case cudaErrorMemoryAllocation:
      return "out of memory";
    case cudaErrorInvalidConfiguration:
      return "invalid configuration argument";
    case cudaErrorInvalidDevice:
      return "invalid device ordinal";
    case cudaErrorInvalidDevicePointer:
      return "invalid device pointer";
    case cudaErrorInvalidResourceHandle:
      return "invalid resource handle";
    case cudaErrorInvalidDeviceFunction:
      return "invalid device function";
    default:
      return "an error the emulator does not name";
  }
}

namespace {
// $MINGPT_CUDA_EMULATED_DEVICES devices (1 to 16, default 1), all sharing
// host memory: for runs of several ranks on one machine.
int EmulatedDevices() {
  static const int devices = [] {
    const char* env = std::getenv("MINGPT_CUDA_EMULATED_DEVICES");
    const int n = env ? std::atoi(env) : 1;
    return n >= 1 && n <= 16 ? n : 1;
  }();
  return devices;
}
thread_local int g_device = 0;
}  // namespace

cudaError_t cudaGetDeviceCount(int* count) {
  *count = EmulatedDevices();
  return cudaSuccess;
}

cudaError_t cudaSetDevice(int device) {
  if (device < 0 || device >= EmulatedDevices()) return Record(cudaErrorInvalidDevice);
  g_device = device;
  return cudaSuccess;
}

cudaError_t cudaGetDevice(int* device) {
  *device = g_device;
  return cudaSuccess;
}

// The one attribute the backend asks for: a block's opt-in shared memory
// maximum, Hopper's 227 KiB (the emulator's launch limit).
cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int device) {
  if (device < 0 || device >= EmulatedDevices()) return Record(cudaErrorInvalidDevice);
  if (attr != cudaDevAttrMaxSharedMemoryPerBlockOptin) return Record(cudaErrorInvalidValue);
  *value = 227 << 10;
  return cudaSuccess;
}

cudaError_t cudaDeviceSynchronize() {
  mingpt::cuda::emu::DrainAll();
  return cudaSuccess;
}

cudaError_t cudaMemGetInfo(size_t* free_bytes, size_t* total) {
  const size_t host = static_cast<size_t>(sysconf(_SC_PHYS_PAGES)) * sysconf(_SC_PAGE_SIZE);
  std::lock_guard<std::mutex> lock(R().mutex);
  *total = host;
  *free_bytes = host > R().device_bytes ? host - R().device_bytes : 0;
  return cudaSuccess;
}

// ---- memory --------------------------------------------------------------------------

cudaError_t cudaMalloc(void** p, size_t bytes) {
  *p = mingpt::cuda::emu::AlignedAlloc(256, bytes);
  if (*p == nullptr) return Record(cudaErrorMemoryAllocation);
  ++mingpt::cuda::emu::g_stats.device_mallocs;
  std::lock_guard<std::mutex> lock(R().mutex);
  R().device[reinterpret_cast<uintptr_t>(*p)] = bytes;
  R().device_bytes += bytes;
  return cudaSuccess;
}

// Waits for the device first, as cudaFree does.
cudaError_t cudaFree(void* p) {
  if (p == nullptr) return cudaSuccess;
  mingpt::cuda::emu::DrainAll();
  std::lock_guard<std::mutex> lock(R().mutex);
  auto it = R().device.find(reinterpret_cast<uintptr_t>(p));
  if (it == R().device.end()) return Record(cudaErrorInvalidDevicePointer);
  R().device_bytes -= it->second;
  ++mingpt::cuda::emu::g_stats.device_frees;
  R().device.erase(it);
  std::free(p);
  return cudaSuccess;
}

cudaError_t cudaMallocHost(void** p, size_t bytes) {
  *p = mingpt::cuda::emu::AlignedAlloc(4096, bytes);
  if (*p == nullptr) return Record(cudaErrorMemoryAllocation);
  ++mingpt::cuda::emu::g_stats.host_mallocs;
  std::lock_guard<std::mutex> lock(R().mutex);
  R().pinned[reinterpret_cast<uintptr_t>(*p)] = bytes;
  return cudaSuccess;
}

cudaError_t cudaFreeHost(void* p) {
  if (p == nullptr) return cudaSuccess;
  mingpt::cuda::emu::DrainAll();
  std::lock_guard<std::mutex> lock(R().mutex);
  auto it = R().pinned.find(reinterpret_cast<uintptr_t>(p));
  if (it == R().pinned.end() || R().registered.count(it->first)) {
    return Record(cudaErrorInvalidValue);
  }
  R().pinned.erase(it);
  std::free(p);
  return cudaSuccess;
}

// Memory allocated elsewhere becomes pinned until unregistered (and may not
// be cudaFreeHost'd).
cudaError_t cudaHostRegister(void* p, size_t bytes, unsigned /*flags*/) {
  std::lock_guard<std::mutex> lock(R().mutex);
  if (p == nullptr || bytes == 0 || mingpt::cuda::emu::Holds(R().pinned, p, 1) != 0 ||
      mingpt::cuda::emu::Holds(R().device, p, 1) != 0) {
    return Record(cudaErrorInvalidValue);  // (CUDA: cudaErrorHostMemoryAlreadyRegistered)
  }
  R().pinned[reinterpret_cast<uintptr_t>(p)] = bytes;
  R().registered.insert(reinterpret_cast<uintptr_t>(p));
  ++mingpt::cuda::emu::g_stats.host_registers;
  return cudaSuccess;
}

cudaError_t cudaHostUnregister(void* p) {
  mingpt::cuda::emu::DrainAll();  // copies in flight may still use it
  std::lock_guard<std::mutex> lock(R().mutex);
  const auto a = reinterpret_cast<uintptr_t>(p);
  if (R().registered.erase(a) == 0) return Record(cudaErrorInvalidValue);
  R().pinned.erase(a);
  return cudaSuccess;
}

cudaError_t cudaPointerGetAttributes(cudaPointerAttributes* attr, const void* p) {
  std::lock_guard<std::mutex> lock(R().mutex);
  *attr = cudaPointerAttributes{};
  if (mingpt::cuda::emu::Holds(R().device, p, 0) != 0) {
    attr->type = cudaMemoryTypeDevice;
    attr->devicePointer = const_cast<void*>(p);
  } else if (mingpt::cuda::emu::Holds(R().pinned, p, 0) != 0) {
    attr->type = cudaMemoryTypeHost;
    attr->hostPointer = attr->devicePointer = const_cast<void*>(p);
  } else {
    attr->type = cudaMemoryTypeUnregistered;
    attr->device = -2;
    return cudaSuccess;
  }
  attr->device = 0;
  return cudaSuccess;
}

cudaError_t cudaMemsetAsync(void* p, int value, size_t bytes, cudaStream_t stream) {
  if (!mingpt::cuda::emu::IsLiveStream(stream)) return Record(cudaErrorInvalidResourceHandle);
  if (bytes == 0) return cudaSuccess;
  {
    std::lock_guard<std::mutex> lock(R().mutex);
    mingpt::cuda::emu::CheckDevice("cudaMemsetAsync", p, nullptr, bytes);
  }
  mingpt::cuda::emu::Enqueue(stream, [=] { std::memset(p, value, bytes); });
  return cudaSuccess;
}

cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind,
                            cudaStream_t stream) {
  using mingpt::cuda::emu::CheckDevice;
  using mingpt::cuda::emu::Holds;
  using mingpt::cuda::emu::Misuse;
  if (!mingpt::cuda::emu::IsLiveStream(stream)) return Record(cudaErrorInvalidResourceHandle);
  if (bytes == 0) return cudaSuccess;
  bool src_pageable = false;
  {
    std::lock_guard<std::mutex> lock(R().mutex);
    const auto& dev = R().device;
    src_pageable = Holds(dev, src, 0) == 0 && Holds(R().pinned, src, 0) == 0;
    switch (kind) {
      case cudaMemcpyHostToDevice:
        CheckDevice("cudaMemcpyAsync (host to device)", dst, src, bytes);
        if (Holds(dev, src, 0) != 0) {
          Misuse("cudaMemcpyAsync", "host to device from device memory", dst, src, bytes);
        }
        break;
      case cudaMemcpyDeviceToHost:
        CheckDevice("cudaMemcpyAsync (device to host)", src, dst, bytes);
        if (Holds(dev, dst, 0) != 0) {
          Misuse("cudaMemcpyAsync", "device to host into device memory", dst, src, bytes);
        }
        break;
      case cudaMemcpyDeviceToDevice:
        CheckDevice("cudaMemcpyAsync (device to device)", dst, src, bytes);
        CheckDevice("cudaMemcpyAsync (device to device)", src, dst, bytes);
        break;
      case cudaMemcpyDefault:
        if (Holds(dev, dst, 0) != 0) CheckDevice("cudaMemcpyAsync (default)", dst, src, bytes);
        if (Holds(dev, src, 0) != 0) CheckDevice("cudaMemcpyAsync (default)", src, dst, bytes);
        break;
      default:
        return Record(cudaErrorInvalidValue);
    }
    const auto d = reinterpret_cast<uintptr_t>(dst), s = reinterpret_cast<uintptr_t>(src);
    if (d < s + bytes && s < d + bytes) {
      Misuse("cudaMemcpyAsync", "overlapping regions", dst, src, bytes);
    }
  }
  // Pageable host memory: a copy from it has read the source when it
  // returns (CUDA stages it), which callers may rely on. A copy into it only
  // "might be synchronous", CUDA says: run in stream order, as a copy into
  // pinned memory, so that a reader that does not wait for it shows.
  if (src_pageable) {
    auto staged = std::make_shared<std::vector<unsigned char>>(
        static_cast<const unsigned char*>(src), static_cast<const unsigned char*>(src) + bytes);
    mingpt::cuda::emu::Enqueue(stream, [=] { std::memcpy(dst, staged->data(), bytes); });
  } else {
    mingpt::cuda::emu::Enqueue(stream, [=] { std::memcpy(dst, src, bytes); });
  }
  return cudaSuccess;
}

cudaError_t cudaMemcpy(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind) {
  return cudaMemcpyAsync(dst, src, bytes, kind, nullptr);
}

cudaError_t cudaMemset(void* p, int value, size_t bytes) {
  return cudaMemsetAsync(p, value, bytes, nullptr);
}

// ---- streams and events ----------------------------------------------------------------

cudaError_t cudaStreamCreateWithFlags(cudaStream_t* stream, unsigned flags) {
  *stream = new CUstream_st;
  (*stream)->flags = flags;
  std::lock_guard<std::mutex> lock(R().mutex);
  R().streams.insert(*stream);
  return cudaSuccess;
}

cudaError_t cudaStreamCreate(cudaStream_t* stream) {
  return cudaStreamCreateWithFlags(stream, cudaStreamDefault);
}

// The stream's work is finished first (a GPU would finish it after).
cudaError_t cudaStreamDestroy(cudaStream_t stream) {
  if (stream == nullptr || !mingpt::cuda::emu::IsLiveStream(stream)) {
    return Record(cudaErrorInvalidResourceHandle);
  }
  mingpt::cuda::emu::Drain(stream);
  std::lock_guard<std::mutex> lock(R().mutex);
  R().streams.erase(stream);
  delete stream;
  return cudaSuccess;
}

cudaError_t cudaStreamSynchronize(cudaStream_t stream) {
  if (!mingpt::cuda::emu::IsLiveStream(stream)) return Record(cudaErrorInvalidResourceHandle);
  ++mingpt::cuda::emu::g_stats.stream_syncs;
  mingpt::cuda::emu::Drain(stream);
  return cudaSuccess;
}

cudaError_t cudaEventCreateWithFlags(cudaEvent_t* event, unsigned flags) {
  *event = new CUevent_st{flags};
  std::lock_guard<std::mutex> lock(R().mutex);
  R().events.insert(*event);
  return cudaSuccess;
}

cudaError_t cudaEventDestroy(cudaEvent_t event) {
  std::lock_guard<std::mutex> lock(R().mutex);
  if (event == nullptr || R().events.erase(event) == 0) {
    return Record(cudaErrorInvalidResourceHandle);
  }
  delete event;
  return cudaSuccess;
}

namespace {
bool IsLiveEvent(cudaEvent_t event) {
  std::lock_guard<std::mutex> lock(R().mutex);
  return R().events.count(event) > 0;
}
}  // namespace

cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t stream) {
  if (!IsLiveEvent(event) || !mingpt::cuda::emu::IsLiveStream(stream)) {
    return Record(cudaErrorInvalidResourceHandle);
  }
  event->stream = stream;
  event->position = stream ? mingpt::cuda::emu::Enqueued(stream) : 0;
  return cudaSuccess;
}

// Work enqueued on `stream` from now on runs after the event's work.
cudaError_t cudaStreamWaitEvent(cudaStream_t stream, cudaEvent_t event, unsigned /*flags*/) {
  if (!IsLiveEvent(event) || !mingpt::cuda::emu::IsLiveStream(stream)) {
    return Record(cudaErrorInvalidResourceHandle);
  }
  const cudaStream_t on = event->stream;
  const uint64_t position = event->position;
  mingpt::cuda::emu::Enqueue(stream, [on, position] { mingpt::cuda::emu::RunUntil(on, position); });
  return cudaSuccess;
}

cudaError_t cudaEventSynchronize(cudaEvent_t event) {
  if (!IsLiveEvent(event)) return Record(cudaErrorInvalidResourceHandle);
  mingpt::cuda::emu::RunUntil(event->stream, event->position);
  return cudaSuccess;
}

// ---- kernels -------------------------------------------------------------------------------

cudaError_t cudaFuncSetAttribute(const void* func, cudaFuncAttribute attr, int value) {
  if (attr != cudaFuncAttributeMaxDynamicSharedMemorySize) return Record(cudaErrorInvalidValue);
  return mingpt::cuda::emu::SetMaxDynamicShared(func, value);
}
