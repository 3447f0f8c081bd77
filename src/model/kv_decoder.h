// KvDecoder: generation with cached keys and values, for one sequence.
//
// Prefill runs the model over the context once (GPT::Forward, batch 1) and
// keeps every layer's keys and values [block_size, C]. Decode then feeds one
// new token at position length(): per block only its row is computed
//   x = tok_emb[token] + pos_emb[t]
//   per block: q, k, v = Linear(ln1(x)); k, v appended to the cache at row t
//              x = x + proj(softmax(q K^T / sqrt(hs)) V)    (over rows 0..t)
//              x = x + mlp.2(gelu(mlp.0(ln2(x))))
//   logits = head(ln_f(x))
// which is the model's last row for the context plus the token, in
// O(t·C + C²) per block instead of O(t²·C + t·C²). Positions are absolute
// (learned pos_emb), so the cache holds only while the context starts at
// position 0: once a sequence outgrows block_size the caller prefills the
// cropped window again (train/inference.cc's Sample does).
#pragma once

#include <cstdint>
#include <vector>

#include "backend/backend.h"
#include "model/gpt.h"
#include "model/param_provider.h"

namespace mingpt {

class KvDecoder {
 public:
  // `gpt` must have been built without activation checkpointing; it is used
  // (its arena overwritten) by Prefill.
  KvDecoder(Backend* backend, GPT* gpt);

  // Forward over idx[0..T), 1 <= T <= block_size; the cache then holds T
  // positions. host_logits [V] receives the last position's logits.
  void Prefill(ParamProvider* params, const int32_t* idx, int T, float* host_logits);
  // Appends `token` at position length() (< block_size).
  void Decode(ParamProvider* params, int32_t token, float* host_logits);

  int length() const { return length_; }

 private:
  Backend* backend_;
  GPT* gpt_;
  int length_ = 0;
  Buffer memory_, token_;
  std::vector<float*> keys_, values_;  // per layer [block_size, C]
  float *x_, *x_mid_, *ln_, *mean_, *rstd_, *q_, *att_, *tmp_, *fch_, *fch_gelu_, *logits_;
};

}  // namespace mingpt
