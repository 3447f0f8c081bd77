// NvmeState: the files of NVMe offload. Shards written and read back at any
// element range; gradients replaced by the first micro-batch and summed by
// the next; the optimizer pass streams every unit in chunks (a pool much
// smaller than a unit) and writes back exactly what the step function made;
// parameter reads for the gathers; a directory that is missing or too small
// is refused before anything is written; the files of a run that died are
// removed by the next run, those of a live one never.
#include "engine/nvme_state.h"

#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <vector>

#include "common/scoped_temp_dir.h"

namespace mingpt {
namespace {

// Three units of uneven sizes, this rank's shards of 2 ranks.
std::vector<ShardRange> Shards() {
  return {ShardRange(70001, 1, 2), ShardRange(1000, 1, 2), ShardRange(40000, 1, 2)};
}

// Integers below 2^24: exact in float, whatever the compiler fuses.
float Value(int kind, int unit, int64_t i) {
  return static_cast<float>(kind * 1000000 + unit * 100000 + i % 99991);
}

std::vector<float> UnitValues(int kind, int unit, int64_t n) {
  std::vector<float> v(n);
  for (int64_t i = 0; i < n; ++i) v[i] = Value(kind, unit, i);
  return v;
}

NvmeOptions Small(const std::string& dir) {
  NvmeOptions o;
  o.dir = dir;
  o.buffer_bytes = 64 << 10;  // chunks of 2048 floats: every unit takes several
  return o;
}

TEST(NvmeState, ShardsRoundTripAtAnyRange) {
  ScopedTempDir dir;
  auto made = NvmeState::Create(Small(dir.path()), Shards(), 1);
  ASSERT_TRUE(made.ok()) << made.status().message();
  NvmeState& s = **made;
  EXPECT_TRUE(std::filesystem::exists(s.dir() + "/params.bin"));
  for (int u = 0; u < 3; ++u) {
    const int64_t n = Shards()[u].size();
    for (int kind : {NvmeState::kParams, NvmeState::kExpAvg, NvmeState::kExpAvgSq}) {
      const auto v = UnitValues(kind, u, n);
      ASSERT_TRUE(s.WriteShard(static_cast<NvmeState::Kind>(kind), u, v.data(), n).ok());
    }
  }
  for (int u = 0; u < 3; ++u) {
    const int64_t n = Shards()[u].size();
    for (auto [from, len] : {std::pair<int64_t, int64_t>{0, n}, {1, n - 2}, {n / 2, 3}, {n - 1, 1}}) {
      std::vector<float> got(len);
      ASSERT_TRUE(s.Read(NvmeState::kExpAvg, u, from, len, got.data()).ok());
      for (int64_t i = 0; i < len; ++i) ASSERT_EQ(got[i], Value(NvmeState::kExpAvg, u, from + i));
    }
  }
  std::vector<float> past(2);
  EXPECT_FALSE(s.Read(NvmeState::kExpAvg, 1, Shards()[1].shard - 1, 2, past.data()).ok());
  const std::string files = s.dir();
  made->reset();
  EXPECT_FALSE(std::filesystem::exists(files)) << "scratch files are removed";
}

TEST(NvmeState, OptimizerStreamsEveryUnitInChunksAndWritesBack) {
  ScopedTempDir dir;
  auto made = NvmeState::Create(Small(dir.path()), Shards(), 1);
  ASSERT_TRUE(made.ok()) << made.status().message();
  NvmeState& s = **made;
  const auto shards = Shards();
  for (int u = 0; u < 3; ++u) {
    for (int kind : {NvmeState::kParams, NvmeState::kExpAvg, NvmeState::kExpAvgSq}) {
      const auto v = UnitValues(kind, u, shards[u].shard);
      ASSERT_TRUE(s.WriteShard(static_cast<NvmeState::Kind>(kind), u, v.data(), shards[u].shard).ok());
    }
    // Gradients: micro-batch 1 replaces whatever was there, micro-batch 2 adds
    // (through the staging buffers in turn, as the engine's stagings alternate).
    for (bool first : {true, false}) {
      const int buffer = (2 * u + !first) % NvmeState::kStagingBuffers;
      auto staged = s.StagingBuffer(buffer);
      ASSERT_TRUE(staged.ok());
      for (int64_t i = 0; i < shards[u].shard; ++i) (*staged)[i] = Value(NvmeState::kGrads, u, i);
      ASSERT_TRUE(s.AddGrads(u, buffer, first).ok());
    }
    EXPECT_FALSE(s.StagingBuffer(NvmeState::kStagingBuffers).ok());
  }
  std::vector<int64_t> seen(3, 0);
  int calls = 0;
  ASSERT_TRUE(s.Step([&](int u, int64_t from, int64_t n, float* p, float* g, float* m, float* v) {
                 ++calls;
                 EXPECT_EQ(from, seen[u]) << "chunks in order";
                 seen[u] += n;
                 for (int64_t i = 0; i < n; ++i) {
                   ASSERT_EQ(g[i], 2 * Value(NvmeState::kGrads, u, from + i));
                   ASSERT_EQ(p[i], Value(NvmeState::kParams, u, from + i));
                   p[i] = -p[i];
                   m[i] += g[i];
                   v[i] = 7.0f;
                 }
               }).ok());
  for (int u = 0; u < 3; ++u) EXPECT_EQ(seen[u], shards[u].shard);
  EXPECT_GT(calls, 3 * 2) << "the pool holds far less than a unit";
  for (int u = 0; u < 3; ++u) {
    const int64_t n = shards[u].shard;
    std::vector<float> p(n), m(n), v(n);
    ASSERT_TRUE(s.Read(NvmeState::kParams, u, 0, n, p.data()).ok());
    ASSERT_TRUE(s.Read(NvmeState::kExpAvg, u, 0, n, m.data()).ok());
    ASSERT_TRUE(s.Read(NvmeState::kExpAvgSq, u, 0, n, v.data()).ok());
    for (int64_t i = 0; i < n; ++i) {
      ASSERT_EQ(p[i], -Value(NvmeState::kParams, u, i));
      ASSERT_EQ(m[i], Value(NvmeState::kExpAvg, u, i) + 2 * Value(NvmeState::kGrads, u, i));
      ASSERT_EQ(v[i], 7.0f);
    }
    AlignedBlock buffer(static_cast<size_t>(n) * 4);
    ASSERT_TRUE(s.FinishRead(s.ReadParams(u, buffer.f32())).ok());
    for (int64_t i = 0; i < n; ++i) ASSERT_EQ(buffer.f32()[i], p[i]);
  }
  EXPECT_GT(s.bytes_read(), 0u);
  EXPECT_GT(s.bytes_written(), 0u);
}

TEST(NvmeState, ParametersInMemoryLeaveNoParameterFile) {
  ScopedTempDir dir;
  NvmeOptions o = Small(dir.path());
  o.params = false;
  auto made = NvmeState::Create(o, Shards(), 0);
  ASSERT_TRUE(made.ok()) << made.status().message();
  EXPECT_FALSE(std::filesystem::exists((*made)->dir() + "/params.bin"));
  EXPECT_TRUE(std::filesystem::exists((*made)->dir() + "/exp_avg.bin"));
  EXPECT_EQ((*made)->disk_bytes(), NvmeState::DiskBytes(Shards(), false));
  ASSERT_TRUE((*made)->Step([](int, int64_t, int64_t, float* p, float*, float*, float*) {
                EXPECT_EQ(p, nullptr);
              }).ok());
}

TEST(NvmeState, BadDirectoriesAreRefusedBeforeWriting) {
  ScopedTempDir dir;
  auto missing = NvmeState::Create(Small(dir.Join("nope")), Shards(), 0);
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(missing.status().message().find("is not a directory"), std::string::npos);
  // Far more state than any disk here holds.
  std::vector<ShardRange> huge(64, ShardRange(int64_t{1} << 40, 0, 1));
  auto full = NvmeState::Create(Small(dir.path()), huge, 0);
  ASSERT_FALSE(full.ok());
  EXPECT_NE(full.status().message().find("free; this rank's offloaded state needs"),
            std::string::npos)
      << full.status().message();
  EXPECT_TRUE(std::filesystem::is_empty(dir.path()));
}

// A run killed with SIGKILL (its destructor never runs) leaves its files;
// the next run under the same directory removes them, saying so in one
// line, and leaves those of a run still alive (this process's).
TEST(NvmeState, ADeadRunsFilesAreRemovedByTheNextRun) {
  ScopedTempDir dir;
  auto live = NvmeState::Create(Small(dir.path()), Shards(), 0);
  ASSERT_TRUE(live.ok()) << live.status().message();
  std::fflush(nullptr);
  const pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    auto made = NvmeState::Create(Small(dir.path()), Shards(), 1);
    if (!made.ok()) _exit(2);
    ::raise(SIGKILL);
  }
  int status = 0;
  ASSERT_EQ(::waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL) << "child status " << status;
  const std::string dead = dir.Join("mingpt-rank-1-" + std::to_string(pid));
  ASSERT_TRUE(std::filesystem::exists(dead + "/exp_avg.bin"));

  ::testing::internal::CaptureStderr();
  auto next = NvmeState::Create(Small(dir.path()), Shards(), 1);
  const std::string said = ::testing::internal::GetCapturedStderr();
  ASSERT_TRUE(next.ok()) << next.status().message();
  EXPECT_FALSE(std::filesystem::exists(dead));
  EXPECT_TRUE(std::filesystem::exists((*live)->dir() + "/exp_avg.bin"));
  EXPECT_EQ(said.rfind("mingpt: removed " + dead + " (", 0), 0u) << said;
  EXPECT_EQ(std::count(said.begin(), said.end(), '\n'), 1) << said;
  // Nothing else is left: the two live runs' directories.
  size_t entries = 0;
  for (const auto& e : std::filesystem::directory_iterator(dir.path())) {
    ++entries;
    EXPECT_EQ(e.path().filename().string().rfind("mingpt-rank-", 0), 0u) << e.path();
  }
  EXPECT_EQ(entries, 2u);
  next->reset();
  live->reset();
  EXPECT_TRUE(std::filesystem::is_empty(dir.path()));
}

}  // namespace
}  // namespace mingpt
