// Evaluation and sampling on a trained model.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "data/char_dataset.h"
#include "dist/communicator.h"
#include "model/gpt.h"

namespace mingpt {

struct EvalResult {
  double loss = 0;       // mean cross-entropy per character (nats)
  int64_t windows = 0;   // windows evaluated
  int64_t tokens = 0;
};

// Mean loss over the first `max_windows` (<0: all) evaluation windows of a
// split, batch_size windows per forward pass (<= the model's max batch).
EvalResult EvaluateSplit(GPT* gpt, ParamProvider* params, const CharDataset& data, Split split,
                         int64_t max_windows, int batch_size);

// The same, the windows shared among the ranks of `comm` (a collective; every
// rank returns the same result). Every rank runs the same number of forward
// passes, as a sharded strategy's parameter gathers require. `comm` is the
// host communicator: it sums the ranks' losses, a host double.
EvalResult EvaluateSplit(GPT* gpt, ParamProvider* params, const CharDataset& data, Split split,
                         int64_t max_windows, int batch_size, Communicator* comm);

struct SampleOptions {
  int steps = 500;
  float temperature = 1.0f;
  int top_k = 0;        // 0: no cropping
  bool greedy = false;  // take the most likely token instead of sampling
  uint64_t seed = 42;
  bool kv_cache = true;  // decode from cached keys and values (model/kv_decoder.h)
};

// The seed's sample(): repeatedly feeds the last block_size tokens, takes the
// final position's logits / temperature, keeps the top_k, and samples (or
// takes the argmax). Returns prompt + generated ids. on_token, if set, is
// called with each new id as it is produced.
std::vector<int32_t> Sample(GPT* gpt, ParamProvider* params, std::vector<int32_t> ids,
                            const SampleOptions& options,
                            void (*on_token)(int32_t, void*) = nullptr, void* ctx = nullptr);

}  // namespace mingpt
