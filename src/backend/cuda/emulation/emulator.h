// A CPU emulator of CUDA's execution model, for testing the CUDA backend on
// machines without a GPU (CI). The backend's .cu files compile as C++ with
// MINGPT_CUDA_EMULATION (device.cuh includes this header); the CUDA runtime
// and cuBLASLt functions they and the backend call are defined by
// runtime.cc and cublaslt.cc against the toolkit's own headers, so the
// backend's code is the code that runs on a GPU, unchanged.
//
// What is emulated, and checked:
//   - A launch runs its blocks one after another (last block first) and the
//     threads of a block as fibers on the calling thread, each until it
//     blocks at __syncthreads or a warp shuffle. Warps run last first, each
//     as far as it can go before the next, and lanes last first, so that a
//     value read before the barrier that publishes it reads poison or a
//     stale value (not the value a lower thread happened to write first),
//     and a warp that overwrites shared memory others still read, for want
//     of a barrier, does so before they read it.
//   - __syncthreads: every live thread of the block arrives, at the same
//     __syncthreads of the source, before any goes on; exited threads count
//     as arrived (as on Volta and later).
//   - __shfl_sync / __shfl_xor_sync with the full mask: all 32 lanes must be
//     live and at the same shuffle (the same call of the source, the same
//     number of shuffles made). A lane that exited or diverged is a fatal
//     error naming the kernel, block and thread, as is a deadlock (threads
//     waiting at barriers or shuffles the others never reach).
//   - __syncwarp and the warp matrix functions (wmma.h) are warp-collective
//     as shuffles are, with the same checks; wmma fragments give each lane an
//     arbitrary fixed share of the matrix, and misaligned pointers or leading
//     dimensions are fatal errors.
//   - __shared__ arrays are per block (blocks never run at once); dynamic
//     shared memory (MINGPT_DYNAMIC_SHARED) is filled with NaN bytes before
//     each block, so reading what no thread wrote shows.
//   - Launch configuration errors come back from cudaGetLastError as on a
//     GPU: block and grid limits, and dynamic shared memory above 48 KiB
//     unless cudaFuncSetAttribute raised the kernel's limit (at most the
//     227 KiB of Hopper).
//   - Under AddressSanitizer (the test suite's sanitizer pass), every
//     access a kernel makes outside its buffers: device allocations are
//     exactly their size (runtime.cc), and the fiber switches are told to
//     ASan, which checks the fibers' stacks as it does a thread's.
//   - __trap() stops the process with the kernel's name (a GPU would fail
//     the next checked CUDA call).
//   - Streams (runtime_state.h): a launch, like every copy, product and
//     collective, runs when something waits for its stream's work, so a
//     reader on another stream or the host that does not wait sees the old
//     values; under MINGPT_CUDA_EMULATOR_SCHEDULE=compute_first the streams
//     that run kernels run at once instead, so that a kernel that does not
//     wait for another stream's earlier reader overwrites what it reads.
// Not emulated: blocks or streams running at the same time, the memory
// model, and timing.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <source_location>
#include <tuple>
#include <type_traits>
#include <utility>

namespace mingpt::cuda::emu {

// The running fiber's coordinates (valid only inside a kernel).
uint3 ThreadIdx();
uint3 BlockIdx();
dim3 BlockDim();
dim3 GridDim();
int LaneId();  // the thread's lane in its warp (linear index % 32)

// `where`: the call in the kernel's source, which must be the same for every
// thread at one barrier and every lane at one shuffle.
void SyncThreads(const std::source_location& where);
// Lane `src` of the warp's `bytes`-byte values (all lanes must call it).
void ShuffleExchange(unsigned mask, const void* value, void* out, size_t bytes, int src,
                     const std::source_location& where);
// All 32 lanes of the warp meet at `where`, with the checks of a full-mask
// shuffle (every lane live, the same call of the source, the same number of
// warp operations made); each lane brings 8 bytes (`value`), and the last
// lane to arrive calls op(values of lanes 0..31) while the others wait, so
// op may read and write what the values point to in every lane. The warp
// matrix functions (wmma.h) and __syncwarp are built on it.
void WarpCollective(uint64_t value, void (*op)(const uint64_t* values, void* context),
                    void* context, const std::source_location& where);
void* DynamicShared();
[[noreturn]] void Trap();
// Stops the process with the kernel, block and thread, and `message`.
[[noreturn]] void Fatal(const char* message);

// Checks the launch, then enqueues on `stream` the running of body() as
// every thread of every block; returns the launch error (cudaSuccess, or a
// configuration error), which also becomes the sticky last error as a GPU
// launch's does.
cudaError_t LaunchKernel(const char* name, const void* kernel, dim3 grid, dim3 block,
                         size_t dynamic_smem, cudaStream_t stream, std::function<void()> body);

// The kernel's maximum dynamic shared memory (cudaFuncSetAttribute).
cudaError_t SetMaxDynamicShared(const void* kernel, int bytes);

template <typename T>
T Shuffle(unsigned mask, T value, int src, const std::source_location& where) {
  static_assert(std::is_trivially_copyable_v<T> && sizeof(T) <= 8, "shuffles move <= 8 bytes");
  T out;
  ShuffleExchange(mask, &value, &out, sizeof(T), src, where);
  return out;
}

// MINGPT_LAUNCH(kernel, grid, block, smem, stream, args...): the arguments
// are converted to the kernel's parameter types once (as a launch copies
// them), and each thread calls the kernel with its own copies.
template <typename... Params>
struct Launcher {
  const char* name;
  void (*kernel)(Params...);
  dim3 grid, block;
  size_t smem;
  cudaStream_t stream;

  template <typename... Args>
  void operator()(Args&&... args) const {
    std::tuple<std::decay_t<Params>...> params(std::forward<Args>(args)...);
    LaunchKernel(name, reinterpret_cast<const void*>(kernel), grid, block, smem, stream,
                 [k = kernel, params = std::move(params)] { std::apply(k, params); });
  }
};

template <typename... Params>
Launcher<Params...> MakeLauncher(const char* name, void (*kernel)(Params...), dim3 grid, dim3 block,
                                 size_t smem, cudaStream_t stream) {
  return {name, kernel, grid, block, smem, stream};
}

}  // namespace mingpt::cuda::emu

// ---- the device language, for the kernels ------------------------------------

#define threadIdx (::mingpt::cuda::emu::ThreadIdx())
#define blockIdx (::mingpt::cuda::emu::BlockIdx())
#define blockDim (::mingpt::cuda::emu::BlockDim())
#define gridDim (::mingpt::cuda::emu::GridDim())

// The toolkit's headers define __shared__ as nothing for a host compiler;
// here a __shared__ array is one per kernel, which blocks take in turn.
#undef __shared__
#define __shared__ static
#define __launch_bounds__(...)

#define MINGPT_LAUNCH(kernel, grid, block, smem, stream, ...) \
  ::mingpt::cuda::emu::MakeLauncher(#kernel, kernel, grid, block, smem, stream)(__VA_ARGS__)
#define MINGPT_DYNAMIC_SHARED(type, name) \
  type* name = static_cast<type*>(::mingpt::cuda::emu::DynamicShared())

inline void __syncthreads(std::source_location where = std::source_location::current()) {
  ::mingpt::cuda::emu::SyncThreads(where);
}
[[noreturn]] inline void __trap() { ::mingpt::cuda::emu::Trap(); }

template <typename T>
T __shfl_sync(unsigned mask, T value, int src_lane, int width = 32,
              std::source_location where = std::source_location::current()) {
  if (width != 32) ::mingpt::cuda::emu::Trap();  // only whole warps are emulated
  return ::mingpt::cuda::emu::Shuffle(mask, value, src_lane & 31, where);
}

// Only the full mask is emulated: all 32 lanes meet at the same call.
inline void __syncwarp(unsigned mask = 0xFFFFFFFFu,
                       std::source_location where = std::source_location::current()) {
  if (mask != 0xFFFFFFFFu) ::mingpt::cuda::emu::Fatal("__syncwarp with a partial mask");
  ::mingpt::cuda::emu::WarpCollective(0, nullptr, nullptr, where);
}

template <typename T>
T __shfl_xor_sync(unsigned mask, T value, int lane_mask, int width = 32,
                  std::source_location where = std::source_location::current()) {
  if (width != 32) ::mingpt::cuda::emu::Trap();
  return ::mingpt::cuda::emu::Shuffle(mask, value, (::mingpt::cuda::emu::LaneId() ^ lane_mask) & 31,
                                      where);
}
