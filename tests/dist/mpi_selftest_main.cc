// mpi_selftest: the MPI worker that test_dist runs. Started by hand with
// --ranks=N it re-runs itself as N ranks under mpirun (RunUnderMpirun) and
// returns mpirun's exit code; as a rank it runs one --mode:
//   check (default)  every collective of MpiCommunicator against exact
//                    expected values; prints "rank R/N: ok ..." or
//                    "rank R/N: FAIL ..." and exits 1 on any mismatch
//   kill             rank 1 dies of SIGKILL while the others wait in AllReduce
//   abort            rank 1 calls Abort(7) while the others wait in AllReduce
//   lone             rank 1 leaves the job (LeaveJob) with an error it met
//                    alone while the others wait in AllReduce
//   hold             one AllReduce'd stop flag per 20 ms step until a rank
//                    gets SIGINT/SIGTERM; then every rank "saves" (200 ms),
//                    prints "rank R/N: stopped at step S, signal G", exits 0
//   stubborn         as hold, but ignores the signals (runs until killed)
//   pin              PinLaunchedRank(env, 1), then prints the CPUs a thread
//                    started afterwards may run on: "rank R/N: cpus A,B"
//                    ("rank R/N: not pinned" when it did not pin)
// --max_count=K makes MPI calls move at most K elements (the split path).
// --large=N sets the element count of the large AllReduce (default 50M).
#include <sched.h>
#include <signal.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "dist/agree.h"
#include "dist/communicator.h"
#include "dist/launch.h"
#include "dist/mpi_communicator.h"

namespace mingpt {
namespace {

using Clock = std::chrono::steady_clock;

struct Flags {
  int ranks = 0;
  std::string mode = "check";
  int64_t max_count = INT_MAX;
  int64_t large = 50'000'000;
};

bool ParseFlags(int argc, char** argv, Flags* flags) {
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    const size_t eq = arg.find('=');
    const std::string key = arg.substr(0, eq),
                      value = eq == std::string::npos ? "" : arg.substr(eq + 1);
    if (key == "--ranks") {
      flags->ranks = std::atoi(value.c_str());
    } else if (key == "--mode") {
      flags->mode = value;
    } else if (key == "--max_count") {
      flags->max_count = std::atoll(value.c_str());
    } else if (key == "--large") {
      flags->large = std::atoll(value.c_str());
    } else {
      std::fprintf(stderr, "mpi_selftest: unknown flag %s\n", arg.c_str());
      return false;
    }
  }
  return true;
}

// ---- check mode ----

// Exact in float: small integers. Rank r's element i of collective `salt`.
float Value(int rank, int64_t i, int salt) {
  return static_cast<float>((rank + 1) * ((i * 7 + salt) % 1000 + 1));
}

// Sum over ranks of Value(r, i, salt).
float SumOverRanks(int world, int64_t i, int salt) {
  return static_cast<float>(world * (world + 1) / 2 * ((i * 7 + salt) % 1000 + 1));
}

class Checker {
 public:
  explicit Checker(Communicator* comm) : comm_(comm), rank_(comm->rank()), world_(comm->world()) {}

  // Runs `name`; a check returns an empty string or what went wrong.
  void Run(const char* name, const std::function<std::string()>& check) {
    const std::string problem = check();
    if (problem.empty()) {
      ++passed_;
      return;
    }
    ++failed_;
    std::printf("rank %d/%d: FAIL %s: %s\n", rank_, world_, name, problem.c_str());
    std::fflush(stdout);
  }

  int failed() const { return failed_; }
  int passed() const { return passed_; }

  // ---- the checks ----

  std::string AllReduceFloat(int64_t n, int salt) {
    std::vector<float> data(n);
    for (int64_t i = 0; i < n; ++i) data[i] = Value(rank_, i, salt);
    comm_->AllReduce(data.data(), n).Wait();
    return Compare(data, [&](int64_t i) { return SumOverRanks(world_, i, salt); });
  }

  std::string AllReduceDouble(int64_t n) {
    // 1e12 + small integers: exact in double, not in float.
    std::vector<double> data(n);
    for (int64_t i = 0; i < n; ++i) data[i] = 1e12 + rank_ * 3.0 + static_cast<double>(i);
    comm_->AllReduce(data.data(), n).Wait();
    for (int64_t i = 0; i < n; ++i) {
      const double want =
          world_ * (1e12 + static_cast<double>(i)) + 3.0 * world_ * (world_ - 1) / 2;
      if (data[i] != want) return Mismatch(i, data[i], want);
    }
    return "";
  }

  std::string ReduceScatter(int64_t n, int salt) {
    std::vector<float> send(world_ * n), recv(n, -1.0f);
    for (int64_t i = 0; i < world_ * n; ++i) send[i] = Value(rank_, i, salt);
    comm_->ReduceScatter(send.data(), recv.data(), n).Wait();
    return Compare(recv, [&](int64_t i) { return SumOverRanks(world_, rank_ * n + i, salt); });
  }

  std::string AllGather(int64_t n, bool in_place) {
    std::vector<float> recv(world_ * n, -1.0f), send(n);
    for (int64_t i = 0; i < n; ++i) send[i] = Value(rank_, i, 3);
    const float* source = send.data();
    if (in_place) {
      std::copy(send.begin(), send.end(), recv.begin() + rank_ * n);
      source = recv.data() + rank_ * n;
    }
    comm_->AllGather(source, recv.data(), n).Wait();
    return Compare(recv, [&](int64_t j) { return Value(static_cast<int>(j / n), j % n, 3); });
  }

  std::string Broadcast(size_t bytes, int root) {
    std::vector<unsigned char> data(bytes);
    for (size_t i = 0; i < bytes; ++i)
      data[i] = static_cast<unsigned char>(rank_ == root ? i * 31 + 7 : 0);
    comm_->Broadcast(data.data(), bytes, root).Wait();
    for (size_t i = 0; i < bytes; ++i) {
      const auto want = static_cast<unsigned char>(i * 31 + 7);
      if (data[i] != want) return Mismatch(static_cast<int64_t>(i), data[i], want);
    }
    return "";
  }

  // Five collectives in flight at once, waited for in reverse order.
  std::string ManyInFlight() {
    const int64_t n = 10007;
    std::vector<float> a(n), rs_send(world_ * n), rs_recv(n), ag(world_ * n), bc(n);
    std::vector<double> d(n);
    for (int64_t i = 0; i < n; ++i) {
      a[i] = Value(rank_, i, 11);
      ag[rank_ * n + i] = Value(rank_, i, 12);
      bc[i] = rank_ == 0 ? Value(0, i, 13) : 0.0f;
      d[i] = rank_ + 0.25 * static_cast<double>(i);
    }
    for (int64_t i = 0; i < world_ * n; ++i) rs_send[i] = Value(rank_, i, 14);
    std::vector<Work> works;
    works.push_back(comm_->AllReduce(a.data(), n));
    works.push_back(comm_->ReduceScatter(rs_send.data(), rs_recv.data(), n));
    works.push_back(comm_->AllGather(ag.data() + rank_ * n, ag.data(), n));
    works.push_back(comm_->Broadcast(bc.data(), n * sizeof(float), 0));
    works.push_back(comm_->AllReduce(d.data(), n));
    for (auto it = works.rbegin(); it != works.rend(); ++it) it->Wait();
    for (const Work& w : works) {
      if (!w.completed()) return "a waited Work is not completed";
    }
    std::string problem = Compare(a, [&](int64_t i) { return SumOverRanks(world_, i, 11); });
    if (problem.empty()) {
      problem =
          Compare(rs_recv, [&](int64_t i) { return SumOverRanks(world_, rank_ * n + i, 14); });
    }
    if (problem.empty()) {
      problem = Compare(ag, [&](int64_t j) { return Value(static_cast<int>(j / n), j % n, 12); });
    }
    if (problem.empty()) problem = Compare(bc, [&](int64_t i) { return Value(0, i, 13); });
    for (int64_t i = 0; i < n && problem.empty(); ++i) {
      const double want = world_ * (world_ - 1) / 2.0 + world_ * 0.25 * static_cast<double>(i);
      if (d[i] != want) problem = Mismatch(i, d[i], want);
    }
    return problem;
  }

  // Issues an AllReduce of n floats, then computes on this thread; the
  // collective must complete while the computation runs. Up to 3 attempts
  // with more computation each; all ranks decide together whether to retry
  // (every rank must issue the same collectives).
  std::string Overlap(int64_t n) {
    std::vector<float> data(n, 1.0f);
    comm_->Barrier();
    auto start = Clock::now();
    comm_->AllReduce(data.data(), n).Wait();
    const double alone = Seconds(start);
    for (int attempt = 0; attempt < 3; ++attempt) {
      comm_->Barrier();
      const double budget = (4.0 * alone + 0.05) * (1 << attempt);
      start = Clock::now();
      Work work = comm_->AllReduce(data.data(), n);
      const double done_at = ComputeUntil(start, budget, work);
      work.Wait();
      overlap_note_ = "allreduce alone " + Ms(alone) + ", done " + Ms(done_at) + " into " +
                      Ms(budget) + " of compute";
      float late = done_at < 0 ? 1.0f : 0.0f;
      comm_->AllReduce(&late, 1).Wait();
      if (late == 0.0f) return "";
    }
    return "the collective did not complete during the computation on every rank: " +
           overlap_note_;
  }

  // Computes until `budget` seconds after `start`; returns when `work` was
  // first seen completed (seconds after start), -1 if it was not.
  static double ComputeUntil(Clock::time_point start, double budget, const Work& work) {
    double done_at = -1;
    double sink = 0;
    while (Seconds(start) < budget) {
      for (int k = 0; k < 20000; ++k) sink += std::sqrt(static_cast<double>(k) + sink * 1e-9);
      if (done_at < 0 && work.completed()) done_at = Seconds(start);
    }
    volatile double keep = sink;
    (void)keep;
    return done_at;
  }

  // While the last rank sleeps, the others wait in AllReduce: their CPU time
  // over the wait must stay far below the wall time (no spinning core).
  std::string IdleWait() {
    float x = 1.0f;
    comm_->Barrier();
    const double cpu0 = ProcessCpuSeconds();
    const auto start = Clock::now();
    if (rank_ == world_ - 1) std::this_thread::sleep_for(std::chrono::milliseconds(400));
    comm_->AllReduce(&x, 1).Wait();
    const double wall = Seconds(start), cpu = ProcessCpuSeconds() - cpu0;
    idle_note_ = "idle wait cpu " + Ms(cpu) + " over " + Ms(wall);
    if (x != static_cast<float>(world_)) return Mismatch(0, x, static_cast<float>(world_));
    if (rank_ != world_ - 1 && cpu > 0.25 * wall) return "the wait burned CPU: " + idle_note_;
    return "";
  }

  const std::string& overlap_note() const { return overlap_note_; }
  const std::string& idle_note() const { return idle_note_; }

 private:
  template <typename T, typename F>
  std::string Compare(const std::vector<T>& got, F want) {
    for (int64_t i = 0; i < static_cast<int64_t>(got.size()); ++i) {
      if (got[i] != want(i)) return Mismatch(i, got[i], want(i));
    }
    return "";
  }

  template <typename T>
  static std::string Mismatch(int64_t i, T got, T want) {
    return "element " + std::to_string(i) + " is " + std::to_string(got) + ", want " +
           std::to_string(want);
  }

  static double Seconds(Clock::time_point since) {
    return std::chrono::duration<double>(Clock::now() - since).count();
  }
  static std::string Ms(double seconds) {
    return std::to_string(static_cast<int>(seconds * 1e3)) + " ms";
  }
  static double ProcessCpuSeconds() {
    timespec t;
    ::clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
    return static_cast<double>(t.tv_sec) + 1e-9 * static_cast<double>(t.tv_nsec);
  }

  Communicator* comm_;
  int rank_, world_;
  int passed_ = 0, failed_ = 0;
  std::string overlap_note_, idle_note_;
};

int CheckMode(Communicator* comm, const Flags& flags) {
  Checker c(comm);
  const bool chunked = flags.max_count < 1000000;
  if (!Work().completed()) return 1;
  for (int64_t n : {0, 1, 7, 1000, 1001, 12345}) {
    c.Run("AllReduce(float)", [&] { return c.AllReduceFloat(n, static_cast<int>(n)); });
    c.Run("ReduceScatter", [&] { return c.ReduceScatter(n, static_cast<int>(n) + 1); });
    c.Run("AllGather", [&] { return c.AllGather(n, false); });
    c.Run("AllGather(in place)", [&] { return c.AllGather(n, true); });
  }
  for (int64_t n : {0, 1, 1001}) c.Run("AllReduce(double)", [&] { return c.AllReduceDouble(n); });
  for (size_t bytes : {size_t{0}, size_t{1}, size_t{13}, size_t{100003}}) {
    c.Run("Broadcast(root 0)", [&] { return c.Broadcast(bytes, 0); });
    c.Run("Broadcast(last root)", [&] { return c.Broadcast(bytes, comm->world() - 1); });
  }
  c.Run("several in flight", [&] { return c.ManyInFlight(); });
  comm->Barrier();
  if (!chunked) {
    c.Run("large AllReduce", [&] { return c.AllReduceFloat(flags.large, 5); });
    c.Run("overlap with compute", [&] { return c.Overlap(4'000'000); });
  }
  if (comm->world() > 1) c.Run("idle wait", [&] { return c.IdleWait(); });
  comm->Barrier();
  if (c.failed() > 0) return 1;
  std::printf("rank %d/%d: ok, %d checks passed; %s; %s\n", comm->rank(), comm->world(), c.passed(),
              c.overlap_note().c_str(), c.idle_note().c_str());
  std::fflush(stdout);
  return 0;
}

// ---- fault modes ----

// Everyone completes one AllReduce; then rank 1 fails with `fail` while the
// others wait in a second one (never completed).
int FaultMode(Communicator* comm, const std::function<void()>& fail) {
  float x = 1.0f;
  comm->AllReduce(&x, 1).Wait();
  std::printf("rank %d/%d: up\n", comm->rank(), comm->world());
  std::fflush(stdout);
  if (comm->rank() == 1) {
    std::this_thread::sleep_for(std::chrono::milliseconds(300));  // the others are waiting
    fail();
  }
  comm->AllReduce(&x, 1).Wait();
  std::printf("rank %d/%d: FAIL the collective completed without rank 1\n", comm->rank(),
              comm->world());
  return 1;
}

// ---- hold mode ----

std::atomic<int> g_signal{0};
void OnSignal(int signal) { g_signal.store(signal); }

int HoldMode(Communicator* comm, bool stubborn) {
  struct sigaction action = {};
  action.sa_handler = OnSignal;
  ::sigaction(SIGINT, &action, nullptr);
  ::sigaction(SIGTERM, &action, nullptr);
  std::printf("rank %d/%d: ready\n", comm->rank(), comm->world());
  std::fflush(stdout);
  for (int step = 0; step < 1500; ++step) {
    float stop = (!stubborn && g_signal.load() != 0) ? 1.0f : 0.0f;
    comm->AllReduce(&stop, 1).Wait();
    if (stop > 0) {
      std::this_thread::sleep_for(std::chrono::milliseconds(200));  // the checkpoint
      std::printf("rank %d/%d: stopped at step %d, signal %d\n", comm->rank(), comm->world(), step,
                  g_signal.load());
      std::fflush(stdout);
      return 0;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  std::printf("rank %d/%d: FAIL no stop signal within 30 s\n", comm->rank(), comm->world());
  return 1;
}

// ---- pin mode ----

int PinMode() {
  const MpiEnvironment env = DetectMpiEnvironment();
  const std::vector<int> pinned = PinLaunchedRank(env, 1);
  std::string cpus;
  std::thread([&] {
    cpu_set_t set;
    CPU_ZERO(&set);
    ::sched_getaffinity(0, sizeof(set), &set);
    for (int c = 0; c < CPU_SETSIZE; ++c) {
      if (CPU_ISSET(c, &set)) cpus += (cpus.empty() ? "" : ",") + std::to_string(c);
    }
  }).join();
  if (pinned.empty()) {
    std::printf("rank %d/%d: not pinned\n", env.rank, env.size);
  } else {
    std::printf("rank %d/%d: cpus %s\n", env.rank, env.size, cpus.c_str());
  }
  return 0;
}

int RunRank(const Flags& flags) {
  if (flags.mode == "pin") return PinMode();
  StatusOr<std::unique_ptr<Communicator>> comm =
      MakeMpiCommunicator({.max_count = flags.max_count});
  if (!comm.ok()) {
    std::fprintf(stderr, "mpi_selftest: %s\n", comm.status().message().c_str());
    return 1;
  }
  Communicator* c = comm->get();
  if (flags.mode == "check") return CheckMode(c, flags);
  if (flags.mode == "kill") return FaultMode(c, [] { ::raise(SIGKILL); });
  if (flags.mode == "abort") return FaultMode(c, [c] { c->Abort(7); });
  if (flags.mode == "lone") {
    return FaultMode(c, [&comm] {
      LeaveJob(std::move(*comm), Status::Error("the disk is on fire"));
      std::printf("rank 1: FAIL left the job without ending it\n");
      std::fflush(stdout);
      std::_Exit(0);
    });
  }
  if (flags.mode == "hold") return HoldMode(c, false);
  if (flags.mode == "stubborn") return HoldMode(c, true);
  std::fprintf(stderr, "mpi_selftest: unknown mode %s\n", flags.mode.c_str());
  return 2;
}

}  // namespace
}  // namespace mingpt

int main(int argc, char** argv) {
  mingpt::Flags flags;
  if (!mingpt::ParseFlags(argc, argv, &flags)) return 2;
  if (flags.ranks > 0 && !mingpt::DetectMpiEnvironment().launched) {
    mingpt::StatusOr<int> code =
        mingpt::RunUnderMpirun(flags.ranks, std::vector<std::string>(argv + 1, argv + argc));
    if (!code.ok()) {
      std::fprintf(stderr, "mpi_selftest: error: %s\n", code.status().message().c_str());
      return 1;
    }
    return *code;
  }
  return mingpt::RunRank(flags);
}
