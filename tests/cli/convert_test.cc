// `mingpt convert` and the commands that read checkpoints, on both formats.
// A sharded checkpoint is made without MPI: the shared tiny run's single
// checkpoint is read and re-saved sharded over 3 "ranks" by this process.
//   - convert of a single checkpoint gives exactly its model.safetensors'
//     tensors; of a sharded one, the same weights;
//   - evaluate, sample and info read a sharded checkpoint as the single one,
//     and a resume from either continues identically;
//   - convert refuses a bad checkpoint or an unwritable output with one line
//     and never leaves a half-written output;
//   - PyTorch loads the converted weights of a sharded checkpoint into the
//     seed model (strict=True) and evaluates the loss `mingpt evaluate` does.
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "cli/sharded_checkpoint.h"
#include "cli/trained_checkpoint.h"
#include "io/safetensors.h"

namespace mingpt::cli_test {
namespace {

namespace fs = std::filesystem;

// The two files hold the same tensors: names, dtypes, shapes and bytes.
::testing::AssertionResult SameTensors(const std::string& a_path, const std::string& b_path) {
  StatusOr<SafetensorsFile> a = SafetensorsFile::Open(a_path);
  StatusOr<SafetensorsFile> b = SafetensorsFile::Open(b_path);
  if (!a.ok()) return ::testing::AssertionFailure() << a.status().message();
  if (!b.ok()) return ::testing::AssertionFailure() << b.status().message();
  if (a->names() != b->names()) return ::testing::AssertionFailure() << "different tensor names";
  for (const TensorInfo& ta : a->tensors()) {
    const TensorInfo* tb = b->Find(ta.name);
    if (tb->dtype != ta.dtype || tb->shape != ta.shape) {
      return ::testing::AssertionFailure() << ta.name << ": different dtype or shape";
    }
    std::vector<char> bytes_a(ta.byte_size()), bytes_b(tb->byte_size());
    if (!a->ReadRaw(ta, bytes_a.data()).ok() || !b->ReadRaw(*tb, bytes_b.data()).ok()) {
      return ::testing::AssertionFailure() << ta.name << ": read failed";
    }
    if (bytes_a != bytes_b) return ::testing::AssertionFailure() << ta.name << ": different values";
  }
  return ::testing::AssertionSuccess();
}

// Names in `dir` (to find temporary files left behind).
std::vector<std::string> ListDir(const std::string& dir) {
  std::vector<std::string> names;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec)) names.push_back(e.path().filename());
  return names;
}

class ConvertTest : public TrainedCheckpointTest {
 protected:
  // The shared checkpoint re-saved sharded over `world` ranks at <tmp>/<name>.
  std::string ShardedCopy(const std::string& name, int world = 3) {
    const std::string dst = tmp_ / name;
    const Status s = Reshard(shared_last_, dst, world);
    EXPECT_TRUE(s.ok()) << s.message();
    return dst;
  }
  ProcessResult Convert(const std::string& ckpt, const std::string& out) const {
    return Mingpt({"convert", ckpt, out});
  }
};

TEST_F(ConvertTest, SingleCheckpointGivesItsModelSafetensors) {
  const std::string out = tmp_ / "weights.safetensors";
  const ProcessResult r = Convert(shared_last_, out);
  ASSERT_TRUE(Succeeded(r));
  EXPECT_NE(r.out.find("single"), std::string::npos) << r.out;
  EXPECT_TRUE(SameTensors(shared_last_ + "/model.safetensors", out));
}

TEST_F(ConvertTest, ShardedCheckpointGivesTheSameWeights) {
  const std::string sharded = ShardedCopy("sharded");
  ASSERT_TRUE(Exists(sharded + "/shard-00002-of-00003.safetensors"));
  ASSERT_FALSE(Exists(sharded + "/model.safetensors"));
  const std::string out = tmp_ / "weights.safetensors";
  const ProcessResult r = Convert(sharded, out);
  ASSERT_TRUE(Succeeded(r));
  EXPECT_NE(r.out.find("sharded checkpoint of 3 ranks"), std::string::npos) << r.out;
  EXPECT_TRUE(SameTensors(shared_last_ + "/model.safetensors", out));
  // An existing output is replaced.
  const std::string sharded5 = ShardedCopy("sharded5", 5);
  ASSERT_TRUE(Succeeded(Convert(sharded5, out)));
  EXPECT_TRUE(SameTensors(shared_last_ + "/model.safetensors", out));
  for (const std::string& name : ListDir(tmp_.path())) {
    EXPECT_EQ(name.find(".tmp-"), std::string::npos) << "a temporary file was left: " << name;
  }
}

TEST_F(ConvertTest, EvaluateSampleAndInfoReadShardedCheckpoints) {
  const std::string sharded = ShardedCopy("sharded");
  auto with_json = [](std::vector<std::string> args) {
    args.push_back("--json");
    return args;
  };
  const ProcessResult single_eval = Mingpt(with_json(EvaluateArgs(shared_last_)));
  const ProcessResult sharded_eval = Mingpt(with_json(EvaluateArgs(sharded)));
  ASSERT_TRUE(Succeeded(single_eval));
  ASSERT_TRUE(Succeeded(sharded_eval));
  const auto a = nlohmann::json::parse(single_eval.out), b = nlohmann::json::parse(sharded_eval.out);
  EXPECT_EQ(a["loss"], b["loss"]);
  EXPECT_EQ(a["windows"], b["windows"]);

  const ProcessResult single_sample = Mingpt(SampleArgs(shared_last_, "the", {"--seed", "5"}));
  const ProcessResult sharded_sample = Mingpt(SampleArgs(sharded, "the", {"--seed", "5"}));
  ASSERT_TRUE(Succeeded(single_sample));
  ASSERT_TRUE(Succeeded(sharded_sample));
  EXPECT_EQ(single_sample.out, sharded_sample.out);

  const ProcessResult single_info = Mingpt(with_json(InfoArgs(shared_last_)));
  const ProcessResult sharded_info = Mingpt(with_json(InfoArgs(sharded)));
  ASSERT_TRUE(Succeeded(single_info));
  ASSERT_TRUE(Succeeded(sharded_info));
  auto i = nlohmann::json::parse(single_info.out), j = nlohmann::json::parse(sharded_info.out);
  i.erase("checkpoint");
  j.erase("checkpoint");
  EXPECT_EQ(i, j);
}

TEST_F(ConvertTest, ResumeFromShardedContinuesAsFromSingle) {
  const std::string sharded = ShardedCopy("sharded");
  ASSERT_TRUE(Succeeded(Mingpt(ResumeArgs(shared_last_, "from_single"))));
  ASSERT_TRUE(Succeeded(Mingpt(ResumeArgs(sharded, "from_sharded"))));
  for (const char* file : {"model.safetensors", "optimizer.safetensors"}) {
    EXPECT_TRUE(SameTensors(tmp_ / ("from_single/checkpoints/last/" + std::string(file)),
                            tmp_ / ("from_sharded/checkpoints/last/" + std::string(file))))
        << file;
  }
}

TEST_F(ConvertTest, BadCheckpointIsRefused) {
  const std::string out = tmp_ / "out.safetensors";
  EXPECT_TRUE(FailsWith(Convert(tmp_ / "nowhere", out), 1, {"nowhere", "does not exist"}));
  const std::string sharded = ShardedCopy("sharded");
  const std::string copy = tmp_ / "copy";
  ASSERT_TRUE(Succeeded(RunProcess({CpPath(), "-rL", sharded, copy})));
  fs::remove(copy + "/shard-00001-of-00003.safetensors");
  EXPECT_TRUE(FailsWith(Convert(copy, out), 1,
                        {copy + "/shard-00001-of-00003.safetensors", "does not exist"}));
  // The same error from every command that reads weights.
  EXPECT_TRUE(FailsWith(Mingpt(EvaluateArgs(copy)), 1, {"shard-00001-of-00003.safetensors"}));
  EXPECT_TRUE(FailsWith(Mingpt(SampleArgs(copy)), 1, {"shard-00001-of-00003.safetensors"}));
  EXPECT_TRUE(FailsWith(Mingpt(ResumeArgs(copy, "resumed")), 1,
                        {"shard-00001-of-00003.safetensors"}));
  EXPECT_FALSE(Exists(tmp_ / "resumed"));
  EXPECT_FALSE(Exists(out));
}

TEST_F(ConvertTest, UnwritableOutputIsRefusedWithNothingLeft) {
  const std::string missing_dir = tmp_ / "no/such/dir/out.safetensors";
  EXPECT_TRUE(FailsWith(Convert(shared_last_, missing_dir), 1, {missing_dir}));
  const std::string dir_out = tmp_ / "a_directory";
  fs::create_directory(dir_out);
  EXPECT_TRUE(FailsWith(Convert(shared_last_, dir_out), 1, {dir_out, "is a directory"}));
  EXPECT_TRUE(ListDir(dir_out).empty());
  if (::geteuid() != 0) {  // root writes anywhere
    const std::string locked = tmp_ / "locked";
    fs::create_directory(locked);
    ::chmod(locked.c_str(), 0555);
    EXPECT_TRUE(FailsWith(Convert(shared_last_, locked + "/out.safetensors"), 1, {locked}));
    ::chmod(locked.c_str(), 0755);
    EXPECT_TRUE(ListDir(locked).empty());
  }
  // An existing output is kept whole when the conversion fails.
  const std::string out = tmp_ / "kept.safetensors";
  WriteText(out, "previous contents");
  EXPECT_TRUE(FailsWith(Convert(tmp_ / "nowhere", out), 1, {"nowhere"}));
  EXPECT_EQ(ReadText(out), "previous contents");
}

// The output replaces a regular file only: never a FIFO or device (which the
// rename would turn into a file), nor a file of the checkpoint itself.
TEST_F(ConvertTest, OutputThatIsNotAFileOrIsTheCheckpointIsRefused) {
  const std::string fifo = tmp_ / "fifo";
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  EXPECT_TRUE(FailsWith(Convert(shared_last_, fifo), 1, {fifo, "not a regular file"}));
  EXPECT_TRUE(fs::is_fifo(fifo));
  const std::string ckpt = CopyCheckpoint("ckpt");
  const std::string meta = ReadText(ckpt + "/meta.json");
  EXPECT_TRUE(FailsWith(Convert(ckpt, ckpt + "/meta.json"), 1, {"inside the checkpoint"}));
  EXPECT_TRUE(FailsWith(Convert(ckpt, ckpt + "/../ckpt/new.safetensors"), 1, {"inside the checkpoint"}));
  EXPECT_EQ(ReadText(ckpt + "/meta.json"), meta);
  EXPECT_FALSE(Exists(ckpt + "/new.safetensors"));
  EXPECT_TRUE(Succeeded(Convert(ckpt, tmp_ / "ckpt.safetensors")));  // beside it is fine
}

TEST_F(ConvertTest, CommandLine) {
  const ProcessResult help = Mingpt({"convert", "--help"});
  ASSERT_TRUE(Succeeded(help));
  EXPECT_TRUE(help.err.empty());
  EXPECT_NE(help.out.find("checkpoint"), std::string::npos) << help.out;
  EXPECT_NE(help.out.find("output"), std::string::npos) << help.out;
  const ProcessResult top = Mingpt({"--help"});
  ASSERT_TRUE(Succeeded(top));
  EXPECT_NE(top.out.find("convert"), std::string::npos);
  EXPECT_TRUE(FailsWith(Mingpt({"convert"}), 2, {}));
  EXPECT_TRUE(FailsWith(Mingpt({"convert", shared_last_}), 2, {"output"}));
  EXPECT_TRUE(FailsWith(Mingpt({"convertt"}), 2, {"unknown command", "convert"}));
}

bool HaveTorch() {
  return std::system("/usr/bin/python3 -c 'import torch' >/dev/null 2>&1") == 0;
}

TEST_F(ConvertTest, PyTorchLoadsConvertedShardedCheckpoint) {
  if (!HaveTorch()) GTEST_SKIP() << "/usr/bin/python3 cannot import torch (python3-torch)";
  const std::string sharded = ShardedCopy("sharded");
  const std::string out = tmp_ / "weights.safetensors";
  ASSERT_TRUE(Succeeded(Convert(sharded, out)));
  std::vector<std::string> eval = EvaluateArgs(sharded);
  eval.push_back("--json");
  const ProcessResult ours = Mingpt(eval);
  ASSERT_TRUE(Succeeded(ours));
  RunOptions o;
  o.timeout_s = 300;
  const ProcessResult torch = RunProcess(
      {"/usr/bin/python3", MINGPT_SOURCE_DIR "/tests/reference/evaluate_checkpoint.py", sharded,
       data_, "--weights", out},
      o);
  ASSERT_TRUE(Succeeded(torch)) << "PyTorch failed to load the converted weights";
  const auto a = nlohmann::json::parse(ours.out), b = nlohmann::json::parse(torch.out);
  EXPECT_EQ(a["windows"], b["windows"]);
  const double la = a["loss"].get<double>(), lb = b["loss"].get<double>();
  EXPECT_NEAR(la, lb, 1e-5 * lb) << "mingpt " << la << " vs PyTorch " << lb;
}

}  // namespace
}  // namespace mingpt::cli_test
