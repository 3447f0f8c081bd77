// NcclCommunicator: the Communicator over NCCL, one GPU per rank. Only built
// with MINGPT_CUDA (target mingpt_dist_nccl).
//
// Unlike the local and MPI communicators, the buffers are CUDA device memory
// (the memory of the rank's CUDA backend). Collectives run on the
// communicator's own stream: each first waits (on the device) for the work
// enqueued so far on the compute stream, so the data it reads is written;
// Work::Wait() returns on the host once the collective is complete, and the
// compute stream's later work may then use the result. A completion thread
// turns the collectives' CUDA events into the Work handles' futures, in
// issue order, without spinning (blocking-sync events).
//
// Bootstrap: `bootstrap` (the MPI communicator, or the local one for a world
// of 1) gives rank and world; rank 0 creates the ncclUniqueId and broadcasts
// it over `bootstrap`, and every rank joins with ncclCommInitRank. The
// bootstrap communicator must outlive this one (Abort goes through it).
//
// A rank without a usable device is an expected failure: every rank first
// agrees (AgreeOnStatus over `bootstrap`) that each has one, so all ranks
// return the error instead of some hanging in ncclCommInitRank. Errors of
// NCCL or CUDA calls after that stop the process with file:line.
#pragma once

#include <memory>

#include "core/status.h"
#include "dist/communicator.h"

namespace mingpt {

struct NcclOptions {
  // The rank's device; -1: bootstrap rank modulo the number of devices.
  int device = -1;
  // The cudaStream_t the data is produced on (the CUDA backend's,
  // CudaStreamOf); null: the legacy default stream.
  void* compute_stream = nullptr;
};

// Collective over every rank of `bootstrap`. Errors: no CUDA device on some
// rank, or a device index outside the devices present.
StatusOr<std::unique_ptr<Communicator>> MakeNcclCommunicator(Communicator* bootstrap,
                                                             const NcclOptions& options = {});

}  // namespace mingpt
