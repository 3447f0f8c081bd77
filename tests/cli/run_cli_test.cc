// The test helper itself: separate stdout/stderr, exit codes, signals,
// timeouts, and the one-line error contract check. (Only these tests use
// /bin/sh, to make a child misbehave on purpose; mingpt is always exec'd
// directly.)
#include <chrono>

#include "cli/run_cli.h"

namespace mingpt::cli_test {
namespace {

ProcessResult Sh(const std::string& script, double timeout_s = 60) {
  RunOptions o;
  o.timeout_s = timeout_s;
  return RunProcess({"/bin/sh", "-c", script}, o);
}

TEST(RunCliHelperTest, SeparatesStdoutAndStderr) {
  const ProcessResult r = Sh("echo out; echo err >&2; exit 3");
  EXPECT_EQ(r.out, "out\n");
  EXPECT_EQ(r.err, "err\n");
  EXPECT_EQ(r.exit_code, 3);
  EXPECT_EQ(r.signal, 0);
  EXPECT_FALSE(r.timed_out);
}

TEST(RunCliHelperTest, ReportsSignals) {
  const ProcessResult r = Sh("kill -ABRT $$");
  EXPECT_EQ(r.signal, SIGABRT);
  EXPECT_FALSE(FailsWith(r, 1, {}));
}

TEST(RunCliHelperTest, KillsAHangAfterTheTimeout) {
  const auto start = std::chrono::steady_clock::now();
  const ProcessResult r = Sh("sleep 30", 0.5);
  const double took =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_TRUE(r.timed_out);
  EXPECT_LT(took, 10.0);
  EXPECT_FALSE(FailsWith(r, 1, {}));
}

TEST(RunCliHelperTest, PassesEnvironmentAndWorkingDirectory) {
  TempDir dir;
  ASSERT_TRUE(dir.ok());
  RunOptions o;
  o.env["MINGPT_CLI_TEST_VAR"] = "hello";
  o.cwd = dir.path();
  const ProcessResult r = RunProcess({"/bin/sh", "-c", "echo $MINGPT_CLI_TEST_VAR; pwd"}, o);
  EXPECT_EQ(r.out, "hello\n" + std::filesystem::canonical(dir.path()).string() + "\n");
}

TEST(RunCliHelperTest, ContractCheck) {
  EXPECT_TRUE(FailsWith(Sh("echo 'mingpt: error: bad thing' >&2; exit 1"), 1, {"bad"}));
  EXPECT_FALSE(FailsWith(Sh("echo 'mingpt: error: bad thing' >&2; exit 1"), 1, {"good"}));
  EXPECT_FALSE(FailsWith(Sh("echo 'mingpt: error: bad thing' >&2; exit 0"), 1, {}));
  EXPECT_FALSE(FailsWith(Sh("echo 'mingpt: error: bad thing' >&2; exit 2"), 1, {}));
  EXPECT_FALSE(FailsWith(Sh("printf 'mingpt: error: a\\nmore\\n' >&2; exit 1"), 1, {}));
  EXPECT_FALSE(FailsWith(Sh("echo 'warning' >&2; echo 'mingpt: error: x' >&2; exit 1"), 1, {}));
  EXPECT_FALSE(FailsWith(Sh("printf 'mingpt: error: no newline' >&2; exit 1"), 1, {}));
  EXPECT_TRUE(FailsWithOneOf(Sh("echo 'mingpt: error: b' >&2; exit 1"), 1, {"a", "b"}));
  EXPECT_FALSE(FailsWithOneOf(Sh("echo 'mingpt: error: c' >&2; exit 1"), 1, {"a", "b"}));
}

}  // namespace
}  // namespace mingpt::cli_test
