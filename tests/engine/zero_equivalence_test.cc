// Every strategy at N = 1..4 ranks follows the single-process trajectory
// (zero_worker.cc says how), under the system's mpirun.
#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>

#include "engine/mpi_worker.h"

namespace mingpt {
namespace {

class ZeroEquivalence : public ::testing::TestWithParam<int> {};

TEST_P(ZeroEquivalence, EveryStrategyFollowsTheSingleProcessTrajectory) {
  const int world = GetParam();
  const std::string dir = ::testing::TempDir() + "mingpt_zero_" + std::to_string(getpid()) +
                          "_" + std::to_string(world);
  std::filesystem::remove_all(dir);
  auto run = test::RunWorker(ZERO_WORKER, world, dir);
  ASSERT_TRUE(run.ok()) << run.status().message();
  const std::string& out = run->out;
  std::printf("%s", out.c_str());
  EXPECT_EQ(run->status, 0) << out;
  EXPECT_EQ(out.find("FAIL"), std::string::npos);
  std::filesystem::remove_all(dir);
}

INSTANTIATE_TEST_SUITE_P(Ranks, ZeroEquivalence, ::testing::Values(1, 2, 3, 4));

}  // namespace
}  // namespace mingpt
