// Communicator: collectives over the ranks of one job, shaped like PyTorch
// c10d's ProcessGroup. Every collective works on flat buffers in the memory
// its implementation serves (host memory for the local and MPI ones, a GPU's
// for NCCL), is issued by every rank in the same order, and returns a Work
// handle; the buffers must stay untouched until Wait() returns. Sums only:
// callers scale.
//
//   AllReduce(data, n)            data[i] = sum over ranks of data[i], n elems
//   ReduceScatter(send, recv, n)  send holds world*n floats; recv[i] = sum
//                                 over ranks of send[rank*n + i]
//   AllGather(send, recv, n)      recv holds world*n floats; recv[r*n + i] =
//                                 send[i] of rank r. send == recv + rank*n
//                                 (in place) is allowed.
//   Broadcast(data, bytes, root)  every rank's data = root's
//
// n is the same on every rank and may be 0; send and recv do not overlap
// except in the in-place AllGather.
//
// Implementations: local (world 1, every collective a copy or nothing),
// MPI (dist/mpi_communicator.h), NCCL (dist/nccl_communicator.h, device
// memory only). A failed collective is not an expected failure: the job
// stops on every rank (never a hang).
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <future>
#include <memory>
#include <string>

namespace mingpt {

// A handle on an asynchronous collective. Default-constructed: complete.
class Work {
 public:
  Work() = default;
  explicit Work(std::shared_future<void> done) : done_(std::move(done)) {}
  // Blocks until the collective has completed on this rank.
  void Wait() {
    if (done_.valid()) done_.wait();
  }
  bool completed() const {
    return !done_.valid() ||
           done_.wait_for(std::chrono::seconds(0)) == std::future_status::ready;
  }

 private:
  std::shared_future<void> done_;
};

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int world() const = 0;
  // "local", "mpi", ...
  virtual const char* name() const = 0;

  virtual Work AllReduce(float* data, int64_t n) = 0;
  virtual Work AllReduce(double* data, int64_t n) = 0;
  virtual Work ReduceScatter(const float* send, float* recv, int64_t n) = 0;
  virtual Work AllGather(const float* send, float* recv, int64_t n) = 0;
  virtual Work Broadcast(void* data, size_t bytes, int root) = 0;
  // Returns when every rank has called it.
  virtual void Barrier() = 0;
  // Ends the whole job with `code` on every rank (MPI_Abort); for errors
  // that one rank meets and the others cannot know about.
  [[noreturn]] virtual void Abort(int code) = 0;
};

// The two communicators of a rank, by the memory a collective's buffers are
// in: `host` for host memory (agreement, losses, norms, metrics, checkpoint
// saves), `device` for its backend's memory (the strategies' gradient
// reductions and parameter gathers). Both span the same ranks; on the CPU
// backend they are the same communicator, under CUDA the MPI (or local) one
// and NCCL (or a local one copying with the backend).
struct Communicators {
  Communicator* host = nullptr;
  Communicator* device = nullptr;
};

// The world of one process. Its collectives are copies (or nothing); `copy`
// makes them where plain memory copies cannot reach (a GPU's memory: the
// backend's Copy).
using CopyFn = std::function<void(void* dst, const void* src, size_t bytes)>;
std::unique_ptr<Communicator> MakeLocalCommunicator(CopyFn copy = nullptr);

// Rank `rank` of a world of `world` that answers rank() and world() only:
// for what is planned or checked without communicating (memory accounting,
// a launcher's dry run). Any collective stops the process (a bug).
std::unique_ptr<Communicator> MakeSizeOnlyCommunicator(int rank, int world);

}  // namespace mingpt
