// The CUDA backend: every Backend op (backend/backend.h) on one GPU, fp32
// storage, matrix products through cuBLASLt at the backend's MatmulPrecision
// (kFp32: plain fp32, TF32 off; kBf16 / kFp16: both operands converted, fp32
// accumulation and output), the other ops as kernels of our own
// (kernels.cu, attention.cu). All ops run in order on one stream of the
// backend; CopyToHost, SumSquares and Synchronize wait for it. Only built
// with MINGPT_CUDA (MINGPT_HAVE_CUDA is then defined for code that links it).
#pragma once

#include <memory>

#include "backend/backend.h"

namespace mingpt {

// Number of CUDA devices; 0 (not an error) when there is no driver or no
// device.
int CudaDeviceCount();

// The backend on device `device` (0 <= device < CudaDeviceCount(); a bad
// index is a bug and aborts). The calling thread's current device becomes
// `device`; call the backend from threads whose current device it is.
std::unique_ptr<Backend> MakeCudaBackend(int device);

// The cudaStream_t the backend runs its ops on (as void*, so that this
// header needs no CUDA header); null if `backend` is not a CUDA backend.
void* CudaStreamOf(Backend* backend);
// The device the backend runs on; -1 if `backend` is not a CUDA backend.
int CudaDeviceOf(Backend* backend);

}  // namespace mingpt
