// `mingpt train --accelerator cuda` end to end on the CPU emulator's CUDA
// module (MINGPT_CUDA_PLUGIN = libmingpt_cuda_emulated.so): the CUDA
// backend, its kernels and cuBLASLt calls, the engine's device and pinned
// host buffers, offload's copies between them, and several ranks each on a
// device of its own, against the CPU backend's trajectory of the same run.
// The device communicator is the host one here (no NCCL is emulated).
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "cli/cli_fixture.h"
#include "common/metrics_csv.h"

namespace mingpt::cli_test {
namespace {

using test::MetricsColumn;
using test::TrainLosses;

class TrainOnEmulatedCuda : public CliTest {
 protected:
  // A small model with dropout (the masks must agree too), 4 steps.
  ProcessResult Run(const std::string& root, const std::string& accelerator, int devices,
                    std::vector<std::pair<std::string, std::string>> extra = {},
                    const std::map<std::string, std::string>& env = {},
                    const std::vector<std::string>& switches = {}) {
    std::vector<std::pair<std::string, std::string>> flags = {
        {"--accelerator", accelerator},
        {"--devices", std::to_string(devices)},
        {"--n_layer", "2"},
        {"--n_embd", "32"},
        {"--block_size", "16"},
        {"--batch_size", std::to_string(4 / devices)},
        {"--max_steps", "4"},
        {"--log_every_n_steps", "1"},
        {"--dropout", "0.1"},
        {"--limit_val_batches", "2"}};
    flags.insert(flags.end(), extra.begin(), extra.end());
    RunOptions o = Options();
    o.env["MINGPT_CUDA_PLUGIN"] = MINGPT_CUDA_EMULATED_PLUGIN;
    o.env["MINGPT_CUDA_EMULATED_DEVICES"] = "2";
    o.timeout_s = 300;
    for (const auto& [k, v] : env) o.env[k] = v;
    std::vector<std::string> args = TinyTrainArgs(data_, tmp_ / root, flags);
    args.insert(args.end(), switches.begin(), switches.end());
    return RunMingpt(args, o);
  }

  // peak_device_bytes of the last row of <root>/memory.csv (rank 0 at one rank).
  double PeakDeviceBytes(const std::string& root) {
    std::ifstream f(tmp_ / root + "/memory.csv");
    std::string line, last;
    std::getline(f, line);
    EXPECT_NE(line.find(",peak_device_bytes"), std::string::npos) << line;
    while (std::getline(f, line)) last = line;
    const size_t comma = last.rfind(',');
    return comma == std::string::npos ? -1 : std::stod(last.substr(comma + 1));
  }

  // The emulator's counts (MINGPT_CUDA_EMULATOR_STATS) over a run of `steps`
  // steps on one device, by name: device_mallocs, launches, stream_syncs...
  std::map<std::string, long long> EmulatorStats(
      const std::string& name, const std::string& steps,
      std::vector<std::pair<std::string, std::string>> flags) {
    const std::string file = tmp_ / (name + ".stats");
    flags.push_back({"--max_steps", steps});
    flags.push_back({"--limit_val_batches", "0"});
    flags.push_back({"--enable_checkpointing", "false"});
    const ProcessResult r = Run(name, "cuda", 1, flags, {{"MINGPT_CUDA_EMULATOR_STATS", file}});
    EXPECT_TRUE(Succeeded(r)) << r.Describe();
    std::ifstream f(file);
    std::string line;
    std::getline(f, line);
    std::map<std::string, long long> counts;
    std::stringstream ss(line);
    for (std::string kv; ss >> kv;) {
      const size_t eq = kv.find('=');
      if (eq != std::string::npos) counts[kv.substr(0, eq)] = std::stoll(kv.substr(eq + 1));
    }
    EXPECT_EQ(counts.size(), 6u) << "statistics line: " << line;
    return counts;
  }

  // The two runs logged the same losses, to the digits metrics.csv keeps,
  // and the same gradient norms (which a gradient gone wrong moves at once,
  // before the losses show it).
  void ExpectSameTrajectory(const std::string& a, const std::string& b) {
    const auto la = TrainLosses(tmp_ / a), lb = TrainLosses(tmp_ / b);
    ASSERT_EQ(la.size(), 4u) << a;
    ASSERT_EQ(lb.size(), 4u) << b;
    for (const auto& [step, loss] : la) {
      EXPECT_NEAR(lb.at(step), loss, 2e-5 * loss) << a << " vs " << b << " step " << step;
    }
    // (A step skipped on a loss-scale overflow logs no norm: the same ones.)
    const auto ga = MetricsColumn(tmp_ / a, "grad_norm"), gb = MetricsColumn(tmp_ / b, "grad_norm");
    ASSERT_EQ(ga.size(), gb.size()) << a << " vs " << b;
    for (const auto& [step, norm] : ga) {
      ASSERT_TRUE(gb.count(step)) << b << " has no grad_norm at step " << step;
      EXPECT_NEAR(gb.at(step), norm, 2e-4 * norm) << a << " vs " << b << " grad_norm, step " << step;
    }
  }
};

TEST_F(TrainOnEmulatedCuda, SingleDeviceFollowsTheCpuTrajectory) {
  const ProcessResult cuda = Run("cuda", "cuda", 1);
  ASSERT_TRUE(Succeeded(cuda));
  EXPECT_NE(cuda.err.find("tokens on cuda"), std::string::npos) << cuda.Describe();
  ASSERT_TRUE(Succeeded(Run("cpu", "cpu", 1)));
  ExpectSameTrajectory("cpu", "cuda");
}

// The seed's 1.7B command (--gpus 1 --precision 16 --strategy
// deepspeed_stage_3_offload --batch_size 1) at a tiny size: fp16 products
// with loss scaling, parameters, gradients and Adam moments offloaded to
// pinned host memory. What it holds on the device, measured, is less than
// the same run without offload holds; the CPU backend holds none.
// A head size the CUDA attention cannot run (above 512) is one line before
// the first step, under one rank or two, not an abort in the middle of it.
TEST_F(TrainOnEmulatedCuda, AHeadSizeAboveTheKernelsIsRefusedBeforeTheFirstStep) {
  const std::vector<std::pair<std::string, std::string>> wide = {
      {"--n_layer", "1"}, {"--n_embd", "1040"}, {"--n_head", "2"}, {"--max_steps", "1"},
      {"--block_size", "4"}, {"--limit_val_batches", "0"}};
  for (int devices : {1, 2}) {
    const ProcessResult r = Run("wide" + std::to_string(devices), "cuda", devices, wide);
    const std::string line =
        "mingpt: error: --accelerator cuda: head size 520 (n_embd / n_head) is above the CUDA "
        "backend's 512\n";
    EXPECT_EQ(r.exit_code, 1) << r.Describe();
    // Once, and last (two ranks print the strategy auto chose before it).
    const size_t at = r.err.find(line);
    EXPECT_NE(at, std::string::npos) << r.Describe();
    EXPECT_EQ(at + line.size(), r.err.size()) << r.Describe();
  }
}

TEST_F(TrainOnEmulatedCuda, SeedStage3OffloadCommandFollowsTheCpuTrajectory) {
  const std::vector<std::pair<std::string, std::string>> seed = {
      {"--precision", "16"}, {"--strategy", "deepspeed_stage_3_offload"}};
  ASSERT_TRUE(Succeeded(Run("cuda", "cuda", 1, seed)));
  ASSERT_TRUE(Succeeded(Run("cpu", "cpu", 1, seed)));
  ExpectSameTrajectory("cpu", "cuda");
  ASSERT_TRUE(Succeeded(Run("cuda_no_offload", "cuda", 1, {{"--precision", "16"}})));
  const double offload = PeakDeviceBytes("cuda"), whole = PeakDeviceBytes("cuda_no_offload");
  EXPECT_GT(offload, 0);
  EXPECT_LT(offload, whole);
  EXPECT_EQ(PeakDeviceBytes("cpu"), 0);
}

// Two ranks, a device each, ZeRO-3 in bf16 and ZeRO-2, ZeRO-3 and NVMe
// offload (whose transfers run on the copy stream beside the collectives),
// and ZeRO-3 offload accumulating two micro-batches: the trajectory of one
// CPU process with the same global batch.
TEST_F(TrainOnEmulatedCuda, TwoRanksShardedFollowTheSingleProcessTrajectory) {
  ASSERT_TRUE(Succeeded(Run("cpu", "cpu", 1, {{"--precision", "bf16"}})));
  for (const std::string strategy : {"deepspeed_stage_3", "deepspeed_stage_2_offload",
                                     "deepspeed_stage_3_offload", "deepspeed_stage_3_offload_nvme"}) {
    const std::string root = "cuda2_" + strategy;
    std::vector<std::pair<std::string, std::string>> flags = {{"--precision", "bf16"},
                                                              {"--strategy", strategy}};
    if (strategy.ends_with("_nvme")) {
      const std::string dir = tmp_ / (root + "_offload");
      ASSERT_TRUE(std::filesystem::create_directories(dir));
      flags.push_back({"--offload_dir", dir});
    }
    const ProcessResult r = Run(root, "cuda", 2, flags);
    ASSERT_TRUE(Succeeded(r));
    EXPECT_NE(r.err.find("tokens on cuda, 2 ranks"), std::string::npos) << r.Describe();
    ExpectSameTrajectory("cpu", root);
  }
  // With two micro-batches a step: the second's gradients come down after the
  // first's and are added to them on the host.
  const std::vector<std::pair<std::string, std::string>> accumulate = {
      {"--precision", "bf16"}, {"--accumulate_grad_batches", "2"}};
  ASSERT_TRUE(Succeeded(Run("cpu_accumulate", "cpu", 1, accumulate)));
  auto offload = accumulate;
  offload.push_back({"--strategy", "deepspeed_stage_3_offload"});
  ASSERT_TRUE(Succeeded(Run("cuda2_offload_accumulate", "cuda", 2, offload)));
  ExpectSameTrajectory("cpu_accumulate", "cuda2_offload_accumulate");
}

// After the first step a step allocates nothing: runs of 2 and of 5 steps
// make the same device and pinned-host allocations (the emulator counts
// every cudaMalloc, cudaFree and cudaMallocHost), and more kernel launches.
TEST_F(TrainOnEmulatedCuda, LaterStepsAllocateNothing) {
  auto stats = [&](const std::string& name, const std::string& steps,
                   const std::vector<std::pair<std::string, std::string>>& flags) {
    return EmulatorStats(name, steps, flags);
  };
  std::map<std::string, std::map<std::string, long long>> by_name;
  for (const auto& [name, flags] :
       std::vector<std::pair<std::string, std::vector<std::pair<std::string, std::string>>>>{
           {"fp32", {}},
           {"seed", {{"--precision", "16"}, {"--strategy", "deepspeed_stage_3_offload"}}}}) {
    auto two = stats(name + "2", "2", flags), five = stats(name + "5", "5", flags);
    for (const char* k : {"device_mallocs", "device_frees", "host_mallocs", "host_registers"}) {
      EXPECT_EQ(two[k], five[k]) << name << ": " << k << " grew with the steps";
    }
    EXPECT_GT(two["device_mallocs"], 0) << name;
    EXPECT_GT(five["launches"], two["launches"]) << name;
    by_name[name] = two;
  }
  // Offload keeps its state in page-locked host memory: the parameter and
  // gradient shards, both moments and the reduced-gradient buffer.
  EXPECT_GE(by_name["seed"]["host_mallocs"], by_name["fp32"]["host_mallocs"] + 5);
}

// Offload's transfers run on the copy stream, ordered on the device: the
// host waits for the compute stream a fixed number of times a step (the
// loss, the norm), not once or twice a unit as synchronous copies made it,
// so twice the layers make it wait no more often. NVMe offload's copies
// (the parameter shard read from disk going up, each gradient going down to
// be added on disk) are the same.
TEST_F(TrainOnEmulatedCuda, OffloadMakesTheHostWaitNoMoreOftenForMoreLayers) {
  for (const std::string strategy : {"deepspeed_stage_3_offload", "deepspeed_stage_2_offload",
                                     "deepspeed_stage_3_offload_nvme"}) {
    auto per_step = [&](const std::string& layers) {
      std::vector<std::pair<std::string, std::string>> flags = {
          {"--precision", "16"}, {"--strategy", strategy}, {"--n_layer", layers}};
      const std::string name = strategy + "_L" + layers + "_";
      if (strategy.ends_with("_nvme")) {
        const std::string dir = tmp_ / (name + "offload");
        EXPECT_TRUE(std::filesystem::create_directories(dir));
        flags.push_back({"--offload_dir", dir});
      }
      return EmulatorStats(name + "3", "3", flags)["stream_syncs"] -
             EmulatorStats(name + "2", "2", flags)["stream_syncs"];
    };
    const long long two = per_step("2"), four = per_step("4");
    EXPECT_GT(two, 0) << strategy;
    EXPECT_EQ(four, two) << strategy << ": host waits a step at 4 layers vs 2";
  }
}

// Activation checkpointing, gradient accumulation, fp16 with loss-scale
// overflows (steps skipped, the scale lowered), and one rank's ZeRO-2
// offload (its gradients' copies down beside the backward) and ZeRO-3
// offload with accumulation (later micro-batches' gradients added on the
// host) follow the CPU on the GPU.
TEST_F(TrainOnEmulatedCuda, TrainingFeaturesFollowTheCpuTrajectory) {
  struct Case {
    std::string name;
    std::vector<std::pair<std::string, std::string>> flags;
    std::vector<std::string> switches;
  };
  const std::vector<Case> cases = {
      {"ckpt", {}, {"--activation_checkpointing"}},
      {"accumulate", {{"--accumulate_grad_batches", "2"}}, {}},
      {"overflow", {{"--precision", "16"}, {"--initial_scale_power", "30"}}, {}},
      {"offload2", {{"--strategy", "deepspeed_stage_2_offload"}}, {}},
      {"offload3_accumulate",
       {{"--strategy", "deepspeed_stage_3_offload"}, {"--accumulate_grad_batches", "2"}},
       {}}};
  for (const auto& [name, flags, switches] : cases) {
    const ProcessResult cuda = Run(name + "_cuda", "cuda", 1, flags, {}, switches);
    ASSERT_TRUE(Succeeded(cuda));
    ASSERT_TRUE(Succeeded(Run(name + "_cpu", "cpu", 1, flags, {}, switches)));
    ExpectSameTrajectory(name + "_cpu", name + "_cuda");
    if (name == "overflow") {
      EXPECT_NE(cuda.err.find("skipped on gradient overflow"), std::string::npos)
          << cuda.Describe();
    }
  }
}

// A checkpoint saved on the GPU resumes on the CPU and on the GPU, each on
// the trajectory of an uninterrupted run.
TEST_F(TrainOnEmulatedCuda, CheckpointsResumeAcrossAccelerators) {
  const std::vector<std::pair<std::string, std::string>> every2 = {{"--val_check_interval", "2"}};
  ASSERT_TRUE(Succeeded(Run("whole", "cpu", 1, every2)));
  auto first = every2;
  first.push_back({"--max_steps", "2"});
  ASSERT_TRUE(Succeeded(Run("first", "cuda", 1, first)));
  const auto whole = TrainLosses(tmp_ / "whole");
  for (const std::string accelerator : {"cpu", "cuda"}) {
    auto resume = every2;
    resume.push_back({"--ckpt_path", tmp_ / "first/checkpoints/last"});
    const std::string root = "resumed_" + accelerator;
    ASSERT_TRUE(Succeeded(Run(root, accelerator, 1, resume)));
    const auto resumed = TrainLosses(tmp_ / root);
    ASSERT_EQ(resumed.size(), 2u) << root;
    for (const auto& [step, loss] : resumed) {
      EXPECT_NEAR(loss, whole.at(step), 2e-5 * loss) << root << " step " << step;
    }
  }
}

// MINGPT_CUDA_EMULATOR_SKIP_COMPUTE, for sizing configurations too large to
// compute here: the same device allocations as the run that computes.
TEST_F(TrainOnEmulatedCuda, SkippingComputeKeepsTheAllocations) {
  const std::vector<std::pair<std::string, std::string>> seed = {
      {"--precision", "16"}, {"--strategy", "deepspeed_stage_3_offload"}};
  ASSERT_TRUE(Succeeded(Run("computed", "cuda", 1, seed)));
  ASSERT_TRUE(
      Succeeded(Run("skipped", "cuda", 1, seed, {{"MINGPT_CUDA_EMULATOR_SKIP_COMPUTE", "1"}})));
  EXPECT_GT(PeakDeviceBytes("computed"), 0);
  EXPECT_EQ(PeakDeviceBytes("skipped"), PeakDeviceBytes("computed"));
}

// NVMe offload (stage 3, the state in files under --offload_dir) on the
// emulated GPU: the CPU's trajectory, with the buffers device copies use
// (the optimizer's pool, two gradient staging buffers, two parameter read
// buffers) page-locked.
TEST_F(TrainOnEmulatedCuda, NvmeOffloadFollowsTheCpuTrajectory) {
  const std::string stats = tmp_ / "nvme.stats";
  for (const std::string accelerator : {"cpu", "cuda"}) {
    const std::string dir = tmp_ / ("nvme_" + accelerator);
    ASSERT_TRUE(std::filesystem::create_directories(dir));
    ASSERT_TRUE(Succeeded(Run(accelerator, accelerator, 1,
                              {{"--precision", "bf16"},
                               {"--strategy", "deepspeed_stage_3_offload_nvme"},
                               {"--offload_dir", dir}},
                              {{"MINGPT_CUDA_EMULATOR_STATS", stats}})));
  }
  ExpectSameTrajectory("cpu", "cuda");
  std::ifstream f(stats);
  std::string line;
  std::getline(f, line);
  EXPECT_NE(line.find("host_registers=5 "), std::string::npos) << line;
}

// `sample` (the KV-cache decoder) and `evaluate` on the emulated GPU print
// what they print on the CPU, from one checkpoint.
TEST_F(TrainOnEmulatedCuda, SampleAndEvaluateMatchTheCpu) {
  ASSERT_TRUE(Succeeded(Run("trained", "cpu", 1, {{"--max_steps", "3"}})));
  const std::string ckpt = tmp_ / "trained/checkpoints/last";
  RunOptions o = Options();
  o.env["MINGPT_CUDA_PLUGIN"] = MINGPT_CUDA_EMULATED_PLUGIN;
  o.timeout_s = 300;
  std::map<std::string, std::string> sampled, evaluated;
  for (const std::string accelerator : {"cpu", "cuda"}) {
    const ProcessResult s = RunMingpt({"sample", "--checkpoint", ckpt, "--prompt", "the ",
                                       "--steps", "30", "--seed", "5", "--accelerator",
                                       accelerator}, o);
    ASSERT_TRUE(Succeeded(s));
    sampled[accelerator] = s.out;
    const ProcessResult e = RunMingpt({"evaluate", "--checkpoint", ckpt, "--data", data_,
                                       "--split", "val", "--accelerator", accelerator}, o);
    ASSERT_TRUE(Succeeded(e));
    evaluated[accelerator] = e.out;
  }
  EXPECT_EQ(sampled["cuda"], sampled["cpu"]);
  EXPECT_FALSE(sampled["cpu"].empty());
  EXPECT_EQ(evaluated["cuda"], evaluated["cpu"]);
  EXPECT_NE(evaluated["cpu"].find("val loss"), std::string::npos) << evaluated["cpu"];
}

}  // namespace
}  // namespace mingpt::cli_test
