// `mingpt bench`: the seed's benchmark table (time per iteration, peak
// memory, largest per-device batch, per strategy with and without activation
// checkpointing) measured on this machine, as a CSV and a self-contained
// HTML report. This file holds the parts that do not start processes: the
// row, the FLOP count behind MFU, the largest-batch search, and the two
// renderings. cli/bench_command.cc runs the measurements.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "core/status.h"
#include "model/config.h"

namespace mingpt {

// One measured configuration.
struct BenchRow {
  std::string model;          // "gpt-micro" or "6/6/384"
  ModelConfig config;         // n_layer, n_head, n_embd, block_size, vocab_size
  int64_t parameters = 0;
  std::string strategy;       // Lightning's name
  int devices = 1;
  bool activation_checkpointing = false;
  std::string precision = "32";
  int batch_size = 0;         // per rank, of the timed run
  bool ok = false;            // the timed run finished
  std::string error;          // why not, when !ok
  double time_per_iter_s = 0; // mean over the timed steps (after warm-up)
  double tokens_per_s = 0;    // over all ranks
  double peak_rss_bytes = 0;  // the largest rank's peak RSS
  int largest_batch = 0;      // per rank, fitting the budget; 0: not searched
  int probes = 0;             // child runs the search took
  bool largest_batch_capped = false;  // the search stopped at --max_batch
  double mfu = 0;             // model FLOPs per second / measured GEMM ceiling

  // The seed's "Plugin" column: "DeepSpeed ZeRO Stage 2 w checkpointing".
  std::string DisplayName() const;
};

// Training FLOPs per token as the speed issue counts them:
// 6 * parameters + 12 * n_layer * n_embd * block_size (the attention
// products, forward and backward).
double TrainingFlopsPerToken(const ModelConfig& config, int64_t parameters);

// The largest batch in [1, limit] for which `fits` holds, assuming it holds
// up to some batch and fails beyond. `known_fit` (>= 1) is a batch known to
// fit. Doubles from known_fit until a probe fails or `limit` is reached,
// then bisects. Each call of `fits` is one probe (counted in *probes); an
// error from a probe ends the search with that error.
StatusOr<int> LargestFitting(int known_fit, int limit,
                             const std::function<StatusOr<bool>(int)>& fits, int* probes);

// bench.csv: a header and one line per row; fields with commas are quoted.
std::string BenchCsv(const std::vector<BenchRow>& rows);

// What the report says about where it was measured.
struct BenchContext {
  std::string date;             // e.g. 2026-11-25 18:30 UTC
  std::string machine;          // CPU model, cores, memory
  std::string command;          // the bench command line
  double gemm_ceiling_gflops = 0;
  std::string gemm_shape;       // e.g. "2048x768 @ 768x3072, 2 threads"
  size_t memory_budget = 0;     // bytes per rank for the largest-batch search
};

// report.html: one page, no scripts or external resources: a table of the
// rows and, per measure (time per iteration, tokens/s, peak memory per rank,
// largest batch, MFU), an inline SVG bar chart with the models on the x axis
// and one bar per strategy variant.
std::string BenchHtml(const std::vector<BenchRow>& rows, const BenchContext& context);

}  // namespace mingpt
