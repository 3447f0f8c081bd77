// NcclCommunicator (see nccl_communicator.h): NCCL collectives on the
// communicator's stream, ordered after the compute stream's work by an
// event, and a completion thread that fulfils each Work in issue order when
// the collective's event has completed. A watchdog thread stops the rank
// when NCCL reports an asynchronous error.
#include "dist/nccl_communicator.h"

#include <cuda_runtime_api.h>
#include <nccl.h>

#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <future>
#include <mutex>
#include <thread>
#include <utility>
#include <vector>

#include "backend/cuda/cuda_backend.h"
#include "backend/cuda/cuda_check.h"
#include "backend/cuda/cuda_resources.h"
#include "core/check.h"
#include "dist/agree.h"

#define MINGPT_NCCL_CHECK(expr)                                                          \
  do {                                                                                   \
    const ncclResult_t mingpt_nccl_result_ = (expr);                                     \
    if (mingpt_nccl_result_ != ncclSuccess) {                                            \
      std::fprintf(stderr, "%s:%d: NCCL error %d: %s (in %s) %s\n", __FILE__, __LINE__,   \
                   static_cast<int>(mingpt_nccl_result_),                                \
                   ncclGetErrorString(mingpt_nccl_result_), #expr,                       \
                   ncclGetLastError(nullptr));                                           \
      std::abort();                                                                      \
    }                                                                                    \
  } while (0)

namespace mingpt {
namespace {

class NcclCommunicator final : public Communicator {
 public:
  NcclCommunicator(Communicator* bootstrap, int device, cudaStream_t compute);
  ~NcclCommunicator() override;

  // ncclCommInitRank with the id every rank received; collective.
  void Init(const ncclUniqueId& id);

  int rank() const override { return rank_; }
  int world() const override { return world_; }
  const char* name() const override { return "nccl"; }

  Work AllReduce(float* data, int64_t n) override {
    return Issue(n, [&](cudaStream_t s) {
      return ncclAllReduce(data, data, n, ncclFloat32, ncclSum, comm_, s);
    });
  }
  Work AllReduce(double* data, int64_t n) override {
    return Issue(n, [&](cudaStream_t s) {
      return ncclAllReduce(data, data, n, ncclFloat64, ncclSum, comm_, s);
    });
  }
  Work ReduceScatter(const float* send, float* recv, int64_t n) override {
    return Issue(n, [&](cudaStream_t s) {
      return ncclReduceScatter(send, recv, n, ncclFloat32, ncclSum, comm_, s);
    });
  }
  // In place when send == recv + rank*n, which NCCL supports as such.
  Work AllGather(const float* send, float* recv, int64_t n) override {
    return Issue(n, [&](cudaStream_t s) {
      return ncclAllGather(send, recv, n, ncclFloat32, comm_, s);
    });
  }
  Work Broadcast(void* data, size_t bytes, int root) override {
    MINGPT_CHECK(root >= 0 && root < world_, "root %d outside a world of %d", root, world_);
    return Issue(static_cast<int64_t>(bytes), [&](cudaStream_t s) {
      return ncclBroadcast(data, data, bytes, ncclUint8, root, comm_, s);
    });
  }
  // NCCL has no barrier: an all-reduce of one float, waited for.
  void Barrier() override {
    Issue(1, [&](cudaStream_t s) {
      return ncclAllReduce(barrier_, barrier_, 1, ncclFloat32, ncclSum, comm_, s);
    }).Wait();
  }
  [[noreturn]] void Abort(int code) override {
    bootstrap_->Abort(code);
    std::abort();  // not reached: the bootstrap's Abort does not return
  }

 private:
  struct Pending {
    cudaEvent_t done;
    std::promise<void> promise;
  };

  // Orders the collective after the compute stream's work, enqueues it
  // (enqueue returns NCCL's result) and returns its Work.
  template <typename Enqueue>
  Work Issue(int64_t n, Enqueue&& enqueue);
  cudaEvent_t TakeEvent();  // from the pool, or a new one
  void CompletionLoop();
  void WatchdogLoop();

  Communicator* const bootstrap_;
  const int device_;
  const int rank_, world_;
  const cudaStream_t compute_;
  cuda::Stream stream_;
  cuda::Event ready_;  // the compute stream's progress, per collective
  float* barrier_ = nullptr;
  ncclComm_t comm_ = nullptr;

  std::mutex issue_mu_;  // one collective enqueued at a time, in one order

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Pending> pending_;             // guarded by mu_
  std::vector<cudaEvent_t> free_events_;    // guarded by mu_
  std::vector<cudaEvent_t> all_events_;     // guarded by mu_
  bool stopping_ = false;                   // guarded by mu_
  std::thread completion_;

  std::mutex watch_mu_;
  std::condition_variable watch_cv_;
  bool watch_stop_ = false;  // guarded by watch_mu_
  std::thread watchdog_;     // from Init on
};

// cudaSetDevice first: the stream, events and buffer belong to `device`.
int SelectDevice(int device) {
  MINGPT_CUDA_CHECK(cudaSetDevice(device));
  return device;
}

NcclCommunicator::NcclCommunicator(Communicator* bootstrap, int device, cudaStream_t compute)
    : bootstrap_(bootstrap),
      device_(SelectDevice(device)),
      rank_(bootstrap->rank()),
      world_(bootstrap->world()),
      compute_(compute) {
  MINGPT_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&barrier_), sizeof(float)));
  // On the collectives' stream (non-blocking: the legacy stream's work is
  // not ordered before it).
  MINGPT_CUDA_CHECK(cudaMemsetAsync(barrier_, 0, sizeof(float), stream_.get()));
  completion_ = std::thread(&NcclCommunicator::CompletionLoop, this);
}

void NcclCommunicator::Init(const ncclUniqueId& id) {
  MINGPT_CUDA_CHECK(cudaSetDevice(device_));
  MINGPT_NCCL_CHECK(ncclCommInitRank(&comm_, world_, id, rank_));
  watchdog_ = std::thread(&NcclCommunicator::WatchdogLoop, this);
}

NcclCommunicator::~NcclCommunicator() {
  if (watchdog_.joinable()) {
    {
      std::lock_guard<std::mutex> lock(watch_mu_);
      watch_stop_ = true;
    }
    watch_cv_.notify_all();
    watchdog_.join();
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  completion_.join();  // after every pending collective has completed
  cudaSetDevice(device_);
  if (comm_) {
    ncclCommFinalize(comm_);
    ncclCommDestroy(comm_);
  }
  for (cudaEvent_t e : all_events_) cudaEventDestroy(e);
  cudaFree(barrier_);
}

template <typename Enqueue>
Work NcclCommunicator::Issue(int64_t n, Enqueue&& enqueue) {
  MINGPT_CHECK(n >= 0, "negative element count %lld", static_cast<long long>(n));
  if (n == 0) return Work();
  std::lock_guard<std::mutex> issue_lock(issue_mu_);
  MINGPT_CUDA_CHECK(cudaSetDevice(device_));  // the caller's thread may have another
  MINGPT_CUDA_CHECK(cudaEventRecord(ready_.get(), compute_));
  MINGPT_CUDA_CHECK(cudaStreamWaitEvent(stream_.get(), ready_.get(), 0));
  MINGPT_NCCL_CHECK(enqueue(stream_.get()));
  cudaEvent_t done = TakeEvent();
  MINGPT_CUDA_CHECK(cudaEventRecord(done, stream_.get()));
  std::promise<void> promise;
  Work work(promise.get_future().share());
  {
    std::lock_guard<std::mutex> lock(mu_);
    pending_.push_back({done, std::move(promise)});
  }
  cv_.notify_one();
  return work;
}

// Blocking-sync events: the completion thread sleeps in cudaEventSynchronize
// instead of spinning a core.
cudaEvent_t NcclCommunicator::TakeEvent() {
  std::lock_guard<std::mutex> lock(mu_);
  if (!free_events_.empty()) {
    cudaEvent_t e = free_events_.back();
    free_events_.pop_back();
    return e;
  }
  cudaEvent_t e = nullptr;
  MINGPT_CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventBlockingSync | cudaEventDisableTiming));
  all_events_.push_back(e);
  return e;
}

void NcclCommunicator::CompletionLoop() {
  MINGPT_CUDA_CHECK(cudaSetDevice(device_));
  for (;;) {
    Pending p;
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [&] { return !pending_.empty() || stopping_; });
      if (pending_.empty()) return;  // stopping, and drained
      p = std::move(pending_.front());
      pending_.pop_front();
    }
    MINGPT_CUDA_CHECK(cudaEventSynchronize(p.done));
    p.promise.set_value();
    std::lock_guard<std::mutex> lock(mu_);
    free_events_.push_back(p.done);
  }
}

// A failure that NCCL meets inside a running collective (a peer gone, the
// network down) is reported only by ncclCommGetAsyncError, while the
// collective's kernel spins: every wait for it, on the host or on a stream,
// would hang. Polled every 100 ms; an error ends the rank with one line and
// exit code 1, and its launcher (mpirun, srun) then ends the job.
void NcclCommunicator::WatchdogLoop() {
  std::unique_lock<std::mutex> lock(watch_mu_);
  while (!watch_cv_.wait_for(lock, std::chrono::milliseconds(100), [&] { return watch_stop_; })) {
    ncclResult_t async = ncclSuccess;
    const ncclResult_t asked = ncclCommGetAsyncError(comm_, &async);
    if (asked != ncclSuccess) async = asked;
    if (async == ncclSuccess || async == ncclInProgress) continue;
    const char* detail = ncclGetLastError(comm_);
    std::fprintf(stderr, "mingpt: error: rank %d: NCCL failed inside a collective: %s%s%s\n",
                 rank_, ncclGetErrorString(async), detail && *detail ? ": " : "",
                 detail ? detail : "");
    std::fflush(nullptr);
    std::_Exit(1);  // the spinning kernel cannot be waited for, nor the process wound down
  }
}

// This rank's device, or why there is none.
StatusOr<int> ChooseDevice(const NcclOptions& options, int rank) {
  const int count = CudaDeviceCount();
  if (count == 0) return Status::Error("no CUDA device: NCCL needs one GPU per rank");
  const int device = options.device >= 0 ? options.device : rank % count;
  if (device >= count) {
    return Status::Error("CUDA device " + std::to_string(device) + " requested, " +
                         std::to_string(count) + " present");
  }
  return device;
}

}  // namespace

StatusOr<std::unique_ptr<Communicator>> MakeNcclCommunicator(Communicator* bootstrap,
                                                             const NcclOptions& options) {
  MINGPT_CHECK(bootstrap != nullptr, "MakeNcclCommunicator needs a bootstrap communicator");
  StatusOr<int> device = ChooseDevice(options, bootstrap->rank());
  // Every rank learns whether every rank has its device before any waits
  // in ncclCommInitRank.
  MINGPT_RETURN_IF_ERROR(AgreeOnStatus(bootstrap, device.status()));
  ncclUniqueId id{};
  if (bootstrap->rank() == 0) MINGPT_NCCL_CHECK(ncclGetUniqueId(&id));
  bootstrap->Broadcast(&id, sizeof(id), 0).Wait();
  auto comm = std::make_unique<NcclCommunicator>(bootstrap, *device,
                                                 static_cast<cudaStream_t>(options.compute_stream));
  comm->Init(id);
  return std::unique_ptr<Communicator>(std::move(comm));
}

}  // namespace mingpt
