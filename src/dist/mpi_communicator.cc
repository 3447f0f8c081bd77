// MpiCommunicator (see mpi_communicator.h): a FIFO of collectives that one
// communication thread issues as nonblocking MPI calls and completes with
// MPI_Testsome, sleeping with backoff while nothing completes.
#include "dist/mpi_communicator.h"

// The C API only (OpenMPI's and MPICH's mpi.h pull in the C++ bindings).
#define OMPI_SKIP_MPICXX 1
#define MPICH_SKIP_MPICXX 1
#include <mpi.h>
#include <sys/prctl.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <functional>
#include <future>
#include <mutex>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

#include "core/check.h"

namespace mingpt {
namespace {

// Polling: after anything happens the thread sleeps kMinSleep between
// MPI_Testsome calls, doubling up to kMaxSleep while nothing completes.
constexpr std::chrono::microseconds kMinSleep(20);
constexpr std::chrono::microseconds kMaxSleep(100);
// Timer slack of the communication thread (ns), so that the short sleeps
// are short (Linux's default slack is 50 µs).
constexpr unsigned long kTimerSlackNs = 1000;
constexpr int kNoAbort = INT_MIN;
// Collectives run concurrently only up to this many bytes in flight; a
// larger one waits for the running ones (they share the memory bandwidth,
// so running several large ones at once only delays the first). A single
// collective of any size always runs.
constexpr int64_t kMaxBytesInFlight = int64_t{1} << 20;

enum class OpKind {
  kAllReduceFloat,
  kAllReduceDouble,
  kReduceScatter,
  kAllGather,
  kBroadcast,
  kBarrier
};

// One enqueued collective, as the caller described it.
struct Op {
  OpKind kind = OpKind::kBarrier;
  const void* send = nullptr;
  void* recv = nullptr;  // the data of in-place collectives
  int64_t n = 0;         // elements per rank (bytes for kBroadcast)
  int root = 0;
  std::promise<void> done;
};

std::unique_ptr<Op> MakeOp(OpKind kind, const void* send, void* recv, int64_t n, int root = 0) {
  auto op = std::make_unique<Op>();
  op->kind = kind;
  op->send = send;
  op->recv = recv;
  op->n = n;
  op->root = root;
  return op;
}

// Calls fn(offset, count) for consecutive chunks of at most max_count
// elements covering [0, n).
void ForEachChunk(int64_t n, int64_t max_count, const std::function<void(int64_t, int)>& fn) {
  for (int64_t offset = 0; offset < n; offset += max_count) {
    fn(offset, static_cast<int>(std::min(max_count, n - offset)));
  }
}

class MpiCommunicator final : public Communicator {
 public:
  explicit MpiCommunicator(const MpiOptions& options) : max_count_(options.max_count) {}
  ~MpiCommunicator() override;

  // Starts the communication thread and waits for MPI_Init_thread.
  Status Start();

  int rank() const override { return rank_; }
  int world() const override { return world_; }
  const char* name() const override { return "mpi"; }

  Work AllReduce(float* data, int64_t n) override;
  Work AllReduce(double* data, int64_t n) override;
  Work ReduceScatter(const float* send, float* recv, int64_t n) override;
  Work AllGather(const float* send, float* recv, int64_t n) override;
  Work Broadcast(void* data, size_t bytes, int root) override;
  void Barrier() override;
  [[noreturn]] void Abort(int code) override;

 private:
  // An issued collective: how many of its MPI requests are still running.
  struct InFlight {
    std::promise<void> done;
    int pending = 0;
    int64_t bytes = 0;
  };

  Work Enqueue(std::unique_ptr<Op> op);

  // The communication thread.
  void Run(std::promise<Status> started);
  Status Init();
  void Loop();
  // Moves the queue to waiting_, first waiting for work if there is none;
  // returns false when the thread should finish.
  bool TakeQueued();
  // Issues waiting collectives in order while kMaxBytesInFlight allows;
  // true if it issued any.
  bool IssueWaiting();
  int64_t Bytes(const Op& op) const;
  void Issue(std::unique_ptr<Op> op);
  void IssueCalls(const Op& op, const std::function<void(MPI_Request)>& add);
  void IssueReduceScatter(const Op& op, const std::function<void(MPI_Request)>& add);
  void IssueAllGather(const Op& op, const std::function<void(MPI_Request)>& add);
  // One MPI_Testsome over every request; true when a collective completed.
  bool Progress();
  void AbortNow(int code);

  const int64_t max_count_;
  int rank_ = 0;
  int world_ = 1;
  std::thread thread_;

  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<std::unique_ptr<Op>> queue_;  // guarded by mu_
  bool stopping_ = false;                   // guarded by mu_
  std::atomic<int> abort_code_{kNoAbort};

  // Communication thread only.
  std::deque<std::unique_ptr<Op>> waiting_;  // taken from queue_, not issued
  uint64_t next_id_ = 0;
  int64_t bytes_in_flight_ = 0;
  std::unordered_map<uint64_t, InFlight> in_flight_;
  std::vector<MPI_Request> requests_;  // every running MPI request
  std::vector<uint64_t> request_op_;   // the in_flight_ id of each
  std::vector<int> completed_;         // MPI_Testsome's output
};

MpiCommunicator::~MpiCommunicator() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

Status MpiCommunicator::Start() {
  std::promise<Status> started;
  std::future<Status> result = started.get_future();
  thread_ = std::thread(&MpiCommunicator::Run, this, std::move(started));
  return result.get();
}

// ---- caller side ----

Work MpiCommunicator::Enqueue(std::unique_ptr<Op> op) {
  MINGPT_CHECK(op->n >= 0, "negative element count %lld", static_cast<long long>(op->n));
  MINGPT_CHECK(op->root >= 0 && op->root < world_, "root %d outside a world of %d", op->root,
               world_);
  if (op->n == 0 && op->kind != OpKind::kBarrier) return Work();
  Work work(op->done.get_future().share());
  {
    std::lock_guard<std::mutex> lock(mu_);
    MINGPT_CHECK(!stopping_, "collective enqueued on a communicator being destroyed");
    queue_.push_back(std::move(op));
  }
  cv_.notify_one();
  return work;
}

Work MpiCommunicator::AllReduce(float* data, int64_t n) {
  return Enqueue(MakeOp(OpKind::kAllReduceFloat, nullptr, data, n));
}

Work MpiCommunicator::AllReduce(double* data, int64_t n) {
  return Enqueue(MakeOp(OpKind::kAllReduceDouble, nullptr, data, n));
}

Work MpiCommunicator::ReduceScatter(const float* send, float* recv, int64_t n) {
  return Enqueue(MakeOp(OpKind::kReduceScatter, send, recv, n));
}

Work MpiCommunicator::AllGather(const float* send, float* recv, int64_t n) {
  return Enqueue(MakeOp(OpKind::kAllGather, send, recv, n));
}

Work MpiCommunicator::Broadcast(void* data, size_t bytes, int root) {
  return Enqueue(MakeOp(OpKind::kBroadcast, nullptr, data, static_cast<int64_t>(bytes), root));
}

void MpiCommunicator::Barrier() { Enqueue(MakeOp(OpKind::kBarrier, nullptr, nullptr, 0)).Wait(); }

void MpiCommunicator::Abort(int code) {
  std::fflush(nullptr);
  {
    std::lock_guard<std::mutex> lock(mu_);
    abort_code_.store(code);
  }
  cv_.notify_all();
  // The communication thread ends the process; wait for it.
  for (;;) std::this_thread::sleep_for(std::chrono::hours(1));
}

// ---- communication thread ----

void MpiCommunicator::Run(std::promise<Status> started) {
  Status status = Init();
  const bool ok = status.ok();
  if (!ok) {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  started.set_value(std::move(status));
  if (ok) {
    ::prctl(PR_SET_TIMERSLACK, kTimerSlackNs, 0, 0, 0);
    Loop();
  }
  MPI_Finalize();
}

Status MpiCommunicator::Init() {
  int provided = MPI_THREAD_SINGLE;
  MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided);
  if (provided < MPI_THREAD_FUNNELED) {
    return Status::Error("the MPI library does not provide MPI_THREAD_FUNNELED");
  }
  MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_ARE_FATAL);
  MPI_Comm_rank(MPI_COMM_WORLD, &rank_);
  MPI_Comm_size(MPI_COMM_WORLD, &world_);
  return Status::Ok();
}

void MpiCommunicator::Loop() {
  std::chrono::microseconds sleep = kMinSleep;
  while (TakeQueued()) {
    const bool issued = IssueWaiting();
    if (Progress() || issued) {
      sleep = kMinSleep;
    } else {
      std::this_thread::sleep_for(sleep);
      sleep = std::min(sleep * 2, kMaxSleep);
    }
  }
}

bool MpiCommunicator::TakeQueued() {
  std::unique_lock<std::mutex> lock(mu_);
  if (in_flight_.empty() && waiting_.empty()) {
    cv_.wait(lock, [&] { return !queue_.empty() || stopping_ || abort_code_.load() != kNoAbort; });
  }
  if (abort_code_.load() != kNoAbort) {
    lock.unlock();
    AbortNow(abort_code_.load());
  }
  for (std::unique_ptr<Op>& op : queue_) waiting_.push_back(std::move(op));
  queue_.clear();
  return !waiting_.empty() || !in_flight_.empty();  // else stopping_ and drained
}

bool MpiCommunicator::IssueWaiting() {
  bool issued = false;
  while (!waiting_.empty()) {
    const int64_t bytes = Bytes(*waiting_.front());
    if (!in_flight_.empty() && bytes_in_flight_ + bytes > kMaxBytesInFlight) break;
    Issue(std::move(waiting_.front()));
    waiting_.pop_front();
    issued = true;
  }
  return issued;
}

int64_t MpiCommunicator::Bytes(const Op& op) const {
  switch (op.kind) {
    case OpKind::kAllReduceFloat:
      return op.n * static_cast<int64_t>(sizeof(float));
    case OpKind::kAllReduceDouble:
      return op.n * static_cast<int64_t>(sizeof(double));
    case OpKind::kReduceScatter:
    case OpKind::kAllGather:
      return world_ * op.n * static_cast<int64_t>(sizeof(float));
    case OpKind::kBroadcast:
      return op.n;
    case OpKind::kBarrier:
      return 0;
  }
  return 0;
}

void MpiCommunicator::AbortNow(int code) {
  MPI_Abort(MPI_COMM_WORLD, code);
  std::_Exit(code);  // MPI_Abort does not return; this is for a library that does
}

void MpiCommunicator::Issue(std::unique_ptr<Op> op) {
  const uint64_t id = next_id_++;
  int pending = 0;
  IssueCalls(*op, [&](MPI_Request request) {
    requests_.push_back(request);
    request_op_.push_back(id);
    ++pending;
  });
  if (pending == 0) {
    op->done.set_value();
    return;
  }
  const int64_t bytes = Bytes(*op);
  bytes_in_flight_ += bytes;
  in_flight_.emplace(id, InFlight{std::move(op->done), pending, bytes});
}

void MpiCommunicator::IssueCalls(const Op& op, const std::function<void(MPI_Request)>& add) {
  MPI_Request request;
  switch (op.kind) {
    case OpKind::kAllReduceFloat:
      ForEachChunk(op.n, max_count_, [&](int64_t offset, int count) {
        MPI_Iallreduce(MPI_IN_PLACE, static_cast<float*>(op.recv) + offset, count, MPI_FLOAT,
                       MPI_SUM, MPI_COMM_WORLD, &request);
        add(request);
      });
      break;
    case OpKind::kAllReduceDouble:
      ForEachChunk(op.n, max_count_, [&](int64_t offset, int count) {
        MPI_Iallreduce(MPI_IN_PLACE, static_cast<double*>(op.recv) + offset, count, MPI_DOUBLE,
                       MPI_SUM, MPI_COMM_WORLD, &request);
        add(request);
      });
      break;
    case OpKind::kReduceScatter:
      IssueReduceScatter(op, add);
      break;
    case OpKind::kAllGather:
      IssueAllGather(op, add);
      break;
    case OpKind::kBroadcast:
      ForEachChunk(op.n, max_count_, [&](int64_t offset, int count) {
        MPI_Ibcast(static_cast<char*>(op.recv) + offset, count, MPI_BYTE, op.root, MPI_COMM_WORLD,
                   &request);
        add(request);
      });
      break;
    case OpKind::kBarrier:
      MPI_Ibarrier(MPI_COMM_WORLD, &request);
      add(request);
      break;
  }
}

// One MPI_Ireduce_scatter_block; above max_count, one MPI_Ireduce per chunk
// and destination rank (the blocks of a chunk are not contiguous in send).
void MpiCommunicator::IssueReduceScatter(const Op& op,
                                         const std::function<void(MPI_Request)>& add) {
  const float* send = static_cast<const float*>(op.send);
  float* recv = static_cast<float*>(op.recv);
  MPI_Request request;
  if (op.n <= max_count_) {
    MPI_Ireduce_scatter_block(send, recv, static_cast<int>(op.n), MPI_FLOAT, MPI_SUM,
                              MPI_COMM_WORLD, &request);
    add(request);
    return;
  }
  ForEachChunk(op.n, max_count_, [&](int64_t offset, int count) {
    for (int root = 0; root < world_; ++root) {
      float* out = root == rank_ ? recv + offset : nullptr;
      MPI_Ireduce(send + root * op.n + offset, out, count, MPI_FLOAT, MPI_SUM, root, MPI_COMM_WORLD,
                  &request);
      add(request);
    }
  });
}

// One MPI_Iallgather (MPI_IN_PLACE when send is this rank's block of recv);
// above max_count, this rank's block is copied into recv and every block is
// broadcast from its owner chunk by chunk.
void MpiCommunicator::IssueAllGather(const Op& op, const std::function<void(MPI_Request)>& add) {
  const float* send = static_cast<const float*>(op.send);
  float* recv = static_cast<float*>(op.recv);
  const bool in_place = send == recv + rank_ * op.n;
  MPI_Request request;
  if (op.n <= max_count_) {
    MPI_Iallgather(in_place ? MPI_IN_PLACE : send, static_cast<int>(op.n), MPI_FLOAT, recv,
                   static_cast<int>(op.n), MPI_FLOAT, MPI_COMM_WORLD, &request);
    add(request);
    return;
  }
  if (!in_place) std::memcpy(recv + rank_ * op.n, send, static_cast<size_t>(op.n) * sizeof(float));
  ForEachChunk(op.n, max_count_, [&](int64_t offset, int count) {
    for (int root = 0; root < world_; ++root) {
      MPI_Ibcast(recv + root * op.n + offset, count, MPI_FLOAT, root, MPI_COMM_WORLD, &request);
      add(request);
    }
  });
}

bool MpiCommunicator::Progress() {
  if (requests_.empty()) return false;
  completed_.resize(requests_.size());
  int count = 0;
  MPI_Testsome(static_cast<int>(requests_.size()), requests_.data(), &count, completed_.data(),
               MPI_STATUSES_IGNORE);
  if (count == MPI_UNDEFINED || count == 0) return false;
  bool any_done = false;
  for (int i = 0; i < count; ++i) {
    auto it = in_flight_.find(request_op_[completed_[i]]);
    if (--it->second.pending > 0) continue;
    it->second.done.set_value();
    bytes_in_flight_ -= it->second.bytes;
    in_flight_.erase(it);
    any_done = true;
  }
  // Drop the finished requests (MPI_Testsome set them to MPI_REQUEST_NULL).
  size_t kept = 0;
  for (size_t i = 0; i < requests_.size(); ++i) {
    if (requests_[i] == MPI_REQUEST_NULL) continue;
    requests_[kept] = requests_[i];
    request_op_[kept] = request_op_[i];
    ++kept;
  }
  requests_.resize(kept);
  request_op_.resize(kept);
  return any_done;
}

}  // namespace

StatusOr<std::unique_ptr<Communicator>> MakeMpiCommunicator(const MpiOptions& options) {
  MINGPT_CHECK(options.max_count >= 1 && options.max_count <= INT_MAX,
               "MpiOptions::max_count %lld outside 1..INT_MAX",
               static_cast<long long>(options.max_count));
  int initialized = 0, finalized = 0;
  MPI_Initialized(&initialized);
  MPI_Finalized(&finalized);
  if (finalized) return Status::Error("MPI was finalized in this process and cannot start again");
  if (initialized) return Status::Error("MPI is already initialized in this process");
  auto comm = std::make_unique<MpiCommunicator>(options);
  MINGPT_RETURN_IF_ERROR(comm->Start());
  return std::unique_ptr<Communicator>(std::move(comm));
}

}  // namespace mingpt
