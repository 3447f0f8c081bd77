// comm_split_worker: training hands host memory to the host communicator and
// backend memory to the device communicator, never the other way round; run
// by comm_split_test under `mpirun -np N`.
//
//   comm_split_worker DIR
//
// For each strategy all ranks train twice:
//   plain    Train over MPI, as `mingpt train` on the CPU;
//   checked  Train through the checking pair of memory_checks.h, arranged as
//            a CUDA rank is: a RecordingBackend (its Malloc is "device"
//            memory), a separate CPU backend for offload's host state, a
//            kDevice CheckingCommunicator over MPI as the device
//            communicator and a kHost one over MPI as the host communicator.
//            It stops after 3 of the 6 steps (validating and saving `last`)
//            and a second checked Train resumes from that checkpoint.
// Both runs accumulate 2 micro-batches with dropout, validate, save sharded
// checkpoints and print the --profile and --profile_memory tables. Required:
// no violation on either communicator, both communicators used, and the
// checked run's per-step train losses (metrics.csv cells) and final weights
// equal to the plain run's, bit for bit (the same collectives in the same
// order). Prints one line per strategy on rank 0 and "FAIL: ..." for each
// failure; exits 1 on any (every rank learns the outcome).
#include <cstdio>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "common/metrics_csv.h"
#include "engine/memory_checks.h"
#include "engine/mpi_worker.h"
#include "train/trainer.h"

namespace mingpt {
namespace {

namespace fs = std::filesystem;

constexpr int kSteps = 6;

TrainOptions Options(const fs::path& dir, const std::string& root, const std::string& strategy) {
  TrainOptions o;
  o.model.n_layer = 2;
  o.model.n_head = 2;
  o.model.n_embd = 24;
  o.model.block_size = 8;
  o.model.dropout = 0.1f;
  o.batch_size = 2;
  o.accumulate_grad_batches = 2;
  o.strategy = strategy;
  o.max_steps = kSteps;
  o.val_check_interval = 3;
  o.limit_val_batches = 2;
  o.optim.learning_rate = 1e-3f;
  o.warmup_tokens = 64;
  o.gradient_clip_val = 0.5;
  o.num_threads = 1;
  o.log_every_n_steps = 1;
  o.progress = 0;
  o.profile = true;
  o.profile_memory = true;
  o.accelerator = "cpu";
  o.data_path = (dir / "data.txt").string();
  o.default_root_dir = (dir / root).string();
  if (strategy == "deepspeed_stage_3_offload_nvme") {
    o.offload_dir = dir.string();
    o.offload_buffer_mb = 1;
  }
  return o;
}

// The checked run of `strategy` into DIR/<strategy>-checked, in two parts;
// the logs of both parts' communicators into *host_log and *device_log.
Status TrainChecked(Communicator* mpi, const fs::path& dir, const std::string& strategy,
                    test::CheckLog* host_log, test::CheckLog* device_log) {
  for (int part = 0; part < 2; ++part) {
    TrainOptions o = Options(dir, strategy + "-checked", strategy);
    if (part == 0) o.max_steps = kSteps / 2;
    if (part == 1) o.ckpt_path = o.default_root_dir + "/checkpoints/last";
    test::DeviceMemory memory;  // outlives every backend of this part
    test::CheckingCommunicator host(mpi, &memory, test::CheckingCommunicator::kHost, host_log);
    RankDeviceFactory make_device = [&](const std::string& accelerator, Communicator* host_comm,
                                        int threads) -> StatusOr<RankDevice> {
      if (accelerator != "cpu" || host_comm != &host) {
        return Status::Error("the factory got accelerator '" + accelerator +
                             "' or a host communicator other than the checked one");
      }
      RankDevice d;
      d.backend = std::make_unique<test::RecordingBackend>(MakeCpuBackend(threads), &memory);
      d.host_backend = MakeCpuBackend(threads);
      d.device_comm = std::make_unique<test::CheckingCommunicator>(
          mpi, &memory, test::CheckingCommunicator::kDevice, device_log);
      return d;
    };
    MINGPT_RETURN_IF_ERROR(Train(o, &host, nullptr, make_device).status());
  }
  return Status::Ok();
}

// This rank's verdict on the checked run's communicators.
Status CheckLogs(const std::string& strategy, const test::CheckLog& host,
                 const test::CheckLog& device) {
  std::map<std::string, int> seen;  // each kind of violation once, with its count
  for (const std::string& v : host.violations()) ++seen[v];
  for (const std::string& v : device.violations()) ++seen[v];
  std::string problems;
  for (const auto& [v, n] : seen) problems += "; " + v + " (" + std::to_string(n) + "x)";
  if (host.calls() == 0) problems += "; the host communicator was never used";
  if (device.calls() == 0) problems += "; the device communicator was never used";
  if (problems.empty()) return Status::Ok();
  return Status::Error(strategy + ": " + problems.substr(2));
}

// Rank 0: the checked run against the plain one.
Status Compare(const fs::path& dir, const std::string& strategy, const test::CheckLog& host,
               const test::CheckLog& device) {
  const auto plain = test::TrainLossCells((dir / (strategy + "-plain")).string());
  const auto checked = test::TrainLossCells((dir / (strategy + "-checked")).string());
  if (plain.size() != kSteps) return Status::Error(strategy + ": the plain run lacks steps");
  if (checked != plain) {
    return Status::Error(strategy + ": the checked run's losses differ from the plain run's");
  }
  MINGPT_ASSIGN_OR_RETURN(std::vector<float> wp, test::LastWeights(dir / (strategy + "-plain")));
  MINGPT_ASSIGN_OR_RETURN(std::vector<float> wc,
                          test::LastWeights(dir / (strategy + "-checked")));
  if (wp != wc) {
    return Status::Error(strategy + ": the checked run's weights differ from the plain run's");
  }
  std::printf("%-32s host collectives %5lld  device collectives %5lld  no violation; losses "
              "%s -> %s as the plain run\n",
              strategy.c_str(), static_cast<long long>(host.calls()),
              static_cast<long long>(device.calls()), plain.begin()->second.c_str(),
              plain.rbegin()->second.c_str());
  return Status::Ok();
}

int Run(const fs::path& dir) {
  std::unique_ptr<Communicator> comm = test::JoinWorld();
  if (!comm) return 1;
  test::WritePhraseText(comm.get(), dir);
  int failures = 0;
  for (const char* name : test::kEveryStrategy) {
    const std::string strategy = name;
    test::CheckLog host_log, device_log;
    Status s = Train(Options(dir, strategy + "-plain", strategy), comm.get()).status();
    if (s.ok()) s = TrainChecked(comm.get(), dir, strategy, &host_log, &device_log);
    if (s.ok()) s = CheckLogs(strategy, host_log, device_log);
    s = AgreeOnStatus(comm.get(), s);
    if (s.ok() && comm->rank() == 0) s = Compare(dir, strategy, host_log, device_log);
    test::CountFailure(comm.get(), s, &failures);
  }
  return failures == 0 ? 0 : 1;
}

}  // namespace
}  // namespace mingpt

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: comm_split_worker DIR\n");
    return 2;
  }
  return mingpt::Run(argv[1]);
}
