// The hardware a run computes on (--accelerator, Lightning's flag): "cpu",
// "cuda" (or its alias "gpu"), or "auto": cuda when this build has the CUDA
// backend and the machine a CUDA device, else cpu.
#pragma once

#include <memory>
#include <string>

#include "backend/backend.h"
#include "core/status.h"
#include "dist/communicator.h"

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

// NCCL's rule, one rank per GPU: an error when `local_ranks` ranks of a
// CUDA run on this machine outnumber its CUDA devices.
Status CheckOneRankPerGpu(int local_ranks);

// What one rank computes with, beside the host communicator it was started
// with (MPI's, or the local one), which keeps every collective on host
// memory. Members are destroyed in reverse order: the device communicator
// before the backends whose memory and stream it uses.
struct RankDevice {
  std::unique_ptr<Backend> backend;
  // Offload strategies' host optimizer: the CPU backend beside a CUDA one;
  // null on the CPU, whose backend is its own host.
  std::unique_ptr<Backend> host_backend;
  // Collectives on `backend` memory (the strategies' gradients and
  // parameters); null: the host communicator serves them too (the CPU,
  // where backend memory is host memory).
  std::unique_ptr<Communicator> device_comm;

  // The pair a strategy is given.
  Communicators comms(Communicator* host) const {
    return {host, device_comm ? device_comm.get() : host};
  }
};

// A collective over the ranks of `host`: each rank's RankDevice, `accelerator`
// as ResolveAccelerator returns it.
//   cpu              the CPU backend; no device communicator
//   cuda, 1 rank     the device's backend; a local communicator copying with it
//   cuda, N ranks    the device's backend (device: the local rank modulo the devices);
//                    NCCL over the ranks of `host`, its unique id broadcast
//                    over `host` (the plugin's make_nccl)
// Errors (agreed on by every rank): no backend, more ranks on this machine
// than CUDA devices (one rank per GPU), no NCCL communicator.
StatusOr<RankDevice> MakeRankDevice(const std::string& accelerator, Communicator* host,
                                    int cpu_threads);

}  // namespace mingpt
