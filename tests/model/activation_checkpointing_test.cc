// Activation checkpointing (model/gpt.h): a GPT that keeps one block's
// intermediates and recomputes them in the backward must give the same
// floats as one that keeps them all, since it runs the same ops in the same
// order with the same dropout masks. Checked bit for bit: loss, every
// gradient (two accumulated micro-batches of different shapes, dropout on)
// and the forward's logits; plus the arena size and the ParamProvider call
// sequence, which must not change.
#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "engine/single_process.h"
#include "model/config.h"
#include "model/gpt.h"
#include "model/layout.h"
#include "model/param_provider.h"

namespace mingpt {
namespace {

ModelConfig SmallConfig(int n_layer) {
  ModelConfig c;
  c.n_layer = n_layer;
  c.n_head = 2;
  c.n_embd = 32;
  c.block_size = 16;
  c.vocab_size = 11;
  c.dropout = 0.1f;
  return c;
}

// One micro-batch: B rows of T tokens, dropout keyed by (seed, step, sample_base).
struct MicroBatch {
  int B, T;
  uint64_t sample_base;
  std::vector<int32_t> idx, targets;
};

MicroBatch MakeBatch(int B, int T, uint64_t sample_base, int vocab, uint64_t seed) {
  MicroBatch m{B, T, sample_base, {}, {}};
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int32_t> token(0, vocab - 1);
  for (int i = 0; i < B * T; ++i) {
    m.idx.push_back(token(rng));
    m.targets.push_back(token(rng));
  }
  return m;
}

DropoutContext Training(const MicroBatch& m) {
  DropoutContext d;
  d.training = true;
  d.seed = 77;
  d.step = 3;
  d.sample_base = m.sample_base;
  return d;
}

// A ParamProvider that logs every call and forwards it to a SingleProcess.
class RecordingProvider : public ParamProvider {
 public:
  explicit RecordingProvider(SingleProcess* inner) : inner_(inner) {}
  const float* Acquire(int u) override {
    Log("Acquire", u);
    return inner_->Acquire(u);
  }
  void Release(int u) override {
    Log("Release", u);
    inner_->Release(u);
  }
  float* Grads(int u) override {
    Log("Grads", u);
    return inner_->Grads(u);
  }
  void GradsReady(int u) override {
    Log("GradsReady", u);
    inner_->GradsReady(u);
  }
  const std::vector<std::string>& calls() const { return calls_; }

 private:
  void Log(const char* what, int u) {
    calls_.push_back(std::string(what) + "(" + std::to_string(u) + ")");
  }
  SingleProcess* inner_;
  std::vector<std::string> calls_;
};

// Everything one model produces on the test batches.
struct RunResult {
  std::vector<float> losses;      // ForwardBackward losses, then Forward losses
  std::vector<float> grads;       // flat, layout order
  std::vector<float> train_logits, eval_logits;
  std::vector<std::string> calls;
  size_t activation_bytes = 0;
};

std::vector<float> Logits(Backend* backend, const GPT& gpt, const MicroBatch& m) {
  std::vector<float> out(static_cast<size_t>(m.B) * m.T * gpt.config().vocab_size);
  backend->CopyToHost(out.data(), gpt.logits(), out.size() * sizeof(float));
  backend->Synchronize();
  return out;
}

// Two accumulated micro-batches of ForwardBackward (the second shorter), then
// a training-mode and an eval-mode Forward.
RunResult RunModel(const ModelConfig& config, bool checkpointing) {
  std::unique_ptr<Backend> backend = MakeCpuBackend(2);
  const std::vector<MicroBatch> batches = {MakeBatch(3, 11, 0, config.vocab_size, 1),
                                           MakeBatch(2, 7, 3, config.vocab_size, 2)};
  GPT gpt(backend.get(), config, 3, checkpointing);
  const ModelLayout& layout = gpt.layout();
  SingleProcess sp(backend.get(), layout);
  std::vector<float> host(layout.total_numel());
  gpt.InitParameters(5, host.data());
  backend->CopyToDevice(sp.params(), host.data(), host.size() * sizeof(float));
  sp.ZeroGrads();
  RecordingProvider params(&sp);

  RunResult r;
  r.activation_bytes = gpt.activation_bytes();
  for (const MicroBatch& m : batches) {
    r.losses.push_back(gpt.ForwardBackward(&params, m.idx.data(), m.targets.data(), m.B, m.T,
                                           Training(m), 0.5f));
  }
  r.grads.resize(layout.total_numel());
  backend->CopyToHost(r.grads.data(), sp.grads(), r.grads.size() * sizeof(float));

  const MicroBatch& m = batches[0];
  r.losses.push_back(gpt.Forward(&params, m.idx.data(), m.targets.data(), m.B, m.T, Training(m)));
  r.train_logits = Logits(backend.get(), gpt, m);
  r.losses.push_back(gpt.Forward(&params, m.idx.data(), nullptr, m.B, m.T, DropoutContext{}));
  r.eval_logits = Logits(backend.get(), gpt, m);
  r.calls = params.calls();
  return r;
}

// Bitwise equality of two float vectors, reporting the first difference.
void ExpectBitwiseEqual(const std::vector<float>& got, const std::vector<float>& want,
                        const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  for (size_t i = 0; i < got.size(); ++i) {
    if (std::memcmp(&got[i], &want[i], sizeof(float)) != 0) {
      ADD_FAILURE() << what << "[" << i << "]: " << got[i] << " with checkpointing, " << want[i]
                    << " without";
      return;
    }
  }
}

TEST(ActivationCheckpointingTest, SameLossGradientsAndLogitsBitForBit) {
  for (int n_layer : {1, 2, 4}) {
    SCOPED_TRACE("n_layer " + std::to_string(n_layer));
    const ModelConfig config = SmallConfig(n_layer);
    const RunResult full = RunModel(config, false);
    const RunResult ckpt = RunModel(config, true);
    ExpectBitwiseEqual(ckpt.losses, full.losses, "losses");
    ExpectBitwiseEqual(ckpt.grads, full.grads, "grads");
    ExpectBitwiseEqual(ckpt.train_logits, full.train_logits, "training-mode logits");
    ExpectBitwiseEqual(ckpt.eval_logits, full.eval_logits, "eval logits");
    // Dropout really was on: the two forwards differ.
    EXPECT_NE(full.train_logits, full.eval_logits);
  }
}

TEST(ActivationCheckpointingTest, ParamProviderCallsUnchanged) {
  const ModelConfig config = SmallConfig(3);
  const RunResult full = RunModel(config, false);
  const RunResult ckpt = RunModel(config, true);
  ASSERT_FALSE(full.calls.empty());
  EXPECT_EQ(ckpt.calls, full.calls);
}

TEST(ActivationCheckpointingTest, ArenaKeepsOneBlockOfIntermediates) {
  const int B = 3;
  const ModelConfig c2 = SmallConfig(2), c8 = SmallConfig(8);
  const size_t full2 = GPT::ActivationBytes(c2, B), full8 = GPT::ActivationBytes(c8, B);
  const size_t ckpt2 = GPT::ActivationBytes(c2, B, true);
  const size_t ckpt8 = GPT::ActivationBytes(c8, B, true);
  EXPECT_EQ(GPT::ActivationBytes(c8, B, false), full8);
  EXPECT_LT(ckpt8, full8);
  EXPECT_LT(ckpt2, full2);
  // Six more layers add six saved block outputs of B*T*C floats (aligned).
  const int64_t btc = static_cast<int64_t>(B) * c2.block_size * c2.n_embd;
  const int64_t aligned = (btc + kAlign - 1) / kAlign * kAlign;
  EXPECT_EQ(ckpt8 - ckpt2, static_cast<size_t>(6 * aligned * sizeof(float)));
  // Without checkpointing every layer adds its intermediates too.
  EXPECT_GT(full8 - full2, 10 * (ckpt8 - ckpt2));
}

TEST(ActivationCheckpointingTest, ActivationBytesMatchesAllocation) {
  for (bool checkpointing : {false, true}) {
    const ModelConfig config = SmallConfig(4);
    std::unique_ptr<Backend> backend = MakeCpuBackend(1);
    GPT gpt(backend.get(), config, 3, checkpointing);
    EXPECT_EQ(gpt.activation_checkpointing(), checkpointing);
    EXPECT_EQ(gpt.activation_bytes(), GPT::ActivationBytes(config, 3, checkpointing))
        << "checkpointing " << checkpointing;
  }
}

}  // namespace
}  // namespace mingpt
