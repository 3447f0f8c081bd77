#include "backend/cuda/plugin.h"

#include "backend/cuda/cuda_backend.h"
#include "dist/nccl_communicator.h"

namespace mingpt {
namespace {

StatusOr<std::unique_ptr<Communicator>> MakeNccl(Communicator* bootstrap, Backend* backend) {
  NcclOptions options;
  options.compute_stream = CudaStreamOf(backend);
  options.device = CudaDeviceOf(backend);  // the backend's: chosen by local rank
  return MakeNcclCommunicator(bootstrap, options);
}

const CudaPlugin kPlugin = {&CudaDeviceCount, &MakeCudaBackend, &MakeNccl};

}  // namespace

extern "C" __attribute__((visibility("default"))) const CudaPlugin* MingptCudaPluginV1() {
  return &kPlugin;
}

}  // namespace mingpt
