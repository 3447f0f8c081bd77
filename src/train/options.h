// TrainOptions: everything `mingpt train` is told, with the seed's and
// Lightning's names. Fractions follow Lightning: a limit or interval <= 1.0
// is a fraction of an epoch (or of the val split), above 1 a count.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "core/status.h"
#include "engine/nvme_state.h"
#include "model/config.h"
#include "optim/adamw.h"

namespace mingpt {

struct TrainOptions {
  ModelConfig model;
  int batch_size = 32;
  AdamWConfig optim;
  double warmup_tokens = 512.0 * 20;
  int64_t max_steps = -1;           // -1: max_epochs decides
  int max_epochs = 1;
  double limit_train_batches = 1.0;
  double val_check_interval = 1.0;  // fraction of an epoch or a step count
  double limit_val_batches = 1.0;   // 0 disables validation
  double gradient_clip_val = 1.0;   // 0 disables clipping
  int accumulate_grad_batches = 1;
  std::string precision = "32";      // 32 | 32-true | bf16 | bf16-mixed | 16 | 16-mixed
  int initial_scale_power = 16;     // --precision 16: the loss scale starts at 2^this
  uint64_t seed = 42;
  std::string default_root_dir;
  // default_root_dir is the default runs/<time>: rank 0 creates it anew, as
  // runs/<time>-2, -3, ... when another run (started in the same second) has it.
  bool new_root_dir = false;
  std::string data_path;
  int num_threads = 1;
  std::string ckpt_path;            // resume from this checkpoint
  int log_every_n_steps = 50;
  std::string strategy = "auto";
  int devices = 1;                  // ranks; the launcher's world size decides under mpirun
  std::string accelerator = "auto";  // cpu | cuda (gpu) | auto; ResolveAccelerator
  std::string offload_dir;          // deepspeed_stage_3_offload_nvme: where its files go
  std::string offload_params = "nvme";  // nvme | cpu: where NVMe offload keeps the parameters
  int offload_buffer_mb = 256;      // NVMe offload's optimizer streaming pool
  bool activation_checkpointing = false;
  bool enable_checkpointing = true;  // Lightning's flag: false saves no checkpoint
  bool profile_memory = false;      // print each rank's memory at the end
  bool profile = false;             // print each rank's time per phase at the end
  size_t memory_budget = 0;         // bytes per rank for --strategy auto; 0: available / local ranks
  int progress = -1;                // -1: a bar when stderr is a terminal
  // Lines rank 0 prints once the setup has succeeded: the training flags
  // given with another value than the resumed checkpoint's.
  std::vector<std::string> notes;
};

// The matrix-product precision a --precision value names, or an error
// listing the known values.
StatusOr<MatmulPrecision> ParsePrecision(const std::string& precision);

// NVMe offload's settings from --offload_dir, --offload_params and
// --offload_buffer_mb.
NvmeOptions NvmeSettings(const TrainOptions& options);

// --num_threads: positive, and at most 4 threads per hardware thread of this
// machine (OpenMP with thousands of threads crawls, and past its limits it
// crashes).
Status ValidateNumThreads(int threads);

// Checks the options that do not depend on the data (sizes, ranges,
// strategy, precision, devices). One clear error for the first problem.
Status ValidateTrainOptions(const TrainOptions& options);

}  // namespace mingpt
