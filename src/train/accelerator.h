// The hardware a run computes on (--accelerator, Lightning's flag): "cpu",
// "cuda" (or its alias "gpu"), or "auto": cuda when this build has the CUDA
// backend and the machine a CUDA device, else cpu.
#pragma once

#include <memory>
#include <string>

#include "backend/backend.h"
#include "core/status.h"

namespace mingpt {

// Whether this binary was built with the CUDA backend (MINGPT_CUDA).
bool CudaBuilt();
// CUDA devices visible to this process (0 without the backend or a driver).
int CudaDevices();

// "cpu" or "cuda" for an --accelerator value, or one clear error: an
// unknown name, cuda in a build without it, or cuda on a machine without a
// device.
StatusOr<std::string> ResolveAccelerator(const std::string& accelerator);

// The backend of one rank: the CPU's with `cpu_threads` threads, or CUDA
// device `local_rank` modulo the devices (one rank per GPU). `accelerator`
// as ResolveAccelerator returns it.
StatusOr<std::unique_ptr<Backend>> MakeBackend(const std::string& accelerator, int local_rank,
                                               int cpu_threads);

}  // namespace mingpt
