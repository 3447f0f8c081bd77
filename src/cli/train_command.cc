#include <climits>
#include <cmath>
#include <csignal>
#include <ctime>
#include <filesystem>
#include <memory>
#include <thread>
#include <type_traits>

#include "cli/commands.h"
#include "dist/agree.h"
#include "dist/launch.h"
#include "engine/strategies.h"
#include "io/file.h"
#include "train/model_checkpoint.h"
#include "train/planner.h"
#include "train/trainer.h"

namespace mingpt::cli {
namespace {

// The first SIGINT/SIGTERM sets g_stop: the trainer finishes its step, saves
// `last`, and stops. A second one ends the process at once (the checkpoint
// on disk stays whole: saving is atomic).
std::atomic<bool> g_stop{false};
extern "C" void OnSignal(int sig) {
  if (g_stop.exchange(true)) {
    std::signal(sig, SIG_DFL);
    std::raise(sig);
  }
}

std::string DefaultRunDir() {
  char buf[64];
  std::time_t now = std::time(nullptr);
  std::strftime(buf, sizeof(buf), "runs/%Y%m%d-%H%M%S", std::localtime(&now));
  return buf;
}

struct TrainFlags {
  TrainOptions o;
  std::string model_type;
  std::string data;
  std::string memory_budget;
  CLI::Option *n_layer, *n_head, *n_embd, *block_size, *dropout, *model_type_opt;
  CLI::Option *devices, *gpus, *num_threads;
  CLI::Option *batch_size, *learning_rate, *weight_decay, *warmup_tokens, *gradient_clip_val,
      *accumulate_grad_batches, *precision, *initial_scale_power, *seed;
  CLI::Option *offload_params, *offload_buffer_mb, *memory_budget_opt;
};

// A value in a note: numbers as %g (a float's 0.0003, not its 17 digits).
std::string Shown(double v) {
  char b[32];
  std::snprintf(b, sizeof(b), "%g", v);
  return b;
}
std::string Shown(int v) { return std::to_string(v); }
std::string Shown(const std::string& v) { return v; }

// A training setting meta.json's "options" records under `key` (older
// checkpoints record none). Its flag not given (or none: AdamW's eps), it
// takes the recorded value, so that a plain resume continues the run it
// resumes (its batch, learning rate, precision...); given with another value
// it wins, as in Lightning, with a note.
template <typename T>
Status Restore(const nlohmann::json& recorded, const std::string& key, CLI::Option* flag,
               T* value, const std::string& where, std::vector<std::string>* notes) {
  auto it = recorded.find(key);
  if (it == recorded.end()) return Status::Ok();
  const std::string bad = where + ": meta.json options '" + key + "' is ";
  T saved{};
  if constexpr (std::is_same_v<T, std::string>) {
    if (!it->is_string()) return Status::Error(bad + "not a string");
    saved = it->template get<std::string>();
  } else if constexpr (std::is_integral_v<T>) {
    if (!it->is_number_integer() || it->template get<double>() < INT_MIN ||
        it->template get<double>() > INT_MAX) {
      return Status::Error(bad + "not an integer");
    }
    saved = static_cast<T>(it->template get<int64_t>());
  } else {
    if (!it->is_number()) return Status::Error(bad + "not a number");
    saved = static_cast<T>(it->template get<double>());
  }
  if (flag == nullptr || flag->count() == 0) {
    *value = saved;
    return Status::Ok();
  }
  bool differs = *value != saved;
  if constexpr (std::is_same_v<T, std::string>) {  // --precision: "bf16" is "bf16-mixed"
    const StatusOr<MatmulPrecision> a = ParsePrecision(*value), b = ParsePrecision(saved);
    if (a.ok() && b.ok()) differs = *a != *b;
  }
  if (differs) {
    notes->push_back("resuming with --" + key + " " + Shown(*value) +
                     " (the checkpoint trained with " + Shown(saved) + ")");
  }
  return Status::Ok();
}

// With --ckpt_path the model comes from the checkpoint; flags given
// explicitly must agree with it. So must --seed: the data order and dropout
// masks of the steps to come follow the recorded one. The training settings
// come from it too, unless given (Restore).
Status Reconcile(TrainFlags* f) {
  MINGPT_ASSIGN_OR_RETURN(OpenedCheckpoint ckpt, OpenTrainingCheckpoint(f->o.ckpt_path));
  const ModelConfig& c = ckpt.config;
  const ModelConfig& g = f->o.model;
  const bool preset = f->model_type_opt->count() > 0;  // sets n_layer, n_head, n_embd
  auto check = [&](CLI::Option* opt, const char* name, int given, int saved) -> Status {
    const bool by_preset = preset && std::string(name) != "block_size";
    if ((opt->count() > 0 || by_preset) && given != saved) {
      // Name the flag the user gave: the preset's size otherwise.
      const std::string size = std::string(name) + " " + std::to_string(given);
      const std::string flag =
          opt->count() > 0 ? "--" + size : "--model_type " + f->model_type + " (" + size + ")";
      return Status::Error(flag + " disagrees with --ckpt_path, whose model has " + name + " " +
                           std::to_string(saved));
    }
    return Status::Ok();
  };
  MINGPT_RETURN_IF_ERROR(check(f->n_layer, "n_layer", g.n_layer, c.n_layer));
  MINGPT_RETURN_IF_ERROR(check(f->n_head, "n_head", g.n_head, c.n_head));
  MINGPT_RETURN_IF_ERROR(check(f->n_embd, "n_embd", g.n_embd, c.n_embd));
  MINGPT_RETURN_IF_ERROR(check(f->block_size, "block_size", g.block_size, c.block_size));
  if (f->dropout->count() > 0 && g.dropout != c.dropout) {
    return Status::Error("--dropout disagrees with --ckpt_path, whose model has dropout " +
                         std::to_string(c.dropout));
  }
  if (f->seed->count() > 0 && f->o.seed != ckpt.state.seed) {
    return Status::Error("--seed " + std::to_string(f->o.seed) +
                         " disagrees with --ckpt_path, whose run has seed " +
                         std::to_string(ckpt.state.seed));
  }
  if (f->initial_scale_power->count() > 0 && ckpt.state.loss_scaler) {
    return Status::Error("--initial_scale_power sets where a loss scale starts; --ckpt_path "
                         "continues with the checkpoint's (" +
                         Shown(ckpt.state.loss_scaler->scale) + ")");
  }
  f->o.model = c;
  f->o.seed = ckpt.state.seed;
  const auto recorded = ckpt.checkpoint.meta.find("options");
  if (recorded != ckpt.checkpoint.meta.end() && recorded->is_object()) {
    const std::string where = "checkpoint '" + f->o.ckpt_path + "'";
    TrainOptions& o = f->o;
    std::vector<std::string>* notes = &o.notes;
    MINGPT_RETURN_IF_ERROR(
        Restore(*recorded, "batch_size", f->batch_size, &o.batch_size, where, notes));
    MINGPT_RETURN_IF_ERROR(Restore(*recorded, "learning_rate", f->learning_rate,
                                   &o.optim.learning_rate, where, notes));
    MINGPT_RETURN_IF_ERROR(Restore(*recorded, "weight_decay", f->weight_decay,
                                   &o.optim.weight_decay, where, notes));
    MINGPT_RETURN_IF_ERROR(Restore(*recorded, "warmup_tokens", f->warmup_tokens, &o.warmup_tokens,
                                   where, notes));
    MINGPT_RETURN_IF_ERROR(Restore(*recorded, "gradient_clip_val", f->gradient_clip_val,
                                   &o.gradient_clip_val, where, notes));
    MINGPT_RETURN_IF_ERROR(Restore(*recorded, "accumulate_grad_batches",
                                   f->accumulate_grad_batches, &o.accumulate_grad_batches, where,
                                   notes));
    MINGPT_RETURN_IF_ERROR(
        Restore(*recorded, "precision", f->precision, &o.precision, where, notes));
    MINGPT_RETURN_IF_ERROR(Restore(*recorded, "eps", nullptr, &o.optim.eps, where, notes));
    const auto betas = recorded->find("betas");
    if (betas != recorded->end()) {
      if (!betas->is_array() || betas->size() != 2 || !(*betas)[0].is_number() ||
          !(*betas)[1].is_number()) {
        return Status::Error(where + ": meta.json options 'betas' is not two numbers");
      }
      o.optim.beta1 = (*betas)[0].get<float>();
      o.optim.beta2 = (*betas)[1].get<float>();
    }
  }
  if (f->data.empty() && !ckpt.data_path.empty() && std::getenv("MINGPT_DATA") == nullptr) {
    f->data = ckpt.data_path;
  }
  return Status::Ok();
}

// Starts `devices` ranks of this command through mpirun, each given the
// data file and run directory this process resolved (so all agree), and
// ends this process with mpirun's exit code. A default run directory is
// left to the ranks: their rank 0 creates a new one.
Status Launch(const TrainOptions& o) {
  std::map<std::string, std::string> resolved = {{"--data", o.data_path}};
  if (!o.new_root_dir) {
    resolved["--default_root_dir"] = std::filesystem::absolute(o.default_root_dir).string();
  }
  return RelaunchUnderMpirun(o.devices, resolved);
}

// `train` refuses a flag that its other flags make meaningless, as it does
// --offload_dir, rather than ignore it. (`plan` takes them all: its table
// has an NVMe row whatever the strategy, and always a budget.)
Status CheckFlagsApply(const TrainFlags& f) {
  const TrainOptions& o = f.o;
  const bool nvme = IsNvmeStrategy(o.strategy) || (o.strategy == "auto" && !o.offload_dir.empty());
  for (CLI::Option* flag : {f.offload_params, f.offload_buffer_mb}) {
    if (flag->count() > 0 && !nvme) {
      return Status::Error(flag->get_name() + " is for --strategy deepspeed_stage_3_offload_nvme "
                           "(or auto with --offload_dir)");
    }
  }
  if (f.initial_scale_power->count() > 0 &&
      ParsePrecision(o.precision).value() != MatmulPrecision::kFp16) {
    return Status::Error("--initial_scale_power is for --precision 16 (its loss scaling)");
  }
  if (f.memory_budget_opt->count() > 0 && o.strategy != "auto") {
    return Status::Error("--memory_budget is for --strategy auto (it chooses within it), not " +
                         o.strategy);
  }
  return Status::Ok();
}


// Applies the preset, the checkpoint's model, the data path and the run
// directory: the flags as `train` and `plan` use them.
Status ResolveFlags(TrainFlags* f) {
  if (f->gpus->count() > 0) {
    if (f->o.devices <= 0) return Status::Error("--gpus must be positive, got " + std::to_string(f->o.devices));
    if (f->o.accelerator != "auto" && f->o.accelerator != "cuda" && f->o.accelerator != "gpu") {
      return Status::Error("--gpus runs on CUDA devices; it cannot be combined with --accelerator " +
                           f->o.accelerator + " (use --devices)");
    }
    f->o.accelerator = "cuda";
  }
  if (f->model_type_opt->count() > 0) {
    // As minGPT's config asserts: a preset or the sizes, not both (the
    // preset would silently win).
    for (CLI::Option* size : {f->n_layer, f->n_head, f->n_embd}) {
      if (size->count() > 0) {
        return Status::Error("--model_type " + f->model_type + " sets n_layer, n_head and n_embd; " +
                             size->get_name() + " cannot be given with it");
      }
    }
    MINGPT_RETURN_IF_ERROR(ApplyPreset(f->model_type, &f->o.model));
  }
  if (!f->o.ckpt_path.empty()) MINGPT_RETURN_IF_ERROR(Reconcile(f));
  MINGPT_ASSIGN_OR_RETURN(f->o.data_path, ResolveDataPath(f->data));
  if (f->o.default_root_dir.empty()) {
    f->o.default_root_dir = DefaultRunDir();
    f->o.new_root_dir = true;
  }
  if (!f->memory_budget.empty()) {
    MINGPT_ASSIGN_OR_RETURN(f->o.memory_budget, ParseBytes(f->memory_budget, "--memory_budget"));
  }
  return Status::Ok();
}

std::shared_ptr<TrainFlags> AddTrainFlags(CLI::App* app) {
  auto f = std::make_shared<TrainFlags>();
  TrainOptions& o = f->o;
  o.model.n_layer = 4;
  o.model.n_head = 4;
  o.model.n_embd = 128;
  f->n_layer = app->add_option("--n_layer", o.model.n_layer, "Transformer blocks")->capture_default_str();
  f->n_head = app->add_option("--n_head", o.model.n_head, "Attention heads")->capture_default_str();
  f->n_embd = app->add_option("--n_embd", o.model.n_embd, "Embedding width")->capture_default_str();
  f->block_size = app->add_option("--block_size", o.model.block_size, "Context length")->capture_default_str();
  f->dropout = app->add_option("--dropout", o.model.dropout, "Dropout on embeddings, attention and residuals (0 disables)")->capture_default_str();
  f->model_type_opt = app->add_option("--model_type", f->model_type,
                                      "Preset overriding n_layer/n_head/n_embd: gpt-nano, gpt-micro, gpt-mini, gpt1, ...");
  f->batch_size = app->add_option("--batch_size", o.batch_size, "Samples per micro-batch (per rank)")->capture_default_str();
  f->learning_rate = app->add_option("--learning_rate", o.optim.learning_rate, "Peak AdamW learning rate")->capture_default_str();
  f->weight_decay = app->add_option("--weight_decay", o.optim.weight_decay, "AdamW weight decay on Linear/Embedding weights")->capture_default_str();
  f->warmup_tokens = app->add_option("--warmup_tokens", o.warmup_tokens, "Linear warm-up length in tokens")->capture_default_str();
  app->add_option("--max_epochs", o.max_epochs, "Epochs when --max_steps is -1")->capture_default_str();
  app->add_option("--max_steps", o.max_steps, "Optimizer steps (-1: use --max_epochs)")
      ->check(FitsInt64())
      ->capture_default_str();
  app->add_option("--limit_train_batches", o.limit_train_batches, "Steps per epoch: fraction (<=1) or count")->capture_default_str();
  app->add_option("--val_check_interval", o.val_check_interval, "Validate every fraction of an epoch (<=1) or every N steps")->capture_default_str();
  app->add_option("--limit_val_batches", o.limit_val_batches, "Validation batches: fraction (<=1) or count; 0 disables")->capture_default_str();
  f->gradient_clip_val = app->add_option("--gradient_clip_val", o.gradient_clip_val, "Clip the global gradient norm (0 disables)")->capture_default_str();
  f->accumulate_grad_batches = app->add_option("--accumulate_grad_batches", o.accumulate_grad_batches, "Micro-batches per optimizer step")->capture_default_str();
  f->precision = app->add_option("--precision", o.precision,
                  "Matrix-product precision: 32 (32-true), bf16 (bf16-mixed), 16 (16-mixed, "
                  "with dynamic loss scaling); master weights and Adam stay fp32")
      ->capture_default_str();
  f->initial_scale_power = app->add_option("--initial_scale_power", o.initial_scale_power,
                  "--precision 16: the loss scale starts at 2^this (DeepSpeed's default)")
      ->capture_default_str();
  f->seed = app->add_option("--seed", o.seed, "Seed of data sampling, init and dropout")
      ->check(NotNegative())
      ->capture_default_str();
  app->add_option("--default_root_dir", o.default_root_dir, "Run directory (metrics.csv, checkpoints/); default runs/<time>")
      ->check(NotEmpty());
  app->add_option("--data", f->data, "Training text (default $MINGPT_DATA, else data/tinyshakespeare.txt, downloaded)")
      ->check(NotEmpty());
  app->add_option("--ckpt_path", o.ckpt_path, "Resume from this checkpoint directory")
      ->check(NotEmpty());
  app->add_option("--log_every_n_steps", o.log_every_n_steps, "Metrics and log-line interval")->capture_default_str();
  app->add_option("--strategy", o.strategy,
                  "auto, single_device, ddp, deepspeed_stage_1, deepspeed_stage_2, deepspeed_stage_3, "
                  "deepspeed_stage_2_offload, deepspeed_stage_3_offload, deepspeed_stage_3_offload_nvme")
      ->capture_default_str();
  f->devices = app->add_option("--devices", o.devices,
                               "Ranks: N > 1 starts N processes through mpirun (under mpirun or "
                               "srun, the job's world is used)")
                   ->capture_default_str();
  f->gpus = app->add_option("--gpus", o.devices,
                            "The seed's flag: --devices N with --accelerator cuda (one rank per GPU)")
                ->excludes(f->devices);
  app->add_option("--offload_dir", o.offload_dir,
                  "deepspeed_stage_3_offload_nvme (or auto, which may then choose it): the "
                  "directory (on a fast disk) for the offloaded state's files; they are removed "
                  "at the end")
      ->check(NotEmpty());
  f->offload_params = app->add_option("--offload_params", o.offload_params,
                  "deepspeed_stage_3_offload_nvme: keep the parameter shards on nvme or in cpu memory")
      ->capture_default_str();
  f->offload_buffer_mb = app->add_option("--offload_buffer_mb", o.offload_buffer_mb,
                  "deepspeed_stage_3_offload_nvme: the optimizer's I/O buffer pool in MiB")
      ->capture_default_str();
  AddAcceleratorFlag(app, &o.accelerator);
  f->num_threads = app->add_option("--num_threads", o.num_threads, "CPU threads per rank (default: the cores / the ranks on this machine)");
  app->add_flag("--activation_checkpointing", o.activation_checkpointing,
                "Keep only each block's input; recompute the block in backward");
  app->add_option("--enable_checkpointing", o.enable_checkpointing,
                  "Lightning's flag: false saves no checkpoint (timing runs, huge models)")
      ->capture_default_str();
  app->add_flag("--profile_memory", o.profile_memory, "Print each rank's memory at the end");
  app->add_flag("--profile", o.profile,
                "Print each rank's time per phase at the end: compute, optimizer, and the "
                "waits for communication that overlap did not hide");
  f->memory_budget_opt = app->add_option("--memory_budget", f->memory_budget,
                  "Bytes per rank --strategy auto may plan for, e.g. 8GiB (default: available "
                  "memory / ranks on this machine)");
  return f;
}

}  // namespace

CLI::Option* AddAcceleratorFlag(CLI::App* app, std::string* accelerator) {
  return app->add_option("--accelerator", *accelerator,
                         "cpu, cuda (or gpu), or auto: cuda when built with it and a device is "
                         "present")
      ->capture_default_str();
}

StatusOr<size_t> ParseBytes(const std::string& text, const std::string& flag) {
  size_t used = 0;
  double value = 0;
  try {
    value = std::stod(text, &used);
  } catch (...) {
    used = 0;
  }
  std::string unit = text.substr(used);
  for (const char* tail : {"iB", "B"}) {
    const std::string t = tail;
    if (unit.size() >= t.size() && unit.compare(unit.size() - t.size(), t.size(), t) == 0) {
      unit.resize(unit.size() - t.size());
      break;
    }
  }
  double scale = 0;
  if (unit.empty()) scale = 1;
  if (unit == "K" || unit == "k") scale = 1024.0;
  if (unit == "M") scale = 1048576.0;
  if (unit == "G") scale = 1073741824.0;
  if (unit == "T") scale = 1099511627776.0;
  if (used == 0 || scale == 0 || !(value > 0) || value * scale > 1e18) {
    return Status::Error(flag + " '" + text + "' is not a size such as 12GiB or 800M");
  }
  return static_cast<size_t>(value * scale);
}

Command AddTrain(CLI::App* app) {
  std::shared_ptr<TrainFlags> f = AddTrainFlags(app);
  return [f]() -> Status {
    MINGPT_RETURN_IF_ERROR(ResolveFlags(f.get()));
    MINGPT_RETURN_IF_ERROR(ValidateTrainOptions(f->o));
    MINGPT_RETURN_IF_ERROR(CheckFlagsApply(*f));
    const MpiEnvironment env = DetectMpiEnvironment();
    if (!env.launched && f->o.devices > 1) {
      // Checked here once, before any process starts.
      MINGPT_RETURN_IF_ERROR(CheckTrainSetup(f->o));
      return Launch(f->o);
    }
    if (f->num_threads->count() == 0) f->o.num_threads = LocalCoresPerRank(env);
    PinLaunchedRank(env, f->o.num_threads);  // before any thread starts
    std::signal(SIGINT, OnSignal);
    std::signal(SIGTERM, OnSignal);
    MINGPT_ASSIGN_OR_RETURN(std::unique_ptr<Communicator> comm, JoinWorld(env));
    const int rank = comm->rank();
    // runs/<time> read from each rank's clock could differ by a second.
    if (f->o.new_root_dir) BroadcastString(comm.get(), &f->o.default_root_dir);
    if (f->devices->count() + f->gpus->count() > 0 && f->o.devices != comm->world()) {
      // Every rank sees the same flags and world: all stop, rank 0 reports.
      if (rank != 0) return Status::Ok();
      return Status::Error("--devices " + std::to_string(f->o.devices) + " disagrees with the " +
                           std::to_string(comm->world()) + " ranks the launcher started");
    }
    f->o.devices = comm->world();
    StatusOr<TrainSummary> r =
        CatchExceptions([&]() -> StatusOr<TrainSummary> { return Train(f->o, comm.get(), &g_stop); });
    // Every rank leaves the job cleanly, or, having failed alone, ends it.
    MINGPT_RETURN_IF_ERROR(LeaveJob(std::move(comm), r.status()));
    if (rank != 0) return Status::Ok();
    const TrainSummary& s = *r;
    std::printf("trained %lld steps (%lld tokens); last train loss %.4f; ",
                static_cast<long long>(s.steps), static_cast<long long>(s.tokens), s.last_train_loss);
    if (std::isfinite(s.best_val_loss)) {
      std::printf("best val loss %.4f\n", s.best_val_loss);
    } else {
      std::printf("not validated\n");
    }
    // Only what exists: no validation (--limit_val_batches 0, a val split
    // too small) saves no `best`.
    std::error_code ignore;
    const std::string dir = s.root_dir + "/checkpoints/";
    const bool best = std::filesystem::exists(dir + "best", ignore);
    const bool last = std::filesystem::exists(dir + "last", ignore);
    if (f->o.enable_checkpointing && (best || last)) {
      std::printf("checkpoints: %s%s\n", dir.c_str(),
                  best && last ? "{best,last}" : best ? "best" : "last");
    }
    return Status::Ok();
  };
}

Command AddPlan(CLI::App* app) {
  std::shared_ptr<TrainFlags> f = AddTrainFlags(app);
  return [f]() -> Status {
    MINGPT_RETURN_IF_ERROR(ResolveFlags(f.get()));
    MINGPT_RETURN_IF_ERROR(ValidateTrainOptions(f->o));
    MINGPT_ASSIGN_OR_RETURN(std::string text, ReadFile(f->o.data_path));
    auto tokenizer = CharTokenizer::FromText(text);
    if (!tokenizer.ok()) return tokenizer.status().WithContext("data file '" + f->o.data_path + "'");
    f->o.model.vocab_size = tokenizer->size();
    MINGPT_RETURN_IF_ERROR(f->o.model.Validate());
    const PlanInput in{f->o.model, f->o.batch_size, f->o.devices, text.size(), NvmeSettings(f->o)};
    const size_t budget = f->o.memory_budget > 0 ? f->o.memory_budget : DefaultMemoryBudget(f->o.devices);
    std::printf("%s", FormatPlan(in, PlanMemory(in), budget).c_str());
    const std::string chosen = ChooseStrategy(in, f->o.activation_checkpointing, budget);
    std::printf("--strategy auto would choose: %s\n", chosen.empty() ? "nothing (none fits)" : chosen.c_str());
    return Status::Ok();
  };
}

}  // namespace mingpt::cli
