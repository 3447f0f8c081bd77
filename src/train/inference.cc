#include "train/inference.h"

#include <algorithm>
#include <cmath>
#include <optional>

#include "core/rng.h"
#include "model/kv_decoder.h"

namespace mingpt {

EvalResult EvaluateSplit(GPT* gpt, ParamProvider* params, const CharDataset& data, Split split,
                         int64_t max_windows, int batch_size) {
  std::unique_ptr<Communicator> local = MakeLocalCommunicator();
  return EvaluateSplit(gpt, params, data, split, max_windows, batch_size, local.get());
}

EvalResult EvaluateSplit(GPT* gpt, ParamProvider* params, const CharDataset& data, Split split,
                         int64_t max_windows, int batch_size, Communicator* comm) {
  EvalResult r;
  const int T = data.eval_window_length(split);
  int64_t n = data.num_eval_windows(split);
  if (max_windows >= 0) n = std::min(n, max_windows);
  if (n == 0 || T == 0) return r;
  const int world = comm->world();
  std::vector<int32_t> x(static_cast<size_t>(batch_size) * T), y(x.size());
  double total = 0;
  // Round i: rank r takes windows [(i*world + r)*B, +B) of those that exist;
  // a rank left without windows runs a discarded one-window pass.
  for (int64_t w = 0; w < n; w += static_cast<int64_t>(batch_size) * world) {
    const int64_t first = w + static_cast<int64_t>(comm->rank()) * batch_size;
    const int B = static_cast<int>(std::clamp<int64_t>(n - first, 0, batch_size));
    for (int b = 0; b < std::max(B, 1); ++b) {
      data.EvalWindow(split, B > 0 ? first + b : 0, &x[b * T], &y[b * T]);
    }
    const double loss = gpt->Forward(params, x.data(), y.data(), std::max(B, 1), T, {});
    if (B > 0) total += loss * B * T;
  }
  comm->AllReduce(&total, 1).Wait();
  r.windows = n;
  r.tokens = n * T;
  r.loss = total / r.tokens;
  return r;
}

std::vector<int32_t> Sample(GPT* gpt, ParamProvider* params, std::vector<int32_t> ids,
                            const SampleOptions& o, void (*on_token)(int32_t, void*), void* ctx) {
  const int V = gpt->config().vocab_size, block = gpt->config().block_size;
  std::vector<float> logits(V);
  std::vector<double> probs(V);
  std::optional<KvDecoder> decoder;
  if (o.kv_cache) decoder.emplace(gpt->backend(), gpt);
  for (int s = 0; s < o.steps; ++s) {
    const int T = std::min<int>(static_cast<int>(ids.size()), block);
    const int32_t* context = ids.data() + ids.size() - T;
    if (decoder && T == static_cast<int>(ids.size()) && decoder->length() == T - 1 && T > 1) {
      // The context still starts at position 0 and the cache holds all but
      // its last token: one row.
      decoder->Decode(params, ids.back(), logits.data());
    } else if (decoder) {
      decoder->Prefill(params, context, T, logits.data());
    } else {
      gpt->Forward(params, context, nullptr, 1, T, {});
      gpt->CopyLogitsRow(T - 1, logits.data());
    }
    int32_t next;
    if (o.greedy) {
      next = static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
    } else {
      // Keep the top_k logits (ties at the k-th value kept, as the seed's
      // top_k_logits, which masks values strictly below the k-th largest);
      // dividing by the temperature keeps their order, so the raw logits
      // choose them.
      float threshold = -INFINITY;
      if (o.top_k > 0 && o.top_k < V) {
        std::vector<float> sorted(logits);
        std::nth_element(sorted.begin(), sorted.begin() + (o.top_k - 1), sorted.end(),
                         std::greater<float>());
        threshold = sorted[o.top_k - 1];
      }
      const float mx = *std::max_element(logits.begin(), logits.end());
      // softmax(logits / T), each term divided after the maximum is taken
      // away: a tiny temperature makes every term but the largest 0 (greedy),
      // where logits / T would overflow to inf and the probabilities to NaN.
      const double inv_t = 1.0 / static_cast<double>(o.temperature);
      double sum = 0;
      for (int i = 0; i < V; ++i) {
        probs[i] = logits[i] < threshold ? 0.0 : std::exp(static_cast<double>(logits[i] - mx) * inv_t);
        sum += probs[i];
      }
      // Inverse-CDF draw from a counter-based uniform keyed by the token index.
      const uint64_t bits = Random64(o.seed, static_cast<uint32_t>(ids.size()), 0, kSampleStream, 0);
      const double u = static_cast<double>(bits >> 11) * (1.0 / 9007199254740992.0) * sum;
      double acc = 0;
      next = V - 1;
      for (int i = 0; i < V; ++i) {
        acc += probs[i];
        if (u < acc && probs[i] > 0) {
          next = i;
          break;
        }
      }
      while (probs[next] == 0 && next > 0) --next;
    }
    ids.push_back(next);
    if (on_token) on_token(next, ctx);
  }
  return ids;
}

}  // namespace mingpt
