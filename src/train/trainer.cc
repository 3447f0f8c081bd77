#include "train/trainer.h"

#include <sys/stat.h>

#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <memory>
#include <optional>

#include "dist/agree.h"
#include "dist/launch.h"
#include "engine/strategies.h"
#include "engine/zero_engine.h"
#include "io/file.h"
#include "model/gpt.h"
#include "train/accelerator.h"
#include "train/inference.h"
#include "train/memory.h"
#include "train/model_checkpoint.h"
#include "train/planner.h"
#include "train/progress.h"
#include "train/state_io.h"

namespace mingpt {
namespace {

// One row of metrics.csv; absent values are empty cells.
struct MetricsRow {
  int64_t step = 0, tokens = 0;
  double lr = 0, elapsed = 0;
  std::optional<double> train_loss, val_loss, grad_norm, tokens_per_s;
  std::optional<double> state_bytes, peak_rss;       // maxima over ranks
  std::optional<double> loss_scale, skipped_steps;   // --precision 16
};

// Writes `text` to `f` (the file at `path`) and flushes it: a write that
// fails (a full disk) is one error line at once, not a file cut short
// mid-row under a run that says nothing.
Status Append(std::FILE* f, const std::string& path, const std::string& text) {
  if (std::fputs(text.c_str(), f) == EOF || std::fflush(f) != 0) {
    return ErrnoError("cannot write", path, errno);
  }
  return Status::Ok();
}

// Appends rows to <root>/metrics.csv, writing the header when the file is new.
class MetricsWriter {
 public:
  static StatusOr<MetricsWriter> Open(const std::string& path) {
    const bool fresh = !std::filesystem::exists(path);
    std::FILE* f = std::fopen(path.c_str(), "a");
    if (!f) return Status::Error("cannot open '" + path + "' for writing");
    MetricsWriter w(f, path);
    if (fresh) {
      MINGPT_RETURN_IF_ERROR(Append(f, path,
                                    "step,tokens,train_loss,val_loss,lr,grad_norm,tokens_per_s,"
                                    "elapsed,state_bytes,peak_rss_bytes,loss_scale,"
                                    "skipped_steps\n"));
    }
    return w;
  }
  MetricsWriter(MetricsWriter&& o) noexcept : f_(o.f_), path_(std::move(o.path_)) {
    o.f_ = nullptr;
  }
  ~MetricsWriter() {
    if (f_) std::fclose(f_);
  }
  static MetricsWriter Disabled() { return MetricsWriter(nullptr, ""); }
  Status Write(const MetricsRow& r) {
    if (!f_) return Status::Ok();
    auto opt = [](std::optional<double> v) {
      if (!v) return std::string();
      char b[32];
      std::snprintf(b, sizeof(b), "%.6g", *v);
      return std::string(b);
    };
    auto count = [](std::optional<double> v) {
      return v ? std::to_string(static_cast<long long>(*v)) : std::string();
    };
    char line[512];
    std::snprintf(line, sizeof(line), "%lld,%lld,%s,%s,%.6g,%s,%s,%.6f,%s,%s,%s,%s\n",
                  static_cast<long long>(r.step), static_cast<long long>(r.tokens),
                  opt(r.train_loss).c_str(), opt(r.val_loss).c_str(), r.lr,
                  opt(r.grad_norm).c_str(), opt(r.tokens_per_s).c_str(), r.elapsed,
                  count(r.state_bytes).c_str(), count(r.peak_rss).c_str(),
                  count(r.loss_scale).c_str(), count(r.skipped_steps).c_str());
    return Append(f_, path_, line);
  }
  // The rows are flushed as written: what is left to fail here is a write
  // error the file system reports only at close (NFS).
  Status Close() {
    if (!f_) return Status::Ok();
    std::FILE* f = f_;
    f_ = nullptr;
    return std::fclose(f) == 0 ? Status::Ok() : ErrnoError("cannot write", path_, errno);
  }

 private:
  MetricsWriter(std::FILE* f, std::string path) : f_(f), path_(std::move(path)) {}
  std::FILE* f_;
  std::string path_;
};

// Lightning's reading of a limit: <= 1.0 is a fraction of `total`, else a count.
int64_t ApplyLimit(double limit, int64_t total) {
  if (limit <= 1.0) return static_cast<int64_t>(std::floor(limit * static_cast<double>(total)));
  return std::min<int64_t>(total, static_cast<int64_t>(limit));
}

// A canonical description of everything that must agree across ranks.
// Paths are bytes, not always UTF-8: an invalid byte is dumped as U+FFFD
// (nlohmann's default throws).
std::string ConfigFingerprint(const TrainOptions& o) {
  nlohmann::json j = {
      {"model", o.model.ToString()}, {"dropout", o.model.dropout}, {"batch_size", o.batch_size},
      {"lr", o.optim.learning_rate}, {"wd", o.optim.weight_decay}, {"warmup", o.warmup_tokens},
      {"max_steps", o.max_steps}, {"max_epochs", o.max_epochs},
      {"limit_train_batches", o.limit_train_batches}, {"val_check_interval", o.val_check_interval},
      {"limit_val_batches", o.limit_val_batches}, {"clip", o.gradient_clip_val},
      {"accumulate", o.accumulate_grad_batches}, {"precision", o.precision}, {"seed", o.seed},
      {"root", o.default_root_dir}, {"data", o.data_path}, {"ckpt_path", o.ckpt_path},
      {"strategy", o.strategy}, {"activation_checkpointing", o.activation_checkpointing}};
  return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

// Every rank's memory, gathered on all ranks: per rank {params, grads,
// optimizer, working, activations, peak RSS, host, peak device} in bytes,
// where host is the part of the first four in host memory (offload
// strategies) and peak device the most the backend has held on a GPU (0 on
// the CPU backend).
constexpr int kMemoryFields = 8;
std::vector<double> GatherMemory(Communicator* comm, const Strategy& s, size_t activations,
                                 const Backend& backend) {
  std::vector<double> all(static_cast<size_t>(comm->world()) * kMemoryFields, 0.0);
  const MemoryAccount m = s.memory();
  double* mine = all.data() + static_cast<size_t>(comm->rank()) * kMemoryFields;
  const double fields[kMemoryFields] = {
      static_cast<double>(m.params), static_cast<double>(m.grads),
      static_cast<double>(m.optimizer), static_cast<double>(m.working),
      static_cast<double>(activations), static_cast<double>(PeakRssBytes()),
      static_cast<double>(m.host), static_cast<double>(backend.PeakDeviceBytes())};
  std::copy(fields, fields + kMemoryFields, mine);
  comm->AllReduce(all.data(), static_cast<int64_t>(all.size())).Wait();
  return all;
}

// memory.csv: one row per rank and report.
Status WriteMemoryRows(const std::string& path, int64_t step, const std::vector<double>& all) {
  std::string text;
  if (!std::filesystem::exists(path)) {
    text = "step,rank,params_bytes,grads_bytes,optimizer_bytes,working_bytes,"
           "activation_bytes,peak_rss_bytes,host_bytes,peak_device_bytes\n";
  }
  for (size_t r = 0; r * kMemoryFields < all.size(); ++r) {
    char row[32 * (kMemoryFields + 2)];
    int n = std::snprintf(row, sizeof(row), "%lld,%zu", static_cast<long long>(step), r);
    for (int i = 0; i < kMemoryFields; ++i) {
      n += std::snprintf(row + n, sizeof(row) - n, ",%lld",
                         static_cast<long long>(all[r * kMemoryFields + i]));
    }
    text += row;
    text += '\n';
  }
  std::FILE* f = std::fopen(path.c_str(), "a");
  if (!f) return ErrnoError("cannot open", path, errno);
  Status written = Append(f, path, text);
  if (std::fclose(f) != 0 && written.ok()) written = ErrnoError("cannot write", path, errno);
  return written;
}

void PrintMemoryTable(const std::vector<double>& all) {
  std::printf("%-5s %12s %12s %12s %12s %12s %12s %12s %12s\n", "rank", "params_MiB",
              "grads_MiB", "optim_MiB", "working_MiB", "activ_MiB", "peak_rss_MiB", "host_MiB",
              "device_MiB");
  for (size_t r = 0; r * kMemoryFields < all.size(); ++r) {
    std::printf("%-5zu", r);
    for (int i = 0; i < kMemoryFields; ++i) {
      std::printf(" %12.2f", all[r * kMemoryFields + i] / 1048576.0);
    }
    std::printf("\n");
  }
}

// --profile: every rank's seconds in forward+backward, in the optimizer
// (norm, clipping, AdamW and what follows), and blocked on communication.
// NVMe offload adds the time blocked on its files (in the phases above, not
// hidden by compute) and the disk throughput over the run's wall time.
constexpr int kPhaseFields = 7;
void PrintPhaseTable(Communicator* comm, double fwdbwd, double optimizer, const WaitTimes& w,
                     int64_t steps) {
  std::vector<double> all(static_cast<size_t>(comm->world()) * kPhaseFields, 0.0);
  const double mine[kPhaseFields] = {fwdbwd, optimizer, w.params, w.grads, w.other, w.io,
                                     w.io_bytes};
  std::copy(mine, mine + kPhaseFields, all.begin() + comm->rank() * kPhaseFields);
  comm->AllReduce(all.data(), static_cast<int64_t>(all.size())).Wait();
  if (comm->rank() != 0) return;
  std::printf("time per step (ms) over %lld steps; waits are communication not hidden by compute\n",
              static_cast<long long>(steps));
  std::printf("%-5s %12s %12s %14s %14s %14s %14s\n", "rank", "fwd+bwd", "optimizer",
              "wait_params", "wait_grads", "wait_other", "wait_io");
  const double n = static_cast<double>(std::max<int64_t>(1, steps));
  for (int r = 0; r < comm->world(); ++r) {
    std::printf("%-5d", r);
    for (int i = 0; i < 6; ++i) std::printf(" %*.2f", i < 2 ? 12 : 14, 1e3 * all[r * kPhaseFields + i] / n);
    std::printf("\n");
  }
  for (int r = 0; r < comm->world(); ++r) {
    const double* f = &all[r * kPhaseFields];
    if (f[6] == 0) continue;
    const double step = (f[0] + f[1]) / n;
    std::printf("rank %d NVMe offload: %.2f s per step = %.2f s compute + %.2f s waiting for the "
                "disk; %.1f GiB moved per step, %.2f GB/s\n",
                r, step, step - f[5] / n, f[5] / n, f[6] / n / 1073741824.0,
                f[6] / (f[0] + f[1]) / 1e9);
  }
}

// Resolves --strategy auto: the planner's fastest strategy that fits the
// budget, as `mingpt plan` predicts it, at one process too (where NVMe
// offload is the other candidate). Rank 0 prints the plan and its choice:
// always with several ranks; at one process only when it is not
// single_device, the choice every run made before auto could pick another
// (rank -1: a dry run, which prints nothing).
StatusOr<std::string> ResolveStrategy(const TrainOptions& o, int rank, int world, size_t data_bytes) {
  if (o.strategy != "auto") return o.strategy;
  PlanInput in{o.model, o.batch_size, world, data_bytes, NvmeSettings(o)};
  const size_t budget = o.memory_budget > 0 ? o.memory_budget
                                            : DefaultMemoryBudget(DetectMpiEnvironment().local_size);
  const std::vector<PlanRow> rows = PlanMemory(in);
  const std::string chosen = ChooseStrategy(in, o.activation_checkpointing, budget);
  const bool shown = rank == 0 && (world > 1 || (!chosen.empty() && chosen != "single_device"));
  if (shown) std::fprintf(stderr, "%s", FormatPlan(in, rows, budget).c_str());
  if (chosen.empty()) {
    // The smallest candidate's prediction, so that the line says by how
    // much even where no plan was printed.
    const PlanRow* smallest = nullptr;
    for (const PlanRow& r : rows) {
      if (r.activation_checkpointing != o.activation_checkpointing) continue;
      if (IsNvmeStrategy(r.strategy) && o.offload_dir.empty()) continue;
      if (smallest == nullptr || r.peak() < smallest->peak()) smallest = &r;
    }
    return Status::Error("--strategy auto: no strategy fits the memory budget of " +
                         std::to_string(budget >> 20) + " MiB per rank (the smallest, " +
                         smallest->strategy + ", needs " + std::to_string(smallest->peak() >> 20) +
                         " MiB); use more ranks, a smaller --batch_size, "
                         "--activation_checkpointing, --offload_dir or a larger --memory_budget");
  }
  if (shown) std::fprintf(stderr, "--strategy auto: %s, the fastest that fits\n", chosen.c_str());
  return chosen;
}

// Creates `dir` and its parents. A file in the way is named: the path that
// failed is not always `dir` ("Not a directory" for <root>/checkpoints may
// mean <root> or <root>/checkpoints is a file).
Status CreateDirectories(const std::string& dir) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (!ec) return Status::Ok();
  for (std::filesystem::path p = dir; !p.empty(); p = p.parent_path()) {
    std::error_code ignore;
    if (!std::filesystem::exists(p, ignore)) continue;
    if (!std::filesystem::is_directory(p, ignore)) {
      return Status::Error("cannot create '" + dir + "': '" + p.string() +
                           "' exists and is not a directory");
    }
    break;
  }
  return Status::Error("cannot create '" + dir + "': " + ec.message());
}

// Creates the new directory `base`, or base-2, base-3, ... when another run
// has it (two runs started in the same second share runs/<time>); mkdir
// fails on a name that exists, so two runs never get the same one. Returns
// the name created.
StatusOr<std::string> CreateNewDirectory(const std::string& base) {
  const std::string parent = std::filesystem::path(base).parent_path().string();
  if (!parent.empty()) MINGPT_RETURN_IF_ERROR(CreateDirectories(parent));
  constexpr int kMaxSuffix = 1000;
  for (int n = 1; n <= kMaxSuffix; ++n) {
    const std::string dir = n == 1 ? base : base + "-" + std::to_string(n);
    if (::mkdir(dir.c_str(), 0777) == 0) return dir;
    if (errno != EEXIST) return ErrnoError("cannot create", dir, errno);
  }
  return Status::Error("cannot create '" + base + "': it and its names up to -" +
                       std::to_string(kMaxSuffix) + " exist");
}

// *sum += after - before: the waits of one stretch of the run.
void AddWaits(WaitTimes* sum, const WaitTimes& before, const WaitTimes& after) {
  sum->params += after.params - before.params;
  sum->grads += after.grads - before.grads;
  sum->other += after.other - before.other;
  sum->io += after.io - before.io;
  sum->io_bytes += after.io_bytes - before.io_bytes;
}

}  // namespace

StatusOr<TrainSummary> Train(TrainOptions o, const std::atomic<bool>* stop) {
  std::unique_ptr<Communicator> local = MakeLocalCommunicator();
  return Train(std::move(o), local.get(), stop);
}

namespace {

// The run in steps and tokens. Rank r's rows of micro-batch m of step s are
// the global samples ((s*k + m)*world + r)*B + b: N ranks with batch B see
// exactly the samples of one process with batch N*B.
struct Plan {
  int64_t global_batch = 0, tokens_per_step = 0, total_steps = 0, val_every = 0;
  int64_t val_windows = 0;  // validation windows in all (0: no validation)
  LrSchedule schedule;
};

StatusOr<Plan> MakePlan(const TrainOptions& o, const CharDataset& data, int world) {
  Plan p;
  const int B = o.batch_size, T = o.model.block_size;
  p.global_batch = static_cast<int64_t>(B) * world * o.accumulate_grad_batches;
  p.tokens_per_step = p.global_batch * T;
  const int64_t full_epoch_steps = (data.epoch_samples() + p.global_batch - 1) / p.global_batch;
  const int64_t epoch_steps = std::max<int64_t>(1, ApplyLimit(o.limit_train_batches, full_epoch_steps));
  p.total_steps = o.max_steps > 0 ? o.max_steps : o.max_epochs * epoch_steps;
  p.val_every = o.val_check_interval <= 1.0
      ? std::max<int64_t>(1, static_cast<int64_t>(std::llround(o.val_check_interval * epoch_steps)))
      : static_cast<int64_t>(o.val_check_interval);
  // Validation batches are counted per rank, as Lightning counts them.
  const int64_t per_round = static_cast<int64_t>(B) * world;
  const int64_t val_rounds = (data.num_eval_windows(Split::kVal) + per_round - 1) / per_round;
  const int64_t val_batches = ApplyLimit(o.limit_val_batches, val_rounds);
  if (val_batches == 0 && o.limit_val_batches > 0 && val_rounds > 0) {
    // As Lightning refuses it: a fraction meant to validate that validates
    // nothing (0 itself turns validation off). The least fraction that
    // selects one batch, rounded up to 4 decimals.
    char line[256];
    std::snprintf(line, sizeof(line),
                  "--limit_val_batches %g selects none of the %lld validation batches per rank; "
                  "give at least %g (or 0 to turn validation off)",
                  o.limit_val_batches, static_cast<long long>(val_rounds),
                  std::ceil(1e4 / static_cast<double>(val_rounds)) / 1e4);
    return Status::Error(line);
  }
  p.val_windows = val_batches * per_round;
  p.schedule = {o.optim.learning_rate, o.warmup_tokens,
                2.0 * static_cast<double>(data.epoch_samples()) * T, true};
  return p;
}

// Everything Train needs before its first step; built on every rank.
struct Setup {
  std::optional<OpenedCheckpoint> resume;
  CharTokenizer tokenizer;
  std::optional<CharDataset> data;
  bool made_root = false;  // rank 0 created the run directory (it did not exist)
  Plan plan;
};

// With dry_run, only checks: nothing is created or printed.
StatusOr<Setup> Prepare(TrainOptions* o, Communicator* comm, bool dry_run = false) {
  MINGPT_RETURN_IF_ERROR(ValidateTrainOptions(*o));
  if (o->strategy == "single_device" && comm->world() > 1) {
    return Status::Error("--strategy single_device runs one process, but " +
                         std::to_string(comm->world()) + " were started");
  }
  Setup s;
  if (!o->ckpt_path.empty()) {
    MINGPT_ASSIGN_OR_RETURN(s.resume, OpenTrainingCheckpoint(o->ckpt_path));
    // (A dry run's communicator only has a size: nothing to agree with.)
    if (!dry_run) MINGPT_RETURN_IF_ERROR(AgreeOnCheckpointVersion(comm, &*s.resume));
    o->seed = s.resume->state.seed;
  }
  // Data (recorded in checkpoints by absolute path).
  MINGPT_ASSIGN_OR_RETURN(std::string text, ReadFile(o->data_path));
  o->data_path = std::filesystem::absolute(o->data_path).lexically_normal().string();
  if (text.empty()) return Status::Error("data file '" + o->data_path + "' is empty");
  if (s.resume) {
    s.tokenizer = s.resume->tokenizer;
  } else {
    auto tokenizer = CharTokenizer::FromText(text);
    if (!tokenizer.ok()) return tokenizer.status().WithContext("data file '" + o->data_path + "'");
    s.tokenizer = std::move(tokenizer).value();
  }
  auto encoded = s.tokenizer.Encode(text);
  if (!encoded.ok()) {
    return encoded.status().WithContext("data file '" + o->data_path + "' does not fit the checkpoint");
  }
  o->model.vocab_size = s.tokenizer.size();
  MINGPT_RETURN_IF_ERROR(o->model.Validate());
  if (s.resume && !o->model.SameShape(s.resume->config)) {
    return Status::Error("--ckpt_path model (" + s.resume->config.ToString() +
                         ") differs from the flags (" + o->model.ToString() + ")");
  }
  MINGPT_ASSIGN_OR_RETURN(CharDataset data,
                          CharDataset::Create(std::move(encoded).value(), o->model.block_size));
  s.data.emplace(std::move(data));
  // Rank 0 alone resolves auto, and Train gives every rank its choice: with
  // its own free memory (the default budget) or --memory_budget, another rank
  // could choose another strategy, and mismatched collectives follow.
  if (dry_run || comm->rank() == 0) {
    MINGPT_ASSIGN_OR_RETURN(o->strategy, ResolveStrategy(*o, dry_run ? -1 : comm->rank(),
                                                          comm->world(), text.size()));
  }
  if (comm->world() == 1) {
    const std::string strategy = o->strategy;
    const NvmeOptions nvme = NvmeSettings(*o);
    auto state = [&] {  // what the strategy keeps in memory (NVMe offload: little)
      return static_cast<double>(ZeroEngine::Account(ModelLayout(o->model), 0, 1,
                                                     ZeroStageOf(strategy),
                                                     IsOffloadStrategy(strategy),
                                                     IsNvmeStrategy(strategy) ? &nvme : nullptr)
                                     .total());
    };
    MINGPT_RETURN_IF_ERROR(CheckMemoryFits(o->model, o->batch_size, /*training=*/true,
                                           o->activation_checkpointing, state));
  }
  if (IsNvmeStrategy(o->strategy)) {  // the offload directory, before anything is created
    // Rank 0's shards: never smaller than another's.
    const std::vector<ShardRange> shards = RankShards(ModelLayout(o->model), 0, comm->world());
    MINGPT_RETURN_IF_ERROR(NvmeState::CheckDirectory(
        o->offload_dir, NvmeState::DiskBytes(shards, o->offload_params == "nvme")));
  }
  MINGPT_ASSIGN_OR_RETURN(s.plan, MakePlan(*o, *s.data, comm->world()));
  if (s.resume) {
    // Every file of the checkpoint checked before anything is created.
    MINGPT_RETURN_IF_ERROR(CheckpointReader::Open(*s.resume, ModelLayout(o->model)).status());
    if (s.resume->state.step >= s.plan.total_steps) {
      return Status::Error("the checkpoint is at step " + std::to_string(s.resume->state.step) +
                           ", and the run ends at step " + std::to_string(s.plan.total_steps) +
                           ": nothing to train (raise --max_steps or --max_epochs)");
    }
  }
  const bool saver = dry_run || comm->rank() == 0;  // rank 0 makes the run directory
  if (saver && o->enable_checkpointing && !o->new_root_dir) {
    // Found now, not at the first save, a whole --val_check_interval later.
    for (const char* name : {"best", "last"}) {
      const std::string path = o->default_root_dir + "/checkpoints/" + name;
      struct stat st;
      if (::lstat(path.c_str(), &st) == 0 && !S_ISDIR(st.st_mode) && !S_ISLNK(st.st_mode)) {
        return Status::Error("cannot save checkpoints: '" + path +
                             "' exists and is not a checkpoint directory");
      }
    }
  }
  if (dry_run || comm->rank() != 0) return s;
  if (o->new_root_dir) {
    MINGPT_ASSIGN_OR_RETURN(o->default_root_dir, CreateNewDirectory(o->default_root_dir));
    s.made_root = true;
  } else {
    std::error_code ignore;
    s.made_root = !std::filesystem::exists(o->default_root_dir, ignore);
  }
  MINGPT_RETURN_IF_ERROR(
      CreateDirectories(o->default_root_dir + (o->enable_checkpointing ? "/checkpoints" : "")));
  if (o->enable_checkpointing) {  // a killed run's half saves
    for (const char* name : {"/checkpoints/best", "/checkpoints/last"}) {
      RemoveCrashLeftovers(o->default_root_dir + name);
    }
  }
  return s;
}


// Forward and backward of this rank's k micro-batches of step s, gradients
// of the loss times `loss_scale` summed into the strategy's; returns the
// rank's mean (unscaled) loss.
double ForwardBackwardStep(GPT* gpt, Strategy* sp, const CharDataset& data, const TrainOptions& o,
                           int64_t s, double loss_scale, std::vector<int32_t>* x,
                           std::vector<int32_t>* y) {
  const int B = o.batch_size, T = o.model.block_size, k = o.accumulate_grad_batches;
  const int rank = sp->rank(), world = sp->world();
  double loss = 0;
  for (int m = 0; m < k; ++m) {
    const uint64_t base = ((static_cast<uint64_t>(s) * k + m) * world + rank) * B;
    for (int b = 0; b < B; ++b) data.TrainSample(o.seed, base + b, &(*x)[b * T], &(*y)[b * T]);
    DropoutContext dc{true, o.seed, static_cast<uint32_t>(s), base};
    sp->BeginMicroBatch(m == k - 1);
    loss += gpt->ForwardBackward(sp, x->data(), y->data(), B, T, dc,
                                 static_cast<float>(loss_scale / (k * world)));
  }
  return loss / k;
}

}  // namespace

Status CheckTrainSetup(TrainOptions o) {
  std::unique_ptr<Communicator> world = MakeSizeOnlyCommunicator(0, o.devices);
  MINGPT_RETURN_IF_ERROR(Prepare(&o, world.get(), /*dry_run=*/true).status());
  // The launcher starts every rank on this machine.
  MINGPT_ASSIGN_OR_RETURN(const std::string accelerator, ResolveAccelerator(o.accelerator));
  return accelerator == "cuda" ? CheckOneRankPerGpu(o.devices) : Status::Ok();
}

StatusOr<TrainSummary> Train(TrainOptions o, Communicator* comm, const std::atomic<bool>* stop,
                             const RankDeviceFactory& make_device) {
  const int rank = comm->rank(), world = comm->world();
  const bool lead = rank == 0;
  MINGPT_RETURN_IF_ERROR(CheckSameOnAllRanks(comm, "configuration", ConfigFingerprint(o)));
  StatusOr<Setup> setup_or = Prepare(&o, comm);
  MINGPT_RETURN_IF_ERROR(AgreeOnStatus(comm, setup_or.status()));
  Setup setup = std::move(setup_or).value();
  // Rank 0's choices: the strategy --strategy auto resolved to, and the run
  // directory it created under a default name.
  BroadcastString(comm, &o.strategy);
  if (o.new_root_dir) BroadcastString(comm, &o.default_root_dir);
  const CharDataset& data = *setup.data;
  const CharTokenizer& tokenizer = setup.tokenizer;
  // A run that fails before its first step (no device, a checkpoint whose
  // values are damaged, metrics.csv not writable) leaves no run directory
  // behind, if it made one.
  auto abandon = [&](const Status& status) {
    if (setup.made_root) {
      std::error_code ignore;
      std::filesystem::remove_all(o.default_root_dir, ignore);
    }
    return status;
  };
  // An error every rank meets at the same point (a stop during the setup,
  // the same diverged loss) is rank 0's to report; the others stop quietly,
  // as the ranks that AgreeOnStatus tells of another's failure do.
  auto reported_by_lead = [&](const Status& status) {
    return (lead ? status : Status::Error(kPeerFailedMessage)).Agreed();
  };

  // Model, strategy and state. `comm` keeps carrying the collectives on host
  // memory; comms.device carries the strategy's on backend memory.
  // (A machine of the job may lack the driver the others have.)
  StatusOr<std::string> accelerator = ResolveAccelerator(o.accelerator);
  if (Status st = AgreeOnStatus(comm, accelerator.status()); !st.ok()) return abandon(st);
  StatusOr<RankDevice> made_device = make_device ? make_device(*accelerator, comm, o.num_threads)
                                                 : MakeRankDevice(*accelerator, comm, o.num_threads);
  if (!made_device.ok()) return abandon(made_device.status());
  RankDevice device = std::move(made_device).value();
  Backend* const backend = device.backend.get();
  const Communicators comms = device.comms(comm);
  const MatmulPrecision precision = ParsePrecision(o.precision).value();  // validated
  backend->SetMatmulPrecision(precision);
  // A head size the device's attention cannot run, refused before any step.
  const Status heads = backend->CheckHeadSize(o.model.n_embd / o.model.n_head);
  if (Status st = AgreeOnStatus(comm, heads); !st.ok()) return abandon(st);
  GPT gpt(backend, o.model, o.batch_size, o.activation_checkpointing);
  const ModelLayout& layout = gpt.layout();
  const NvmeOptions nvme = NvmeSettings(o);
  StatusOr<std::unique_ptr<Strategy>> made_strategy =
      MakeStrategy(o.strategy, backend, layout, comms, /*training=*/true, device.host_backend.get(),
                   nvme);
  if (Status st = AgreeOnStatus(comm, made_strategy.status()); !st.ok()) return abandon(st);
  std::unique_ptr<Strategy> strategy = std::move(made_strategy).value();
  Strategy& sp = *strategy;
  // A stop asked for during the setup (a large model's takes minutes) ends
  // the run before its first step: nothing trained, nothing to save, and the
  // run directory it made removed. Checked before the state is read and
  // again before the first step; every rank agrees.
  auto stopped_in_setup = [&] {
    double asked = stop && stop->load() ? 1.0 : 0.0;
    comm->AllReduce(&asked, 1).Wait();
    return asked > 0;
  };
  const Status stopped = Status::Error(
      "stopped before the first step (a signal during the setup): nothing was trained or saved");
  if (stopped_in_setup()) return abandon(reported_by_lead(stopped));
  TrainState state;
  state.seed = o.seed;
  if (setup.resume) {
    Status loaded = LoadTrainingState(*setup.resume, layout, &sp, comm);
    if (!loaded.ok()) return abandon(loaded);
    state = setup.resume->state;
    // Read: this run's own saves (resuming in place) may remove it now.
    setup.resume->checkpoint.Release();
  } else {
    InitTrainingState(gpt, o.seed, &sp);
  }
  // --precision 16: dynamic loss scaling, resumed from the checkpoint's.
  std::optional<DynamicLossScaler> scaler;
  if (precision == MatmulPrecision::kFp16) {
    LossScalerConfig lc;
    lc.initial_scale_power = o.initial_scale_power;
    scaler = state.loss_scaler ? DynamicLossScaler(lc, *state.loss_scaler) : DynamicLossScaler(lc);
    state.loss_scaler = scaler->state();
  } else {
    state.loss_scaler.reset();
  }

  const int B = o.batch_size, T = o.model.block_size;
  const Plan& plan = setup.plan;
  const LrSchedule& schedule = plan.schedule;
  const int64_t total_steps = plan.total_steps, tokens_per_step = plan.tokens_per_step;

  // Rank 0 alone writes metrics.csv and prints.
  StatusOr<MetricsWriter> metrics_or = lead ? MetricsWriter::Open(o.default_root_dir + "/metrics.csv")
                                            : StatusOr<MetricsWriter>(MetricsWriter::Disabled());
  if (Status st = AgreeOnStatus(comm, metrics_or.status()); !st.ok()) return abandon(st);
  MetricsWriter metrics = std::move(metrics_or).value();
  const std::string ckpt_dir = o.default_root_dir + "/checkpoints";

  Progress progress(state.step, total_steps, o.log_every_n_steps, o.progress, /*silent=*/!lead);
  progress.Message("mingpt: " + o.model.ToString() + ", " + std::to_string(layout.num_parameters()) +
                   " parameters; " + std::to_string(total_steps) + " steps of " +
                   std::to_string(plan.global_batch) + "x" + std::to_string(T) + " tokens on " +
                   backend->name() +
                   (world > 1 ? ", " + std::to_string(world) + " ranks (" + o.strategy + ")" : "") +
                   (setup.resume ? ", resuming at step " + std::to_string(state.step) : ""));
  for (const std::string& note : o.notes) progress.Message(note);

  if (stopped_in_setup()) return abandon(reported_by_lead(stopped));

  std::vector<int32_t> x(static_cast<size_t>(B) * T), y(x.size());
  const auto start = std::chrono::steady_clock::now();
  auto elapsed = [&] {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  };
  TrainSummary summary;
  // tokens_per_s: the tokens of the steps since the last metrics row over
  // the time those steps took (validation and saves are not training).
  double window_seconds = 0;
  int64_t window_tokens = 0;
  double tokens_per_s = 0;

  auto save = [&](const std::string& name) -> Status {
    if (!o.enable_checkpointing) return Status::Ok();
    return SaveTrainingState(ckpt_dir + "/" + name, layout, tokenizer, o, state, &sp, comm);
  };
  auto validate = [&]() -> Status {
    if (plan.val_windows <= 0) return save("last");
    EvalResult r = EvaluateSplit(&gpt, &sp, data, Split::kVal, plan.val_windows, B, comm);
    MetricsRow row;
    row.step = state.step;
    row.tokens = state.tokens;
    row.val_loss = r.loss;
    row.lr = schedule.LearningRate(static_cast<double>(state.tokens));
    row.elapsed = elapsed();
    MINGPT_RETURN_IF_ERROR(AgreeOnStatus(comm, metrics.Write(row)));
    char line[128];
    const bool best = r.loss < state.best_val_loss;
    std::snprintf(line, sizeof(line), "step %lld: val loss %.4f%s", static_cast<long long>(state.step),
                  r.loss, best ? " (best)" : "");
    progress.Message(line);
    if (best) state.best_val_loss = r.loss;
    MINGPT_RETURN_IF_ERROR(save("last"));
    return best ? save("best") : Status::Ok();
  };

  double fwdbwd_s = 0, optimizer_s = 0;
  // --profile: the waits within the steps, those of validation, the saves
  // and the resume's reads left out (as from fwdbwd_s and optimizer_s).
  WaitTimes step_waits;
  const int64_t first_step = state.step;
  while (state.step < total_steps) {
    const int64_t s = state.step;
    const double t0 = elapsed();
    const WaitTimes waits_before = sp.wait_times();
    const double lr = schedule.LearningRate(static_cast<double>(state.tokens + tokens_per_step));
    sp.ZeroGrads();
    const double scale = scaler ? scaler->scale() : 1.0;
    // The step's mean loss over all ranks, and whether any rank was asked to stop.
    double shared[2] = {ForwardBackwardStep(&gpt, &sp, data, o, s, scale, &x, &y),
                        stop && stop->load() ? 1.0 : 0.0};
    comm->AllReduce(shared, 2).Wait();
    const double loss = shared[0] / world;
    const double t1 = elapsed();
    fwdbwd_s += t1 - t0;
    const bool interrupted = shared[1] > 0;
    if (!std::isfinite(loss) && !scaler) {
      return reported_by_lead(Status::Error("training diverged at step " + std::to_string(s + 1) +
                                            " (loss is " + std::to_string(loss) +
                                            "); try a lower --learning_rate"));
    }
    // Every rank sees the same norm and loss, so all skip or all step.
    const double norm = sp.GradNorm() / scale;
    const bool overflow = scaler && !(std::isfinite(loss) && std::isfinite(norm));
    if (overflow) {
      if (!scaler->Update(true)) {
        return reported_by_lead(Status::Error(
            "training diverged at step " + std::to_string(s + 1) +
            ": fp16 overflows even at the minimum loss scale 1; try --precision bf16 or a lower "
            "--learning_rate"));
      }
    } else {
      sp.ScaleGrads(ClipFactor(norm, o.gradient_clip_val) / scale);
      sp.OptimizerStep(o.optim, static_cast<float>(lr), static_cast<int>(++state.optimizer_steps));
      if (scaler) scaler->Update(false);
    }
    if (scaler) state.loss_scaler = scaler->state();
    const double t2 = elapsed();
    optimizer_s += t2 - t1;
    AddWaits(&step_waits, waits_before, sp.wait_times());
    state.step = s + 1;
    state.tokens += tokens_per_step;
    if (std::isfinite(loss)) summary.last_train_loss = loss;

    window_tokens += tokens_per_step;
    window_seconds += t2 - t0;
    if (state.step % o.log_every_n_steps == 0 || state.step == total_steps) {
      tokens_per_s = window_tokens / std::max(1e-9, window_seconds);
      window_seconds = 0;
      window_tokens = 0;
      const std::vector<double> mem = GatherMemory(comm, sp, gpt.activation_bytes(), *backend);
      double state_max = 0, rss_max = 0;
      for (int r = 0; r < world; ++r) {
        const double* m = &mem[static_cast<size_t>(r) * kMemoryFields];
        state_max = std::max(state_max, m[0] + m[1] + m[2] + m[3]);
        rss_max = std::max(rss_max, m[5]);
      }
      MetricsRow row;
      row.step = state.step;
      row.tokens = state.tokens;
      row.train_loss = loss;
      row.lr = lr;
      if (!overflow) row.grad_norm = norm;
      row.tokens_per_s = tokens_per_s;
      row.elapsed = elapsed();
      row.state_bytes = state_max;
      row.peak_rss = rss_max;
      if (scaler) {
        row.loss_scale = scale;
        row.skipped_steps = static_cast<double>(scaler->state().skipped_steps);
      }
      Status written = metrics.Write(row);
      if (lead && written.ok()) {
        written = WriteMemoryRows(o.default_root_dir + "/memory.csv", state.step, mem);
      }
      MINGPT_RETURN_IF_ERROR(AgreeOnStatus(comm, written));
    } else if (tokens_per_s == 0) {
      tokens_per_s = window_tokens / std::max(1e-9, window_seconds);
    }
    progress.Update(state.step, loss, lr, tokens_per_s);

    if (state.step % plan.val_every == 0 || state.step == total_steps || interrupted) {
      MINGPT_RETURN_IF_ERROR(validate());
    }
    if (interrupted) {
      const std::string at = " at step " + std::to_string(state.step);
      progress.Message(o.enable_checkpointing
                           ? "interrupted: saved " + ckpt_dir + "/last" + at
                           : "interrupted" + at + ": nothing saved (--enable_checkpointing false)");
      summary.interrupted = true;
      break;
    }
  }
  progress.Finish();
  if (scaler && scaler->state().skipped_steps > 0) {
    char line[160];
    std::snprintf(line, sizeof(line), "fp16: %lld steps skipped on gradient overflow; loss scale now %g",
                  static_cast<long long>(scaler->state().skipped_steps), scaler->scale());
    progress.Message(line);
  }
  {
    // The final memory report, after the last save: the run's peak.
    const std::vector<double> mem = GatherMemory(comm, sp, gpt.activation_bytes(), *backend);
    Status written = metrics.Close();
    if (lead && written.ok()) {
      written = WriteMemoryRows(o.default_root_dir + "/memory.csv", state.step, mem);
    }
    MINGPT_RETURN_IF_ERROR(AgreeOnStatus(comm, written));
  }
  if (o.profile) PrintPhaseTable(comm, fwdbwd_s, optimizer_s, step_waits, state.step - first_step);
  if (o.profile_memory) {
    const std::vector<double> mem = GatherMemory(comm, sp, gpt.activation_bytes(), *backend);
    if (lead) PrintMemoryTable(mem);
  }
  summary.root_dir = o.default_root_dir;
  summary.steps = state.step;
  summary.skipped_steps = scaler ? scaler->state().skipped_steps : 0;
  summary.tokens = state.tokens;
  summary.best_val_loss = state.best_val_loss;
  summary.memory = sp.memory();
  summary.activation_bytes = gpt.activation_bytes();
  return summary;
}

}  // namespace mingpt
