// Warp and block reductions for the kernels. Every reduction combines its
// values in a fixed order (butterfly shuffles, then the warps' results in
// warp order), so results are deterministic, and every lane / thread ends
// with the same value.
#pragma once

#include "backend/cuda/device.cuh"

namespace mingpt::cuda {

inline constexpr unsigned kFullMask = 0xFFFFFFFFu;

template <typename T>
__device__ inline T WarpSum(T v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(kFullMask, v, o);
  return v;
}

__device__ inline float WarpMax(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(kFullMask, v, o));
  return v;
}

// Sum (or max) over the block's threads; blockDim.x a multiple of 32, at
// most 1024; `smem` holds 32 values. Every thread must call it.
template <typename T, bool kMax = false>
__device__ inline T BlockReduce(T v, T* smem) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int warps = blockDim.x / 32;
  if constexpr (kMax) {
    v = WarpMax(v);
  } else {
    v = WarpSum(v);
  }
  __syncthreads();  // smem may still be read by a previous call
  if (lane == 0) smem[warp] = v;
  __syncthreads();
  T r = smem[0];
  for (int w = 1; w < warps; ++w) {
    if constexpr (kMax) {
      r = fmaxf(r, smem[w]);
    } else {
      r += smem[w];
    }
  }
  return r;
}

}  // namespace mingpt::cuda
