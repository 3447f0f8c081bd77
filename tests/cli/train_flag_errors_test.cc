// `mingpt train` refuses impossible models and unsupported or unknown flags
// with one error line (exit 1; 2 for command-line parse errors) and leaves no
// run directory; `evaluate` and `sample` refuse an --accelerator they cannot
// use with the same lines.
#include <string>
#include <tuple>

#include "cli/cli_fixture.h"
#include "cli/trained_checkpoint.h"
#include "train/accelerator.h"

namespace mingpt::cli_test {
namespace {

using TrainFlagTest = CliTest;

TEST_F(TrainFlagTest, TinyModelTrains) {
  // The baseline every refusal below departs from by one flag.
  const ProcessResult r = Train("ok_run");
  ASSERT_TRUE(Succeeded(r));
  EXPECT_TRUE(Exists(tmp_ / "ok_run/checkpoints/last/meta.json"));
  EXPECT_TRUE(Exists(tmp_ / "ok_run/metrics.csv"));
}

TEST_F(TrainFlagTest, EnableCheckpointingFalseSavesNothing) {
  // Lightning's flag: the run trains and logs, and writes no checkpoint.
  const ProcessResult r = Train("no_ckpt", {{"--enable_checkpointing", "false"}});
  ASSERT_TRUE(Succeeded(r)) << r.Describe();
  EXPECT_TRUE(Exists(tmp_ / "no_ckpt/metrics.csv"));
  EXPECT_FALSE(Exists(tmp_ / "no_ckpt/checkpoints"));
  EXPECT_EQ(r.out.find("checkpoints:"), std::string::npos) << r.out;
  ExpectTrainRefused({{"--enable_checkpointing", "sometimes"}}, 2, {"enable_checkpointing"});
}

TEST_F(TrainFlagTest, EmbdNotDivisibleByHead) {
  ExpectTrainRefused({{"--n_embd", "16"}, {"--n_head", "3"}}, 1, {"divisible", "n_head"});
}

// Zero and negative sizes, one test per (flag, value).
class NonPositiveSizeTest
    : public CliTest,
      public ::testing::WithParamInterface<std::tuple<std::string, std::string>> {};

TEST_P(NonPositiveSizeTest, Refused) {
  const auto& [name, value] = GetParam();
  ExpectTrainRefused({{"--" + name, value}}, 1, {name, "positive"});
}

INSTANTIATE_TEST_SUITE_P(
    TrainFlags, NonPositiveSizeTest,
    ::testing::Combine(::testing::Values("n_layer", "n_head", "n_embd", "block_size", "batch_size"),
                       ::testing::Values("0", "-1")),
    [](const ::testing::TestParamInfo<NonPositiveSizeTest::ParamType>& info) {
      const std::string& v = std::get<1>(info.param);
      return std::get<0>(info.param) + (v == "0" ? "_zero" : "_negative");
    });

// Numbers that parse but mean nothing: infinities and NaN, negative rates,
// counts past what an int holds, threads and ranks no machine runs.
class MeaninglessNumberTest
    : public CliTest,
      public ::testing::WithParamInterface<std::tuple<std::string, std::string>> {};

TEST_P(MeaninglessNumberTest, Refused) {
  const auto& [name, value] = GetParam();
  ExpectTrainRefused({{"--" + name, value}}, 1, {"--" + name});
}

INSTANTIATE_TEST_SUITE_P(
    TrainFlags, MeaninglessNumberTest,
    ::testing::Values(std::tuple{"learning_rate", "inf"}, std::tuple{"learning_rate", "nan"},
                      std::tuple{"weight_decay", "nan"}, std::tuple{"weight_decay", "-1"},
                      std::tuple{"warmup_tokens", "-5"}, std::tuple{"warmup_tokens", "nan"},
                      std::tuple{"limit_val_batches", "inf"},
                      std::tuple{"limit_train_batches", "1e300"},
                      std::tuple{"val_check_interval", "inf"},
                      std::tuple{"gradient_clip_val", "inf"},
                      std::tuple{"num_threads", "100000"}),
    [](const ::testing::TestParamInfo<MeaninglessNumberTest::ParamType>& info) {
      std::string v = std::get<1>(info.param);
      for (char& c : v) c = std::isalnum(static_cast<unsigned char>(c)) ? c : '_';
      return std::get<0>(info.param) + "_" + v;
    });

TEST_F(TrainFlagTest, ModelTypeWithSizes) {
  ExpectTrainRefused({{"--model_type", "gpt-nano"}, {"--n_head", ""}, {"--n_embd", ""}}, 1,
                     {"--model_type", "--n_layer"});
}

TEST_F(TrainFlagTest, NoGpus) {
  ExpectTrainRefused({{"--gpus", "0"}}, 1, {"--gpus must be positive"});
}

TEST_F(TrainFlagTest, NegativeSeed) {
  ExpectTrainRefused({{"--seed", "-1"}}, 2, {"--seed", "must be >= 0, got -1"});
}

// An empty path would read as the flag not given (the default corpus, a
// fresh run directory, no resume).
TEST_F(TrainFlagTest, EmptyPathsAreRefused) {
  const std::string root = tmp_ / "refused_run";
  for (const std::string flag : {"--data", "--default_root_dir", "--ckpt_path", "--offload_dir"}) {
    std::vector<std::string> args = TinyTrainArgs(data_, root, {{flag, ""}});  // drops it
    args.insert(args.end(), {flag, ""});
    const ProcessResult r = Mingpt(args);
    EXPECT_TRUE(FailsWith(r, 2, {flag, "must not be empty"}));
    EXPECT_FALSE(Exists(root)) << r.Describe();
  }
}

TEST_F(TrainFlagTest, MoreRanksThanTheMachineRuns) {
  ExpectTrainRefused({{"--devices", "100000"}}, 1, {"100000 ranks", "per core"});
}

TEST_F(TrainFlagTest, DropoutAboveOne) {
  ExpectTrainRefused({{"--dropout", "1.5"}}, 1, {"dropout", "[0, 1)"});
}

TEST_F(TrainFlagTest, UnknownFlag) {
  ExpectTrainRefused({{"--no_such_flag", "3"}}, 2, {"--no_such_flag"});
}

TEST_F(TrainFlagTest, UnknownModelType) {
  ExpectTrainRefused({{"--model_type", "gpt-enormous"}}, 1, {"--model_type", "gpt-enormous"});
}

TEST_F(TrainFlagTest, UnknownStrategy) {
  ExpectTrainRefused({{"--strategy", "telepathy"}}, 1, {"unknown --strategy", "telepathy"});
}

TEST_F(TrainFlagTest, NvmeOffloadNeedsAUsableDirectory) {
  ExpectTrainRefused({{"--strategy", "deepspeed_stage_3_offload_nvme"}}, 1, {"needs --offload_dir"});
  ExpectTrainRefused({{"--strategy", "deepspeed_stage_3_offload_nvme"},
                      {"--offload_dir", tmp_ / "missing"}},
                     1, {"--offload_dir", "is not a directory"});
  ExpectTrainRefused({{"--strategy", "ddp"}, {"--offload_dir", tmp_.path()}}, 1,
                     {"--offload_dir is for --strategy deepspeed_stage_3_offload_nvme"});
  ExpectTrainRefused({{"--strategy", "deepspeed_stage_3_offload_nvme"},
                      {"--offload_dir", tmp_.path()}, {"--offload_params", "gpu"}},
                     1, {"--offload_params must be nvme or cpu"});
}

// A flag the others make meaningless is refused as --offload_dir is, not
// ignored; with what it needs it is taken.
TEST_F(TrainFlagTest, FlagsThatWouldBeIgnoredAreRefused) {
  const std::string nvme = "is for --strategy deepspeed_stage_3_offload_nvme";
  ExpectTrainRefused({{"--offload_params", "cpu"}}, 1, {"--offload_params " + nvme});
  ExpectTrainRefused({{"--offload_buffer_mb", "7"}}, 1, {"--offload_buffer_mb " + nvme});
  ExpectTrainRefused({{"--initial_scale_power", "3"}}, 1,
                     {"--initial_scale_power is for --precision 16"});
  ExpectTrainRefused({{"--strategy", "single_device"}, {"--memory_budget", "1G"}}, 1,
                     {"--memory_budget is for --strategy auto"});
  EXPECT_TRUE(Succeeded(Train("nvme", {{"--strategy", "deepspeed_stage_3_offload_nvme"},
                                       {"--offload_dir", tmp_.path()},
                                       {"--offload_params", "cpu"},
                                       {"--offload_buffer_mb", "7"}})));
  // auto with --offload_dir may choose NVMe offload: its settings apply.
  EXPECT_TRUE(Succeeded(Train("auto", {{"--offload_dir", tmp_.path()},
                                       {"--offload_params", "cpu"},
                                       {"--memory_budget", "1G"}})));
  ASSERT_TRUE(Succeeded(Train("fp16", {{"--precision", "16"}, {"--initial_scale_power", "3"}})));
  // A resumed fp16 run continues with its checkpoint's loss scale.
  const ProcessResult r = Mingpt(TinyTrainArgs(
      data_, tmp_ / "refused_run",
      {{"--ckpt_path", tmp_ / "fp16/checkpoints/last"}, {"--max_steps", "4"},
       {"--initial_scale_power", "5"}}));
  EXPECT_TRUE(FailsWith(r, 1, {"--initial_scale_power", "--ckpt_path"}));
}

// A fraction of the validation batches that rounds to none is refused, as
// Lightning refuses it (0 itself turns validation off).
TEST_F(TrainFlagTest, ValidationFractionOfNoBatch) {
  // The text's 5% val split: 200 characters, 22 windows of 9, 11 batches of 2.
  ExpectTrainRefused({{"--limit_val_batches", "0.05"}}, 1,
                     {"--limit_val_batches 0.05", "none of the 11", "at least 0.091 "});
  EXPECT_TRUE(Succeeded(Train("enough", {{"--limit_val_batches", "0.091"}})));
}

// CLI11 clamps 64-bit values past the type's range (and wraps a minus sign
// after blanks into an unsigned one): they are refused.
TEST_F(TrainFlagTest, OutOfRange64BitValuesAreRefused) {
  ExpectTrainRefused({{"--max_steps", "99999999999999999999"}}, 2,
                     {"--max_steps", "99999999999999999999"});
  ExpectTrainRefused({{"--seed", "18446744073709551616"}}, 2,
                     {"--seed", "at most 18446744073709551615"});
  ExpectTrainRefused({{"--seed", " -1"}}, 2, {"--seed", "must be >= 0"});
  EXPECT_TRUE(Succeeded(Train("largest", {{"--seed", "18446744073709551615"}})));
}

TEST_F(TrainFlagTest, UnknownAccelerator) {
  ExpectTrainRefused({{"--accelerator", "tpu"}}, 1, {"unknown --accelerator", "tpu"});
}

// Without a CUDA device (or a build without CUDA) --gpus and --accelerator
// cuda say which of the two is missing.
TEST_F(TrainFlagTest, CudaWithoutADeviceRefused) {
  if (CudaDevices() > 0) GTEST_SKIP() << "a CUDA device is present: cuda runs here";
  const std::string missing = CudaBuilt() ? "no CUDA device found" : "built without CUDA";
  ExpectTrainRefused({{"--accelerator", "cuda"}}, 1, {"--accelerator cuda", missing});
  ExpectTrainRefused({{"--gpus", "1"}}, 1, {missing});
}

// evaluate and sample take --accelerator as train does, with the same lines;
// sample echoes nothing of its prompt when refused.
using ModelCommandAcceleratorTest = TrainedCheckpointTest;

TEST_F(ModelCommandAcceleratorTest, CpuRuns) {
  std::vector<std::string> evaluate = EvaluateArgs(shared_last_);
  evaluate.insert(evaluate.end(), {"--accelerator", "cpu"});
  const ProcessResult e = Mingpt(evaluate);
  ASSERT_TRUE(Succeeded(e));
  EXPECT_NE(e.out.find("test loss"), std::string::npos) << e.Describe();
  const ProcessResult s = Mingpt(SampleArgs(shared_last_, "the", {"--accelerator", "cpu"}));
  ASSERT_TRUE(Succeeded(s));
  EXPECT_EQ(s.out.rfind("the", 0), 0u) << s.Describe();
}

TEST_F(ModelCommandAcceleratorTest, UnknownAccelerator) {
  std::vector<std::string> evaluate = EvaluateArgs(shared_last_);
  evaluate.insert(evaluate.end(), {"--accelerator", "tpu"});
  EXPECT_TRUE(FailsWith(Mingpt(evaluate), 1, {"unknown --accelerator", "tpu"}));
  const ProcessResult s = Mingpt(SampleArgs(shared_last_, "the", {"--accelerator", "tpu"}));
  EXPECT_TRUE(FailsWith(s, 1, {"unknown --accelerator", "tpu"}));
  EXPECT_EQ(s.out, "") << "the refused prompt was echoed";
}

TEST_F(ModelCommandAcceleratorTest, CudaWithoutADeviceRefused) {
  if (CudaDevices() > 0) GTEST_SKIP() << "a CUDA device is present: cuda runs here";
  const std::string missing = CudaBuilt() ? "no CUDA device found" : "built without CUDA";
  for (const std::string name : {"cuda", "gpu"}) {
    SCOPED_TRACE("--accelerator " + name);
    std::vector<std::string> evaluate = EvaluateArgs(shared_last_);
    evaluate.insert(evaluate.end(), {"--accelerator", name});
    EXPECT_TRUE(FailsWith(Mingpt(evaluate), 1, {"--accelerator " + name, missing}));
    // Also before starting ranks.
    evaluate.insert(evaluate.end(), {"--devices", "2"});
    EXPECT_TRUE(FailsWith(Mingpt(evaluate), 1, {"--accelerator " + name, missing}));
    const ProcessResult s = Mingpt(SampleArgs(shared_last_, "the", {"--accelerator", name}));
    EXPECT_TRUE(FailsWith(s, 1, {"--accelerator " + name, missing}));
    EXPECT_EQ(s.out, "") << "the refused prompt was echoed";
  }
}

TEST_F(TrainFlagTest, GpusWithACpuAcceleratorRefused) {
  ExpectTrainRefused({{"--gpus", "1"}, {"--accelerator", "cpu"}}, 1,
                     {"--gpus", "--accelerator cpu"});
}

TEST_F(TrainFlagTest, SingleDeviceWithTwoDevicesRefused) {
  ExpectTrainRefused({{"--devices", "2"}, {"--strategy", "single_device"}}, 1,
                     {"single_device", "--devices 2"});
}

TEST_F(TrainFlagTest, ZeroDevicesRefused) {
  ExpectTrainRefused({{"--devices", "0"}}, 1, {"--devices must be positive"});
}

TEST_F(TrainFlagTest, InitialScalePowerOutOfRange) {
  ExpectTrainRefused({{"--precision", "16"}, {"--initial_scale_power", "40"}}, 1,
                     {"--initial_scale_power must be in [0, 32]", "40"});
}

TEST_F(TrainFlagTest, PrecisionUnknown) {
  ExpectTrainRefused({{"--precision", "64"}}, 1, {"unknown --precision", "64"});
}

TEST_F(TrainFlagTest, NonNumericLayerCount) {
  ExpectTrainRefused({{"--n_layer", "abc"}}, 2, {"--n_layer", "abc"});
}

// Sizes too large for the data or for memory are refused like any other bad
// flag, before anything is allocated: never an abort. (Both sizes below fail
// any allocation at once: more bytes than a 64-bit address space holds.)
TEST_F(TrainFlagTest, HugeBlockSizeLongerThanData) {
  // block_size + 2 overflows an int: the data-length check must not (UBSan
  // reports it). Refused for the data's length or for memory, either is right.
  const ProcessResult r = Train("refused_run", {{"--block_size", "2147483647"}});
  EXPECT_TRUE(FailsWithOneOf(r, 1, {"block_size", "GiB"}));
  EXPECT_FALSE(Exists(tmp_ / "refused_run"));
}

TEST_F(TrainFlagTest, HugeBatchSizeRefusedNotAborted) {
  // Any one clear line will do (memory, or batch_size): no keyword required.
  ExpectTrainRefused({{"--batch_size", "1000000000"}}, 1, {});
}

TEST_F(TrainFlagTest, NoCommandIsAParseError) {
  EXPECT_TRUE(FailsWith(Mingpt({}), 2, {"command"}));
}

TEST_F(TrainFlagTest, UnknownCommandIsAParseError) {
  EXPECT_TRUE(FailsWith(Mingpt({"frobnicate"}), 2, {"frobnicate"}));
}

}  // namespace
}  // namespace mingpt::cli_test
