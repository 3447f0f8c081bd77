#include <csignal>
#include <ctime>
#include <filesystem>
#include <memory>
#include <thread>

#include <sched.h>

#include "cli/commands.h"
#include "train/model_checkpoint.h"
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

int AvailableCores() {
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) return std::max(1, CPU_COUNT(&set));
  return std::max(1u, std::thread::hardware_concurrency());
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
  CLI::Option *n_layer, *n_head, *n_embd, *block_size, *dropout, *model_type_opt;
};

// With --ckpt_path the model comes from the checkpoint; flags given
// explicitly must agree with it.
Status Reconcile(TrainFlags* f) {
  MINGPT_ASSIGN_OR_RETURN(OpenedCheckpoint ckpt, OpenTrainingCheckpoint(f->o.ckpt_path));
  const ModelConfig& c = ckpt.config;
  const ModelConfig& g = f->o.model;
  const bool preset = f->model_type_opt->count() > 0;  // sets n_layer, n_head, n_embd
  auto check = [&](CLI::Option* opt, const char* name, int given, int saved) -> Status {
    const bool by_preset = preset && std::string(name) != "block_size";
    if ((opt->count() > 0 || by_preset) && given != saved) {
      return Status::Error("--" + std::string(name) + " " + std::to_string(given) +
                           " disagrees with --ckpt_path, whose model has " + name + " " +
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
  f->o.model = c;
  if (f->data.empty() && !ckpt.data_path.empty() && std::getenv("MINGPT_DATA") == nullptr) {
    f->data = ckpt.data_path;
  }
  return Status::Ok();
}

}  // namespace

Command AddTrain(CLI::App* app) {
  auto f = std::make_shared<TrainFlags>();
  TrainOptions& o = f->o;
  o.model.n_layer = 4;
  o.model.n_head = 4;
  o.model.n_embd = 128;
  o.num_threads = AvailableCores();
  f->n_layer = app->add_option("--n_layer", o.model.n_layer, "Transformer blocks")->capture_default_str();
  f->n_head = app->add_option("--n_head", o.model.n_head, "Attention heads")->capture_default_str();
  f->n_embd = app->add_option("--n_embd", o.model.n_embd, "Embedding width")->capture_default_str();
  f->block_size = app->add_option("--block_size", o.model.block_size, "Context length")->capture_default_str();
  f->dropout = app->add_option("--dropout", o.model.dropout, "Dropout on embeddings, attention and residuals (0 disables)")->capture_default_str();
  f->model_type_opt = app->add_option("--model_type", f->model_type,
                                      "Preset overriding n_layer/n_head/n_embd: gpt-nano, gpt-micro, gpt-mini, gpt1, ...");
  app->add_option("--batch_size", o.batch_size, "Samples per micro-batch")->capture_default_str();
  app->add_option("--learning_rate", o.optim.learning_rate, "Peak AdamW learning rate")->capture_default_str();
  app->add_option("--weight_decay", o.optim.weight_decay, "AdamW weight decay on Linear/Embedding weights")->capture_default_str();
  app->add_option("--warmup_tokens", o.warmup_tokens, "Linear warm-up length in tokens")->capture_default_str();
  app->add_option("--max_epochs", o.max_epochs, "Epochs when --max_steps is -1")->capture_default_str();
  app->add_option("--max_steps", o.max_steps, "Optimizer steps (-1: use --max_epochs)")->capture_default_str();
  app->add_option("--limit_train_batches", o.limit_train_batches, "Steps per epoch: fraction (<=1) or count")->capture_default_str();
  app->add_option("--val_check_interval", o.val_check_interval, "Validate every fraction of an epoch (<=1) or every N steps")->capture_default_str();
  app->add_option("--limit_val_batches", o.limit_val_batches, "Validation batches: fraction (<=1) or count; 0 disables")->capture_default_str();
  app->add_option("--gradient_clip_val", o.gradient_clip_val, "Clip the global gradient norm (0 disables)")->capture_default_str();
  app->add_option("--accumulate_grad_batches", o.accumulate_grad_batches, "Micro-batches per optimizer step")->capture_default_str();
  app->add_option("--precision", o.precision, "32 (bf16 and 16 come later)")->capture_default_str();
  app->add_option("--seed", o.seed, "Seed of data sampling, init and dropout")->capture_default_str();
  app->add_option("--default_root_dir", o.default_root_dir, "Run directory (metrics.csv, checkpoints/); default runs/<time>");
  app->add_option("--data", f->data, "Training text (default $MINGPT_DATA, else data/tinyshakespeare.txt, downloaded)");
  app->add_option("--num_threads", o.num_threads, "CPU threads")->capture_default_str();
  app->add_option("--ckpt_path", o.ckpt_path, "Resume from this checkpoint directory");
  app->add_option("--log_every_n_steps", o.log_every_n_steps, "Metrics and log-line interval")->capture_default_str();
  app->add_option("--strategy", o.strategy, "auto (ddp and deepspeed_stage_1/2/3 come with sharding)")->capture_default_str();
  app->add_option("--devices,--gpus", o.devices, "Processes/devices (1 in this version)")->capture_default_str();

  return [f]() -> Status {
    if (!f->model_type.empty()) MINGPT_RETURN_IF_ERROR(ApplyPreset(f->model_type, &f->o.model));
    if (!f->o.ckpt_path.empty()) MINGPT_RETURN_IF_ERROR(Reconcile(f.get()));
    MINGPT_ASSIGN_OR_RETURN(f->o.data_path, ResolveDataPath(f->data));
    if (f->o.default_root_dir.empty()) f->o.default_root_dir = DefaultRunDir();
    std::signal(SIGINT, OnSignal);
    std::signal(SIGTERM, OnSignal);
    MINGPT_ASSIGN_OR_RETURN(TrainSummary s, Train(f->o, &g_stop));
    std::printf("trained %lld steps (%lld tokens); last train loss %.4f; best val loss %.4f\n",
                static_cast<long long>(s.steps), static_cast<long long>(s.tokens), s.last_train_loss,
                s.best_val_loss);
    std::printf("checkpoints: %s/checkpoints/{best,last}\n", f->o.default_root_dir.c_str());
    return Status::Ok();
  };
}

}  // namespace mingpt::cli
