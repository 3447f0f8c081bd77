// ModelConfig: the seed's GPT hyper-parameters and the presets of minGPT.
#pragma once

#include <string>

#include "core/status.h"

namespace mingpt {

struct ModelConfig {
  int n_layer = 6;
  int n_head = 6;
  int n_embd = 192;
  int block_size = 128;
  int vocab_size = 0;
  float dropout = 0.1f;  // embd_pdrop = attn_pdrop = resid_pdrop

  int head_size() const { return n_embd / n_head; }
  // One clear error for impossible shapes (non-positive sizes, n_embd not a
  // multiple of n_head, dropout outside [0, 1)).
  Status Validate() const;
  bool SameShape(const ModelConfig& o) const {
    return n_layer == o.n_layer && n_head == o.n_head && n_embd == o.n_embd &&
           block_size == o.block_size && vocab_size == o.vocab_size;
  }
  std::string ToString() const;
};

// Applies a minGPT preset ("gpt-nano", "gpt-micro", "gpt-mini", "gpt1", ...)
// to n_layer/n_head/n_embd. Unknown names are an error listing the known ones.
Status ApplyPreset(const std::string& model_type, ModelConfig* config);

}  // namespace mingpt
