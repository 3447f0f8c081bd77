#include "model/layout.h"

namespace mingpt {
namespace {

int64_t RoundUp(int64_t n) { return (n + kAlign - 1) / kAlign * kAlign; }

void Add(Unit* unit, std::string name, std::vector<int64_t> shape, bool decay,
         ParamEntry::Init init) {
  ParamEntry e;
  e.name = std::move(name);
  e.shape = std::move(shape);
  e.numel = 1;
  for (int64_t d : e.shape) e.numel *= d;
  e.offset = unit->numel;
  e.decay = decay;
  e.init = init;
  unit->numel = RoundUp(unit->numel + e.numel);
  unit->params.push_back(std::move(e));
}

void AddLinear(Unit* u, const std::string& p, int64_t out, int64_t in, bool bias) {
  Add(u, p + ".weight", {out, in}, true, ParamEntry::Init::kNormal);
  if (bias) Add(u, p + ".bias", {out}, false, ParamEntry::Init::kZeros);
}

void AddLayerNorm(Unit* u, const std::string& p, int64_t c) {
  Add(u, p + ".weight", {c}, false, ParamEntry::Init::kOnes);
  Add(u, p + ".bias", {c}, false, ParamEntry::Init::kZeros);
}

}  // namespace

ModelLayout::ModelLayout(const ModelConfig& cfg) {
  const int64_t C = cfg.n_embd, V = cfg.vocab_size;
  Unit stem{"stem", {}, 0};
  Add(&stem, "tok_emb.weight", {V, C}, true, ParamEntry::Init::kNormal);
  Add(&stem, "pos_emb", {1, cfg.block_size, C}, false, ParamEntry::Init::kZeros);
  units_.push_back(std::move(stem));

  for (int l = 0; l < cfg.n_layer; ++l) {
    const std::string p = "blocks." + std::to_string(l) + ".";
    Unit b{"blocks." + std::to_string(l), {}, 0};
    AddLayerNorm(&b, p + "ln1", C);
    AddLayerNorm(&b, p + "ln2", C);
    AddLinear(&b, p + "attn.key", C, C, true);
    AddLinear(&b, p + "attn.query", C, C, true);
    AddLinear(&b, p + "attn.value", C, C, true);
    AddLinear(&b, p + "attn.proj", C, C, true);
    AddLinear(&b, p + "mlp.0", 4 * C, C, true);
    AddLinear(&b, p + "mlp.2", C, 4 * C, true);
    units_.push_back(std::move(b));
  }

  Unit head{"head", {}, 0};
  AddLayerNorm(&head, "ln_f", C);
  AddLinear(&head, "head", V, C, false);
  units_.push_back(std::move(head));

  for (const Unit& u : units_) {
    unit_offsets_.push_back(total_numel_);
    total_numel_ += u.numel;
    for (const ParamEntry& e : u.params) num_parameters_ += e.numel;
  }
}

bool ModelLayout::Find(const std::string& name, int* unit, int* index) const {
  for (int u = 0; u < num_units(); ++u) {
    for (int i = 0; i < static_cast<int>(units_[u].params.size()); ++i) {
      if (units_[u].params[i].name == name) {
        *unit = u;
        *index = i;
        return true;
      }
    }
  }
  return false;
}

}  // namespace mingpt
