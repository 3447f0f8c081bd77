// evaluate, sample and info: commands that read a checkpoint.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <memory>
#include <thread>

#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "dist/agree.h"
#include "engine/single_process.h"
#include "engine/strategies.h"
#include "io/file.h"
#include "model/gpt.h"
#include "train/accelerator.h"
#include "train/inference.h"
#include "train/memory.h"
#include "train/model_checkpoint.h"
#include "train/state_io.h"

namespace mingpt::cli {
namespace {

// A checkpoint's model ready for inference.
struct LoadedModel {
  OpenedCheckpoint ckpt;
  std::unique_ptr<Backend> backend;
  std::unique_ptr<GPT> gpt;
  std::unique_ptr<SingleProcess> params;
};

// `accelerator` as ResolveAccelerator returns it.
StatusOr<std::unique_ptr<LoadedModel>> LoadModel(const std::string& dir,
                                                 const std::string& accelerator, int threads,
                                                 int max_batch) {
  auto m = std::make_unique<LoadedModel>();
  MINGPT_ASSIGN_OR_RETURN(m->ckpt, OpenTrainingCheckpoint(dir));
  ModelConfig config = m->ckpt.config;
  config.dropout = 0.0f;
  MINGPT_RETURN_IF_ERROR(CheckWeightsMatchConfig(m->ckpt));
  MINGPT_RETURN_IF_ERROR(CheckMemoryFits(config, max_batch, /*training=*/false));
  MINGPT_ASSIGN_OR_RETURN(m->backend, MakeBackend(accelerator, /*local_rank=*/0, threads));
  MINGPT_RETURN_IF_ERROR(m->backend->CheckHeadSize(config.n_embd / config.n_head));
  m->gpt = std::make_unique<GPT>(m->backend.get(), config, max_batch);
  m->params = std::make_unique<SingleProcess>(m->backend.get(), m->gpt->layout(), false);
  std::vector<float> host(m->gpt->layout().total_numel(), 0.0f);
  MINGPT_RETURN_IF_ERROR(
      ReadCheckpointTensors(m->ckpt, m->gpt->layout(), host.data(), nullptr, nullptr));
  m->backend->CopyToDevice(m->params->params(), host.data(), host.size() * sizeof(float));
  m->ckpt.checkpoint.Release();  // read: a trainer's saves may remove it
  return m;
}

}  // namespace

Command AddEvaluate(CLI::App* app) {
  struct Flags {
    std::string checkpoint, data, split = "test", strategy = "auto", accelerator = "auto";
    bool json = false;
    int batch_size = 32, threads = 0, devices = 1;
    CLI::Option *devices_opt = nullptr, *threads_opt = nullptr;
  };
  auto f = std::make_shared<Flags>();
  app->add_option("--checkpoint", f->checkpoint, "Checkpoint directory")->required();
  app->add_option("--data", f->data, "Text file (default: the one recorded in the checkpoint)")
      ->check(NotEmpty());
  app->add_option("--split", f->split, "val or test")->capture_default_str();
  app->add_option("--batch_size", f->batch_size, "Windows per forward pass")->capture_default_str();
  f->threads_opt = app->add_option("--num_threads", f->threads,
                                   "CPU threads per rank (default: the cores / the ranks on this machine)");
  app->add_flag("--json", f->json, "Print one JSON object");
  f->devices_opt = app->add_option("--devices,--gpus", f->devices,
                                   "Ranks sharing the windows (N > 1 starts N processes through mpirun)")
                       ->capture_default_str();
  app->add_option("--strategy", f->strategy,
                  "How the ranks hold the weights: auto, ddp, deepspeed_stage_1/2/3 (stage 3 "
                  "shards them)")
      ->capture_default_str();
  AddAcceleratorFlag(app, &f->accelerator);
  return [f]() -> Status {
    if (f->split != "val" && f->split != "test") {
      return Status::Error("--split must be val or test, got '" + f->split + "'");
    }
    if (f->batch_size <= 0) return Status::Error("--batch_size must be positive");
    if (f->threads_opt->count() > 0) MINGPT_RETURN_IF_ERROR(ValidateNumThreads(f->threads));
    if (f->devices <= 0) return Status::Error("--devices must be positive, got " + std::to_string(f->devices));
    MINGPT_RETURN_IF_ERROR(ValidateStrategyName(f->strategy));
    MINGPT_ASSIGN_OR_RETURN(const std::string accelerator, ResolveAccelerator(f->accelerator));
    // Everything that can fail on bad input, checked before any rank starts.
    MINGPT_ASSIGN_OR_RETURN(OpenedCheckpoint ckpt, OpenTrainingCheckpoint(f->checkpoint));
    MINGPT_RETURN_IF_ERROR(CheckWeightsMatchConfig(ckpt));
    ModelConfig config = ckpt.config;
    config.dropout = 0.0f;
    MINGPT_RETURN_IF_ERROR(CheckMemoryFits(config, f->batch_size, /*training=*/false));
    const std::string path = f->data.empty() ? ckpt.data_path : f->data;
    if (path.empty()) return Status::Error("the checkpoint records no data file; pass --data");
    MINGPT_ASSIGN_OR_RETURN(std::string text, ReadFile(path));
    if (text.empty()) return Status::Error("data file '" + path + "' is empty");
    auto ids = ckpt.tokenizer.Encode(text);
    if (!ids.ok()) return ids.status().WithContext("data file '" + path + "'");
    MINGPT_ASSIGN_OR_RETURN(CharDataset data,
                            CharDataset::Create(std::move(ids).value(), ckpt.config.block_size));
    const Split split = f->split == "val" ? Split::kVal : Split::kTest;
    if (data.num_eval_windows(split) == 0 || data.eval_window_length(split) == 0) {
      return Status::Error("the " + f->split + " split of '" + path + "' is too short to evaluate");
    }
    const MpiEnvironment env = DetectMpiEnvironment();
    if (!env.launched && f->devices > 1) {
      if (accelerator == "cuda") MINGPT_RETURN_IF_ERROR(CheckOneRankPerGpu(f->devices));
      return RelaunchUnderMpirun(f->devices, {});
    }

    const int threads = f->threads > 0 ? f->threads : LocalCoresPerRank(env);
    PinLaunchedRank(env, threads);  // before any thread starts
    MINGPT_ASSIGN_OR_RETURN(std::unique_ptr<Communicator> comm, JoinWorld(env));
    Communicator* const c = comm.get();
    EvalResult r;
    const Status evaluated = CatchExceptions([&]() -> Status {
      std::string strategy = f->strategy;
      if (strategy == "auto") strategy = c->world() == 1 ? "single_device" : "ddp";
      // The windows' loss sums travel over `c` (host memory); the strategy's
      // parameter gathers over the device's communicator.
      MINGPT_ASSIGN_OR_RETURN(RankDevice device, MakeRankDevice(accelerator, c, threads));
      MINGPT_RETURN_IF_ERROR(
          AgreeOnStatus(c, device.backend->CheckHeadSize(config.n_embd / config.n_head)));
      GPT gpt(device.backend.get(), config, f->batch_size);
      StatusOr<std::unique_ptr<Strategy>> params =
          MakeStrategy(strategy, device.backend.get(), gpt.layout(), device.comms(c),
                       /*training=*/false);
      MINGPT_RETURN_IF_ERROR(AgreeOnStatus(c, params.status()));
      MINGPT_RETURN_IF_ERROR(AgreeOnCheckpointVersion(c, &ckpt));
      MINGPT_RETURN_IF_ERROR(LoadTrainingState(ckpt, gpt.layout(), params->get(), c,
                                               /*with_optimizer=*/false));
      r = EvaluateSplit(&gpt, params->get(), data, split, -1, f->batch_size, c);
      return Status::Ok();
    });
    const int rank = c->rank();
    // Every rank leaves the job cleanly, or, having failed alone, ends it.
    MINGPT_RETURN_IF_ERROR(LeaveJob(std::move(comm), evaluated));
    if (rank != 0) return Status::Ok();
    const double ppl = std::exp(r.loss), bpc = r.loss / std::log(2.0);
    if (f->json) {
      nlohmann::json j = {{"split", f->split}, {"loss", r.loss}, {"perplexity", ppl},
                          {"bits_per_character", bpc}, {"windows", r.windows},
                          {"tokens", r.tokens}, {"checkpoint", f->checkpoint}, {"data", path}};
      std::printf("%s\n", j.dump().c_str());
    } else {
      std::printf("%s loss %.4f | perplexity %.3f | bits per character %.4f (%lld windows, %lld tokens)\n",
                  f->split.c_str(), r.loss, ppl, bpc, static_cast<long long>(r.windows),
                  static_cast<long long>(r.tokens));
    }
    return Status::Ok();
  };
}

Command AddSample(CLI::App* app) {
  struct Flags {
    std::string checkpoint, prompt;
    SampleOptions o;
    std::string accelerator = "auto";
    int threads = 1;
    CLI::Option* top_k_opt = nullptr;
  };
  auto f = std::make_shared<Flags>();
  f->o.top_k = 10;
  app->add_option("--checkpoint", f->checkpoint, "Checkpoint directory")->required();
  app->add_option("--prompt", f->prompt, "Text to continue")->required();
  app->add_option("--steps", f->o.steps, "Characters to generate")->capture_default_str();
  app->add_option("--temperature", f->o.temperature, "Softmax temperature (> 0)")->capture_default_str();
  f->top_k_opt = app->add_option("--top_k", f->o.top_k,
                                 "Sample among the k most likely (0: all; default 10, or the "
                                 "vocabulary's size if smaller)");
  app->add_flag("--greedy", f->o.greedy, "Take the most likely character instead of sampling");
  app->add_flag("--no_kv_cache{false}", f->o.kv_cache,
                "Recompute the whole context for every character instead of decoding from "
                "cached keys and values (same text, slower)");
  app->add_option("--seed", f->o.seed, "Sampling seed")
      ->check(NotNegative())
      ->capture_default_str();
  app->add_option("--num_threads", f->threads, "CPU threads")->capture_default_str();
  AddAcceleratorFlag(app, &f->accelerator);
  return [f]() -> Status {
    if (f->prompt.empty()) return Status::Error("--prompt must not be empty");
    if (f->o.steps < 0) return Status::Error("--steps must be >= 0");
    if (!(f->o.temperature > 0) || !std::isfinite(f->o.temperature)) {
      return Status::Error("--temperature must be a positive number");
    }
    if (f->o.top_k < 0) return Status::Error("--top_k must be >= 0");
    MINGPT_RETURN_IF_ERROR(ValidateNumThreads(f->threads));
    MINGPT_ASSIGN_OR_RETURN(const std::string accelerator, ResolveAccelerator(f->accelerator));
    MINGPT_ASSIGN_OR_RETURN(auto m, LoadModel(f->checkpoint, accelerator, f->threads, 1));
    // The default fits any vocabulary; greedy decoding ignores top_k.
    const int vocab = m->ckpt.tokenizer.size();
    if (f->top_k_opt->count() == 0) {
      f->o.top_k = std::min(f->o.top_k, vocab);
    } else if (!f->o.greedy && f->o.top_k > vocab) {
      return Status::Error("--top_k must be at most the vocabulary size (" + std::to_string(vocab) +
                           ")");
    }
    auto ids = m->ckpt.tokenizer.Encode(f->prompt);
    if (!ids.ok()) return ids.status().WithContext("--prompt");
    std::fputs(f->prompt.c_str(), stdout);
    std::fflush(stdout);
    auto echo = [](int32_t id, void* ctx) {
      std::fputs(static_cast<const CharTokenizer*>(ctx)->Piece(id).c_str(), stdout);
      std::fflush(stdout);
    };
    Sample(m->gpt.get(), m->params.get(), std::move(ids).value(), f->o, echo,
           const_cast<CharTokenizer*>(&m->ckpt.tokenizer));
    std::fputc('\n', stdout);
    return Status::Ok();
  };
}

Command AddInfo(CLI::App* app) {
  struct Flags {
    std::string checkpoint;
    bool json = false;
  };
  auto f = std::make_shared<Flags>();
  app->add_option("--checkpoint", f->checkpoint, "Checkpoint directory")->required();
  app->add_flag("--json", f->json, "Print one JSON object");
  return [f]() -> Status {
    MINGPT_ASSIGN_OR_RETURN(OpenedCheckpoint c, OpenTrainingCheckpoint(f->checkpoint));
    // What it describes must be there: the weights' files, their tensors
    // and shapes (as evaluate, sample and convert check them).
    MINGPT_RETURN_IF_ERROR(CheckWeightsMatchConfig(c));
    const ModelLayout layout(c.config);
    const bool has_best = std::isfinite(c.state.best_val_loss);
    if (f->json) {
      nlohmann::json j = {{"checkpoint", f->checkpoint},
                          {"n_layer", c.config.n_layer}, {"n_head", c.config.n_head},
                          {"n_embd", c.config.n_embd}, {"block_size", c.config.block_size},
                          {"vocab_size", c.config.vocab_size}, {"dropout", c.config.dropout},
                          {"parameters", layout.num_parameters()}, {"step", c.state.step},
                          {"tokens", c.state.tokens},
                          {"best_val_loss", has_best ? nlohmann::json(c.state.best_val_loss) : nlohmann::json(nullptr)},
                          {"data", c.data_path}};
      std::printf("%s\n", j.dump().c_str());
      return Status::Ok();
    }
    std::printf("checkpoint     %s\n", f->checkpoint.c_str());
    std::printf("model          %s\n", c.config.ToString().c_str());
    std::printf("parameters     %lld\n", static_cast<long long>(layout.num_parameters()));
    std::printf("step           %lld\n", static_cast<long long>(c.state.step));
    std::printf("tokens seen    %lld\n", static_cast<long long>(c.state.tokens));
    if (has_best) {
      std::printf("best val loss  %.4f\n", c.state.best_val_loss);
    } else {
      std::printf("best val loss  (not validated)\n");
    }
    std::printf("data           %s\n", c.data_path.c_str());
    return Status::Ok();
  };
}

}  // namespace mingpt::cli
