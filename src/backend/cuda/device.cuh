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
// (emulation/wmma.h).
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
