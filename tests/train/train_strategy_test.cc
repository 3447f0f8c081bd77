// `mingpt train --strategy auto` as `mingpt plan` predicts it: rank 0's
// choice for every rank, NVMe offload among the candidates when
// --offload_dir is given, the memory budget kept at one process too; and
// what several ranks and NVMe offload report: one line for an error every
// rank meets, and --profile's compute time without validation's waits.
#include <cstdio>
#include <filesystem>
#include <string>
#include <utility>
#include <vector>

#include "cli/cli_fixture.h"
#include "data/char_dataset.h"
#include "train/planner.h"

namespace mingpt::cli_test {
namespace {

using Flags = std::vector<std::pair<std::string, std::string>>;

class TrainStrategyTest : public CliTest {
 protected:
  // The planner's input for TinyTrainArgs' model (2 heads, block 8, batch
  // 2) of `n_layer` layers `n_embd` wide, at `world` ranks.
  PlanInput Input(int world, int n_layer = 1, int n_embd = 16, NvmeOptions nvme = {}) const {
    const std::string text = ReadText(data_);
    ModelConfig model;
    model.n_layer = n_layer;
    model.n_head = 2;
    model.n_embd = n_embd;
    model.block_size = 8;
    model.vocab_size = CharTokenizer::FromText(text)->size();
    return {model, 2, world, text.size(), nvme};
  }
  ProcessResult Plan(const Flags& flags) const {
    std::vector<std::string> args = TinyTrainArgs(data_, tmp_ / "unused", flags);
    args[0] = "plan";
    return Mingpt(args);
  }
  static int Count(const std::string& text, const std::string& what) {
    int n = 0;
    for (size_t at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) ++n;
    return n;
  }
};

// At one process as at several, auto trains only within --memory_budget,
// as `plan` says.
TEST_F(TrainStrategyTest, AtOneProcessAutoKeepsToTheMemoryBudget) {
  const ProcessResult plan = Plan({{"--memory_budget", "1M"}});
  ASSERT_TRUE(Succeeded(plan));
  EXPECT_NE(plan.out.find("would choose: nothing"), std::string::npos) << plan.Describe();
  ExpectTrainRefused({{"--memory_budget", "1M"}}, 1,
                     {"no strategy fits the memory budget of 1 MiB", "single_device"});
}

// With --offload_dir, auto may choose NVMe offload where nothing else fits,
// and `plan` agrees.
TEST_F(TrainStrategyTest, AutoChoosesNvmeOffloadWhenOnlyItFits) {
  const std::string offload = tmp_ / "offload";
  std::filesystem::create_directories(offload);
  const PlanInput in = Input(1, 4, 256, {offload, true, 1u << 20});
  const size_t whole = PredictPeak(in, "single_device", false).peak();
  const size_t nvme = PredictPeak(in, "deepspeed_stage_3_offload_nvme", false).peak();
  ASSERT_LT(nvme, whole);
  const Flags flags = {{"--n_layer", "4"}, {"--n_embd", "256"}, {"--offload_dir", offload},
                       {"--offload_buffer_mb", "1"},
                       {"--memory_budget", std::to_string((nvme + whole) / 2)}};
  const ProcessResult plan = Plan(flags);
  ASSERT_TRUE(Succeeded(plan));
  EXPECT_NE(plan.out.find("would choose: deepspeed_stage_3_offload_nvme"), std::string::npos)
      << plan.Describe();
  const ProcessResult r = Train("nvme", flags);
  ASSERT_TRUE(Succeeded(r));
  EXPECT_NE(r.err.find("--strategy auto: deepspeed_stage_3_offload_nvme"), std::string::npos)
      << r.Describe();
  // Where single_device fits it stays the choice, and says nothing of a plan.
  const ProcessResult roomy = Train("roomy", {{"--offload_dir", offload}});
  ASSERT_TRUE(Succeeded(roomy));
  EXPECT_EQ(roomy.err.find("memory plan"), std::string::npos) << roomy.Describe();
}

// Ranks whose budgets differ (or whose free memory does, by default) would
// choose different strategies: rank 0 chooses for all.
TEST_F(TrainStrategyTest, RankZeroChoosesTheStrategyForEveryRank) {
  const PlanInput in = Input(2);
  const size_t tight = PredictPeak(in, "ddp", false).peak() - 1;
  const std::string other = ChooseStrategy(in, false, tight);
  ASSERT_NE(other, "");
  ASSERT_NE(other, "ddp");
  auto rank = [&](const std::string& budget) {
    std::string args;
    const Flags flags = {{"--strategy", "auto"}, {"--memory_budget", budget}};
    for (const std::string& a : TinyTrainArgs(data_, tmp_ / "mixed", flags)) args += " '" + a + "'";
    return std::string(MINGPT_BIN) + args;
  };
  const std::vector<std::string> argv = {
      "/bin/sh", "-c",
      "mpirun --allow-run-as-root --oversubscribe --mca btl self,vader "
      "--mca btl_vader_single_copy_mechanism none -np 1 " + rank("1G") + " : -np 1 " +
          rank(std::to_string(tight))};
  RunOptions o = Options();
  o.timeout_s = 60;
  const ProcessResult r = RunProcess(argv, o);
  ASSERT_TRUE(Succeeded(r));
  EXPECT_NE(r.err.find("--strategy auto: ddp"), std::string::npos) << r.Describe();
}

// An error every rank meets at the same step is one line, rank 0's.
TEST_F(TrainStrategyTest, DivergingRanksReportOnce) {
  const ProcessResult r = Train("diverged", {{"--devices", "2"}, {"--strategy", "ddp"},
                                             {"--learning_rate", "1e30"},
                                             {"--warmup_tokens", "0"}, {"--max_steps", "50"}});
  EXPECT_EQ(r.exit_code, 1) << r.Describe();
  EXPECT_EQ(Count(r.err, "training diverged"), 1) << r.Describe();
}

// --profile under NVMe offload: the disk waits of validation and the saves
// are not the steps', so compute (step time less the waits) is never
// negative.
TEST_F(TrainStrategyTest, NvmeProfileCountsOnlyTheStepsWaits) {
  WriteText(data_, SyntheticText(100000));  // a validation split of many batches
  const std::string offload = tmp_ / "offload";
  std::filesystem::create_directories(offload);
  std::vector<std::string> args = TinyTrainArgs(
      data_, tmp_ / "profiled",
      {{"--n_layer", "2"}, {"--n_embd", "64"}, {"--strategy", "deepspeed_stage_3_offload_nvme"},
       {"--offload_dir", offload}, {"--limit_val_batches", "300"}});
  args.push_back("--profile");
  const ProcessResult r = Mingpt(args);
  ASSERT_TRUE(Succeeded(r));
  const size_t at = r.out.find("NVMe offload: ");
  ASSERT_NE(at, std::string::npos) << r.Describe();
  double step = 0, compute = 0, waiting = 0;
  ASSERT_EQ(std::sscanf(r.out.c_str() + at, "NVMe offload: %lf s per step = %lf s compute + %lf s",
                        &step, &compute, &waiting),
            3)
      << r.Describe();
  EXPECT_GE(compute, 0) << r.Describe();
  EXPECT_LE(waiting, step) << r.Describe();
}

}  // namespace
}  // namespace mingpt::cli_test
