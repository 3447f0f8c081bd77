// The memory planner's prediction of each rank's peak against the peak RSS
// the ranks measure (memory.csv's last report, after the final save), for
// every strategy with and without activation checkpointing: within 15%.
#include "cli/cli_fixture.h"
#include "common/metrics_csv.h"
#include "data/char_dataset.h"
#include "train/planner.h"

namespace mingpt::cli_test {
namespace {

using test::PeakRss;

class PlannerTest : public CliTest {};

TEST_F(PlannerTest, PredictsEachRanksPeakWithinFifteenPercent) {
  ModelConfig model;
  model.n_layer = 4;
  model.n_head = 4;
  model.n_embd = 256;
  model.block_size = 64;
  model.dropout = 0.1f;
  const std::string text = ReadText(data_);
  model.vocab_size = CharTokenizer::FromText(text)->size();
  struct Run {
    int world, batch;
    const char* strategy;
    bool checkpointing;
  };
  const Run runs[] = {{1, 8, "single_device", false},     {1, 32, "single_device", true},
                      {2, 8, "ddp", false},               {2, 8, "deepspeed_stage_1", false},
                      {2, 8, "deepspeed_stage_2", false}, {2, 8, "deepspeed_stage_3", false},
                      {2, 8, "deepspeed_stage_3", true},  {2, 8, "deepspeed_stage_2_offload", false},
                      {2, 8, "deepspeed_stage_3_offload", false}};
  int i = 0;
  for (const Run& run : runs) {
    const std::string root = "plan" + std::to_string(i++);
    std::vector<std::pair<std::string, std::string>> flags = {
        {"--n_layer", "4"}, {"--n_head", "4"}, {"--n_embd", "256"}, {"--block_size", "64"},
        {"--dropout", "0.1"}, {"--batch_size", std::to_string(run.batch)},
        {"--devices", std::to_string(run.world)}, {"--strategy", run.strategy},
        {"--max_steps", "2"}, {"--val_check_interval", "2"}, {"--limit_val_batches", "2"}};
    std::vector<std::string> args = TinyTrainArgs(data_, tmp_ / root, flags);
    if (run.checkpointing) args.push_back("--activation_checkpointing");
    ASSERT_TRUE(Succeeded(Mingpt(args)));
    const PlanRow plan =
        PredictPeak({model, run.batch, run.world, text.size(), {}}, run.strategy, run.checkpointing);
    const std::vector<double> measured = PeakRss(tmp_ / root);
    ASSERT_EQ(measured.size(), static_cast<size_t>(run.world));
    for (int r = 0; r < run.world; ++r) {
      const double predicted = static_cast<double>(plan.peak());
      std::printf("%-18s ckpt %d ranks %d batch %2d rank %d: predicted %.1f MiB, measured %.1f MiB\n",
                  run.strategy, run.checkpointing, run.world, run.batch, r, predicted / 1048576,
                  measured[r] / 1048576);
      EXPECT_NEAR(predicted, measured[r], 0.15 * measured[r]) << run.strategy << " rank " << r;
    }
  }
}

}  // namespace
}  // namespace mingpt::cli_test

namespace mingpt::cli_test {
namespace {

// --strategy auto takes the fastest strategy whose predicted peak fits the
// budget; `mingpt plan` prints the same choice; no fit is one clear error.
TEST_F(PlannerTest, AutoTakesTheFastestStrategyThatFits) {
  ModelConfig model;
  model.n_layer = 2;
  model.n_head = 2;
  model.n_embd = 64;
  model.block_size = 16;
  const std::string text = ReadText(data_);
  model.vocab_size = CharTokenizer::FromText(text)->size();
  const PlanInput in{model, 4, 2, text.size(), {}};
  const size_t ddp = PredictPeak(in, "ddp", false).peak();
  const size_t budget = ddp - 1;  // ddp just misses
  const std::string expected = ChooseStrategy(in, false, budget);
  ASSERT_FALSE(expected.empty());
  ASSERT_NE(expected, "ddp");
  const std::vector<std::pair<std::string, std::string>> flags = {
      {"--n_layer", "2"}, {"--n_head", "2"}, {"--n_embd", "64"}, {"--block_size", "16"},
      {"--batch_size", "4"}, {"--devices", "2"}, {"--strategy", "auto"},
      {"--memory_budget", std::to_string(budget)}};
  std::vector<std::string> plan = TinyTrainArgs(data_, tmp_ / "p", flags);
  plan[0] = "plan";
  const ProcessResult p = Mingpt(plan);
  ASSERT_TRUE(Succeeded(p));
  EXPECT_NE(p.out.find("would choose: " + expected), std::string::npos) << p.out;
  const ProcessResult t = Train("auto", flags);
  ASSERT_TRUE(Succeeded(t));
  EXPECT_NE(t.err.find("--strategy auto: " + expected), std::string::npos) << t.err;
  EXPECT_TRUE(FailsWith(Train("none", {{"--devices", "2"}, {"--memory_budget", "1M"}}), 1,
                        {"no strategy fits", "memory budget"}));
  EXPECT_TRUE(FailsWith(Train("bad", {{"--memory_budget", "lots"}}), 1, {"--memory_budget"}));
}

}  // namespace
}  // namespace mingpt::cli_test
