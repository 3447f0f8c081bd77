// Tests of train/model_checkpoint.h's two formats, in this process (no
// training): the sharded save sequence for N = 3 "ranks" and the reader by
// element ranges, which must give back the saved flat buffers at any world
// size (1, 2, 3, 4) from either format; every broken sharded checkpoint is
// refused up front with one clear line naming the file; a crash during a
// sharded save (the MINGPT_CRASH_DURING_SAVE hook, in the process that saves
// or in one of several writing processes) leaves the previous checkpoint.
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <functional>
#include <set>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "cli/sharded_checkpoint.h"
#include "common/scoped_temp_dir.h"
#include "engine/shard.h"

namespace mingpt::cli_test {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

constexpr StateKind kKinds[] = {StateKind::kParams, StateKind::kExpAvg, StateKind::kExpAvgSq};

// A tiny model whose stem unit (32 elements) leaves rank 2 of 3 an empty
// shard, and whose block units (256 elements) do not split evenly in 3.
ModelConfig TinyConfig() {
  ModelConfig c;
  c.n_layer = 2;
  c.n_head = 1;
  c.n_embd = 1;
  c.block_size = 1;
  c.vocab_size = 2;
  c.dropout = 0;
  return c;
}

// A small but less degenerate model.
ModelConfig SmallConfig() {
  ModelConfig c;
  c.n_layer = 2;
  c.n_head = 2;
  c.n_embd = 6;
  c.block_size = 5;
  c.vocab_size = 7;
  c.dropout = 0;
  return c;
}

CharTokenizer Tokenizer(int vocab_size) {
  return CharTokenizer::FromVocab(std::string("abcdefghij").substr(0, vocab_size)).value();
}

const std::vector<float>& Kind(const HostState& host, StateKind kind) {
  return kind == StateKind::kParams ? host.params
         : kind == StateKind::kExpAvg ? host.exp_avg
                                      : host.exp_avg_sq;
}

TrainState SomeTrainState() {
  TrainState s;
  s.step = 7;
  s.tokens = 7 * 64;
  s.best_val_loss = 2.5;
  s.seed = 1234;
  return s;
}

json ShardedMeta(const ModelConfig& config, int world) {
  TrainOptions o;
  o.data_path = "/data/input.txt";
  o.strategy = "deepspeed_stage_3";
  return ShardedCheckpointMeta(ModelLayout(config), config, Tokenizer(config.vocab_size), o,
                               SomeTrainState(), world);
}

// Saves `host` sharded over `world` ranks at `dir`, the sequence run in this
// process.
Status SaveSharded(const std::string& dir, const ModelConfig& config, const HostState& host,
                   int world) {
  const ModelLayout layout(config);
  std::vector<ShardState> shards;
  for (int r = 0; r < world; ++r) shards.push_back(ShardOf(layout, host, r, world));
  return SaveShardedInOneProcess(dir, layout, ShardedMeta(config, world), shards);
}

Status SaveSingle(const std::string& dir, const ModelConfig& config, const HostState& host) {
  TrainOptions o;
  o.data_path = "/data/input.txt";
  return SaveTrainingCheckpoint(dir, ModelLayout(config), config, Tokenizer(config.vocab_size), o,
                                SomeTrainState(), host);
}

// Every rank of a world of `world` reads its ShardRange of every unit and
// kind: together, exactly `host`.
::testing::AssertionResult ReadsBackAtWorld(const std::string& dir, const HostState& host,
                                            int world) {
  StatusOr<OpenedCheckpoint> ckpt = OpenTrainingCheckpoint(dir);
  if (!ckpt.ok()) return ::testing::AssertionFailure() << ckpt.status().message();
  const ModelLayout layout(ckpt->config);
  StatusOr<CheckpointReader> reader = CheckpointReader::Open(*ckpt, layout);
  if (!reader.ok()) return ::testing::AssertionFailure() << reader.status().message();
  for (int r = 0; r < world; ++r) {
    for (int u = 0; u < layout.num_units(); ++u) {
      const ShardRange range(layout.units()[u].numel, r, world);
      for (StateKind kind : kKinds) {
        std::vector<float> got(static_cast<size_t>(range.size()) + 1, -7.0f);  // + a guard
        const Status s = reader->Read(u, kind, {range.begin, range.end}, got.data());
        if (!s.ok()) return ::testing::AssertionFailure() << s.message();
        const float* want = Kind(host, kind).data() + layout.unit_offset(u) + range.begin;
        for (int64_t i = 0; i < range.size(); ++i) {
          if (got[static_cast<size_t>(i)] != want[i]) {
            return ::testing::AssertionFailure()
                   << "world " << world << " rank " << r << " unit " << u << " kind "
                   << static_cast<int>(kind) << " element " << range.begin + i << ": "
                   << got[static_cast<size_t>(i)] << " != " << want[i];
          }
        }
        if (got.back() != -7.0f) return ::testing::AssertionFailure() << "wrote past the range";
      }
    }
  }
  return ::testing::AssertionSuccess();
}

// Random ranges of every unit and kind read back exactly.
::testing::AssertionResult ReadsRandomRanges(const std::string& dir, const HostState& host) {
  StatusOr<OpenedCheckpoint> ckpt = OpenTrainingCheckpoint(dir);
  if (!ckpt.ok()) return ::testing::AssertionFailure() << ckpt.status().message();
  const ModelLayout layout(ckpt->config);
  StatusOr<CheckpointReader> reader = CheckpointReader::Open(*ckpt, layout);
  if (!reader.ok()) return ::testing::AssertionFailure() << reader.status().message();
  std::mt19937 rng(7);
  for (int trial = 0; trial < 300; ++trial) {
    const int u = static_cast<int>(rng() % static_cast<unsigned>(layout.num_units()));
    const int64_t numel = layout.units()[u].numel;
    int64_t a = static_cast<int64_t>(rng() % static_cast<uint64_t>(numel + 1));
    int64_t b = static_cast<int64_t>(rng() % static_cast<uint64_t>(numel + 1));
    if (a > b) std::swap(a, b);
    const StateKind kind = kKinds[trial % 3];
    std::vector<float> got(static_cast<size_t>(b - a));
    const Status s = reader->Read(u, kind, {a, b}, got.data());
    if (!s.ok()) return ::testing::AssertionFailure() << s.message();
    const float* want = Kind(host, kind).data() + layout.unit_offset(u) + a;
    if (!std::equal(got.begin(), got.end(), want)) {
      return ::testing::AssertionFailure() << "unit " << u << " [" << a << ", " << b << ") differs";
    }
  }
  return ::testing::AssertionSuccess();
}

class ShardedCheckpointTest : public ::testing::Test {
 protected:
  std::string Dir(const std::string& name) const { return tmp_.Join(name); }
  // The version directory a checkpoint path points to.
  std::string DataDir(const std::string& dir) const {
    StatusOr<Checkpoint> c = LoadCheckpoint(dir);
    return c.ok() ? c->data_dir : "";
  }
  std::string ShardPath(const std::string& dir, int rank, int world) const {
    return DataDir(dir) + "/" + ShardFileName(rank, world);
  }
  json ReadMeta(const std::string& dir) const {
    return json::parse(ReadFile(DataDir(dir) + "/meta.json").value());
  }
  void WriteMeta(const std::string& dir, const json& meta) const {
    ASSERT_TRUE(WriteFileDurably(DataDir(dir) + "/meta.json", meta.dump(2)).ok());
  }
  // The one error line Open gives for the checkpoint at `dir` (via evaluate's
  // path: OpenTrainingCheckpoint, then the reader with optimizer state).
  std::string OpenError(const std::string& dir, bool with_optimizer = true) const {
    StatusOr<OpenedCheckpoint> ckpt = OpenTrainingCheckpoint(dir);
    if (!ckpt.ok()) return ckpt.status().message();
    StatusOr<CheckpointReader> r =
        CheckpointReader::Open(*ckpt, ModelLayout(ckpt->config), with_optimizer);
    return r.ok() ? "OK" : r.status().message();
  }

  ScopedTempDir tmp_;
};

TEST_F(ShardedCheckpointTest, LayoutHasUnevenAndEmptyShards) {
  // The premise of the round trips below.
  const ModelLayout layout(TinyConfig());
  bool uneven = false, empty = false;
  for (const Unit& u : layout.units()) {
    uneven |= u.numel % (3 * kAlign) != 0;
    empty |= ShardRange(u.numel, 2, 3).size() == 0;
  }
  EXPECT_TRUE(uneven);
  EXPECT_TRUE(empty);
}

TEST_F(ShardedCheckpointTest, ShardFileAndMeta) {
  const ModelConfig config = TinyConfig();
  const ModelLayout layout(config);
  const HostState host = DistinctState(layout);
  const ShardState shard = ShardOf(layout, host, 1, 3);
  const CheckpointFile file = ShardFile(layout, shard);
  EXPECT_EQ(file.filename, "shard-00001-of-00003.safetensors");
  EXPECT_EQ(file.metadata, (std::map<std::string, std::string>{{"rank", "1"}, {"world_size", "3"}}));
  ASSERT_EQ(file.tensors.size(), 3u * layout.units().size());
  EXPECT_EQ(file.tensors[0].name, "params.stem");
  EXPECT_EQ(file.tensors[layout.units().size()].name, "exp_avg.stem");
  EXPECT_EQ(file.tensors.back().name, "exp_avg_sq.head");
  EXPECT_EQ(file.tensors[0].shape, std::vector<int64_t>{ShardRange(32, 1, 3).size()});
  EXPECT_EQ(ShardFileNames(2), (std::vector<std::string>{"shard-00000-of-00002.safetensors",
                                                         "shard-00001-of-00002.safetensors"}));

  const json meta = ShardedMeta(config, 3);
  EXPECT_EQ(meta["format"], "sharded");
  EXPECT_EQ(meta["world_size"], 3);
  EXPECT_EQ(meta["strategy"], "deepspeed_stage_3");
  EXPECT_EQ(meta["shards"], json(ShardFileNames(3)));
  EXPECT_EQ(meta["units"].size(), layout.units().size());
  for (const char* key : {"config", "vocab", "step", "tokens", "seed", "rng", "best_val_loss",
                          "data", "options", "format_version"}) {
    EXPECT_TRUE(meta.contains(key)) << key;
  }
}

TEST_F(ShardedCheckpointTest, SingleFormatMetaSaysSingle) {
  const ModelConfig config = TinyConfig();
  ASSERT_TRUE(SaveSingle(Dir("single"), config, DistinctState(ModelLayout(config))).ok());
  EXPECT_EQ(ReadMeta(Dir("single"))["format"], "single");
  EXPECT_EQ(ReadMeta(Dir("single"))["world_size"], 1);
  StatusOr<OpenedCheckpoint> ckpt = OpenTrainingCheckpoint(Dir("single"));
  ASSERT_TRUE(ckpt.ok());
  EXPECT_EQ(ckpt->format, CheckpointFormat::kSingle);
  // Old checkpoints have no "format": single.
  json meta = ReadMeta(Dir("single"));
  meta.erase("format");
  WriteMeta(Dir("single"), meta);
  ckpt = OpenTrainingCheckpoint(Dir("single"));
  ASSERT_TRUE(ckpt.ok());
  EXPECT_EQ(ckpt->format, CheckpointFormat::kSingle);
  EXPECT_EQ(OpenError(Dir("single")), "OK");
}

TEST_F(ShardedCheckpointTest, RoundTripThreeRanksReadAtAnyWorldSize) {
  for (const ModelConfig& config : {TinyConfig(), SmallConfig()}) {
    SCOPED_TRACE(config.ToString());
    const std::string dir = Dir("sharded-" + std::to_string(config.n_embd));
    const HostState host = DistinctState(ModelLayout(config));
    const Status s = SaveSharded(dir, config, host, 3);
    ASSERT_TRUE(s.ok()) << s.message();
    EXPECT_TRUE(fs::is_symlink(dir));
    std::set<std::string> files;
    for (const auto& e : fs::directory_iterator(DataDir(dir))) files.insert(e.path().filename());
    EXPECT_EQ(files, (std::set<std::string>{"meta.json", "shard-00000-of-00003.safetensors",
                                            "shard-00001-of-00003.safetensors",
                                            "shard-00002-of-00003.safetensors"}));
    StatusOr<OpenedCheckpoint> ckpt = OpenTrainingCheckpoint(dir);
    ASSERT_TRUE(ckpt.ok()) << ckpt.status().message();
    EXPECT_EQ(ckpt->format, CheckpointFormat::kSharded);
    EXPECT_EQ(ckpt->world_size, 3);
    EXPECT_EQ(ckpt->state.step, 7);
    EXPECT_EQ(ckpt->data_path, "/data/input.txt");
    for (int world : {1, 2, 3, 4, 7}) EXPECT_TRUE(ReadsBackAtWorld(dir, host, world));
    EXPECT_TRUE(ReadsRandomRanges(dir, host));
    // The whole state through ReadCheckpointTensors (resume, evaluate).
    StatusOr<HostState> back = ReadHostState(*ckpt);
    ASSERT_TRUE(back.ok()) << back.status().message();
    EXPECT_EQ(back->params, host.params);
    EXPECT_EQ(back->exp_avg, host.exp_avg);
    EXPECT_EQ(back->exp_avg_sq, host.exp_avg_sq);
  }
}

TEST_F(ShardedCheckpointTest, ReshardingKeepsTheState) {
  // single -> 3 ranks -> 2 ranks -> 5 ranks: every step reads back exactly.
  const ModelConfig config = SmallConfig();
  const HostState host = DistinctState(ModelLayout(config));
  ASSERT_TRUE(SaveSingle(Dir("w1"), config, host).ok());
  ASSERT_TRUE(Reshard(Dir("w1"), Dir("w3"), 3).ok());
  ASSERT_TRUE(Reshard(Dir("w3"), Dir("w2"), 2).ok());
  ASSERT_TRUE(Reshard(Dir("w2"), Dir("w5"), 5).ok());
  for (const char* name : {"w1", "w3", "w2", "w5"}) {
    SCOPED_TRACE(name);
    for (int world : {1, 2, 4}) EXPECT_TRUE(ReadsBackAtWorld(Dir(name), host, world));
  }
}

TEST_F(ShardedCheckpointTest, SingleFormatReadsByRanges) {
  for (const ModelConfig& config : {TinyConfig(), SmallConfig()}) {
    SCOPED_TRACE(config.ToString());
    const std::string dir = Dir("single-" + std::to_string(config.n_embd));
    const HostState host = DistinctState(ModelLayout(config));
    ASSERT_TRUE(SaveSingle(dir, config, host).ok());
    for (int world : {1, 2, 3, 4}) EXPECT_TRUE(ReadsBackAtWorld(dir, host, world));
    EXPECT_TRUE(ReadsRandomRanges(dir, host));
  }
  // Every range of the smallest unit, padding (zeros) included.
  const ModelConfig config = TinyConfig();
  const ModelLayout layout(config);
  const HostState host = DistinctState(layout);
  StatusOr<OpenedCheckpoint> ckpt = OpenTrainingCheckpoint(Dir("single-1"));
  ASSERT_TRUE(ckpt.ok());
  StatusOr<CheckpointReader> reader = CheckpointReader::Open(*ckpt, layout);
  ASSERT_TRUE(reader.ok());
  const int64_t numel = layout.units()[0].numel;
  for (int64_t a = 0; a <= numel; ++a) {
    for (int64_t b = a; b <= numel; ++b) {
      std::vector<float> got(static_cast<size_t>(b - a), -1.0f);
      ASSERT_TRUE(reader->Read(0, StateKind::kExpAvg, {a, b}, got.data()).ok());
      ASSERT_TRUE(std::equal(got.begin(), got.end(), host.exp_avg.begin() + a)) << a << ", " << b;
    }
  }
}

TEST_F(ShardedCheckpointTest, ReadRefusesBadRequests) {
  const ModelConfig config = TinyConfig();
  const ModelLayout layout(config);
  ASSERT_TRUE(SaveSharded(Dir("s"), config, DistinctState(layout), 3).ok());
  StatusOr<OpenedCheckpoint> ckpt = OpenTrainingCheckpoint(Dir("s"));
  ASSERT_TRUE(ckpt.ok());
  StatusOr<CheckpointReader> reader = CheckpointReader::Open(*ckpt, layout, false);
  ASSERT_TRUE(reader.ok());
  std::vector<float> buf(64);
  const std::string where = "checkpoint '" + Dir("s") + "': ";
  EXPECT_EQ(reader->Read(9, StateKind::kParams, {0, 1}, buf.data()).message(), where + "no unit 9");
  EXPECT_EQ(reader->Read(0, StateKind::kParams, {0, 33}, buf.data()).message(),
            where + "elements [0, 33) lie outside unit 'stem' (32 elements)");
  EXPECT_EQ(reader->Read(0, StateKind::kParams, {5, 4}, buf.data()).message(),
            where + "elements [5, 4) lie outside unit 'stem' (32 elements)");
  EXPECT_EQ(reader->Read(0, StateKind::kExpAvg, {0, 1}, buf.data()).message(),
            where + "optimizer state was not opened for reading");
  EXPECT_TRUE(reader->Read(0, StateKind::kParams, {3, 3}, buf.data()).ok());
}

// ---- Every broken sharded checkpoint: one line naming the file. ----

class BrokenShardedTest : public ShardedCheckpointTest {
 protected:
  void SetUp() override {
    ASSERT_TRUE(SaveSharded(dir_, TinyConfig(), DistinctState(ModelLayout(TinyConfig())), 3).ok());
    ASSERT_EQ(OpenError(dir_), "OK");
  }
  // The error must be one line holding every keyword.
  void ExpectError(const std::vector<std::string>& keywords, bool with_optimizer = true) {
    const std::string e = OpenError(dir_, with_optimizer);
    EXPECT_NE(e, "OK");
    EXPECT_EQ(e.find('\n'), std::string::npos) << e;
    for (const std::string& k : keywords) EXPECT_NE(e.find(k), std::string::npos) << k << " in: " << e;
  }
  const std::string dir_ = tmp_.Join("ckpt");
};

TEST_F(BrokenShardedTest, MissingShardFile) {
  const std::string path = ShardPath(dir_, 1, 3);
  fs::remove(path);
  ExpectError({path, "does not exist"});
  ExpectError({path, "does not exist"}, /*with_optimizer=*/false);
}

TEST_F(BrokenShardedTest, ShardOfAnotherWorldSize) {
  // Rank 1's file of a 4-rank save under rank 1-of-3's name.
  ASSERT_TRUE(SaveSharded(tmp_.Join("w4"), TinyConfig(), DistinctState(ModelLayout(TinyConfig())), 4).ok());
  fs::copy_file(ShardPath(tmp_.Join("w4"), 1, 4), ShardPath(dir_, 1, 3),
                fs::copy_options::overwrite_existing);
  ExpectError({ShardPath(dir_, 1, 3), "__metadata__ says rank 1 of 4",
               "lists it as rank 1 of 3"});
}

TEST_F(BrokenShardedTest, ShardWithWrongTensorLength) {
  // Right metadata, but the tensors of another world layout.
  const std::string path = ShardPath(dir_, 1, 3);
  ASSERT_TRUE(RewriteEachTensor(path, [](RawTensor* t) {
                if (t->name == "params.blocks.0") {
                  t->shape = {t->shape[0] - 16};
                  t->bytes.resize(t->bytes.size() - 64);
                }
              }).ok());
  ExpectError({path, "'params.blocks.0'", "shape", "rank 1's slice of unit 'blocks.0'"});
}

TEST_F(BrokenShardedTest, ShardMetadataDisagreesWithItsName) {
  fs::copy_file(ShardPath(dir_, 2, 3), ShardPath(dir_, 1, 3), fs::copy_options::overwrite_existing);
  ExpectError({ShardPath(dir_, 1, 3), "rank 2 of 3", "rank 1 of 3"});
}

TEST_F(BrokenShardedTest, ShardWithoutMetadata) {
  const std::string path = ShardPath(dir_, 0, 3);
  ASSERT_TRUE(RewriteSafetensors(path, [](std::vector<RawTensor>*,
                                          std::map<std::string, std::string>* m) { m->clear(); })
                  .ok());
  ExpectError({path, "__metadata__ lacks"});
}

TEST_F(BrokenShardedTest, MissingTensor) {
  const std::string path = ShardPath(dir_, 0, 3);
  ASSERT_TRUE(RewriteEachTensor(path, [](RawTensor* t) {
                if (t->name == "exp_avg.head") t->name.clear();
              }).ok());
  ExpectError({path, "missing tensor 'exp_avg.head'"});
}

TEST_F(BrokenShardedTest, ExtraTensor) {
  const std::string path = ShardPath(dir_, 2, 3);
  ASSERT_TRUE(RewriteSafetensors(path, [](std::vector<RawTensor>* tensors,
                                          std::map<std::string, std::string>*) {
                tensors->push_back({"params.bonus", {1}, TensorDType::kF32, std::vector<char>(4)});
              }).ok());
  ExpectError({path, "holds 13 tensors", "a shard of 4 units implies 12"});
}

TEST_F(BrokenShardedTest, TensorWithWrongDtype) {
  const std::string path = ShardPath(dir_, 0, 3);
  ASSERT_TRUE(RewriteEachTensor(path, [](RawTensor* t) {
                if (t->name == "exp_avg_sq.stem") {
                  t->dtype = TensorDType::kF16;
                  t->bytes.resize(t->bytes.size() / 2);
                }
              }).ok());
  ExpectError({path, "'exp_avg_sq.stem'", "F16"});
}

TEST_F(BrokenShardedTest, TruncatedShard) {
  const std::string path = ShardPath(dir_, 1, 3);
  fs::resize_file(path, fs::file_size(path) - 8);
  ExpectError({path, "truncated"});
}

TEST_F(BrokenShardedTest, UnitsTableDisagreesWithConfig) {
  json meta = ReadMeta(dir_);
  meta["units"][1]["numel"] = 272;
  WriteMeta(dir_, meta);
  ExpectError({dir_, "meta.json", "'units' entry 1 ('blocks.0')", "disagrees"});
  meta["units"].erase(2);
  WriteMeta(dir_, meta);
  ExpectError({dir_, "meta.json", "'units' lists 3 units", "implies 4"});
  meta.erase("units");
  WriteMeta(dir_, meta);
  ExpectError({dir_, "meta.json", "lacks the 'units' table"});
}

TEST_F(BrokenShardedTest, ConfigDisagreesWithShards) {
  // Caught by the units table, before any shard is looked at.
  json meta = ReadMeta(dir_);
  meta["config"]["n_layer"] = 3;
  WriteMeta(dir_, meta);
  ExpectError({dir_, "meta.json", "'units' lists 4 units", "implies 5"});
}

TEST_F(BrokenShardedTest, ShardListWrong) {
  json meta = ReadMeta(dir_);
  meta["shards"][2] = "other.safetensors";
  WriteMeta(dir_, meta);
  ExpectError({dir_, "meta.json", "'shards' entry 2", "shard-00002-of-00003.safetensors"});
  meta["shards"].erase(2);
  WriteMeta(dir_, meta);
  ExpectError({dir_, "meta.json", "'shards' lists 2 files", "world_size is 3"});
  meta.erase("shards");
  WriteMeta(dir_, meta);
  ExpectError({dir_, "meta.json", "lacks the 'shards' list"});
}

TEST_F(BrokenShardedTest, WorldSizeOrFormatWrong) {
  json meta = ReadMeta(dir_);
  meta["world_size"] = 0;
  WriteMeta(dir_, meta);
  ExpectError({dir_, "meta.json 'world_size' 0"});
  meta["world_size"] = "3";
  WriteMeta(dir_, meta);
  ExpectError({dir_, "meta.json 'world_size' is not an integer"});
  meta["world_size"] = 3;
  meta["format"] = "zipped";
  WriteMeta(dir_, meta);
  ExpectError({dir_, "meta.json 'format'", "zipped", "single", "sharded"});
  meta["format"] = "single";  // a sharded directory read as single
  WriteMeta(dir_, meta);
  ExpectError({"model.safetensors", "does not exist"});
}

// ---- Crashes during a sharded save leave the previous checkpoint. ----

int RunInChild(const std::function<int()>& body) {
  std::fflush(nullptr);
  const pid_t pid = ::fork();
  if (pid < 0) std::abort();
  if (pid == 0) ::_exit(body());
  int status = 0;
  if (::waitpid(pid, &status, 0) != pid) std::abort();
  return status;
}

TEST_F(ShardedCheckpointTest, CrashDuringShardedSaveKeepsPreviousCheckpoint) {
  const ModelConfig config = TinyConfig();
  const ModelLayout layout(config);
  const HostState a = DistinctState(layout);
  HostState b = a;
  for (float& x : b.params) x = -x;
  const std::string dir = Dir("ckpt");
  ASSERT_TRUE(SaveSharded(dir, config, a, 3).ok());
  // One process writing all three shards, then meta.json: 4 files.
  for (int k = 1; k <= 4; ++k) {
    SCOPED_TRACE("crash after file " + std::to_string(k));
    const int status = RunInChild([&] {
      ::setenv(kCrashDuringSaveEnv, std::to_string(k).c_str(), 1);
      return SaveSharded(dir, config, b, 3).ok() ? 0 : 1;
    });
    ASSERT_TRUE(WIFEXITED(status));
    EXPECT_EQ(WEXITSTATUS(status), kCrashDuringSaveExitCode);
    EXPECT_TRUE(ReadsBackAtWorld(dir, a, 2));
  }
  // Three writing processes, one of which dies after writing its shard: the
  // "all-reduce" fails, rank 0 aborts.
  for (int crashing = 0; crashing < 3; ++crashing) {
    SCOPED_TRACE("rank " + std::to_string(crashing) + " dies");
    StatusOr<PendingCheckpoint> pending = BeginCheckpoint(dir);
    ASSERT_TRUE(pending.ok());
    bool all_ok = true;
    for (int r = 0; r < 3; ++r) {
      const int status = RunInChild([&] {
        if (r == crashing) ::setenv(kCrashDuringSaveEnv, "1", 1);
        const ShardState shard = ShardOf(layout, b, r, 3);
        return WriteCheckpointFile(pending->version_dir, ShardFile(layout, shard)).ok() ? 0 : 1;
      });
      all_ok &= WIFEXITED(status) && WEXITSTATUS(status) == 0;
    }
    EXPECT_FALSE(all_ok);
    AbortCheckpoint(*pending);
    EXPECT_TRUE(ReadsBackAtWorld(dir, a, 1));
  }
  // Without a crash the new version goes in, and the leftovers are gone.
  ASSERT_TRUE(SaveSharded(dir, config, b, 3).ok());
  EXPECT_TRUE(ReadsBackAtWorld(dir, b, 4));
  EXPECT_EQ(std::distance(fs::directory_iterator(tmp_.path()), fs::directory_iterator()), 2);
}

}  // namespace
}  // namespace mingpt::cli_test
