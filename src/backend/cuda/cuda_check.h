// Checks of CUDA runtime calls: a failed call is a broken invariant (or a
// dead device), never an expected failure, so the process stops at once with
// file:line, the call and CUDA's error string (as core/check.h does).
// Kernel launches are followed by MINGPT_CUDA_CHECK_LAUNCH(), which reports
// launch errors (bad configuration) where they happen; errors inside a
// kernel surface at the next checked call.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdio>
#include <cstdlib>

#define MINGPT_CUDA_CHECK(expr)                                                   \
  do {                                                                            \
    const cudaError_t mingpt_cuda_err_ = (expr);                                  \
    if (mingpt_cuda_err_ != cudaSuccess) {                                        \
      std::fprintf(stderr, "%s:%d: CUDA error %s: %s (in %s)\n", __FILE__,        \
                   __LINE__, cudaGetErrorName(mingpt_cuda_err_),                  \
                   cudaGetErrorString(mingpt_cuda_err_), #expr);                  \
      std::abort();                                                               \
    }                                                                             \
  } while (0)

#define MINGPT_CUDA_CHECK_LAUNCH() MINGPT_CUDA_CHECK(cudaGetLastError())
