#include "backend/cuda/plugin.h"

#include <cstdlib>

#include "backend/cuda/cuda_backend.h"
#ifndef MINGPT_CUDA_EMULATION
#include "dist/nccl_communicator.h"
#endif

namespace mingpt {
namespace {

#ifndef MINGPT_CUDA_EMULATION
StatusOr<std::unique_ptr<Communicator>> MakeNccl(Communicator* bootstrap, Backend* backend) {
  NcclOptions options;
  options.compute_stream = CudaStreamOf(backend);
  options.device = CudaDeviceOf(backend);  // the backend's: chosen by local rank
  return MakeNcclCommunicator(bootstrap, options);
}
#else
// The module built on the CPU emulator (backend/cuda/emulation), whose
// device memory is host memory: the device communicator is the host one
// (MPI, or local), in place of NCCL.
class HostAsDeviceCommunicator final : public Communicator {
 public:
  explicit HostAsDeviceCommunicator(Communicator* host) : host_(host) {}
  int rank() const override { return host_->rank(); }
  int world() const override { return host_->world(); }
  const char* name() const override { return "emulated-nccl"; }
  Work AllReduce(float* data, int64_t n) override { return host_->AllReduce(data, n); }
  Work AllReduce(double* data, int64_t n) override { return host_->AllReduce(data, n); }
  Work ReduceScatter(const float* send, float* recv, int64_t n) override {
    return host_->ReduceScatter(send, recv, n);
  }
  Work AllGather(const float* send, float* recv, int64_t n) override {
    return host_->AllGather(send, recv, n);
  }
  Work Broadcast(void* data, size_t bytes, int root) override {
    return host_->Broadcast(data, bytes, root);
  }
  void Barrier() override { host_->Barrier(); }
  [[noreturn]] void Abort(int code) override {
    host_->Abort(code);
    std::abort();  // (Abort does not return)
  }

 private:
  Communicator* host_;
};

StatusOr<std::unique_ptr<Communicator>> MakeNccl(Communicator* bootstrap, Backend* /*backend*/) {
  return std::unique_ptr<Communicator>(std::make_unique<HostAsDeviceCommunicator>(bootstrap));
}
#endif

const CudaPlugin kPlugin = {&CudaDeviceCount, &MakeCudaBackend, &MakeNccl};

}  // namespace

extern "C" __attribute__((visibility("default"))) const CudaPlugin* MingptCudaPluginV1() {
  return &kPlugin;
}

}  // namespace mingpt
