// The memory planner: each rank's peak memory predicted for every strategy
// from the model, the per-rank batch, the world size and activation
// checkpointing, before anything is allocated; and --strategy auto's choice.
//
// A rank's peak = the strategy's state (ZeroEngine::Account: parameters,
// gradients, AdamW moments, working unit buffers) + the activation arena
// (GPT::ActivationBytes) + the largest transient host copy (the seed
// initialisation's largest unit, or the shard of the state a sharded
// checkpoint save copies out) + the text and its token ids + the process's
// own baseline (code, libraries, oneDNN, MPI).
#pragma once

#include <cstddef>
#include <string>
#include <vector>

#include "engine/nvme_state.h"
#include "model/config.h"

namespace mingpt {

struct PlanInput {
  ModelConfig model;            // vocab_size set
  int batch = 1;                // per rank
  int world = 1;
  size_t data_bytes = 0;        // characters of the training text
  NvmeOptions nvme;             // deepspeed_stage_3_offload_nvme's settings
};

struct PlanRow {
  std::string strategy;
  bool activation_checkpointing = false;
  size_t state = 0;        // parameters + gradients + moments + working buffers
  size_t activations = 0;
  size_t transient = 0;
  size_t baseline = 0;     // process baseline and data
  size_t peak() const { return state + activations + transient + baseline; }
};

// Every strategy valid for the world (single_device only at world 1), then
// NVMe offload, with and without activation checkpointing, fastest first:
// ddp, stage 1, 2, 3, NVMe offload, each without checkpointing before the
// same with it.
std::vector<PlanRow> PlanMemory(const PlanInput& input);

// The prediction for one strategy.
PlanRow PredictPeak(const PlanInput& input, const std::string& strategy, bool checkpointing);

// --strategy auto: the fastest strategy with the given checkpointing setting
// whose predicted peak fits `budget` bytes per rank; empty if none fits.
std::string ChooseStrategy(const PlanInput& input, bool checkpointing, size_t budget);

// The default budget per rank: MemAvailable / ranks on this machine.
size_t DefaultMemoryBudget(int local_ranks);

// The table `mingpt plan` prints (and `train --strategy auto` with it).
std::string FormatPlan(const PlanInput& input, const std::vector<PlanRow>& rows, size_t budget);

}  // namespace mingpt
