// MpiCommunicator: the Communicator over MPI_COMM_WORLD.
//
// One communication thread owns MPI: it calls MPI_Init_thread (FUNNELED),
// issues every collective as a nonblocking MPI call (MPI_Iallreduce in
// place, MPI_Ireduce_scatter_block, MPI_Iallgather, MPI_Ibcast, MPI_Ibarrier)
// in the order the callers enqueued them, drives them with MPI_Testsome, and
// calls MPI_Finalize when the communicator is destroyed. Callers get a Work
// at once and keep computing on their own threads while the collective
// runs. When nothing completes the thread sleeps 20 µs, backing off to
// 100 µs, so a rank waiting for a slow peer uses well under a tenth of a
// core (measured: 6-9%), not a spinning one. Small collectives run
// concurrently; once 1 MiB is in flight the next one waits for the running
// ones (concurrent large collectives share the memory bandwidth, which only
// delays the first). Barrier() is an MPI_Ibarrier waited for the same way.
//
// Collectives may be called from any thread (the queue is locked), but every
// rank must issue the same ones in the same order.
//
// Counts above INT_MAX (or options.max_count) are split into several MPI
// calls. MPI errors are fatal (MPI_ERRORS_ARE_FATAL): the job stops on every
// rank. Abort() may be called from any thread, also while collectives are in
// flight: the communication thread calls MPI_Abort within ~100 µs.
//
// Destroying the communicator waits for every enqueued collective (so every
// rank must have issued the same ones), finalizes MPI and joins the thread.
// MPI can be initialized once per process: a second MakeMpiCommunicator, or
// one after the first was destroyed, returns an error.
#pragma once

#include <climits>
#include <cstdint>
#include <memory>

#include "core/status.h"
#include "dist/communicator.h"

namespace mingpt {

struct MpiOptions {
  // The most elements (bytes for Broadcast) one MPI call moves; larger
  // collectives are split. 1..INT_MAX; tests make it small to reach the
  // split path with small buffers.
  int64_t max_count = INT_MAX;
};

// Initializes MPI (the process must be one rank of an mpirun/srun job, or
// it becomes a world of 1) and returns the communicator of MPI_COMM_WORLD.
// Errors: MPI already initialized or finalized in this process, or the MPI
// library lacks MPI_THREAD_FUNNELED.
StatusOr<std::unique_ptr<Communicator>> MakeMpiCommunicator(const MpiOptions& options = {});

}  // namespace mingpt
