#include "train/planner.h"

#include <unistd.h>

#include <algorithm>
#include <cstdio>

#include "engine/strategies.h"
#include "engine/zero_engine.h"
#include "model/gpt.h"
#include "model/layout.h"

namespace mingpt {
namespace {

// Resident memory of a mingpt process before its model: code, libraries and
// the threads of oneDNN/OpenMP, and with several ranks OpenMPI's shared
// memory segments. Measured on Debian 12 (VmHWM of tiny models).
constexpr size_t kBaselineSingle = 16u << 20;
constexpr size_t kBaselineMpi = 26u << 20;

// Bytes per character of training text held at the peak: the text and its
// int32 token ids.
constexpr size_t kBytesPerChar = 5;

}  // namespace

PlanRow PredictPeak(const PlanInput& in, const std::string& strategy, bool checkpointing) {
  const ModelLayout layout(in.model);
  // Rank 0 holds the most: its shards are never the short ones.
  const MemoryAccount m =
      ZeroEngine::Account(layout, 0, in.world, ZeroStageOf(strategy), IsOffloadStrategy(strategy),
                          IsNvmeStrategy(strategy) ? &in.nvme : nullptr);
  PlanRow row;
  row.strategy = strategy;
  row.activation_checkpointing = checkpointing;
  row.state = m.total();
  row.activations = GPT::ActivationBytes(in.model, in.batch, checkpointing);
  // The initialisation makes one unit at a time; saves, single-process and
  // sharded, stream one tensor (of a unit's shard) at a time, never more.
  int64_t largest_unit = 0;
  for (const Unit& u : layout.units()) largest_unit = std::max(largest_unit, u.numel);
  row.transient = static_cast<size_t>(largest_unit) * sizeof(float);
  row.baseline = (in.world > 1 ? kBaselineMpi : kBaselineSingle) + kBytesPerChar * in.data_bytes;
  return row;
}

std::vector<PlanRow> PlanMemory(const PlanInput& in) {
  std::vector<PlanRow> rows;
  for (bool checkpointing : {false, true}) {
    // At one rank every stage holds everything: single_device says it.
    // Then NVMe offload, the slowest and the smallest. (Host-memory offload
    // moves state off a GPU; on the CPU it saves no memory, so it is not
    // listed.)
    const std::vector<const char*> names =
        in.world == 1 ? std::vector<const char*>{"single_device", "deepspeed_stage_3_offload_nvme"}
                      : std::vector<const char*>{"ddp", "deepspeed_stage_1", "deepspeed_stage_2",
                                                 "deepspeed_stage_3",
                                                 "deepspeed_stage_3_offload_nvme"};
    for (const char* s : names) rows.push_back(PredictPeak(in, s, checkpointing));
  }
  return rows;
}

std::string ChooseStrategy(const PlanInput& in, bool checkpointing, size_t budget) {
  for (const PlanRow& r : PlanMemory(in)) {
    // NVMe offload only where the user named its directory.
    if (IsNvmeStrategy(r.strategy) && in.nvme.dir.empty()) continue;
    if (r.activation_checkpointing == checkpointing && r.peak() <= budget) return r.strategy;
  }
  return "";
}

size_t DefaultMemoryBudget(int local_ranks) {
  size_t available = 0;
  if (std::FILE* f = std::fopen("/proc/meminfo", "r")) {
    char line[256];
    unsigned long long kb = 0;
    while (std::fgets(line, sizeof(line), f)) {
      if (std::sscanf(line, "MemAvailable: %llu kB", &kb) == 1) {
        available = static_cast<size_t>(kb) * 1024;
        break;
      }
    }
    std::fclose(f);
  }
  if (available == 0) {
    available = static_cast<size_t>(sysconf(_SC_PHYS_PAGES)) * sysconf(_SC_PAGESIZE);
  }
  return available / std::max(1, local_ranks);
}

std::string FormatPlan(const PlanInput& in, const std::vector<PlanRow>& rows, size_t budget) {
  auto mib = [](size_t b) { return b / 1048576.0; };
  std::string out;
  char line[256];
  std::snprintf(line, sizeof(line),
                "memory plan: %s, batch %d per rank, %d rank(s); budget %.0f MiB per rank\n",
                in.model.ToString().c_str(), in.batch, in.world, mib(budget));
  out += line;
  std::snprintf(line, sizeof(line), "%-30s %-8s %10s %10s %10s %10s %10s  %s\n", "strategy",
                "act_ckpt", "state", "activ", "transient", "base", "peak_MiB", "fits");
  out += line;
  for (const PlanRow& r : rows) {
    std::snprintf(line, sizeof(line), "%-30s %-8s %10.1f %10.1f %10.1f %10.1f %10.1f  %s\n",
                  r.strategy.c_str(), r.activation_checkpointing ? "on" : "off", mib(r.state),
                  mib(r.activations), mib(r.transient), mib(r.baseline), mib(r.peak()),
                  r.peak() <= budget ? "yes" : "no");
    out += line;
  }
  return out;
}

}  // namespace mingpt
