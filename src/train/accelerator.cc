#include "train/accelerator.h"

#ifdef MINGPT_HAVE_CUDA
#include "backend/cuda/cuda_backend.h"
#endif

namespace mingpt {

bool CudaBuilt() {
#ifdef MINGPT_HAVE_CUDA
  return true;
#else
  return false;
#endif
}

int CudaDevices() {
#ifdef MINGPT_HAVE_CUDA
  return CudaDeviceCount();
#else
  return 0;
#endif
}

StatusOr<std::string> ResolveAccelerator(const std::string& a) {
  if (a == "cpu") return std::string("cpu");
  if (a == "auto") return std::string(CudaDevices() > 0 ? "cuda" : "cpu");
  if (a == "cuda" || a == "gpu") {
    if (!CudaBuilt()) {
      return Status::Error("--accelerator " + a +
                           ": this mingpt was built without CUDA (configure with nvcc on the "
                           "PATH, or -DMINGPT_CUDA=ON)");
    }
    if (CudaDevices() == 0) return Status::Error("--accelerator " + a + ": no CUDA device found");
    return std::string("cuda");
  }
  return Status::Error("unknown --accelerator '" + a + "' (known: auto, cpu, cuda, gpu)");
}

StatusOr<std::unique_ptr<Backend>> MakeBackend(const std::string& accelerator, int local_rank,
                                               int cpu_threads) {
  if (accelerator == "cpu") return MakeCpuBackend(cpu_threads);
#ifdef MINGPT_HAVE_CUDA
  if (accelerator == "cuda") {
    const int devices = CudaDeviceCount();
    if (devices == 0) return Status::Error("--accelerator cuda: no CUDA device found");
    return MakeCudaBackend(local_rank % devices);
  }
#endif
  return Status::Error("no backend for --accelerator '" + accelerator + "'");
}

}  // namespace mingpt
