// --help: exit 0, the text on stdout, nothing on stderr, and the documented
// commands and flags (DESIGN.md: the seed's and Lightning's names) listed.
#include <string>
#include <vector>

#include "cli/cli_fixture.h"

namespace mingpt::cli_test {
namespace {

using HelpTest = CliTest;

::testing::AssertionResult HelpLists(const ProcessResult& r, const std::vector<std::string>& words) {
  if (r.spawn_failed || r.timed_out || r.signal != 0 || r.exit_code != 0) {
    return ::testing::AssertionFailure() << "--help did not exit 0\n" << r.Describe();
  }
  if (!r.err.empty()) return ::testing::AssertionFailure() << "--help wrote to stderr\n" << r.Describe();
  for (const std::string& w : words) {
    if (r.out.find(w) == std::string::npos) {
      return ::testing::AssertionFailure() << "--help does not list " << w << "\n" << r.Describe();
    }
  }
  return ::testing::AssertionSuccess();
}

TEST_F(HelpTest, TopLevelListsCommands) {
  EXPECT_TRUE(HelpLists(Mingpt({"--help"}), {"train", "evaluate", "sample", "info"}));
}

TEST_F(HelpTest, TrainListsDocumentedFlags) {
  EXPECT_TRUE(HelpLists(
      Mingpt({"train", "--help"}),
      {"--n_layer", "--n_head", "--n_embd", "--block_size", "--dropout", "--model_type",
       "--batch_size", "--learning_rate", "--weight_decay", "--max_epochs", "--max_steps",
       "--gradient_clip_val", "--accumulate_grad_batches", "--precision", "--strategy",
       "--devices", "--default_root_dir", "--ckpt_path", "--data", "--num_threads", "--seed",
       "--limit_val_batches", "--val_check_interval", "--log_every_n_steps"}));
}

TEST_F(HelpTest, EvaluateListsFlags) {
  EXPECT_TRUE(HelpLists(Mingpt({"evaluate", "--help"}),
                        {"--checkpoint", "--data", "--split", "--batch_size", "--json"}));
}

TEST_F(HelpTest, SampleListsFlags) {
  EXPECT_TRUE(HelpLists(Mingpt({"sample", "--help"}),
                        {"--checkpoint", "--prompt", "--steps", "--temperature", "--top_k",
                         "--greedy", "--seed"}));
}

TEST_F(HelpTest, InfoListsFlags) {
  EXPECT_TRUE(HelpLists(Mingpt({"info", "--help"}), {"--checkpoint", "--json"}));
}

TEST_F(HelpTest, HelpWinsOverOtherwiseBadFlags) {
  // Asking for help never trains, even with flags that would be refused.
  EXPECT_TRUE(HelpLists(Mingpt({"train", "--n_head", "3", "--help"}), {"--n_layer"}));
  EXPECT_FALSE(Exists(tmp_ / "runs"));
}

}  // namespace
}  // namespace mingpt::cli_test
