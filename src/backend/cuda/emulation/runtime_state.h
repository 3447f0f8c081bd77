// State the emulated CUDA runtime (runtime.cc) shares with the kernel
// emulator (emulator.cc).
#pragma once

#include <cuda_runtime_api.h>

#include <functional>

namespace mingpt::cuda::emu {

// Makes `err` the sticky last error (unless cudaSuccess) and returns it, as
// every runtime call does.
cudaError_t Record(cudaError_t err);

// True for the default stream (null) and streams created and not destroyed.
bool IsLiveStream(cudaStream_t stream);

// Stream order. Work enqueued on a created stream runs later, in order, when
// the host waits for it (cudaStreamSynchronize, cudaEventSynchronize, the
// implicit waits of cudaFree and of copies into pageable memory) or when
// another stream's work waits for an event recorded after it. So work that
// another stream or the host uses without waiting for it is not done yet,
// and the reader sees the old contents, as it may on a GPU. Work on the
// default stream (null) runs at once.
//
// That order exposes a reader that does not wait for its writer. The other
// hazard, a writer that does not wait for an earlier reader on another
// stream (a kernel overwriting a buffer a copy or collective has still to
// read), shows with $MINGPT_CUDA_EMULATOR_SCHEDULE=compute_first: a stream
// that has run a kernel or product (a compute stream: `compute` work) then
// runs each piece of work as it is enqueued, while the others stay lazy.
// Tests run under both schedules.
void Enqueue(cudaStream_t stream, std::function<void()> work, bool compute = false);
// Runs everything enqueued on `stream` so far.
void Drain(cudaStream_t stream);

// Counts a kernel launch that ran (for the statistics below).
void CountLaunch();

// $MINGPT_CUDA_EMULATOR_SKIP_COMPUTE=1: kernels and products are checked but
// not run (copies and collectives still are), so that a configuration too
// large to compute on a CPU shows its allocations (memory.csv's
// peak_device_bytes) in seconds; the numbers it trains on are meaningless.
bool SkipCompute();

// With $MINGPT_CUDA_EMULATOR_STATS set, the process appends one line to that
// file at exit: "device_mallocs=A device_frees=B host_mallocs=C
// host_registers=D launches=E stream_syncs=F", the calls made over its life
// (F: cudaStreamSynchronize, the host waiting for a stream's work), so that
// a test can see, for example, that more training steps make no more
// allocations, or that deeper models make the host wait no more often.

}  // namespace mingpt::cuda::emu
