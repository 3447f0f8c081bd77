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

// Counts a kernel launch that ran (for the statistics below).
void CountLaunch();

// With $MINGPT_CUDA_EMULATOR_STATS set, the process appends one line to that
// file at exit: "device_mallocs=A device_frees=B host_mallocs=C launches=D",
// the calls made over its life, so that a test can see, for example, that
// more training steps make no more allocations.

}  // namespace mingpt::cuda::emu
