#include "train/accelerator.h"

#include <dlfcn.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <mutex>
#include <string>
#include <vector>

#include "core/check.h"
#include "dist/agree.h"
#include "dist/launch.h"

#ifdef MINGPT_CUDA_PLUGIN
#include "backend/cuda/plugin.h"
#endif

namespace mingpt {

#ifdef MINGPT_CUDA_PLUGIN
namespace {

// The CUDA module, loaded on first use: $MINGPT_CUDA_PLUGIN, else
// libmingpt_cuda.so beside the executable, else where this build put it.
// Null (with the reason in *why) when none loads.
const CudaPlugin* LoadCudaPlugin(std::string* why) {
  static std::once_flag once;
  static const CudaPlugin* plugin = nullptr;
  static std::string reason;
  std::call_once(once, [] {
    std::vector<std::string> candidates;
    if (const char* env = std::getenv("MINGPT_CUDA_PLUGIN")) candidates.emplace_back(env);
    std::error_code ec;
    const std::filesystem::path exe = std::filesystem::read_symlink("/proc/self/exe", ec);
    if (!ec) candidates.push_back((exe.parent_path() / "libmingpt_cuda.so").string());
    candidates.emplace_back(MINGPT_CUDA_PLUGIN);
    for (const std::string& path : candidates) {
      if (::access(path.c_str(), R_OK) != 0) continue;
      void* handle = ::dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
      if (handle == nullptr) {
        reason = std::string("cannot load ") + path + ": " + ::dlerror();
        return;
      }
      auto get = reinterpret_cast<const CudaPlugin* (*)()>(::dlsym(handle, kCudaPluginSymbol));
      if (get == nullptr) {
        reason = path + " is not mingpt's CUDA module";
        return;
      }
      plugin = get();  // the module stays loaded for the life of the process
      return;
    }
    reason = "libmingpt_cuda.so not found beside mingpt";
  });
  if (why) *why = reason;
  return plugin;
}

}  // namespace
#endif

bool CudaBuilt() {
#ifdef MINGPT_CUDA_PLUGIN
  return true;
#else
  return false;
#endif
}

int CudaDevices() {
#ifdef MINGPT_CUDA_PLUGIN
  // No driver, no device: known without loading the module (and cuBLASLt).
  static const bool driver = [] {
    // A module named by MINGPT_CUDA_PLUGIN is loaded whatever the driver
    // (the CPU emulator's module needs none).
    if (std::getenv("MINGPT_CUDA_PLUGIN") != nullptr) return true;
    void* cuda = ::dlopen("libcuda.so.1", RTLD_LAZY | RTLD_LOCAL);
    if (cuda != nullptr) ::dlclose(cuda);
    return cuda != nullptr;
  }();
  if (!driver) return 0;
  const CudaPlugin* plugin = LoadCudaPlugin(nullptr);
  return plugin ? plugin->device_count() : 0;
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
#ifdef MINGPT_CUDA_PLUGIN
    std::string why;
    if (LoadCudaPlugin(&why) == nullptr) return Status::Error("--accelerator " + a + ": " + why);
#endif
    if (CudaDevices() == 0) return Status::Error("--accelerator " + a + ": no CUDA device found");
    return std::string("cuda");
  }
  return Status::Error("unknown --accelerator '" + a + "' (known: auto, cpu, cuda, gpu)");
}

StatusOr<std::unique_ptr<Backend>> MakeBackend(const std::string& accelerator, int local_rank,
                                               int cpu_threads) {
  if (accelerator == "cpu") return MakeCpuBackend(cpu_threads);
#ifdef MINGPT_CUDA_PLUGIN
  if (accelerator == "cuda") {
    std::string why;
    const CudaPlugin* plugin = LoadCudaPlugin(&why);
    if (plugin == nullptr) return Status::Error("--accelerator cuda: " + why);
    const int devices = plugin->device_count();
    if (devices == 0) return Status::Error("--accelerator cuda: no CUDA device found");
    return plugin->make_backend(local_rank % devices);
  }
#endif
  return Status::Error("no backend for --accelerator '" + accelerator + "'");
}

Status CheckOneRankPerGpu(int local_ranks) {
  const int devices = CudaDevices();
  if (local_ranks <= devices) return Status::Ok();
  return Status::Error("--accelerator cuda runs one rank per GPU: " + std::to_string(local_ranks) +
                       " ranks on this machine, which has " + std::to_string(devices) +
                       " CUDA device" + (devices == 1 ? "" : "s"));
}

namespace {

// Every rank's device communicator under CUDA (RankDevice says which).
StatusOr<std::unique_ptr<Communicator>> MakeCudaCommunicator(Communicator* host, Backend* backend) {
  if (host->world() == 1) {
    return MakeLocalCommunicator(
        [backend](void* dst, const void* src, size_t bytes) { backend->Copy(dst, src, bytes); });
  }
#ifdef MINGPT_CUDA_PLUGIN
  // Refused here with one line, not by NCCL's abort on a shared GPU.
  MINGPT_RETURN_IF_ERROR(
      AgreeOnStatus(host, CheckOneRankPerGpu(DetectMpiEnvironment().local_size)));
  std::string why;
  const CudaPlugin* plugin = LoadCudaPlugin(&why);
  MINGPT_CHECK(plugin != nullptr, "the CUDA module made a backend, then failed to load: %s",
               why.c_str());
  return plugin->make_nccl(host, backend);  // agrees on its errors itself
#else
  return Status::Error("--accelerator cuda: this mingpt was built without CUDA");
#endif
}

}  // namespace

StatusOr<RankDevice> MakeRankDevice(const std::string& accelerator, Communicator* host,
                                    int cpu_threads) {
  RankDevice d;
  // A GPU per rank of this machine: the launcher's local rank where it says
  // (ranks spread over machines), else the rank.
  const MpiEnvironment env = DetectMpiEnvironment();
  const int local_rank = env.launched && env.local_size > 0 ? env.local_rank : host->rank();
  StatusOr<std::unique_ptr<Backend>> made = MakeBackend(accelerator, local_rank, cpu_threads);
  MINGPT_RETURN_IF_ERROR(AgreeOnStatus(host, made.status()));
  d.backend = std::move(made).value();
  if (accelerator == "cpu") return d;
  d.host_backend = MakeCpuBackend(cpu_threads);
  MINGPT_ASSIGN_OR_RETURN(d.device_comm, MakeCudaCommunicator(host, d.backend.get()));
  return d;
}

}  // namespace mingpt
