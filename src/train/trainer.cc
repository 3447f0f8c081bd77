#include "train/trainer.h"


#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <optional>

#include "engine/single_process.h"
#include "io/file.h"
#include "model/gpt.h"
#include "train/inference.h"
#include "train/memory.h"
#include "train/model_checkpoint.h"
#include "train/progress.h"

namespace mingpt {
namespace {

// Appends rows to <root>/metrics.csv, writing the header when the file is new.
class MetricsWriter {
 public:
  static StatusOr<MetricsWriter> Open(const std::string& path) {
    const bool fresh = !std::filesystem::exists(path);
    std::FILE* f = std::fopen(path.c_str(), "a");
    if (!f) return Status::Error("cannot open '" + path + "' for writing");
    if (fresh) {
      std::fprintf(f, "step,tokens,train_loss,val_loss,lr,grad_norm,tokens_per_s,elapsed\n");
    }
    return MetricsWriter(f);
  }
  MetricsWriter(MetricsWriter&& o) noexcept : f_(o.f_) { o.f_ = nullptr; }
  ~MetricsWriter() {
    if (f_) std::fclose(f_);
  }
  void Row(int64_t step, int64_t tokens, std::optional<double> train_loss,
           std::optional<double> val_loss, double lr, std::optional<double> grad_norm,
           std::optional<double> tokens_per_s, double elapsed) {
    auto opt = [](std::optional<double> v) {
      if (!v) return std::string();
      char b[32];
      std::snprintf(b, sizeof(b), "%.6g", *v);
      return std::string(b);
    };
    std::fprintf(f_, "%lld,%lld,%s,%s,%.6g,%s,%s,%.3f\n", static_cast<long long>(step),
                 static_cast<long long>(tokens), opt(train_loss).c_str(), opt(val_loss).c_str(),
                 lr, opt(grad_norm).c_str(), opt(tokens_per_s).c_str(), elapsed);
    std::fflush(f_);
  }

 private:
  explicit MetricsWriter(std::FILE* f) : f_(f) {}
  std::FILE* f_;
};

// Lightning's reading of a limit: <= 1.0 is a fraction of `total`, else a count.
int64_t ApplyLimit(double limit, int64_t total) {
  if (limit <= 1.0) return static_cast<int64_t>(std::floor(limit * static_cast<double>(total)));
  return std::min<int64_t>(total, static_cast<int64_t>(limit));
}

HostState CopyToHost(Backend* backend, SingleProcess* sp) {
  HostState h;
  const size_t n = sp->numel(), bytes = n * sizeof(float);
  h.params.resize(n);
  h.exp_avg.resize(n);
  h.exp_avg_sq.resize(n);
  backend->CopyToHost(h.params.data(), sp->params(), bytes);
  backend->CopyToHost(h.exp_avg.data(), sp->exp_avg(), bytes);
  backend->CopyToHost(h.exp_avg_sq.data(), sp->exp_avg_sq(), bytes);
  return h;
}

}  // namespace

StatusOr<TrainSummary> Train(TrainOptions o, const std::atomic<bool>* stop) {
  MINGPT_RETURN_IF_ERROR(ValidateTrainOptions(o));

  // Resume state and vocabulary.
  std::optional<OpenedCheckpoint> resume;
  if (!o.ckpt_path.empty()) {
    MINGPT_ASSIGN_OR_RETURN(resume, OpenTrainingCheckpoint(o.ckpt_path));
    o.seed = resume->state.seed;
  }

  // Data (recorded in checkpoints by absolute path).
  MINGPT_ASSIGN_OR_RETURN(std::string text, ReadFile(o.data_path));
  o.data_path = std::filesystem::absolute(o.data_path).lexically_normal().string();
  if (text.empty()) return Status::Error("data file '" + o.data_path + "' is empty");
  CharTokenizer tokenizer = resume ? resume->tokenizer : CharTokenizer::FromText(text);
  auto encoded = tokenizer.Encode(text);
  if (!encoded.ok()) {
    return encoded.status().WithContext("data file '" + o.data_path + "' does not fit the checkpoint");
  }
  o.model.vocab_size = tokenizer.size();
  MINGPT_RETURN_IF_ERROR(o.model.Validate());
  if (resume && !o.model.SameShape(resume->config)) {
    return Status::Error("--ckpt_path model (" + resume->config.ToString() +
                         ") differs from the flags (" + o.model.ToString() + ")");
  }
  MINGPT_ASSIGN_OR_RETURN(CharDataset data,
                          CharDataset::Create(std::move(encoded).value(), o.model.block_size));

  MINGPT_RETURN_IF_ERROR(CheckMemoryFits(o.model, o.batch_size, /*training=*/true));

  // Model, strategy and state.
  std::unique_ptr<Backend> backend = MakeCpuBackend(o.num_threads);
  GPT gpt(backend.get(), o.model, o.batch_size);
  const ModelLayout& layout = gpt.layout();
  SingleProcess sp(backend.get(), layout);
  TrainState state;
  state.seed = o.seed;
  {
    const size_t bytes = layout.total_numel() * sizeof(float);
    HostState h;
    h.params.assign(layout.total_numel(), 0.0f);
    if (resume) {
      h.exp_avg.assign(layout.total_numel(), 0.0f);
      h.exp_avg_sq.assign(layout.total_numel(), 0.0f);
      MINGPT_RETURN_IF_ERROR(ReadCheckpointTensors(*resume, layout, h.params.data(),
                                                   h.exp_avg.data(), h.exp_avg_sq.data()));
      backend->CopyToDevice(sp.exp_avg(), h.exp_avg.data(), bytes);
      backend->CopyToDevice(sp.exp_avg_sq(), h.exp_avg_sq.data(), bytes);
      state = resume->state;
    } else {
      gpt.InitParameters(o.seed, h.params.data());
    }
    backend->CopyToDevice(sp.params(), h.params.data(), bytes);
  }

  // Schedule in steps and tokens.
  const int B = o.batch_size, T = o.model.block_size, k = o.accumulate_grad_batches;
  const int64_t global_batch = static_cast<int64_t>(B) * k;
  const int64_t tokens_per_step = global_batch * T;
  const int64_t full_epoch_steps = (data.epoch_samples() + global_batch - 1) / global_batch;
  const int64_t epoch_steps = std::max<int64_t>(1, ApplyLimit(o.limit_train_batches, full_epoch_steps));
  const int64_t total_steps = o.max_steps > 0 ? o.max_steps : o.max_epochs * epoch_steps;
  const int64_t val_every = o.val_check_interval <= 1.0
      ? std::max<int64_t>(1, static_cast<int64_t>(std::llround(o.val_check_interval * epoch_steps)))
      : static_cast<int64_t>(o.val_check_interval);
  const int64_t val_windows_total = (data.num_eval_windows(Split::kVal) + B - 1) / B;
  const int64_t val_batches = ApplyLimit(o.limit_val_batches, val_windows_total);
  LrSchedule schedule{o.optim.learning_rate, o.warmup_tokens,
                      2.0 * static_cast<double>(data.epoch_samples()) * T, true};

  // Run directory.
  std::error_code ec;
  std::filesystem::create_directories(o.default_root_dir + "/checkpoints", ec);
  if (ec) return Status::Error("cannot create '" + o.default_root_dir + "': " + ec.message());
  MINGPT_ASSIGN_OR_RETURN(MetricsWriter metrics, MetricsWriter::Open(o.default_root_dir + "/metrics.csv"));
  const std::string ckpt_dir = o.default_root_dir + "/checkpoints";

  Progress progress(state.step, total_steps, o.log_every_n_steps, o.progress);
  progress.Message("mingpt: " + o.model.ToString() + ", " + std::to_string(layout.num_parameters()) +
                   " parameters; " + std::to_string(total_steps) + " steps of " +
                   std::to_string(global_batch) + "x" + std::to_string(T) + " tokens" +
                   (resume ? ", resuming at step " + std::to_string(state.step) : ""));

  std::vector<int32_t> x(static_cast<size_t>(B) * T), y(x.size());
  const auto start = std::chrono::steady_clock::now();
  auto elapsed = [&] {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  };
  TrainSummary summary;
  double window_time = elapsed();
  int64_t window_tokens = 0;
  double tokens_per_s = 0;

  auto save = [&](const std::string& name) -> Status {
    HostState h = CopyToHost(backend.get(), &sp);
    return SaveTrainingCheckpoint(ckpt_dir + "/" + name, layout, o.model, tokenizer, o, state, h);
  };
  auto validate = [&]() -> Status {
    if (val_batches <= 0) return save("last");
    EvalResult r = EvaluateSplit(&gpt, &sp, data, Split::kVal, val_batches * B, B);
    metrics.Row(state.step, state.tokens, std::nullopt, r.loss,
                schedule.LearningRate(static_cast<double>(state.tokens)), std::nullopt,
                std::nullopt, elapsed());
    char line[128];
    const bool best = r.loss < state.best_val_loss;
    std::snprintf(line, sizeof(line), "step %lld: val loss %.4f%s", static_cast<long long>(state.step),
                  r.loss, best ? " (best)" : "");
    progress.Message(line);
    if (best) state.best_val_loss = r.loss;
    MINGPT_RETURN_IF_ERROR(save("last"));
    return best ? save("best") : Status::Ok();
  };

  while (state.step < total_steps) {
    const int64_t s = state.step;
    const double lr = schedule.LearningRate(static_cast<double>(state.tokens + tokens_per_step));
    sp.ZeroGrads();
    double loss = 0;
    for (int m = 0; m < k; ++m) {
      const uint64_t base = (static_cast<uint64_t>(s) * k + m) * B;
      for (int b = 0; b < B; ++b) data.TrainSample(o.seed, base + b, &x[b * T], &y[b * T]);
      DropoutContext dc{true, o.seed, static_cast<uint32_t>(s), base};
      loss += gpt.ForwardBackward(&sp, x.data(), y.data(), B, T, dc, 1.0f / k);
    }
    loss /= k;
    if (!std::isfinite(loss)) {
      return Status::Error("training diverged at step " + std::to_string(s + 1) +
                           " (loss is " + std::to_string(loss) + "); try a lower --learning_rate");
    }
    const double norm = sp.GradNorm();
    sp.ClipGrads(norm, o.gradient_clip_val);
    sp.OptimizerStep(o.optim, static_cast<float>(lr), static_cast<int>(s + 1));
    state.step = s + 1;
    state.tokens += tokens_per_step;
    summary.last_train_loss = loss;

    window_tokens += tokens_per_step;
    if (state.step % o.log_every_n_steps == 0 || state.step == total_steps) {
      const double now = elapsed();
      tokens_per_s = window_tokens / std::max(1e-9, now - window_time);
      window_time = now;
      window_tokens = 0;
      metrics.Row(state.step, state.tokens, loss, std::nullopt, lr, norm, tokens_per_s, now);
    } else if (tokens_per_s == 0) {
      tokens_per_s = window_tokens / std::max(1e-9, elapsed() - window_time);
    }
    progress.Update(state.step, loss, lr, tokens_per_s);

    const bool interrupted = stop && stop->load();
    if (state.step % val_every == 0 || state.step == total_steps || interrupted) {
      MINGPT_RETURN_IF_ERROR(validate());
    }
    if (interrupted) {
      progress.Message("interrupted: saved " + ckpt_dir + "/last at step " + std::to_string(state.step));
      summary.interrupted = true;
      break;
    }
  }
  progress.Finish();
  summary.steps = state.step;
  summary.tokens = state.tokens;
  summary.best_val_loss = state.best_val_loss;
  return summary;
}

}  // namespace mingpt
