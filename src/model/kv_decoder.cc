#include "model/kv_decoder.h"

#include "core/check.h"

namespace mingpt {

KvDecoder::KvDecoder(Backend* backend, GPT* gpt) : backend_(backend), gpt_(gpt) {
  MINGPT_CHECK(!gpt->activation_checkpointing(), "KvDecoder needs every layer's keys");
  const ModelConfig& c = gpt->config();
  const int64_t C = c.n_embd, L = c.n_layer, BC = static_cast<int64_t>(c.block_size) * C;
  auto round = [](int64_t n) { return (n + kAlign - 1) / kAlign * kAlign; };
  const int64_t rows = 6 * round(C) + 2 * round(4 * C) + 2 * kAlign + round(c.vocab_size);
  memory_ = Buffer(backend, (2 * L * round(BC) + rows) * sizeof(float));
  token_ = Buffer(backend, sizeof(int32_t));
  float* p = memory_.f32();
  auto take = [&](int64_t n) {
    float* at = p;
    p += round(n);
    return at;
  };
  for (int l = 0; l < L; ++l) {
    keys_.push_back(take(BC));
    values_.push_back(take(BC));
  }
  x_ = take(C), x_mid_ = take(C), ln_ = take(C), q_ = take(C), att_ = take(C), tmp_ = take(C);
  fch_ = take(4 * C), fch_gelu_ = take(4 * C);
  mean_ = take(1), rstd_ = take(1);
  logits_ = take(c.vocab_size);
}

void KvDecoder::Prefill(ParamProvider* params, const int32_t* idx, int T, float* host_logits) {
  gpt_->Forward(params, idx, nullptr, 1, T, {});
  const size_t bytes = static_cast<size_t>(T) * gpt_->config().n_embd * sizeof(float);
  for (int l = 0; l < gpt_->config().n_layer; ++l) {
    backend_->Copy(keys_[l], gpt_->keys(l), bytes);
    backend_->Copy(values_[l], gpt_->values(l), bytes);
  }
  gpt_->CopyLogitsRow(T - 1, host_logits);
  length_ = T;
}

void KvDecoder::Decode(ParamProvider* params, int32_t token, float* host_logits) {
  const ModelConfig& c = gpt_->config();
  const ModelLayout& layout = gpt_->layout();
  MINGPT_CHECK(length_ >= 1 && length_ < c.block_size, "decode at position %d of %d", length_,
               c.block_size);
  Backend& be = *backend_;
  const int C = c.n_embd, NH = c.n_head, V = c.vocab_size, t = length_;
  be.CopyToDevice(token_.as<int32_t>(), &token, sizeof(int32_t));
  auto tensor = [&](const float* base, int unit, int index) {
    return base + layout.units()[unit].params[index].offset;
  };
  {
    const int u = layout.stem_unit();
    const float* P = params->Acquire(u);
    be.EncoderForward(x_, token_.as<int32_t>(), tensor(P, u, kTokEmb),
                      tensor(P, u, kPosEmb) + static_cast<int64_t>(t) * C, 1, 1, C);
    params->Release(u);
  }
  for (int l = 0; l < c.n_layer; ++l) {
    const int u = layout.block_unit(l);
    const float* P = params->Acquire(u);
    auto W = [&](int index) { return tensor(P, u, index); };
    float* k_row = keys_[l] + static_cast<int64_t>(t) * C;
    float* v_row = values_[l] + static_cast<int64_t>(t) * C;
    be.LayerNormForward(ln_, mean_, rstd_, x_, W(kLn1W), W(kLn1B), 1, C);
    be.MatmulForward(q_, ln_, W(kQueryW), W(kQueryB), 1, C, C);
    be.MatmulForward(k_row, ln_, W(kKeyW), W(kKeyB), 1, C, C);
    be.MatmulForward(v_row, ln_, W(kValueW), W(kValueB), 1, C, C);
    be.AttentionDecode(att_, q_, keys_[l], values_[l], t + 1, C, NH);
    be.MatmulForward(tmp_, att_, W(kProjW), W(kProjB), 1, C, C);
    be.Add(x_mid_, x_, tmp_, C);
    be.LayerNormForward(ln_, mean_, rstd_, x_mid_, W(kLn2W), W(kLn2B), 1, C);
    be.MatmulForward(fch_, ln_, W(kFcW), W(kFcB), 1, C, 4 * C);
    be.GeluForward(fch_gelu_, fch_, 4 * C);
    be.MatmulForward(tmp_, fch_gelu_, W(kFc2W), W(kFc2B), 1, 4 * C, C);
    be.Add(x_, x_mid_, tmp_, C);
    params->Release(u);
  }
  {
    const int u = layout.head_unit();
    const float* P = params->Acquire(u);
    be.LayerNormForward(ln_, mean_, rstd_, x_, tensor(P, u, kLnfW), tensor(P, u, kLnfB), 1, C);
    be.MatmulForward(logits_, ln_, tensor(P, u, kHeadW), nullptr, 1, C, V);
    params->Release(u);
  }
  be.CopyToHost(host_logits, logits_, V * sizeof(float));
  length_ = t + 1;
}

}  // namespace mingpt
