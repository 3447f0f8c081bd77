// `mingpt bench`: runs `mingpt train` once per (model, strategy, activation
// checkpointing) as a child process, reads its metrics.csv and memory.csv,
// searches the largest batch that fits the memory budget with one-step child
// runs, and writes <out>/bench.csv and <out>/report.html (train/bench.h).
// Each measurement is its own process so that its peak RSS is its own.
#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <thread>

#include "backend/backend.h"
#include "cli/commands.h"
#include "data/char_dataset.h"
#include "engine/strategies.h"
#include "io/file.h"
#include "model/layout.h"
#include "train/bench.h"
#include "train/options.h"
#include "train/planner.h"

namespace mingpt::cli {
namespace {

namespace fs = std::filesystem;

struct BenchFlags {
  std::vector<std::string> model_types = {"gpt-nano", "gpt-micro"};
  std::vector<std::string> sizes;  // "n_layer/n_head/n_embd"
  std::vector<std::string> strategies = {"ddp",
                                         "deepspeed_stage_1",
                                         "deepspeed_stage_2",
                                         "deepspeed_stage_3",
                                         "deepspeed_stage_2_offload",
                                         "deepspeed_stage_3_offload"};
  std::string checkpointing = "both";
  int devices = 1;
  int num_threads = 0;
  int batch_size = 8;
  int block_size = 128;
  int steps = 5;
  int warmup = 2;
  std::string precision = "32";
  std::string memory_budget;
  std::string offload_dir;  // adds deepspeed_stage_3_offload_nvme, its files here
  int max_batch = 256;
  bool no_batch_search = false;
  std::string out;
  std::string data;
};

// A child `mingpt train` with its output in `log`; returns its exit code
// (128 + signal when killed).
StatusOr<int> RunChild(const std::vector<std::string>& args, const std::string& log) {
  std::vector<std::string> argv_s = {"/proc/self/exe"};
  argv_s.insert(argv_s.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (std::string& a : argv_s) argv.push_back(a.data());
  argv.push_back(nullptr);
  std::fflush(nullptr);
  const pid_t pid = ::fork();
  if (pid < 0) return Status::Error("cannot start a child process");
  if (pid == 0) {
    const int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd >= 0) {
      ::dup2(fd, 1);
      ::dup2(fd, 2);
    }
    ::execv("/proc/self/exe", argv.data());
    ::_exit(127);
  }
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0) {
    if (errno != EINTR) return Status::Error("lost a child process");
  }
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return WEXITSTATUS(status);
}

// The CSV at `path` as rows of cells (header first).
std::vector<std::vector<std::string>> ReadCsv(const std::string& path) {
  std::vector<std::vector<std::string>> rows;
  std::ifstream in(path);
  for (std::string line; std::getline(in, line);) {
    std::vector<std::string> cells;
    std::stringstream ss(line);
    for (std::string c; std::getline(ss, c, ',');) cells.push_back(c);
    if (!line.empty() && line.back() == ',') cells.push_back("");
    rows.push_back(cells);
  }
  return rows;
}

// The largest rank's peak RSS while training: per rank the first row of the
// last step (the trainer appends one more after its final checkpoint save).
double TrainingPeakRss(const std::string& memory_csv) {
  const auto rows = ReadCsv(memory_csv);
  int64_t last_step = -1;
  for (size_t i = 1; i < rows.size(); ++i) {
    if (rows[i].size() >= 8) last_step = std::max<int64_t>(last_step, std::stoll(rows[i][0]));
  }
  std::map<std::string, double> first;  // rank -> peak
  for (size_t i = 1; i < rows.size(); ++i) {
    if (rows[i].size() < 8 || std::stoll(rows[i][0]) != last_step) continue;
    first.emplace(rows[i][1], std::stod(rows[i][7]));
  }
  double peak = 0;
  for (const auto& [rank, v] : first) peak = std::max(peak, v);
  return peak;
}

// The last line a failed child printed (its error).
std::string LastLine(const std::string& log) {
  std::ifstream in(log);
  std::string line, last;
  while (std::getline(in, line)) {
    if (!line.empty()) last = line;
  }
  return last.empty() ? "no output" : last;
}

struct RunResult {
  bool ok = false;
  std::string error;
  double time_per_iter_s = 0, peak_rss = 0;
};

class Bench {
 public:
  Bench(const BenchFlags& f, std::string data) : f_(f), data_(std::move(data)) {}

  // One child training run of `steps` steps at `batch` per rank.
  StatusOr<RunResult> Train(const ModelConfig& m, const std::string& strategy, bool ckpt,
                            int batch, int steps, const std::string& name) {
    const std::string dir = f_.out + "/runs/" + name;
    fs::remove_all(dir);
    fs::create_directories(dir);
    std::vector<std::string> args = {
        "train", "--data", data_, "--n_layer", std::to_string(m.n_layer), "--n_head",
        std::to_string(m.n_head), "--n_embd", std::to_string(m.n_embd), "--block_size",
        std::to_string(m.block_size), "--dropout", "0", "--batch_size", std::to_string(batch),
        "--max_steps", std::to_string(steps), "--limit_val_batches", "0", "--log_every_n_steps",
        "1", "--strategy", strategy, "--devices", std::to_string(f_.devices), "--precision",
        f_.precision, "--default_root_dir", dir + "/run"};
    if (ckpt) args.push_back("--activation_checkpointing");
    if (IsNvmeStrategy(strategy)) {
      args.push_back("--offload_dir");
      args.push_back(f_.offload_dir);
    }
    if (f_.num_threads > 0) {
      args.push_back("--num_threads");
      args.push_back(std::to_string(f_.num_threads));
    }
    MINGPT_ASSIGN_OR_RETURN(const int rc, RunChild(args, dir + "/log.txt"));
    if (rc == 130 || rc == 143) return Status::Error("interrupted");
    RunResult r;
    if (rc != 0) {
      r.error = LastLine(dir + "/log.txt");
      return r;  // kept for the user to read: the log stays
    }
    const auto metrics = ReadCsv(dir + "/run/metrics.csv");
    std::map<int64_t, double> elapsed;  // step -> elapsed, train rows
    for (size_t i = 1; i < metrics.size(); ++i) {
      if (metrics[i].size() >= 8 && !metrics[i][2].empty()) {
        elapsed[std::stoll(metrics[i][0])] = std::stod(metrics[i][7]);
      }
    }
    r.peak_rss = TrainingPeakRss(dir + "/run/memory.csv");
    const int64_t first = std::min<int64_t>(f_.warmup, steps - 1);
    if (elapsed.count(steps) && (first == 0 || elapsed.count(first))) {
      const double t0 = first == 0 ? 0.0 : elapsed[first];
      r.time_per_iter_s = (elapsed[steps] - t0) / static_cast<double>(steps - first);
      r.ok = r.time_per_iter_s > 0;
      if (!r.ok) r.error = "steps too short to time; raise --steps";
    } else {
      r.error = "metrics.csv lacks the step rows";
    }
    fs::remove_all(dir);
    return r;
  }

 private:
  const BenchFlags& f_;
  std::string data_;
};

std::string NowUtc(const char* format) {
  const std::time_t t = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char b[64];
  std::strftime(b, sizeof(b), format, &tm);
  return b;
}

std::string MachineDescription() {
  std::string cpu = "unknown CPU";
  std::ifstream info("/proc/cpuinfo");
  for (std::string line; std::getline(info, line);) {
    if (line.rfind("model name", 0) == 0) {
      cpu = line.substr(line.find(':') + 2);
      break;
    }
  }
  double mem_gib = 0;
  std::ifstream meminfo("/proc/meminfo");
  for (std::string key; meminfo >> key;) {
    if (key == "MemTotal:") {
      double kib = 0;
      meminfo >> kib;
      mem_gib = kib / 1048576.0;
      break;
    }
  }
  char b[256];
  std::snprintf(b, sizeof(b), "%s, %u logical CPUs, %.0f GiB", cpu.c_str(),
                std::thread::hardware_concurrency(), mem_gib);
  return b;
}

// oneDNN's fp32 GEMM rate at [2048, C] x [C, 4C] (the shape of the MLP's
// first product), best of 5 after 2 warm-ups, with `threads` threads. The
// caller takes C at least 512, where the GEMM reaches the machine's rate:
// MFU is against what the CPU can do, not what a tiny model's shapes allow.
double MeasureGemmCeiling(int C, int threads) {
  std::unique_ptr<Backend> backend = MakeCpuBackend(threads);
  const int N = 2048, OC = 4 * C;
  Buffer a(backend.get(), sizeof(float) * N * C), w(backend.get(), sizeof(float) * OC * C),
      out(backend.get(), sizeof(float) * N * OC);
  std::vector<float> host(static_cast<size_t>(OC) * C);
  for (size_t i = 0; i < host.size(); ++i) host[i] = static_cast<float>((i * 7919) % 1000) * 1e-3f;
  backend->CopyToDevice(w.f32(), host.data(), sizeof(float) * OC * C);
  backend->Memset0(a.f32(), sizeof(float) * N * C);
  backend->CopyToDevice(a.f32(), host.data(), sizeof(float) * std::min<size_t>(host.size(), size_t{N} * C));
  double best = 0;
  for (int i = 0; i < 7; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    backend->MatmulForward(out.f32(), a.f32(), w.f32(), nullptr, N, C, OC);
    backend->Synchronize();
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (i >= 2) best = std::max(best, 2.0 * N * C * OC / s / 1e9);
  }
  return best;
}

}  // namespace

Command AddBench(CLI::App* app) {
  auto f = std::make_shared<BenchFlags>();
  app->add_option("--model_types", f->model_types, "minGPT presets to measure")
      ->delimiter(',')
      ->capture_default_str();
  app->add_option("--sizes", f->sizes, "More models as n_layer/n_head/n_embd, e.g. 6/6/384")
      ->delimiter(',');
  app->add_option("--strategies", f->strategies, "Strategies to measure")
      ->delimiter(',')
      ->capture_default_str();
  app->add_option("--activation_checkpointing", f->checkpointing, "both, on or off")
      ->capture_default_str();
  app->add_option("--devices,--gpus", f->devices, "Ranks per run")->capture_default_str();
  app->add_option("--num_threads", f->num_threads, "Threads per rank (default 0: cores / ranks)");
  app->add_option("--batch_size", f->batch_size, "Batch per rank of the timed runs")
      ->capture_default_str();
  app->add_option("--block_size", f->block_size, "Context length")->capture_default_str();
  app->add_option("--steps", f->steps, "Timed steps after the warm-up")->capture_default_str();
  app->add_option("--warmup", f->warmup, "Untimed first steps")->capture_default_str();
  app->add_option("--precision", f->precision, "32, bf16 or 16")->capture_default_str();
  app->add_option("--memory_budget", f->memory_budget,
                  "Peak RSS per rank the largest-batch search must stay within, e.g. 4GiB "
                  "(default: available memory / ranks)");
  app->add_option("--max_batch", f->max_batch, "Largest batch per rank the search tries")
      ->capture_default_str();
  app->add_flag("--no_batch_search", f->no_batch_search, "Skip the largest-batch search");
  app->add_option("--offload_dir", f->offload_dir,
                  "Also measure deepspeed_stage_3_offload_nvme, its files in this directory")
      ->check(NotEmpty());
  app->add_option("--out", f->out, "Output directory (default bench/runs/<time>)")
      ->check(NotEmpty());
  app->add_option("--data", f->data,
                  "Training text (default $MINGPT_DATA, else data/tinyshakespeare.txt)")
      ->check(NotEmpty());
  return [f]() -> Status {
    BenchFlags& b = *f;
    auto err = [](const std::string& m) { return Status::Error(m); };
    if (b.devices < 1) return err("--devices must be positive");
    if (b.batch_size < 1) return err("--batch_size must be positive");
    if (b.steps < 1) return err("--steps must be positive");
    if (b.warmup < 0) return err("--warmup must be >= 0");
    if (b.max_batch < 1) return err("--max_batch must be positive");
    if (b.num_threads != 0) MINGPT_RETURN_IF_ERROR(ValidateNumThreads(b.num_threads));
    if (b.checkpointing != "both" && b.checkpointing != "on" && b.checkpointing != "off") {
      return err("--activation_checkpointing must be both, on or off, got '" + b.checkpointing + "'");
    }
    MINGPT_RETURN_IF_ERROR(ParsePrecision(b.precision).status());
    if (!b.offload_dir.empty()) {
      if (!fs::is_directory(b.offload_dir)) {
        return err("--offload_dir " + b.offload_dir + " is not a directory");
      }
      if (std::find(b.strategies.begin(), b.strategies.end(), "deepspeed_stage_3_offload_nvme") ==
          b.strategies.end()) {
        b.strategies.push_back("deepspeed_stage_3_offload_nvme");
      }
    }
    for (const std::string& s : b.strategies) {
      if (IsNvmeStrategy(s) && b.offload_dir.empty()) {
        return err("--strategies deepspeed_stage_3_offload_nvme needs --offload_dir");
      }
      if (s == "auto") return err("--strategies: auto chooses a strategy; name the ones to measure");
      MINGPT_RETURN_IF_ERROR(ValidateStrategyName(s).WithContext("--strategies"));
    }
    size_t budget = DefaultMemoryBudget(b.devices);
    if (!b.memory_budget.empty()) {
      MINGPT_ASSIGN_OR_RETURN(budget, ParseBytes(b.memory_budget, "--memory_budget"));
    }
    // Models: presets, then explicit sizes.
    std::vector<std::pair<std::string, ModelConfig>> models;
    for (const std::string& t : b.model_types) {
      if (t.empty()) continue;  // --model_types "": explicit --sizes only
      ModelConfig c;
      MINGPT_RETURN_IF_ERROR(ApplyPreset(t, &c));
      models.push_back({t, c});
    }
    for (const std::string& s : b.sizes) {
      ModelConfig c;
      char extra = 0;
      if (std::sscanf(s.c_str(), "%d/%d/%d%c", &c.n_layer, &c.n_head, &c.n_embd, &extra) != 3) {
        return err("--sizes: '" + s + "' is not n_layer/n_head/n_embd, e.g. 6/6/384");
      }
      models.push_back({s, c});
    }
    if (models.empty()) return err("nothing to measure: give --model_types or --sizes");
    MINGPT_ASSIGN_OR_RETURN(const std::string data, ResolveDataPath(b.data));
    MINGPT_ASSIGN_OR_RETURN(const std::string text, ReadFile(data));
    auto tokenizer = CharTokenizer::FromText(text);
    if (!tokenizer.ok()) return tokenizer.status().WithContext("data file '" + data + "'");
    const int vocab = tokenizer->size();
    for (auto& [name, c] : models) {
      c.block_size = b.block_size;
      c.vocab_size = vocab;
      c.dropout = 0;
      MINGPT_RETURN_IF_ERROR(c.Validate().WithContext(name));
    }
    if (b.out.empty()) b.out = "bench/runs/" + NowUtc("%Y%m%d-%H%M%S");
    std::error_code ec;
    fs::create_directories(b.out, ec);
    if (ec) return err("cannot create --out '" + b.out + "': " + ec.message());

    std::vector<bool> variants;
    if (b.checkpointing != "on") variants.push_back(false);
    if (b.checkpointing != "off") variants.push_back(true);

    // The GEMM ceiling, with every core the runs use together.
    int max_embd = 0;
    for (const auto& [name, c] : models) max_embd = std::max(max_embd, c.n_embd);
    max_embd = std::clamp(max_embd, 512, 2048);
    const int cores = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
    const int total_threads = b.num_threads > 0 ? b.num_threads * b.devices : cores;
    BenchContext ctx;
    ctx.date = NowUtc("%Y-%m-%d %H:%M UTC");
    ctx.machine = MachineDescription();
    ctx.memory_budget = b.no_batch_search ? 0 : budget;
    ctx.gemm_ceiling_gflops = MeasureGemmCeiling(max_embd, total_threads);
    ctx.gemm_shape = "2048x" + std::to_string(max_embd) + " @ " + std::to_string(max_embd) + "x" +
                     std::to_string(4 * max_embd) + ", " + std::to_string(total_threads) +
                     " threads";
    ctx.command = "mingpt bench --devices " + std::to_string(b.devices) + " --batch_size " +
                  std::to_string(b.batch_size) + " --block_size " + std::to_string(b.block_size) +
                  " --precision " + b.precision;
    std::printf("GEMM ceiling: %.1f GFLOP/s (%s)\n", ctx.gemm_ceiling_gflops, ctx.gemm_shape.c_str());

    Bench bench(b, data);
    std::vector<BenchRow> rows;
    const size_t total = models.size() * b.strategies.size() * variants.size();
    int index = 0;
    for (const auto& [name, c] : models) {
      const int64_t params = ModelLayout(c).num_parameters();
      for (const std::string& strategy : b.strategies) {
        for (bool ckpt : variants) {
          ++index;
          BenchRow row;
          row.model = name;
          row.config = c;
          row.parameters = params;
          row.strategy = strategy;
          row.devices = b.devices;
          row.activation_checkpointing = ckpt;
          row.precision = b.precision;
          row.batch_size = b.batch_size;
          std::printf("[%d/%zu] %s, %s: ", index, total, name.c_str(), row.DisplayName().c_str());
          std::fflush(stdout);
          const std::string tag = std::to_string(index);
          MINGPT_ASSIGN_OR_RETURN(RunResult r, bench.Train(c, strategy, ckpt, b.batch_size,
                                                           b.warmup + b.steps, tag));
          row.ok = r.ok;
          row.error = r.error;
          if (r.ok) {
            row.time_per_iter_s = r.time_per_iter_s;
            const double tokens_per_step = static_cast<double>(b.batch_size) * b.devices * c.block_size;
            row.tokens_per_s = tokens_per_step / r.time_per_iter_s;
            row.peak_rss_bytes = r.peak_rss;
            row.mfu = row.tokens_per_s * TrainingFlopsPerToken(c, params) /
                      (ctx.gemm_ceiling_gflops * 1e9);
            std::printf("%.3f s/iter, %.0f tokens/s, peak %.0f MiB/rank, MFU %.1f%%", r.time_per_iter_s,
                        row.tokens_per_s, r.peak_rss / 1048576.0, 100 * row.mfu);
            std::fflush(stdout);
            if (!b.no_batch_search && r.peak_rss <= static_cast<double>(budget)) {
              int probe_index = 0;
              auto fits = [&](int batch) -> StatusOr<bool> {
                MINGPT_ASSIGN_OR_RETURN(
                    RunResult p, bench.Train(c, strategy, ckpt, batch, 1,
                                             tag + "-probe" + std::to_string(++probe_index)));
                if (!p.ok) fs::remove_all(b.out + "/runs/" + tag + "-probe" + std::to_string(probe_index));
                return p.ok && p.peak_rss <= static_cast<double>(budget);
              };
              MINGPT_ASSIGN_OR_RETURN(row.largest_batch,
                                      LargestFitting(b.batch_size, b.max_batch, fits, &row.probes));
              row.largest_batch_capped = row.largest_batch >= b.max_batch;
              std::printf(", largest batch %d%s (%d probes)", row.largest_batch,
                          row.largest_batch_capped ? "+" : "", row.probes);
            }
            std::printf("\n");
          } else {
            std::printf("failed: %s (log kept in %s/runs/%s)\n", r.error.c_str(), b.out.c_str(),
                        tag.c_str());
          }
          rows.push_back(row);
          // Written after every row: an interrupted bench keeps what it measured.
          MINGPT_RETURN_IF_ERROR(WriteFileDurably(b.out + "/bench.csv", BenchCsv(rows)));
          MINGPT_RETURN_IF_ERROR(WriteFileDurably(b.out + "/report.html", BenchHtml(rows, ctx)));
        }
      }
    }
    std::error_code ignore;
    fs::remove(b.out + "/runs", ignore);  // only when empty: failed runs' logs stay
    std::printf("wrote %s/bench.csv and %s/report.html\n", b.out.c_str(), b.out.c_str());
    const size_t failed = std::count_if(rows.begin(), rows.end(), [](const BenchRow& r) { return !r.ok; });
    if (failed == rows.size()) {
      return err("every run failed (" + std::to_string(failed) + "; their logs are in " + b.out + "/runs)");
    }
    return Status::Ok();
  };
}

}  // namespace mingpt::cli
