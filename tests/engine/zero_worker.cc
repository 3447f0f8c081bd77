// zero_worker: the equivalence check of every strategy, run by
// zero_equivalence_test under `mpirun -np N` (N = 1..4).
//
//   zero_worker DIR
//
// For each strategy and case, all ranks train 20 steps together with batch b
// per rank (Train over MPI); then rank 0 trains the same 20 steps alone with
// batch N*b (the single-process trajectory) and compares the per-step train
// losses (metrics.csv) within 1e-5 relative and the final weights (the
// checkpoints' consolidated parameters) within 1e-5. Prints one line per
// case on rank 0; exits 1 on any mismatch (every rank learns the outcome).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "common/metrics_csv.h"
#include "engine/mpi_worker.h"
#include "train/trainer.h"

namespace mingpt {
namespace {

namespace fs = std::filesystem;

struct Case {
  const char* name;
  int accumulate = 1;
  float dropout = 0.0f;
  bool checkpointing = false;
};

constexpr int kSteps = 20;
constexpr int kBatch = 2;

TrainOptions Options(const fs::path& dir, const std::string& root, const std::string& strategy,
                     int batch, const Case& c) {
  TrainOptions o;
  o.model.n_layer = 2;
  o.model.n_head = 2;
  o.model.n_embd = 24;  // units whose sizes need padding at N = 3 and 4
  o.model.block_size = 8;
  o.model.dropout = c.dropout;
  o.batch_size = batch;
  o.accumulate_grad_batches = c.accumulate;
  o.activation_checkpointing = c.checkpointing;
  o.strategy = strategy;
  o.max_steps = kSteps;
  o.val_check_interval = 10;
  o.limit_val_batches = 3;
  // Large enough to move the weights visibly in 20 steps; Adam turns float
  // rounding in near-zero gradients into differences of order lr, so not larger.
  o.optim.learning_rate = 1e-3f;
  o.warmup_tokens = 64;
  o.gradient_clip_val = 0.5;      // active: the global norm matters
  o.num_threads = 1;
  o.log_every_n_steps = 1;
  o.progress = 0;
  o.data_path = (dir / "data.txt").string();
  o.default_root_dir = (dir / root).string();
  if (strategy == "deepspeed_stage_3_offload_nvme") {
    // Both NVMe layouts; a pool of 1 MiB: the optimizer streams every unit
    // in several chunks (the largest unit here is about 7k floats a rank).
    o.offload_dir = dir.string();
    o.offload_params = c.dropout > 0 ? "cpu" : "nvme";
    o.offload_buffer_mb = 1;
  }
  return o;
}

// Rank 0: the single-process run and the comparison.
Status Compare(const fs::path& dir, const std::string& strategy, int world, const Case& c) {
  const std::string sharded = strategy + "-" + c.name, single = sharded + "-single";
  std::unique_ptr<Communicator> local = MakeLocalCommunicator();
  TrainOptions o = Options(dir, single, "single_device", kBatch * world, c);
  o.activation_checkpointing = false;
  MINGPT_RETURN_IF_ERROR(Train(o, local.get()).status());
  const auto a = test::TrainLosses(dir / sharded), b = test::TrainLosses(dir / single);
  if (a.size() != kSteps || b.size() != kSteps) return Status::Error("metrics.csv lacks steps");
  double worst_loss = 0, worst_weight = 0;
  for (const auto& [step, loss] : b) {
    worst_loss = std::max(worst_loss, std::abs(a.at(step) - loss) / std::abs(loss));
  }
  MINGPT_ASSIGN_OR_RETURN(std::vector<float> wa, test::LastWeights(dir / sharded));
  MINGPT_ASSIGN_OR_RETURN(std::vector<float> wb, test::LastWeights(dir / single));
  for (size_t i = 0; i < wa.size(); ++i) {
    worst_weight = std::max(worst_weight, static_cast<double>(std::abs(wa[i] - wb[i])));
  }
  std::printf("%-18s %-14s N=%d  loss rel diff %.2e  weight abs diff %.2e  (loss %.4f -> %.4f)\n",
              strategy.c_str(), c.name, world, worst_loss, worst_weight, b.begin()->second,
              b.rbegin()->second);
  if (worst_loss > 1e-5 || worst_weight > 1e-5) {
    return Status::Error(strategy + " " + c.name + " departs from the single-process trajectory");
  }
  return Status::Ok();
}

int Run(const fs::path& dir) {
  std::unique_ptr<Communicator> comm = test::JoinWorld();
  if (!comm) return 1;
  const int world = comm->world();
  test::WritePhraseText(comm.get(), dir);
  const Case cases[] = {{"plain"}, {"accumulate", 2}, {"dropout", 1, 0.1f},
                        {"checkpointing", 1, 0.1f, true}};
  int failures = 0;
  for (const char* strategy : test::kEveryStrategy) {
    for (const Case& c : cases) {
      Status s = Train(Options(dir, std::string(strategy) + "-" + c.name, strategy, kBatch, c),
                       comm.get()).status();
      if (s.ok() && comm->rank() == 0) s = Compare(dir, strategy, world, c);
      test::CountFailure(comm.get(), s, &failures);
    }
  }
  return failures == 0 ? 0 : 1;
}

}  // namespace
}  // namespace mingpt

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: zero_worker DIR\n");
    return 2;
  }
  return mingpt::Run(argv[1]);
}
