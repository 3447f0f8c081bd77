// Small OpenMP helpers shared by the CPU kernels.
#pragma once

#include <omp.h>

#include <algorithm>
#include <cstdint>

namespace mingpt::cpu {

// Below this much work (elements touched, or multiply-adds) a kernel runs on
// the calling thread: a parallel region costs microseconds, more than the
// work itself, and tiny calls (T=1 sampling, small tests) are common.
inline constexpr int64_t kParallelGrain = 8192;
inline bool Parallel(int64_t work) { return work >= kParallelGrain; }

// Inside a parallel region: this thread's slice [begin, end) of [0, n),
// slices being multiples of 16 elements so that vector loops stay aligned.
// Used for column reductions (parameter gradients) where each thread owns a
// range of columns and walks all rows in order: no races, no per-thread
// partial buffers, and a summation order independent of the thread count.
inline void ThreadSlice(int64_t n, int64_t* begin, int64_t* end) {
  const int64_t threads = omp_get_num_threads();
  const int64_t tid = omp_get_thread_num();
  int64_t chunk = (n + threads - 1) / threads;
  chunk = (chunk + 15) / 16 * 16;
  *begin = std::min(n, tid * chunk);
  *end = std::min(n, *begin + chunk);
}

}  // namespace mingpt::cpu
