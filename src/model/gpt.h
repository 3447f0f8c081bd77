// GPT: the seed's minGPT model (mingpt/model.py) with explicit forward and
// backward over units (layout.h), written in Backend ops (backend.h).
//
//   x = drop(tok_emb[idx] + pos_emb[:T])
//   for each block:  x = x + drop(proj(attn(ln1(x))))
//                    x = x + drop(mlp.2(gelu(mlp.0(ln2(x)))))
//   logits = head(ln_f(x))
//
// Activations live in one arena sized for (max_batch, block_size) at
// construction: a step allocates nothing. The arena holds the embedding
// output (block 0's input), per block its output x_out (the next block's
// input; the last one feeds the head), the block intermediates (ln1 and its
// mean/rstd, q, k, v, each attention row's log-sum-exp, the attention output,
// the mid-block residual, ln2 and its mean/rstd, the MLP pre-activation and
// its GELU), the head's activations and logits, and the backward scratch.
// ln1, ln2, ln_f and the GELU are read only by matrix products and are kept
// in the products' operand format (Backend::OperandBytes() each: bf16 under
// native bf16), written so by their producers and handed to the products as
// MatmulOperand::Converted, forward and backward alike.
//
// Block intermediates are kept for every block, or, with activation
// checkpointing, for one block only: all blocks share one set as scratch and
// keep only their outputs. The backward of block l then first recomputes
// block l's forward from its saved input (same ops, same dropout masks, so
// the same floats) into that scratch, between Acquire and Release of its unit;
// the last block needs no recompute, its intermediates are still there from
// the forward, and the recompute stops after the MLP's GELU (the output
// projection feeds only the next block). Block activations then take
// (n_layer + 1)·B·T·C floats plus one block's intermediates instead of
// n_layer blocks', for about two thirds of a block forward's matrix products
// per block and step.
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
  // With `activation_checkpointing` the arena keeps one block's
  // intermediates and the backward recomputes them (see above).
  GPT(Backend* backend, const ModelConfig& config, int max_batch,
      bool activation_checkpointing = false);
  ~GPT();

  const ModelConfig& config() const { return config_; }
  Backend* backend() const { return backend_; }
  const ModelLayout& layout() const { return layout_; }
  bool activation_checkpointing() const { return activation_checkpointing_; }

  // Fills a flat parameter buffer (layout order, host memory, total_numel
  // floats) with the seed's init: Linear/Embedding weights N(0, 0.02) from
  // the counter-based RNG keyed by `seed`, biases and pos_emb 0, LayerNorm 1.
  void InitParameters(uint64_t seed, float* host_params) const;
  // The same for unit u alone, into its own buffer (numel floats): element f
  // of the flat layout takes the same value either way.
  void InitUnit(uint64_t seed, int u, float* host_unit) const;

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

  // Layer `layer`'s keys / values [B,T,C] of the last Forward (backend
  // memory). Without activation checkpointing only: with it the layers share
  // one scratch.
  const float* keys(int layer) const;
  const float* values(int layer) const;

  // Bytes held by the activation arena.
  size_t activation_bytes() const;
  // What activation_bytes() will be for (config, max_batch,
  // activation_checkpointing), before allocating, with matrix-product
  // operands of `operand_bytes` (Backend::OperandBytes(); 4 bounds it).
  static size_t ActivationBytes(const ModelConfig& config, int max_batch,
                                bool activation_checkpointing = false,
                                size_t operand_bytes = sizeof(float));

 private:
  struct Arena;
  // The residual stream entering block `layer` (layer == n_layer: the head).
  const float* BlockInput(int layer) const;
  // Block `layer`'s forward from BlockInput(layer) into its arena slots, with
  // the unit's parameters at `params`. With `through_output` false it stops
  // after the MLP's GELU: the output projection and the residual add feed
  // only the next block, and the backward of this block does not read them.
  void BlockForward(int layer, const float* params, int B, int T,
                    const DropoutContext& dropout, bool through_output);

  Backend* backend_;
  ModelConfig config_;
  ModelLayout layout_;
  int max_batch_;
  bool activation_checkpointing_;
  size_t operand_bytes_;  // the backend's OperandBytes() when the arena was laid out
  std::unique_ptr<Arena> arena_;
};

}  // namespace mingpt
