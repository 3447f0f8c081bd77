// The CUDA plugin: the CUDA backend and the NCCL communicator built as a
// module (libmingpt_cuda.so) that mingpt loads only when a run asks for
// CUDA, so that CPU runs neither load the CUDA libraries (cuBLASLt alone
// adds ~150 MiB of resident memory at load) nor need them installed.
// The module and the binary come from one build: same compiler, same
// headers, so C++ types cross the boundary as they are.
#pragma once

#include <memory>
#include <string>

#include "backend/backend.h"
#include "core/status.h"
#include "dist/communicator.h"

namespace mingpt {

struct CudaPlugin {
  int (*device_count)();
  std::unique_ptr<Backend> (*make_backend)(int device);
  // The NCCL communicator over the ranks of `bootstrap`, on the device of
  // `backend` (a CUDA backend), collectives ordered after its work.
  StatusOr<std::unique_ptr<Communicator>> (*make_nccl)(Communicator* bootstrap, Backend* backend);
};

// The module's one exported symbol.
extern "C" const CudaPlugin* MingptCudaPluginV1();
inline constexpr const char* kCudaPluginSymbol = "MingptCudaPluginV1";

}  // namespace mingpt
