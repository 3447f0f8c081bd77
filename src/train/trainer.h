// Train: the `mingpt train` loop. Reads the data, builds the model (or
// resumes it from options.ckpt_path, whose model config the caller has already
// reconciled with the flags), and runs optimizer steps with validation, a
// progress display, metrics.csv, and the best/last checkpoints under
// <default_root_dir>/checkpoints.
//
// One optimizer step s (0-based) consumes accumulate_grad_batches micro-
// batches of batch_size samples; micro-batch m of step s holds the global
// samples (s*k + m)*B .. (s*k + m)*B + B-1 (k = accumulate_grad_batches), so
// k micro-batches of B equal one batch of k*B. Its learning rate is the
// schedule's at the token count including the step's own tokens.
#pragma once

#include <atomic>
#include <functional>
#include <string>

#include "core/status.h"
#include "dist/communicator.h"
#include "engine/strategy.h"
#include "train/accelerator.h"
#include "train/options.h"

namespace mingpt {

struct TrainSummary {
  std::string root_dir;       // the run directory (a new default one: runs/<time>-2, say)
  int64_t steps = 0;          // training steps completed in total
  int64_t skipped_steps = 0;  // --precision 16: steps skipped on overflow
  int64_t tokens = 0;
  double last_train_loss = 0;
  double best_val_loss = 0;   // inf when never validated
  bool interrupted = false;   // stopped early by *stop
  MemoryAccount memory;       // this rank's training state
  size_t activation_bytes = 0;
};

// Makes a rank's backend and device communicator: MakeRankDevice's
// signature (accelerator.h).
using RankDeviceFactory = std::function<StatusOr<RankDevice>(
    const std::string& accelerator, Communicator* host, int cpu_threads)>;

// `stop`, when set to true (e.g. by SIGINT), ends training after the current
// step with a last checkpoint written.
StatusOr<TrainSummary> Train(TrainOptions options, const std::atomic<bool>* stop = nullptr);

// Checks everything Train checks before its first collective (flags, data,
// checkpoint, memory; under CUDA, a GPU for each of the options.devices
// ranks) for a run of options.devices ranks, creating nothing: the launcher
// calls it before it starts any rank, all of them on this machine.
Status CheckTrainSetup(TrainOptions options);

// The same on the ranks of `comm` (a collective: every rank calls it with the
// same options). options.batch_size is per rank. Every rank gets the same
// result; errors met by one rank reach the others as IsPeerFailure errors.
// `comm` is the host communicator: every collective on host memory (the
// configuration and status agreements, the step's loss, the gradient norm,
// metrics and memory tables, validation sums, checkpoint saves) goes to it;
// collectives on backend memory go to the RankDevice's device communicator
// (RankDevice::comms). `make_device` (empty: MakeRankDevice) is a test seam:
// wrappers that check which memory each communicator is handed.
StatusOr<TrainSummary> Train(TrainOptions options, Communicator* comm,
                             const std::atomic<bool>* stop = nullptr,
                             const RankDeviceFactory& make_device = {});

}  // namespace mingpt
