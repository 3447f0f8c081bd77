// Training checkpoints on top of io/checkpoint.h. A checkpoint directory:
//   meta.json              format_version, config, vocab, step, tokens, seed,
//                          best_val_loss, data path, strategy, world size,
//                          unit layout, options
//   model.safetensors      fp32 weights under the seed's PyTorch names
//   optimizer.safetensors  AdamW moments: exp_avg.<name>, exp_avg_sq.<name>
// PyTorch loads model.safetensors into the seed's GPT as is.
#pragma once

#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/status.h"
#include "data/char_dataset.h"
#include "io/checkpoint.h"
#include "model/config.h"
#include "model/layout.h"
#include "train/options.h"

namespace mingpt {

struct TrainState {
  int64_t step = 0;    // optimizer steps completed
  int64_t tokens = 0;  // training tokens consumed
  double best_val_loss = std::numeric_limits<double>::infinity();
  uint64_t seed = 42;
};

// Host copies of a model's flat buffers, in layout order.
struct HostState {
  std::vector<float> params, exp_avg, exp_avg_sq;
};

Status SaveTrainingCheckpoint(const std::string& dir, const ModelLayout& layout,
                              const ModelConfig& config, const CharTokenizer& tokenizer,
                              const TrainOptions& options, const TrainState& state,
                              const HostState& host);

// A checkpoint opened and its meta.json checked: config, vocabulary, state.
struct OpenedCheckpoint {
  Checkpoint checkpoint;
  ModelConfig config;
  CharTokenizer tokenizer;
  TrainState state;
  std::string data_path;
};
StatusOr<OpenedCheckpoint> OpenTrainingCheckpoint(const std::string& dir);

// Checks, from model.safetensors' header alone, that the file holds exactly
// the tensors the checkpoint's config implies, with their shapes: a corrupted
// meta.json is caught before anything is allocated for it.
Status CheckWeightsMatchConfig(const OpenedCheckpoint& ckpt);

// Reads the weights (and, if moments are non-null, the AdamW moments) into
// flat host buffers of layout.total_numel() floats, checking every name,
// shape and dtype.
Status ReadCheckpointTensors(const OpenedCheckpoint& ckpt, const ModelLayout& layout,
                             float* params, float* exp_avg, float* exp_avg_sq);

}  // namespace mingpt
