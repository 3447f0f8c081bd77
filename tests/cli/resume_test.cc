// `mingpt train --ckpt_path`: the model comes from the checkpoint; explicit
// model flags that disagree with it are refused; a plain resume continues the
// step count. Nothing is half-written: a refused run creates no run
// directory, and a refused resume into the original run leaves its files
// byte for byte as they were.
#include <filesystem>
#include <map>
#include <set>
#include <sstream>
#include <string>

#include <nlohmann/json.hpp>

#include "cli/trained_checkpoint.h"

namespace mingpt::cli_test {
namespace {

class ResumeTest : public TrainedCheckpointTest {
 protected:
  // Steps of the metrics.csv rows that carry a train loss.
  static std::set<int> TrainRowSteps(const std::string& metrics_csv) {
    std::set<int> steps;
    std::istringstream in(ReadText(metrics_csv));
    std::string line;
    std::getline(in, line);  // header
    while (std::getline(in, line)) {
      std::vector<std::string> cols;
      std::stringstream row(line);
      for (std::string c; std::getline(row, c, ',');) cols.push_back(c);
      if (cols.size() >= 3 && !cols[2].empty()) steps.insert(std::stoi(cols[0]));
    }
    return steps;
  }

  // `info --json` of a checkpoint, or a null json with a test failure.
  nlohmann::json InfoJson(const std::string& ckpt) {
    const ProcessResult r = Mingpt({"info", "--checkpoint", ckpt, "--json"});
    EXPECT_TRUE(Succeeded(r));
    auto j = nlohmann::json::parse(r.out, nullptr, false);
    EXPECT_FALSE(j.is_discarded()) << r.Describe();
    return j.is_discarded() ? nlohmann::json() : j;
  }

  // Everything under `dir` (directory symlinks followed), path -> the bytes
  // of a file, the target of a symlink, or "<dir>".
  static std::map<std::string, std::string> Snapshot(const std::string& dir) {
    std::map<std::string, std::string> files;
    for (const auto& e : std::filesystem::recursive_directory_iterator(
             dir, std::filesystem::directory_options::follow_directory_symlink)) {
      const std::string rel = e.path().lexically_relative(dir).string();
      if (e.is_symlink()) {
        files[rel] = "<symlink to " + std::filesystem::read_symlink(e.path()).string() + ">";
      } else {
        files[rel] = e.is_regular_file() ? ReadText(e.path().string()) : std::string("<dir>");
      }
    }
    return files;
  }
};

TEST_F(ResumeTest, ExplicitModelFlagDisagreeingWithCheckpointIsRefused) {
  const std::string ckpt = CopyCheckpoint("ckpt");
  const ProcessResult r = Mingpt(ResumeArgs(ckpt, "resumed", {{"--n_layer", "3"}}));
  EXPECT_TRUE(FailsWith(r, 1, {"--n_layer", "disagrees"}));
  EXPECT_FALSE(Exists(tmp_ / "resumed"));
}

TEST_F(ResumeTest, OtherDisagreeingModelFlagsAreRefused) {
  const std::string ckpt = CopyCheckpoint("ckpt");
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"--n_head", "4"}, {"--n_embd", "32"}, {"--block_size", "16"}, {"--dropout", "0.5"},
      {"--model_type", "gpt-nano"}};
  for (const auto& [flag, value] : cases) {
    const ProcessResult r = Mingpt(ResumeArgs(ckpt, "resumed", {{flag, value}}));
    // The flag the user gave: --model_type, not the preset's size.
    const std::string name = flag == "--model_type" ? "--model_type gpt-nano (n_layer 3)" : flag;
    EXPECT_TRUE(FailsWith(r, 1, {name, "disagrees"})) << flag << " " << value;
    EXPECT_FALSE(Exists(tmp_ / "resumed")) << flag << " " << value;
  }
}

TEST_F(ResumeTest, AgreeingModelFlagsAreAccepted) {
  const std::string ckpt = CopyCheckpoint("ckpt");
  const ProcessResult r = Mingpt(ResumeArgs(
      ckpt, "resumed", {{"--n_layer", "1"}, {"--n_head", "2"}, {"--n_embd", "16"}}));
  EXPECT_TRUE(Succeeded(r));
}

TEST_F(ResumeTest, ResumeWithoutModelFlagsContinuesTheStepCount) {
  const std::string ckpt = CopyCheckpoint("ckpt");
  ASSERT_EQ(InfoJson(ckpt).value("step", -1), 2);
  const ProcessResult r =
      Mingpt(ResumeArgs(ckpt, "resumed", {{"--log_every_n_steps", "1"}}));
  ASSERT_TRUE(Succeeded(r));
  EXPECT_EQ(TrainRowSteps(tmp_ / "resumed/metrics.csv"), (std::set<int>{3, 4}))
      << ReadText(tmp_ / "resumed/metrics.csv");
  const nlohmann::json resumed = InfoJson(tmp_ / "resumed/checkpoints/last");
  EXPECT_EQ(resumed.value("step", -1), 4);
  EXPECT_EQ(resumed.value("n_layer", -1), 1);
  EXPECT_EQ(resumed.value("n_embd", -1), 16);
  EXPECT_EQ(InfoJson(ckpt).value("step", -1), 2) << "the resumed-from checkpoint changed";
}

// A run killed mid-save leaves a version directory no link names; the next
// run in that directory removes it at once (`best` may never be saved again),
// and keeps the checkpoints the links name.
TEST_F(ResumeTest, ResumingInPlaceRemovesAKilledSavesLeftovers) {
  const std::string run = tmp_ / "run";
  ASSERT_TRUE(Succeeded(RunProcess({CpPath(), "-a", SharedTrainedRun().root, run})));
  const std::string leftover = run + "/checkpoints/best.ckpt-Zz9Zz9";
  std::filesystem::create_directories(leftover);
  WriteText(leftover + "/model.safetensors", "half a save");
  const std::string unrelated = run + "/checkpoints/best.old";
  std::filesystem::create_directories(unrelated);
  ASSERT_TRUE(Succeeded(Mingpt(ResumeArgs(run + "/checkpoints/last", "run"))));
  EXPECT_FALSE(Exists(leftover));
  EXPECT_TRUE(Exists(unrelated)) << "only the checkpoints' own version directories go";
  EXPECT_EQ(InfoJson(run + "/checkpoints/last").value("step", -1), 4);
  EXPECT_TRUE(Succeeded(Mingpt(InfoArgs(run + "/checkpoints/best"))));
}

TEST_F(ResumeTest, FailedTrainLeavesNoRunDirectory) {
  const ProcessResult r = Train("bad_run", {{"--n_embd", "16"}, {"--n_head", "3"}});
  EXPECT_TRUE(FailsWith(r, 1, {"divisible"}));
  EXPECT_FALSE(Exists(tmp_ / "bad_run"));
  EXPECT_FALSE(Exists(tmp_ / "runs")) << "a default run directory was created";
}

TEST_F(ResumeTest, FailedResumeIntoTheOriginalRunDamagesNothing) {
  // A copy of the whole run (symlinks kept), resumed into itself.
  const std::string run = tmp_ / "run";
  ASSERT_TRUE(Succeeded(RunProcess({CpPath(), "-a", SharedTrainedRun().root, run})));
  const std::string last = run + "/checkpoints/last";
  const auto before = Snapshot(run);
  ASSERT_TRUE(before.count("metrics.csv") && before.count("checkpoints/last/model.safetensors"));

  const std::string foreign = tmp_ / "foreign.txt";
  WriteText(foreign, SyntheticText(3000) + "XYZ");  // characters the checkpoint never saw
  struct Case {
    std::vector<std::pair<std::string, std::string>> overrides;
    std::vector<std::string> keywords;
  };
  const std::vector<Case> cases = {
      {{{"--n_layer", "3"}}, {"--n_layer", "disagrees"}},
      {{{"--data", foreign}}, {"foreign.txt", "vocabulary"}},
      {{{"--precision", "8"}}, {"unknown --precision", "8"}},
      {{{"--batch_size", "0"}}, {"--batch_size"}},
  };
  for (const Case& c : cases) {
    const ProcessResult r = Mingpt(ResumeArgs(last, "run", c.overrides));
    EXPECT_TRUE(FailsWith(r, 1, c.keywords)) << c.overrides[0].first;
    EXPECT_TRUE(Snapshot(run) == before)
        << "a refused resume (" << c.overrides[0].first << ") changed the run directory";
    EXPECT_EQ(InfoJson(last).value("step", -1), 2);
  }
}

}  // namespace
}  // namespace mingpt::cli_test
