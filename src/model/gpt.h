// GPT: the seed's minGPT model (mingpt/model.py) with explicit forward and
// backward over units (layout.h), written in Backend ops (backend.h).
//
//   x = drop(tok_emb[idx] + pos_emb[:T])
//   for each block:  x = x + drop(proj(attn(ln1(x))))
//                    x = x + drop(mlp.2(gelu(mlp.0(ln2(x)))))
//   logits = head(ln_f(x))
//
// Activations live in one arena sized for (max_batch, block_size) at
// construction: a step allocates nothing.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "backend/backend.h"
#include "model/config.h"
#include "model/layout.h"
#include "model/param_provider.h"

namespace mingpt {

// Where the dropout masks of one micro-batch come from (backend/dropout.h).
struct DropoutContext {
  bool training = false;     // false: dropout off (eval, sampling)
  uint64_t seed = 0;
  uint32_t step = 0;         // optimizer step
  uint64_t sample_base = 0;  // global sample index of batch row 0
};

class GPT {
 public:
  GPT(Backend* backend, const ModelConfig& config, int max_batch);
  ~GPT();

  const ModelConfig& config() const { return config_; }
  const ModelLayout& layout() const { return layout_; }

  // Fills a flat parameter buffer (layout order, host memory, total_numel
  // floats) with the seed's init: Linear/Embedding weights N(0, 0.02) from
  // the counter-based RNG keyed by `seed`, biases and pos_emb 0, LayerNorm 1.
  void InitParameters(uint64_t seed, float* host_params) const;

  // Forward over idx[B,T] (host memory, 1 <= T <= block_size, B <= max_batch).
  // With targets (host, [B,T]) returns the mean cross-entropy; without, 0.
  // Logits stay readable through logits() until the next call.
  float Forward(ParamProvider* params, const int32_t* idx, const int32_t* targets,
                int B, int T, const DropoutContext& dropout);

  // Forward and backward of the mean loss times `loss_scale` (1/k under k-step
  // gradient accumulation): gradients are added into params->Grads(u).
  // Returns the (unscaled) mean loss.
  float ForwardBackward(ParamProvider* params, const int32_t* idx,
                        const int32_t* targets, int B, int T,
                        const DropoutContext& dropout, float loss_scale);

  // Logits [B,T,V] of the last Forward (backend memory). After
  // ForwardBackward they are overwritten by their gradients.
  const float* logits() const;
  // Copies row `row` (= b*T + t) of the last logits into host memory [V].
  void CopyLogitsRow(int64_t row, float* host_dst) const;

  // Bytes held by the activation arena.
  size_t activation_bytes() const;
  // What activation_bytes() will be for (config, max_batch), before allocating.
  static size_t ActivationBytes(const ModelConfig& config, int max_batch);

 private:
  struct Arena;
  Backend* backend_;
  ModelConfig config_;
  ModelLayout layout_;
  int max_batch_;
  std::unique_ptr<Arena> arena_;
};

}  // namespace mingpt
