// A sharded checkpoint of more shards than the soft limit on open files
// lets a process keep open (a job of more than about a thousand ranks under
// the usual limit of 1024): its reader raises the limit and reads it whole;
// where even the hard limit is too low, one line says so. Each case runs in
// a forked child, whose limits the test lowers.
#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "cli/sharded_checkpoint.h"
#include "common/scoped_temp_dir.h"

namespace mingpt::cli_test {
namespace {

constexpr int kWorld = 300;
constexpr rlim_t kLowLimit = 64;

ModelConfig TinyConfig() {
  ModelConfig c;
  c.n_layer = 1;
  c.n_head = 1;
  c.n_embd = 4;
  c.block_size = 2;
  c.vocab_size = 3;
  c.dropout = 0;
  return c;
}

// Runs `body` in a forked child under the open-file limits {soft, hard};
// the child exits with body's return value. Returns the waitpid status.
template <typename Body>
int RunWithFileLimit(rlim_t soft, rlim_t hard, Body body) {
  std::fflush(nullptr);
  const pid_t pid = ::fork();
  if (pid < 0) std::abort();
  if (pid == 0) {
    const rlimit limit{soft, hard};
    if (::setrlimit(RLIMIT_NOFILE, &limit) != 0) ::_exit(90);
    ::_exit(body());
  }
  int status = 0;
  if (::waitpid(pid, &status, 0) != pid) std::abort();
  return status;
}

TEST(ManyShards, MoreShardsThanTheSoftLimitOnOpenFilesAreRead) {
  rlimit now;
  ASSERT_EQ(::getrlimit(RLIMIT_NOFILE, &now), 0);
  if (now.rlim_max != RLIM_INFINITY && now.rlim_max < 2 * kWorld) {
    GTEST_SKIP() << "the hard limit on open files (" << now.rlim_max << ") is below "
                 << 2 * kWorld;
  }
  ScopedTempDir tmp;
  const std::string dir = tmp.Join("sharded");
  const ModelConfig config = TinyConfig();
  const ModelLayout layout(config);
  const HostState host = DistinctState(layout);
  TrainOptions options;
  options.strategy = "deepspeed_stage_3";
  TrainState state;
  state.step = 3;
  const CharTokenizer tokenizer = CharTokenizer::FromVocab("abc").value();
  std::vector<ShardState> shards;
  for (int r = 0; r < kWorld; ++r) shards.push_back(ShardOf(layout, host, r, kWorld));
  const Status saved = SaveShardedInOneProcess(
      dir, layout, ShardedCheckpointMeta(layout, config, tokenizer, options, state, kWorld),
      shards);
  ASSERT_TRUE(saved.ok()) << saved.message();

  // The soft limit far below the shard count, the hard one above it.
  const int read = RunWithFileLimit(kLowLimit, now.rlim_max, [&] {
    StatusOr<OpenedCheckpoint> ckpt = OpenTrainingCheckpoint(dir);
    if (!ckpt.ok()) return 2;
    StatusOr<HostState> back = ReadHostState(*ckpt);
    if (!back.ok()) {
      std::fprintf(stderr, "%s\n", back.status().message().c_str());
      return 3;
    }
    const bool same = back->params == host.params && back->exp_avg == host.exp_avg &&
                      back->exp_avg_sq == host.exp_avg_sq;
    return same ? 0 : 4;
  });
  ASSERT_TRUE(WIFEXITED(read)) << "the child died of signal " << WTERMSIG(read);
  EXPECT_EQ(WEXITSTATUS(read), 0);

  // Both limits below it: one line naming the checkpoint and the limit.
  const int refused = RunWithFileLimit(kLowLimit, kLowLimit, [&] {
    StatusOr<OpenedCheckpoint> ckpt = OpenTrainingCheckpoint(dir);
    if (!ckpt.ok()) return 2;
    StatusOr<HostState> back = ReadHostState(*ckpt);
    if (back.ok()) return 3;
    const std::string& m = back.status().message();
    const bool clear = m.find("checkpoint '" + dir + "', of 300 shards: needs ") == 0 &&
                       m.find("more than the limit (64, the hard limit") != std::string::npos &&
                       m.find('\n') == std::string::npos;
    if (!clear) std::fprintf(stderr, "%s\n", m.c_str());
    return clear ? 0 : 4;
  });
  ASSERT_TRUE(WIFEXITED(refused)) << "the child died of signal " << WTERMSIG(refused);
  EXPECT_EQ(WEXITSTATUS(refused), 0);
}

}  // namespace
}  // namespace mingpt::cli_test
