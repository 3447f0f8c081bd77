// MpiCommunicator and RunUnderMpirun end to end: the worker mpi_selftest
// (MPI_SELFTEST) re-runs itself under mpirun through RunUnderMpirun and
// checks every collective on every rank (mpi_selftest_main.cc); here the
// world sizes, the failure of a rank, MPI_Abort and the stop on SIGINT.
#include <gtest/gtest.h>
#include <sched.h>
#include <signal.h>

#include <string>
#include <vector>

#include "dist/subprocess.h"

namespace mingpt {
namespace {

using dist_test::Subprocess;

std::vector<std::string> Worker(const std::vector<std::string>& flags) {
  std::vector<std::string> argv = {MPI_SELFTEST};
  argv.insert(argv.end(), flags.begin(), flags.end());
  return argv;
}

void ExpectEveryRankOk(int world, const std::vector<std::string>& extra_flags = {}) {
  std::vector<std::string> flags = {"--ranks=" + std::to_string(world)};
  flags.insert(flags.end(), extra_flags.begin(), extra_flags.end());
  Subprocess worker(Worker(flags));
  ASSERT_TRUE(worker.started());
  const int code = worker.Finish(120);
  EXPECT_EQ(code, 0) << worker.output();
  for (int r = 0; r < world; ++r) {
    const std::string ok = "rank " + std::to_string(r) + "/" + std::to_string(world) + ": ok";
    EXPECT_NE(worker.output().find(ok), std::string::npos) << worker.output();
  }
  std::printf("%s", worker.output().c_str());
}

TEST(MpiCommunicator, WorldOf1) { ExpectEveryRankOk(1); }
TEST(MpiCommunicator, WorldOf2) { ExpectEveryRankOk(2); }
TEST(MpiCommunicator, WorldOf3) { ExpectEveryRankOk(3); }
TEST(MpiCommunicator, WorldOf4) { ExpectEveryRankOk(4); }

// Every MPI call limited to 1000 elements: the split path of counts above
// INT_MAX, reached with the checks' sizes 1001, 12345 and 100003.
TEST(MpiCommunicator, SplitsCountsAboveTheLimit) { ExpectEveryRankOk(3, {"--max_count=1000"}); }

// Ranks that RunUnderMpirun started pin themselves to disjoint CPUs, and the
// threads they start afterwards inherit it.
TEST(MpiCommunicator, LaunchedRanksPinToDisjointCpus) {
  cpu_set_t set;
  CPU_ZERO(&set);
  ASSERT_EQ(::sched_getaffinity(0, sizeof(set), &set), 0);
  if (CPU_COUNT(&set) < 2) {
    GTEST_SKIP() << "one CPU: two ranks cannot have their own";
  }
  Subprocess worker(Worker({"--ranks=2", "--mode=pin"}));
  ASSERT_EQ(worker.Finish(60), 0) << worker.output();
  std::vector<std::string> cpus;
  for (int r = 0; r < 2; ++r) {
    const std::string prefix = "rank " + std::to_string(r) + "/2: cpus ";
    const size_t at = worker.output().find(prefix);
    ASSERT_NE(at, std::string::npos) << worker.output();
    const size_t end = worker.output().find('\n', at);
    cpus.push_back(worker.output().substr(at + prefix.size(), end - at - prefix.size()));
    EXPECT_EQ(cpus.back().find(','), std::string::npos) << "one CPU per rank: " << cpus.back();
  }
  EXPECT_NE(cpus[0], cpus[1]) << worker.output();
}

TEST(MpiCommunicator, ADeadRankEndsTheJob) {
  Subprocess worker(Worker({"--ranks=3", "--mode=kill"}));
  const int code = worker.Finish(30);
  EXPECT_NE(code, -1) << "mpirun hung after rank 1 died\n" << worker.output();
  EXPECT_NE(code, 0) << worker.output();
  EXPECT_LT(worker.seconds(), 30);
  EXPECT_NE(worker.output().find("rank 1 with PID"), std::string::npos) << worker.output();
  EXPECT_NE(worker.output().find("signal 9"), std::string::npos) << worker.output();
  EXPECT_EQ(worker.output().find("FAIL"), std::string::npos) << worker.output();
}

TEST(MpiCommunicator, AbortEndsTheJobWithItsCode) {
  Subprocess worker(Worker({"--ranks=3", "--mode=abort"}));
  const int code = worker.Finish(30);
  // (OpenMPI usually adds "MPI_ABORT was invoked on rank 1 ...", but its
  // help-message channel sometimes loses it when the job dies fast.)
  EXPECT_EQ(code, 7) << worker.output();
  EXPECT_EQ(worker.output().find("FAIL"), std::string::npos) << worker.output();
}

// A rank that met an error alone (not agreed with the others, which wait
// for it in a collective) ends the job, naming itself, instead of waiting
// in MPI_Finalize for ranks that wait for it.
TEST(MpiCommunicator, ALoneFailureEndsTheJobAndIsNamed) {
  Subprocess worker(Worker({"--ranks=3", "--mode=lone"}));
  const int code = worker.Finish(30);
  EXPECT_NE(code, -1) << "the job hung after rank 1 failed alone\n" << worker.output();
  EXPECT_EQ(code, 1) << worker.output();
  EXPECT_NE(worker.output().find("mingpt: error: rank 1: the disk is on fire"), std::string::npos)
      << worker.output();
  EXPECT_EQ(worker.output().find("FAIL"), std::string::npos) << worker.output();
}

// Ctrl-C at the launching process: every rank finishes its step, saves and
// exits 0, and so does the job.
TEST(RunUnderMpirun, SigintStopsEveryRankGracefully) {
  Subprocess worker(Worker({"--ranks=2", "--mode=hold"}));
  ASSERT_TRUE(worker.WaitForOutput("rank 0/2: ready", 30)) << worker.output();
  ASSERT_TRUE(worker.WaitForOutput("rank 1/2: ready", 30)) << worker.output();
  worker.Signal(SIGINT);
  EXPECT_EQ(worker.Finish(30), 0) << worker.output();
  for (const char* line :
       {"rank 0/2: stopped", "rank 1/2: stopped", "signal 2", "SIGINT sent to the 2 ranks"}) {
    EXPECT_NE(worker.output().find(line), std::string::npos) << line << "\n" << worker.output();
  }
}

// Ranks that ignore the signal: the second one aborts the job.
TEST(RunUnderMpirun, SecondSignalAbortsTheJob) {
  Subprocess worker(Worker({"--ranks=2", "--mode=stubborn"}));
  ASSERT_TRUE(worker.WaitForOutput("rank 0/2: ready", 30)) << worker.output();
  ASSERT_TRUE(worker.WaitForOutput("rank 1/2: ready", 30)) << worker.output();
  worker.Signal(SIGTERM);
  ASSERT_TRUE(worker.WaitForOutput("SIGTERM sent to the 2 ranks", 10)) << worker.output();
  worker.Signal(SIGTERM);
  const int code = worker.Finish(30);
  EXPECT_NE(code, -1) << "mpirun hung\n" << worker.output();
  EXPECT_NE(code, 0) << worker.output();
  EXPECT_LT(worker.seconds(), 30);
}

}  // namespace
}  // namespace mingpt
