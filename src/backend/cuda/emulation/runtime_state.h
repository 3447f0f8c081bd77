// State the emulated CUDA runtime (runtime.cc) shares with the kernel
// emulator (emulator.cc).
#pragma once

#include <cuda_runtime_api.h>

namespace mingpt::cuda::emu {

// Makes `err` the sticky last error (unless cudaSuccess) and returns it, as
// every runtime call does.
cudaError_t Record(cudaError_t err);

// True for the default stream (null) and streams created and not destroyed.
bool IsLiveStream(cudaStream_t stream);

}  // namespace mingpt::cuda::emu
