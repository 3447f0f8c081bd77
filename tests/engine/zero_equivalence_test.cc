// Every strategy at N = 1..4 ranks follows the single-process trajectory
// (zero_worker.cc says how), under the system's mpirun.
#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>

#include "dist/launch.h"

namespace mingpt {
namespace {

std::string Quote(const std::string& s) { return "'" + s + "'"; }

class ZeroEquivalence : public ::testing::TestWithParam<int> {};

TEST_P(ZeroEquivalence, EveryStrategyFollowsTheSingleProcessTrajectory) {
  const int world = GetParam();
  const std::string dir = ::testing::TempDir() + "mingpt_zero_" + std::to_string(getpid()) +
                          "_" + std::to_string(world);
  std::filesystem::remove_all(dir);
  // mingpt's own mpirun command line, with the worker in place of the
  // executable (its last word when given no arguments).
  auto argv = MpirunCommand(world, {});
  ASSERT_TRUE(argv.ok()) << argv.status().message();
  argv->back() = ZERO_WORKER;
  argv->push_back(dir);
  std::string cmd;
  for (const std::string& a : *argv) cmd += Quote(a) + " ";
  cmd += "2>&1";
  std::string out;
  std::FILE* p = popen(cmd.c_str(), "r");
  ASSERT_NE(p, nullptr);
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof(buf), p)) > 0) out.append(buf, n);
  const int status = pclose(p);
  std::printf("%s", out.c_str());
  EXPECT_EQ(status, 0) << out;
  EXPECT_EQ(out.find("FAIL"), std::string::npos);
  std::filesystem::remove_all(dir);
}

INSTANTIATE_TEST_SUITE_P(Ranks, ZeroEquivalence, ::testing::Values(1, 2, 3, 4));

}  // namespace
}  // namespace mingpt
