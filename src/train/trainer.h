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
#include <string>

#include "core/status.h"
#include "train/options.h"

namespace mingpt {

struct TrainSummary {
  int64_t steps = 0;          // optimizer steps completed in total
  int64_t tokens = 0;
  double last_train_loss = 0;
  double best_val_loss = 0;   // inf when never validated
  bool interrupted = false;   // stopped early by *stop
};

// `stop`, when set to true (e.g. by SIGINT), ends training after the current
// step with a last checkpoint written.
StatusOr<TrainSummary> Train(TrainOptions options, const std::atomic<bool>* stop = nullptr);

}  // namespace mingpt
