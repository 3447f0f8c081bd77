#include "model/gpt.h"

#include <cmath>
#include <numbers>

#include "core/check.h"
#include "core/rng.h"

namespace mingpt {
namespace {

inline constexpr uint32_t kInitStream = 0x1A17A000u;

// Dropout sites: 0 after the embeddings; per layer l, 1+3l on the attention
// weights, 2+3l and 3+3l on the two residual branches.
uint32_t EmbdSite() { return 0; }
uint32_t AttnSite(int l) { return 1 + 3 * l; }
uint32_t Resid1Site(int l) { return 2 + 3 * l; }
uint32_t Resid2Site(int l) { return 3 + 3 * l; }

}  // namespace

// One allocation holding every activation for (max_batch, block_size), plus
// the backward scratch. Per-layer tensors are indexed [layer]; with activation
// checkpointing every layer's intermediates point at layer 0's (the scratch)
// and only x_out is per layer.
struct GPT::Arena {
  struct Layer {
    float *ln1_mean, *ln1_rstd, *q, *k, *v, *lse, *atty, *x_mid;
    float *ln2_mean, *ln2_rstd, *fch, *x_out;
    // Read only by matrix products, so kept in their operand format: the
    // layernorms' outputs and GELU(fch).
    void *ln1, *ln2, *gelu;
  };
  Buffer memory;
  Buffer tokens;  // int32 idx[B*T] then targets[B*T]
  std::vector<Layer> layers;
  float *encoded, *tmp, *lnf_mean, *lnf_rstd, *logits, *losses;
  void* lnf;  // operand format
  float *dres, *dbranch, *dln, *dbig, *dq, *dk, *dv, *datty;
  void* dfc;  // the MLP's first product's output gradient, in operand format
  std::vector<float> host_losses;
  size_t bytes = 0;
};

namespace {

// Lays the arena out for (B, block_size) with matrix-product operands of
// `operand_bytes` each: hands out pointers from `base`, or with base ==
// nullptr only counts. Returns the number of floats.
template <typename ArenaT>
int64_t PlanArena(const ModelConfig& config, int64_t B, bool checkpointing, size_t operand_bytes,
                  ArenaT* a, float* base) {
  const int64_t T = config.block_size, C = config.n_embd, NH = config.n_head;
  const int64_t V = config.vocab_size;
  const int64_t BTC = B * T * C, BT = B * T;
  int64_t used = 0;
  auto take = [&](float** p, int64_t n) {
    *p = base ? base + used : nullptr;
    used += (n + kAlign - 1) / kAlign * kAlign;
  };
  // n operand-format elements.
  auto take_operands = [&](void** p, int64_t n) {
    float* f = nullptr;
    take(&f, (n * static_cast<int64_t>(operand_bytes) + 3) / 4);
    *p = f;
  };
  a->layers.resize(config.n_layer);
  take(&a->encoded, BTC);
  for (size_t i = 0; i < a->layers.size(); ++i) {
    auto& l = a->layers[i];
    if (checkpointing && i > 0) {
      l = a->layers[0];  // shares layer 0's intermediates; x_out is set below
    } else {
      take_operands(&l.ln1, BTC); take(&l.ln1_mean, BT); take(&l.ln1_rstd, BT);
      take(&l.q, BTC); take(&l.k, BTC); take(&l.v, BTC);
      take(&l.lse, B * NH * T); take(&l.atty, BTC); take(&l.x_mid, BTC);
      take_operands(&l.ln2, BTC); take(&l.ln2_mean, BT); take(&l.ln2_rstd, BT);
      take(&l.fch, 4 * BTC);
      take_operands(&l.gelu, 4 * BTC);
    }
    take(&l.x_out, BTC);
  }
  take(&a->tmp, BTC);
  take_operands(&a->lnf, BTC); take(&a->lnf_mean, BT); take(&a->lnf_rstd, BT);
  take(&a->logits, BT * V); take(&a->losses, BT);
  take(&a->dres, BTC); take(&a->dbranch, BTC); take(&a->dln, BTC); take(&a->dbig, 4 * BTC);
  take(&a->dq, BTC); take(&a->dk, BTC); take(&a->dv, BTC); take(&a->datty, BTC);
  // GeluBackwardOperand may write fp32 operands over its input gradient.
  if (operand_bytes == sizeof(float)) {
    a->dfc = a->dbig;
  } else {
    take_operands(&a->dfc, 4 * BTC);
  }
  return used;
}

}  // namespace

size_t GPT::ActivationBytes(const ModelConfig& config, int max_batch,
                            bool activation_checkpointing, size_t operand_bytes) {
  Arena plan;
  return PlanArena(config, max_batch, activation_checkpointing, operand_bytes, &plan, nullptr) *
             sizeof(float) +
         2 * static_cast<size_t>(max_batch) * config.block_size * sizeof(int32_t);
}

GPT::GPT(Backend* backend, const ModelConfig& config, int max_batch,
         bool activation_checkpointing)
    : backend_(backend), config_(config), layout_(config), max_batch_(max_batch),
      activation_checkpointing_(activation_checkpointing),
      operand_bytes_(backend->OperandBytes()), arena_(std::make_unique<Arena>()) {
  MINGPT_CHECK(config.Validate().ok(), "%s", config.Validate().message().c_str());
  MINGPT_CHECK(max_batch > 0, "max_batch %d", max_batch);
  Arena& a = *arena_;
  a.bytes = PlanArena(config, max_batch, activation_checkpointing, operand_bytes_, &a, nullptr) *
            sizeof(float);
  a.memory = Buffer(backend, a.bytes);
  PlanArena(config, max_batch, activation_checkpointing, operand_bytes_, &a, a.memory.f32());
  const int64_t BT = static_cast<int64_t>(max_batch) * config.block_size;
  a.tokens = Buffer(backend, 2 * BT * sizeof(int32_t));
  a.host_losses.resize(BT);
}

GPT::~GPT() = default;

const float* GPT::logits() const { return arena_->logits; }
const float* GPT::keys(int layer) const {
  MINGPT_CHECK(!activation_checkpointing_, "keys() with activation checkpointing");
  return arena_->layers[layer].k;
}
const float* GPT::values(int layer) const {
  MINGPT_CHECK(!activation_checkpointing_, "values() with activation checkpointing");
  return arena_->layers[layer].v;
}
void GPT::CopyLogitsRow(int64_t row, float* host_dst) const {
  const int V = config_.vocab_size;
  backend_->CopyToHost(host_dst, arena_->logits + row * V, V * sizeof(float));
}

size_t GPT::activation_bytes() const { return arena_->bytes + arena_->tokens.bytes(); }

void GPT::InitParameters(uint64_t seed, float* host) const {
  for (int u = 0; u < layout_.num_units(); ++u) InitUnit(seed, u, host + layout_.unit_offset(u));
}

void GPT::InitUnit(uint64_t seed, int u, float* unit) const {
  const int64_t base = layout_.unit_offset(u);
  std::fill(unit, unit + layout_.units()[u].numel, 0.0f);
  for (const ParamEntry& e : layout_.units()[u].params) {
    float* p = unit + e.offset;
    if (e.init == ParamEntry::Init::kOnes) std::fill(p, p + e.numel, 1.0f);
    if (e.init != ParamEntry::Init::kNormal) continue;
    // N(0, 0.02) by Box-Muller, element f of the flat layout from counter f.
#pragma omp parallel for
    for (int64_t i = 0; i < e.numel; ++i) {
      const uint64_t f = static_cast<uint64_t>(base + e.offset + i);
      auto r = Philox4x32(seed, static_cast<uint32_t>(f), static_cast<uint32_t>(f >> 32),
                          kInitStream, 0);
      const double u1 = (static_cast<double>(r[0]) + 1.0) / 4294967296.0;
      const double u2 = static_cast<double>(r[1]) / 4294967296.0;
      p[i] = static_cast<float>(0.02 * std::sqrt(-2.0 * std::log(u1)) *
                                std::cos(2.0 * std::numbers::pi * u2));
    }
  }
}

namespace {

// Pointers to one unit's tensors (parameters or their gradients).
struct UnitView {
  float* base;
  const Unit* unit;
  float* operator[](int i) const { return base + unit->params[i].offset; }
};

DropoutSpec Site(const DropoutContext& d, float p, uint32_t site) {
  DropoutSpec s;
  s.p = d.training ? p : 0.0f;
  s.seed = d.seed;
  s.step = d.step;
  s.site = site;
  s.sample_base = d.sample_base;
  return s;
}

}  // namespace

float GPT::Forward(ParamProvider* params, const int32_t* idx, const int32_t* targets, int B,
                   int T, const DropoutContext& dropout) {
  MINGPT_CHECK(B >= 1 && B <= max_batch_, "batch %d outside [1, %d]", B, max_batch_);
  MINGPT_CHECK(T >= 1 && T <= config_.block_size, "T %d outside [1, %d]", T, config_.block_size);
  MINGPT_CHECK(backend_->OperandBytes() == operand_bytes_,
               "the matmul precision changed the operand size after the model was built");
  Backend& be = *backend_;
  Arena& a = *arena_;
  const int C = config_.n_embd, V = config_.vocab_size;
  const int N = B * T;
  const float p = config_.dropout;
  int32_t* d_idx = a.tokens.as<int32_t>();
  int32_t* d_targets = d_idx + static_cast<int64_t>(max_batch_) * config_.block_size;
  be.CopyToDevice(d_idx, idx, N * sizeof(int32_t));
  if (targets) be.CopyToDevice(d_targets, targets, N * sizeof(int32_t));

  // Stem.
  {
    const int u = layout_.stem_unit();
    UnitView P{const_cast<float*>(params->Acquire(u)), &layout_.units()[u]};
    be.EncoderForward(a.encoded, d_idx, P[kTokEmb], P[kPosEmb], B, T, C);
    be.Dropout(a.encoded, a.encoded, B, static_cast<int64_t>(T) * C, Site(dropout, p, EmbdSite()));
    params->Release(u);
  }
  // Blocks.
  for (int l = 0; l < config_.n_layer; ++l) {
    const int u = layout_.block_unit(l);
    BlockForward(l, params->Acquire(u), B, T, dropout, /*through_output=*/true);
    params->Release(u);
  }
  // Head.
  {
    const int u = layout_.head_unit();
    UnitView P{const_cast<float*>(params->Acquire(u)), &layout_.units()[u]};
    be.LayerNormForwardOperand(a.lnf, a.lnf_mean, a.lnf_rstd, BlockInput(config_.n_layer), P[kLnfW],
                        P[kLnfB], N, C);
    be.MatmulForward(a.logits, MatmulOperand::Converted(a.lnf), P[kHeadW], nullptr, N, C, V);
    params->Release(u);
  }
  if (!targets) return 0.0f;
  be.CrossEntropyForward(a.losses, a.logits, d_targets, N, V);
  be.CopyToHost(a.host_losses.data(), a.losses, N * sizeof(float));
  double sum = 0;
  for (int i = 0; i < N; ++i) sum += a.host_losses[i];
  return static_cast<float>(sum / N);
}

const float* GPT::BlockInput(int layer) const {
  return layer == 0 ? arena_->encoded : arena_->layers[layer - 1].x_out;
}

void GPT::BlockForward(int layer, const float* params, int B, int T, const DropoutContext& dropout,
                       bool through_output) {
  Backend& be = *backend_;
  Arena& a = *arena_;
  const int C = config_.n_embd, NH = config_.n_head;
  const int N = B * T;
  const int64_t NC = static_cast<int64_t>(N) * C, TC = static_cast<int64_t>(T) * C;
  const float p = config_.dropout;
  const int u = layout_.block_unit(layer);
  UnitView P{const_cast<float*>(params), &layout_.units()[u]};
  Arena::Layer& s = a.layers[layer];
  const float* x_in = BlockInput(layer);
  be.LayerNormForwardOperand(s.ln1, s.ln1_mean, s.ln1_rstd, x_in, P[kLn1W], P[kLn1B], N, C);
  const MatmulOperand ln1 = MatmulOperand::Converted(s.ln1);
  be.MatmulForward(s.q, ln1, P[kQueryW], P[kQueryB], N, C, C);
  be.MatmulForward(s.k, ln1, P[kKeyW], P[kKeyB], N, C, C);
  be.MatmulForward(s.v, ln1, P[kValueW], P[kValueB], N, C, C);
  be.AttentionForward(s.atty, s.lse, s.q, s.k, s.v, B, T, C, NH,
                      Site(dropout, p, AttnSite(layer)));
  be.MatmulForward(a.tmp, s.atty, P[kProjW], P[kProjB], N, C, C);
  be.Dropout(a.tmp, a.tmp, B, TC, Site(dropout, p, Resid1Site(layer)));
  be.ResidualLayerNormForwardOperand(s.x_mid, s.ln2, s.ln2_mean, s.ln2_rstd, x_in, a.tmp, P[kLn2W],
                              P[kLn2B], N, C);
  be.MatmulForward(s.fch, MatmulOperand::Converted(s.ln2), P[kFcW], P[kFcB], N, C, 4 * C);
  // GELU straight into the operand format of the product it feeds (converted
  // once), kept for that product's weight gradient.
  be.GeluForwardOperand(s.gelu, s.fch, 4 * NC);
  if (!through_output) return;
  be.MatmulForward(a.tmp, MatmulOperand::Converted(s.gelu), P[kFc2W], P[kFc2B], N, 4 * C, C);
  be.Dropout(a.tmp, a.tmp, B, TC, Site(dropout, p, Resid2Site(layer)));
  be.Add(s.x_out, s.x_mid, a.tmp, NC);
}

float GPT::ForwardBackward(ParamProvider* params, const int32_t* idx, const int32_t* targets,
                           int B, int T, const DropoutContext& dropout, float loss_scale) {
  MINGPT_CHECK(targets != nullptr, "ForwardBackward needs targets");
  Backend& be = *backend_;
  Arena& a = *arena_;
  const int C = config_.n_embd, NH = config_.n_head, V = config_.vocab_size;
  const int N = B * T;
  const float p = config_.dropout;
  const int64_t NC = static_cast<int64_t>(N) * C;
  const int32_t* d_idx = a.tokens.as<int32_t>();
  int32_t* d_targets = a.tokens.as<int32_t>() + static_cast<int64_t>(max_batch_) * config_.block_size;
  // Up before the forward, beside the tokens: a copy to the device waits
  // for its work, and at the loss it would hold the host until the whole
  // forward had run.
  be.CopyToDevice(d_targets, targets, N * sizeof(int32_t));
  Forward(params, idx, nullptr, B, T, dropout);

  // Loss and dlogits (in place of the logits); the losses are read back
  // once the backward is issued, for the same reason.
  be.CrossEntropyForwardBackward(a.losses, a.logits, a.logits, d_targets, N, V, loss_scale / N);

  // Applies the site's dropout to the residual gradient, or passes it through.
  auto branch_grad = [&](uint32_t site) -> const float* {
    DropoutSpec s = Site(dropout, p, site);
    if (!s.enabled()) return a.dres;
    be.Dropout(a.dbranch, a.dres, B, static_cast<int64_t>(T) * C, s);
    return a.dbranch;
  };

  const float* last_out = BlockInput(config_.n_layer);
  {
    const int u = layout_.head_unit();
    UnitView P{const_cast<float*>(params->Acquire(u)), &layout_.units()[u]};
    UnitView G{params->Grads(u), &layout_.units()[u]};
    be.Memset0(a.dres, NC * sizeof(float));
    be.MatmulBackward(a.dln, G[kHeadW], nullptr, a.logits, MatmulOperand::Converted(a.lnf),
                      P[kHeadW], N, C, V, false);
    be.LayerNormBackward(a.dres, G[kLnfW], G[kLnfB], a.dln, last_out, P[kLnfW], a.lnf_mean,
                         a.lnf_rstd, N, C);
    params->Release(u);
    params->GradsReady(u);
  }
  for (int l = config_.n_layer - 1; l >= 0; --l) {
    const int u = layout_.block_unit(l);
    UnitView P{const_cast<float*>(params->Acquire(u)), &layout_.units()[u]};
    UnitView G{params->Grads(u), &layout_.units()[u]};
    // Checkpointing: the scratch still holds the last block's intermediates
    // from the forward; every other block recomputes its own.
    if (activation_checkpointing_ && l != config_.n_layer - 1) {
      BlockForward(l, P.base, B, T, dropout, /*through_output=*/false);
    }
    Arena::Layer& s = a.layers[l];
    const float* x_in = BlockInput(l);
    // MLP branch: x_out = x_mid + drop(mlp.2(gelu(mlp.0(ln2(x_mid))))).
    const float* dm = branch_grad(Resid2Site(l));
    be.MatmulBackward(a.dbig, G[kFc2W], G[kFc2B], dm, MatmulOperand::Converted(s.gelu),
                      P[kFc2W], N, 4 * C, C, false);
    // GELU's backward writes the first product's output gradient in operand
    // format and takes its bias gradient on the way.
    be.GeluBackwardOperand(a.dfc, G[kFcB], s.fch, a.dbig, N, 4 * C);
    be.MatmulBackward(a.dln, G[kFcW], nullptr, MatmulOperand::Converted(a.dfc),
                      MatmulOperand::Converted(s.ln2), P[kFcW], N, C, 4 * C, false);
    be.LayerNormBackward(a.dres, G[kLn2W], G[kLn2B], a.dln, s.x_mid, P[kLn2W], s.ln2_mean,
                         s.ln2_rstd, N, C);
    // Attention branch: x_mid = x_in + drop(proj(attn(q, k, v))), q/k/v = Linear(ln1(x_in)).
    const float* dp = branch_grad(Resid1Site(l));
    be.MatmulBackward(a.datty, G[kProjW], G[kProjB], dp, s.atty, P[kProjW], N, C, C, false);
    be.AttentionBackward(a.dq, a.dk, a.dv, a.datty, s.q, s.k, s.v, s.atty, s.lse, B, T, C, NH,
                         Site(dropout, p, AttnSite(l)));
    const MatmulOperand ln1 = MatmulOperand::Converted(s.ln1);
    be.MatmulBackward(a.dln, G[kQueryW], G[kQueryB], a.dq, ln1, P[kQueryW], N, C, C, false);
    be.MatmulBackward(a.dln, G[kKeyW], G[kKeyB], a.dk, ln1, P[kKeyW], N, C, C, true);
    be.MatmulBackward(a.dln, G[kValueW], G[kValueB], a.dv, ln1, P[kValueW], N, C, C, true);
    be.LayerNormBackward(a.dres, G[kLn1W], G[kLn1B], a.dln, x_in, P[kLn1W], s.ln1_mean,
                         s.ln1_rstd, N, C);
    params->Release(u);
    params->GradsReady(u);
  }
  {
    const int u = layout_.stem_unit();
    UnitView G{params->Grads(u), &layout_.units()[u]};
    const float* de = branch_grad(EmbdSite());
    be.EncoderBackward(G[kTokEmb], G[kPosEmb], de, d_idx, B, T, C, config_.vocab_size);
    params->GradsReady(u);
  }
  be.CopyToHost(a.host_losses.data(), a.losses, N * sizeof(float));
  double sum = 0;
  for (int i = 0; i < N; ++i) sum += a.host_losses[i];
  return static_cast<float>(sum / N);
}

}  // namespace mingpt
