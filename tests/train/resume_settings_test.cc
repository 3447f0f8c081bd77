// `mingpt train --ckpt_path` continues the run it resumes: the training
// settings meta.json records (batch size, learning rate, weight decay,
// clipping, accumulation, precision) apply unless given; a flag given with
// another value applies, with one note; a --seed other than the run's is
// refused, as a disagreeing model flag is.
#include <map>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "cli/cli_fixture.h"
#include "common/metrics_csv.h"

namespace mingpt::cli_test {
namespace {

using Flags = std::vector<std::pair<std::string, std::string>>;

// Settings other than the defaults, so that a resume falling back to a
// default shows.
const Flags kSettings = {{"--batch_size", "3"},         {"--learning_rate", "0.002"},
                         {"--weight_decay", "0.05"},    {"--gradient_clip_val", "0.5"},
                         {"--accumulate_grad_batches", "2"}, {"--precision", "bf16"},
                         {"--seed", "7"},               {"--log_every_n_steps", "1"}};

class ResumeSettingsTest : public CliTest {
 protected:
  // Trains `root` with kSettings (and `extra`) for `steps` steps.
  ProcessResult TrainWithSettings(const std::string& root, int steps, Flags extra = {}) const {
    Flags flags = kSettings;
    flags.push_back({"--max_steps", std::to_string(steps)});
    flags.insert(flags.end(), extra.begin(), extra.end());
    return Train(root, flags);
  }
  // Resumes <tmp>/<from>'s last checkpoint into <tmp>/<root> up to step 4,
  // giving no model or training flag but `given`.
  ProcessResult Resume(const std::string& from, const std::string& root,
                       const Flags& given = {}) const {
    Flags flags = {{"--n_layer", ""},   {"--n_head", ""},       {"--n_embd", ""},
                   {"--block_size", ""}, {"--dropout", ""},     {"--batch_size", ""},
                   {"--max_steps", "4"}, {"--log_every_n_steps", "1"},
                   {"--ckpt_path", tmp_ / (from + "/checkpoints/last")}};
    flags.insert(flags.end(), given.begin(), given.end());
    return Train(root, flags);
  }
  static int Count(const std::string& text, const std::string& what) {
    int n = 0;
    for (size_t at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) ++n;
    return n;
  }
};

// A plain resume follows the uninterrupted run step for step: the same
// losses, learning rates and gradient norms, none of the flags' defaults.
TEST_F(ResumeSettingsTest, APlainResumeContinuesTheRecordedSettings) {
  ASSERT_TRUE(Succeeded(TrainWithSettings("whole", 4)));
  ASSERT_TRUE(Succeeded(TrainWithSettings("first", 2)));
  const ProcessResult r = Resume("first", "resumed");
  ASSERT_TRUE(Succeeded(r));
  EXPECT_NE(r.err.find("steps of 6x8 tokens"), std::string::npos)
      << "the global batch is 3 x 2 accumulated\n" << r.Describe();
  EXPECT_EQ(r.err.find("resuming with"), std::string::npos) << r.Describe();
  for (const std::string column : {"train_loss", "lr", "grad_norm"}) {
    const auto whole = test::MetricsCells(tmp_ / "whole", column);
    const auto resumed = test::MetricsCells(tmp_ / "resumed", column);
    ASSERT_EQ(resumed.size(), 2u) << column;
    for (const auto& [step, cell] : resumed) {
      EXPECT_EQ(cell, whole.at(step)) << column << " at step " << step;
    }
  }
}

// Lightning lets a resume change the learning rate or the batch: a flag
// given with another value applies, and rank 0 says so once; a value given
// as recorded (under another name of the same precision) says nothing.
TEST_F(ResumeSettingsTest, AFlagGivenWithAnotherValueAppliesWithOneNote) {
  ASSERT_TRUE(Succeeded(TrainWithSettings("first", 2)));
  const ProcessResult r = Resume("first", "resumed",
                                 {{"--batch_size", "4"},
                                  {"--learning_rate", "0.001"},
                                  {"--precision", "bf16-mixed"},
                                  {"--gradient_clip_val", "0.5"}});
  ASSERT_TRUE(Succeeded(r));
  EXPECT_EQ(Count(r.err, "resuming with --batch_size 4 (the checkpoint trained with 3)\n"), 1)
      << r.Describe();
  const std::string lr =
      "resuming with --learning_rate 0.001 (the checkpoint trained with 0.002)\n";
  EXPECT_EQ(Count(r.err, lr), 1) << r.Describe();
  EXPECT_EQ(Count(r.err, "resuming with"), 2) << r.Describe();
  EXPECT_NE(r.err.find("steps of 8x8 tokens"), std::string::npos) << r.Describe();
}

// A setting meta.json records beyond the flags' first set (the warm-up) is
// restored the same way.
TEST_F(ResumeSettingsTest, ARecordedWarmupIsRestored) {
  ASSERT_TRUE(Succeeded(TrainWithSettings("whole", 4, {{"--warmup_tokens", "100"}})));
  ASSERT_TRUE(Succeeded(TrainWithSettings("first", 2, {{"--warmup_tokens", "100"}})));
  const std::string meta_path = tmp_ / "first/checkpoints/last/meta.json";
  nlohmann::json meta = nlohmann::json::parse(ReadText(meta_path));
  meta["options"]["warmup_tokens"] = 100;
  WriteText(meta_path, meta.dump(2));
  ASSERT_TRUE(Succeeded(Resume("first", "resumed")));
  const auto whole = test::MetricsCells(tmp_ / "whole", "lr");
  const auto resumed = test::MetricsCells(tmp_ / "resumed", "lr");
  ASSERT_EQ(resumed.size(), 2u);
  for (const auto& [step, cell] : resumed) EXPECT_EQ(cell, whole.at(step)) << "step " << step;
}

// The steps to come draw their samples and dropout masks from the run's
// seed: another one is refused (the recorded one is accepted).
TEST_F(ResumeSettingsTest, ASeedOtherThanTheRunsIsRefused) {
  ASSERT_TRUE(Succeeded(TrainWithSettings("first", 2)));
  EXPECT_TRUE(FailsWith(Resume("first", "other", {{"--seed", "8"}}), 1,
                        {"--seed 8", "disagrees with --ckpt_path", "seed 7"}));
  EXPECT_FALSE(Exists(tmp_ / "other"));
  EXPECT_TRUE(Succeeded(Resume("first", "same", {{"--seed", "7"}})));
}

}  // namespace
}  // namespace mingpt::cli_test
