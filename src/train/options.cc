#include "train/options.h"

#include "train/accelerator.h"

#include <algorithm>
#include <cmath>
#include <string>
#include <thread>

#include "engine/strategies.h"

namespace mingpt {

namespace {
constexpr int kMaxAccumulate = 1 << 16;
}  // namespace

Status ValidateNumThreads(int threads) {
  if (threads <= 0) return Status::Error("--num_threads must be positive");
  const int hardware = std::max(1u, std::thread::hardware_concurrency());
  if (threads > 4 * hardware) {
    return Status::Error("--num_threads " + std::to_string(threads) + " is more than 4 per hardware thread (this machine has " +
                         std::to_string(hardware) + ")");
  }
  return Status::Ok();
}

StatusOr<MatmulPrecision> ParsePrecision(const std::string& p) {
  if (p == "32" || p == "32-true") return MatmulPrecision::kFp32;
  if (p == "bf16" || p == "bf16-mixed") return MatmulPrecision::kBf16;
  if (p == "16" || p == "16-mixed") return MatmulPrecision::kFp16;
  return Status::Error("unknown --precision '" + p +
                       "' (known: 32, 32-true, bf16, bf16-mixed, 16, 16-mixed)");
}

NvmeOptions NvmeSettings(const TrainOptions& o) {
  return {o.offload_dir, o.offload_params == "nvme", static_cast<size_t>(o.offload_buffer_mb) << 20};
}

Status ValidateTrainOptions(const TrainOptions& o) {
  ModelConfig shape = o.model;  // the vocabulary comes from the data later
  if (shape.vocab_size == 0) shape.vocab_size = 1;
  MINGPT_RETURN_IF_ERROR(shape.Validate());
  auto err = [](const std::string& m) { return Status::Error(m); };
  if (o.batch_size <= 0) return err("--batch_size must be positive, got " + std::to_string(o.batch_size));
  if (o.accumulate_grad_batches <= 0 || o.accumulate_grad_batches > kMaxAccumulate) {
    return err("--accumulate_grad_batches must be in [1, " + std::to_string(kMaxAccumulate) + "], got " +
               std::to_string(o.accumulate_grad_batches));
  }
  // (Written so that NaN fails too; infinities are refused as well.)
  if (!(o.optim.learning_rate > 0) || std::isinf(o.optim.learning_rate)) {
    return err("--learning_rate must be a positive number");
  }
  if (!(o.optim.weight_decay >= 0) || std::isinf(o.optim.weight_decay)) {
    return err("--weight_decay must be a number >= 0");
  }
  if (!(o.warmup_tokens >= 0) || std::isinf(o.warmup_tokens)) {
    return err("--warmup_tokens must be a number >= 0");
  }
  if (o.max_steps == 0 || o.max_steps < -1) return err("--max_steps must be positive (or -1 for max_epochs)");
  if (o.max_epochs <= 0) return err("--max_epochs must be positive");
  // Counts past 2^31 overflow the integers they become.
  constexpr double kMaxCount = 1u << 31;
  if (!(o.limit_train_batches > 0) || !(o.limit_train_batches < kMaxCount)) {
    return err("--limit_train_batches must be a fraction in (0, 1] or a count below 2^31");
  }
  if (!(o.limit_val_batches >= 0) || !(o.limit_val_batches < kMaxCount)) {
    return err("--limit_val_batches must be a fraction in [0, 1] or a count below 2^31");
  }
  if (!(o.val_check_interval > 0) || !(o.val_check_interval < kMaxCount)) {
    return err("--val_check_interval must be a fraction in (0, 1] or a count below 2^31");
  }
  if (!(o.gradient_clip_val >= 0) || std::isinf(o.gradient_clip_val)) {
    return err("--gradient_clip_val must be a number >= 0");
  }
  MINGPT_RETURN_IF_ERROR(ValidateNumThreads(o.num_threads));
  if (o.log_every_n_steps <= 0) return err("--log_every_n_steps must be positive");
  MINGPT_RETURN_IF_ERROR(ParsePrecision(o.precision).status());
  if (o.initial_scale_power < 0 || o.initial_scale_power > 32) {
    return err("--initial_scale_power must be in [0, 32], got " + std::to_string(o.initial_scale_power));
  }
  MINGPT_RETURN_IF_ERROR(ValidateStrategyName(o.strategy));
  MINGPT_RETURN_IF_ERROR(ResolveAccelerator(o.accelerator).status());
  if (IsNvmeStrategy(o.strategy) && o.offload_dir.empty()) {
    return err("--strategy " + o.strategy + " needs --offload_dir (a directory on a fast disk)");
  }
  if (!o.offload_dir.empty() && !IsNvmeStrategy(o.strategy) && o.strategy != "auto") {
    return err("--offload_dir is for --strategy deepspeed_stage_3_offload_nvme (or auto, which "
               "may then choose it)");
  }
  if (o.offload_params != "nvme" && o.offload_params != "cpu") {
    return err("--offload_params must be nvme or cpu, got '" + o.offload_params + "'");
  }
  if (o.offload_buffer_mb < 1 || o.offload_buffer_mb > (1 << 20)) {
    return err("--offload_buffer_mb must be in [1, 1048576], got " +
               std::to_string(o.offload_buffer_mb));
  }
  if (o.devices <= 0) return err("--devices must be positive, got " + std::to_string(o.devices));
  if (o.strategy == "single_device" && o.devices > 1) {
    return err("--strategy single_device runs one process; with --devices " +
               std::to_string(o.devices) + " use ddp or deepspeed_stage_1/2/3 (or auto)");
  }
  return Status::Ok();
}

}  // namespace mingpt
