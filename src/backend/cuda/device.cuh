// What the backend's .cu files see of CUDA: nvcc's device language, or,
// when they are compiled as C++ with MINGPT_CUDA_EMULATION, the CPU
// emulator's (emulation/emulator.h), which runs every kernel thread as a
// fiber so that the kernels are tested in CI on machines without a GPU.
//
// The two constructs that are not C++ go through macros, the same text for
// both builds:
//   MINGPT_LAUNCH(Kernel, grid, block, smem_bytes, stream, args...)
//       is Kernel<<<grid, block, smem_bytes, stream>>>(args...);
//   MINGPT_DYNAMIC_SHARED(float, smem);
//       is extern __shared__ float smem[];
// The warp matrix functions (nvcuda::wmma) are <mma.h>'s, or the emulator's
// (emulation/wmma.h). Vector loads and stores (a float4, two 16-bit operands
// as one 32-bit word) go through LoadVector / StoreVector, which the
// emulator checks for the alignment a GPU needs.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#if defined(MINGPT_CUDA_EMULATION)
#include "backend/cuda/emulation/emulator.h"
#include "backend/cuda/emulation/wmma.h"  // nvcuda::wmma
#else
#include <mma.h>
#define MINGPT_LAUNCH(kernel, grid, block, smem, stream, ...) \
  kernel<<<grid, block, smem, stream>>>(__VA_ARGS__)
#define MINGPT_DYNAMIC_SHARED(type, name) extern __shared__ type name[]
#endif

#include <cstdint>
#include <cstring>

namespace mingpt::cuda {

// *p read or written as one V (float4, uint2, uint32_t, ...): a single
// access of sizeof(V) bytes, which a GPU faults on ("misaligned address")
// unless p is aligned to alignof(V). A CPU would not fault, so the emulator
// checks it, naming the kernel, block and thread.
template <typename V, typename T>
__device__ inline V LoadVector(const T* p) {
#if defined(MINGPT_CUDA_EMULATION)
  if (reinterpret_cast<uintptr_t>(p) % alignof(V) != 0) {
    ::mingpt::cuda::emu::Fatal("misaligned vector load: the address is not a multiple of its "
                               "size");
  }
  V v;
  std::memcpy(static_cast<void*>(&v), p, sizeof(V));
  return v;
#else
  return *reinterpret_cast<const V*>(p);
#endif
}

template <typename V, typename T>
__device__ inline void StoreVector(T* p, const V& v) {
#if defined(MINGPT_CUDA_EMULATION)
  if (reinterpret_cast<uintptr_t>(p) % alignof(V) != 0) {
    ::mingpt::cuda::emu::Fatal("misaligned vector store: the address is not a multiple of its "
                               "size");
  }
  std::memcpy(static_cast<void*>(p), &v, sizeof(V));
#else
  *reinterpret_cast<V*>(p) = v;
#endif
}

}  // namespace mingpt::cuda
