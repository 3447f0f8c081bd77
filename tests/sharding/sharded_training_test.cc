// `mingpt train --devices N` end to end: the ranks started through mpirun,
// checkpoints that resume at another world size and strategy, a crash during
// a sharded save, a rank killed mid-step, ranks given different flags.
#include <signal.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <thread>

#include "cli/cli_fixture.h"
#include "common/metrics_csv.h"

namespace mingpt::cli_test {
namespace {

namespace fs = std::filesystem;

using test::TrainLosses;

class ShardedTraining : public CliTest {
 protected:
  // A small model; `devices` ranks of `batch` each.
  ProcessResult Run(const std::string& root, int devices, int batch, const std::string& strategy,
                    std::vector<std::pair<std::string, std::string>> extra = {},
                    RunOptions opts = {}) {
    std::vector<std::pair<std::string, std::string>> flags = {
        {"--n_layer", "2"},       {"--n_embd", "24"},          {"--block_size", "8"},
        {"--devices", std::to_string(devices)}, {"--batch_size", std::to_string(batch)},
        {"--strategy", strategy}, {"--log_every_n_steps", "1"}, {"--learning_rate", "1e-3"},
        {"--warmup_tokens", "64"}, {"--limit_val_batches", "2"}, {"--num_threads", "1"}};
    flags.insert(flags.end(), extra.begin(), extra.end());
    if (opts.cwd.empty()) {
      opts.env["MINGPT_DATA"] = data_;
      opts.cwd = tmp_.path();
    }
    return RunMingpt(TinyTrainArgs(data_, tmp_ / root, flags), opts);
  }

  // Run(...) on a thread (90 s at most); *pid becomes the process started.
  std::thread RunInBackground(const std::string& root, int devices, int batch,
                              const std::string& strategy,
                              std::vector<std::pair<std::string, std::string>> extra,
                              ProcessResult* result, std::atomic<pid_t>* pid) {
    return std::thread([=, this] {
      RunOptions o;
      o.timeout_s = 90;
      o.env["MINGPT_DATA"] = data_;
      o.cwd = tmp_.path();
      o.on_start = [pid](pid_t p) { *pid = p; };
      *result = Run(root, devices, batch, strategy, extra, o);
    });
  }

  // The run under `resumed` logged steps 6..10 on the trajectory of the
  // uninterrupted run under "whole".
  void ExpectContinuesWhole(const std::string& resumed_root) {
    const auto whole = TrainLosses(tmp_ / "whole");
    const auto resumed = TrainLosses(tmp_ / resumed_root);
    ASSERT_EQ(resumed.size(), 5u) << resumed_root;
    for (const auto& [step, loss] : resumed) {
      EXPECT_NEAR(loss, whole.at(step), 1e-5 * whole.at(step)) << resumed_root << " step " << step;
    }
  }
};

// A checkpoint saved by 4 ranks under ZeRO-3 resumes on 2 ranks under
// ZeRO-2 and on 1 process, continuing the trajectory of an uninterrupted run
// with the same global batch.
TEST_F(ShardedTraining, ResumesAtAnotherWorldSizeAndStrategy) {
  ASSERT_TRUE(Succeeded(Run("whole", 1, 4, "auto", {{"--max_steps", "10"}})));
  ASSERT_TRUE(Succeeded(Run("first", 4, 1, "deepspeed_stage_3",
                            {{"--max_steps", "5"}, {"--val_check_interval", "5"}})));
  const std::string ckpt = tmp_ / "first/checkpoints/last";
  ASSERT_TRUE(Exists(ckpt + "/shard-00003-of-00004.safetensors"));
  for (const auto& [root, devices, strategy] :
       {std::tuple<std::string, int, std::string>{"on2", 2, "deepspeed_stage_2"},
        {"on2offload", 2, "deepspeed_stage_3_offload"},
        {"on1", 1, "single_device"}}) {
    SCOPED_TRACE(root);
    ASSERT_TRUE(Succeeded(Run(root, devices, 4 / devices, strategy,
                              {{"--max_steps", "10"}, {"--ckpt_path", ckpt}})));
    ExpectContinuesWhole(root);
  }
}

// The state an offload run keeps in host memory (master weights, moments)
// is saved like any other: 2 ranks under ZeRO-2 offload resume on 3 ranks
// under ddp on the uninterrupted trajectory.
TEST_F(ShardedTraining, AnOffloadRunsCheckpointResumesWithoutOffload) {
  ASSERT_TRUE(Succeeded(Run("whole", 1, 6, "auto", {{"--max_steps", "10"}})));
  ASSERT_TRUE(Succeeded(Run("first", 2, 3, "deepspeed_stage_2_offload",
                            {{"--max_steps", "5"}, {"--val_check_interval", "5"}})));
  const std::string ckpt = tmp_ / "first/checkpoints/last";
  ASSERT_TRUE(
      Succeeded(Run("resumed", 3, 2, "ddp", {{"--max_steps", "10"}, {"--ckpt_path", ckpt}})));
  ExpectContinuesWhole("resumed");
}

// An NVMe-offload run starts from an ordinary checkpoint (its state written
// into the offload files) and continues on the uninterrupted trajectory; its
// files are gone afterwards.
TEST_F(ShardedTraining, NvmeOffloadResumesFromAnOrdinaryCheckpoint) {
  ASSERT_TRUE(Succeeded(Run("whole", 1, 4, "auto", {{"--max_steps", "10"}})));
  ASSERT_TRUE(Succeeded(Run("first", 1, 4, "single_device",
                            {{"--max_steps", "5"}, {"--val_check_interval", "5"}})));
  const std::string offload = tmp_ / "offload";
  std::filesystem::create_directories(offload);
  const std::string ckpt = tmp_ / "first/checkpoints/last";
  ASSERT_TRUE(Succeeded(Run("resumed", 2, 2, "deepspeed_stage_3_offload_nvme",
                            {{"--max_steps", "10"}, {"--ckpt_path", ckpt},
                             {"--offload_dir", offload}})));
  ExpectContinuesWhole("resumed");
  EXPECT_TRUE(std::filesystem::is_empty(offload));
}

// A rank that crashes while writing its shard leaves the previous checkpoint.
TEST_F(ShardedTraining, CrashDuringAShardedSaveKeepsThePreviousCheckpoint) {
  ASSERT_TRUE(Succeeded(Run("run", 2, 2, "deepspeed_stage_3",
                            {{"--max_steps", "2"}, {"--val_check_interval", "2"}})));
  const std::string before = ReadText(tmp_ / "run/checkpoints/last/meta.json");
  RunOptions crash;
  crash.env["MINGPT_DATA"] = data_;
  crash.env["MINGPT_CRASH_DURING_SAVE"] = "1";  // each rank dies after its first file
  crash.cwd = tmp_.path();
  const ProcessResult r = Run("run", 2, 2, "deepspeed_stage_3",
                              {{"--max_steps", "4"}, {"--val_check_interval", "2"},
                               {"--ckpt_path", tmp_ / "run/checkpoints/last"}},
                              crash);
  EXPECT_NE(r.exit_code, 0) << r.Describe();
  EXPECT_FALSE(r.timed_out);
  EXPECT_EQ(ReadText(tmp_ / "run/checkpoints/last/meta.json"), before);
  const ProcessResult info = Mingpt({"info", "--checkpoint", tmp_ / "run/checkpoints/last"});
  EXPECT_TRUE(Succeeded(info));
  EXPECT_NE(info.out.find("step"), std::string::npos);
}

// Rank 1 killed mid-run: every rank stops within 30 s, and the output names
// the rank.
TEST_F(ShardedTraining, AKilledRankStopsEveryRankAndIsNamed) {
  const std::string root = tmp_ / "long";
  ProcessResult result;
  std::thread run([&] {
    RunOptions o;
    o.timeout_s = 90;
    result = Run("long", 2, 2, "deepspeed_stage_3", {{"--max_steps", "1000000"}}, o);
  });
  // Wait for training to be under way, then find rank 1 and kill it.
  pid_t victim = 0;
  for (int i = 0; i < 400 && victim == 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    if (TrainLosses(root).size() < 3) continue;
    for (const auto& entry : fs::directory_iterator("/proc")) {
      const std::string name = entry.path().filename();
      if (name.find_first_not_of("0123456789") != std::string::npos) continue;
      const std::string cmd = ReadText(entry.path() / "cmdline");
      const std::string env = ReadText(entry.path() / "environ");
      if (cmd.find(root) != std::string::npos &&
          env.find(std::string("OMPI_COMM_WORLD_RANK=1") + '\0') != std::string::npos) {
        victim = std::stoi(name);
      }
    }
  }
  ASSERT_NE(victim, 0) << "rank 1 never appeared";
  const auto killed = std::chrono::steady_clock::now();
  ::kill(victim, SIGKILL);
  run.join();
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - killed).count();
  EXPECT_FALSE(result.timed_out) << result.Describe();
  EXPECT_LT(seconds, 30.0);
  EXPECT_NE(result.exit_code, 0);
  EXPECT_NE((result.out + result.err).find("rank 1"), std::string::npos) << result.Describe();
}

// Ctrl-C (SIGINT to the launching process) reaches every rank: they stop
// after the same step, save `last` there, and the run exits 0.
TEST_F(ShardedTraining, InterruptSavesLastOnEveryRankAndExitsCleanly) {
  const std::string root = tmp_ / "stopped";
  ProcessResult result;
  std::atomic<pid_t> launcher{0};
  std::thread run = RunInBackground("stopped", 2, 2, "deepspeed_stage_2",
                                    {{"--max_steps", "1000000"}}, &result, &launcher);
  for (int i = 0; i < 400 && (launcher == 0 || TrainLosses(root).size() < 3); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  ASSERT_NE(launcher, 0);
  ::kill(launcher, SIGINT);
  run.join();
  EXPECT_TRUE(Succeeded(result));
  EXPECT_NE(result.err.find("interrupted: saved"), std::string::npos) << result.Describe();
  const ProcessResult info = Mingpt({"info", "--checkpoint", root + "/checkpoints/last"});
  ASSERT_TRUE(Succeeded(info));
  // The checkpoint is at the last step metrics.csv recorded.
  const int last_step = TrainLosses(root).rbegin()->first;
  EXPECT_NE(info.out.find("step           " + std::to_string(last_step) + "\n"), std::string::npos)
      << info.out;
}

// The disk under NVMe offload failing mid-run (its files cut short from
// outside, as a dying disk or a full thin volume would) stops the run with
// one line naming the file; the last checkpoint, written before, still loads.
TEST_F(ShardedTraining, ADiskFailureUnderNvmeOffloadStopsCleanly) {
  const std::string root = tmp_ / "failing";
  const std::string offload = tmp_ / "offload";
  std::filesystem::create_directories(offload);
  ProcessResult result;
  std::atomic<pid_t> pid{0};
  std::thread run = RunInBackground("failing", 1, 2, "deepspeed_stage_3_offload_nvme",
                                    {{"--max_steps", "1000000"},
                                     {"--val_check_interval", "2"},
                                     {"--offload_dir", offload}},
                                    &result, &pid);
  for (int i = 0; i < 400 && !Exists(root + "/checkpoints/last/meta.json"); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  ASSERT_TRUE(Exists(root + "/checkpoints/last/meta.json"));
  int cut = 0;
  for (const auto& dir : std::filesystem::directory_iterator(offload)) {
    for (const auto& file : std::filesystem::directory_iterator(dir.path())) {
      std::filesystem::resize_file(file.path(), 0);
      ++cut;
    }
  }
  EXPECT_EQ(cut, 4) << "params, exp_avg, exp_avg_sq and grads files";
  run.join();
  EXPECT_EQ(result.exit_code, 1) << result.Describe();
  EXPECT_NE(result.err.find("mingpt: error: reading"), std::string::npos) << result.Describe();
  EXPECT_NE(result.err.find(offload), std::string::npos) << result.Describe();
  EXPECT_TRUE(Succeeded(Mingpt({"info", "--checkpoint", root + "/checkpoints/last"})));
}

// Ranks started by hand with different flags refuse to train, saying so.
TEST_F(ShardedTraining, RanksGivenDifferentConfigurationsRefuse) {
  std::vector<std::string> argv = {"/bin/sh", "-c",
      std::string("mpirun --allow-run-as-root --oversubscribe --mca btl self,vader "
                  "--mca btl_vader_single_copy_mechanism none -np 1 ") + MINGPT_BIN +
      " train --data " + data_ + " --default_root_dir " + (tmp_ / "mixed") +
      " --n_layer 1 --max_steps 2 --seed 1 : -np 1 " + MINGPT_BIN + " train --data " + data_ +
      " --default_root_dir " + (tmp_ / "mixed") + " --n_layer 1 --max_steps 2 --seed 2"};
  const ProcessResult r = RunProcess(argv, Options());
  EXPECT_NE(r.exit_code, 0) << r.Describe();
  EXPECT_NE(r.err.find("not given the same configuration"), std::string::npos) << r.Describe();
  EXPECT_FALSE(Exists(tmp_ / "mixed/metrics.csv"));
}

// `mingpt evaluate` under any strategy and number of ranks prints the loss
// of one process, on a checkpoint written by 3 ranks.
TEST_F(ShardedTraining, EvaluateGivesTheSameLossUnderAnyStrategyAndWorld) {
  ASSERT_TRUE(Succeeded(Run("run", 3, 2, "deepspeed_stage_3", {{"--max_steps", "4"}})));
  const std::string ckpt = tmp_ / "run/checkpoints/last";
  double reference = 0;
  for (const auto& [devices, strategy] :
       {std::pair<std::string, std::string>{"1", "auto"}, {"2", "ddp"},
        {"3", "deepspeed_stage_3"}, {"4", "deepspeed_stage_1"}}) {
    const ProcessResult r = Mingpt({"evaluate", "--checkpoint", ckpt, "--devices", devices,
                                    "--strategy", strategy, "--json", "--batch_size", "3"});
    ASSERT_TRUE(Succeeded(r));
    const size_t at = r.out.find("\"loss\":");
    ASSERT_NE(at, std::string::npos) << r.out;
    const double loss = std::stod(r.out.substr(at + 7));
    if (reference == 0) reference = loss;
    EXPECT_NEAR(loss, reference, 1e-6 * reference) << devices << " ranks, " << strategy;
  }
}

TEST_F(ShardedTraining, BadDevicesAndStrategiesGetOneClearLine) {
  EXPECT_TRUE(FailsWith(Train("r", {{"--devices", "0"}}), 1, {"--devices"}));
  EXPECT_TRUE(FailsWith(Train("r", {{"--strategy", "zero9"}}), 1, {"unknown --strategy", "zero9"}));
  EXPECT_TRUE(FailsWith(Train("r", {{"--strategy", "deepspeed_stage_3_offload_nvme"}}), 1,
                        {"deepspeed_stage_3_offload_nvme", "needs --offload_dir"}));
  EXPECT_TRUE(FailsWith(Train("r", {{"--devices", "2"}, {"--strategy", "single_device"}}), 1,
                        {"single_device"}));
}

}  // namespace
}  // namespace mingpt::cli_test
