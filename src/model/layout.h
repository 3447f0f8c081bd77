// Parameter layout: the model's parameters grouped into units, each unit one
// flat buffer. Units, in forward order:
//   unit 0            "stem":  tok_emb.weight [V,C], pos_emb [1,block_size,C]
//   unit 1..n_layer   "blocks.{l}": ln1, ln2, attn.{key,query,value,proj}, mlp.0, mlp.2
//   unit n_layer+1    "head":  ln_f.weight, ln_f.bias, head.weight [V,C]
// Tensor names are exactly the seed's PyTorch state_dict names. Every tensor
// starts at a 64-byte aligned offset (multiple of kAlign floats) inside its
// unit; gradients and optimizer moments mirror the same layout.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "model/config.h"

namespace mingpt {

inline constexpr int64_t kAlign = 16;  // floats

struct ParamEntry {
  std::string name;            // e.g. "blocks.3.attn.key.weight"
  std::vector<int64_t> shape;  // PyTorch shape
  int64_t offset = 0;          // in floats, within the unit
  int64_t numel = 0;
  bool decay = false;          // AdamW weight decay applies (Linear/Embedding weights)
  enum class Init { kNormal, kZeros, kOnes } init = Init::kZeros;
};

struct Unit {
  std::string name;
  std::vector<ParamEntry> params;
  int64_t numel = 0;  // padded size of the flat buffer, a multiple of kAlign
};

// Index of each tensor inside a block unit, in state_dict order.
enum BlockParam {
  kLn1W, kLn1B, kLn2W, kLn2B,
  kKeyW, kKeyB, kQueryW, kQueryB, kValueW, kValueB, kProjW, kProjB,
  kFcW, kFcB, kFc2W, kFc2B, kNumBlockParams
};
enum StemParam { kTokEmb, kPosEmb };
enum HeadParam { kLnfW, kLnfB, kHeadW };

class ModelLayout {
 public:
  explicit ModelLayout(const ModelConfig& config);

  const std::vector<Unit>& units() const { return units_; }
  int num_units() const { return static_cast<int>(units_.size()); }
  int stem_unit() const { return 0; }
  int block_unit(int layer) const { return 1 + layer; }
  int head_unit() const { return num_units() - 1; }

  // Offset of unit u when all units lie back to back in one allocation.
  int64_t unit_offset(int u) const { return unit_offsets_[u]; }
  int64_t total_numel() const { return total_numel_; }    // padded
  int64_t num_parameters() const { return num_parameters_; }  // unpadded, as PyTorch counts

  // Finds a tensor by name; returns false if absent.
  bool Find(const std::string& name, int* unit, int* index) const;

 private:
  std::vector<Unit> units_;
  std::vector<int64_t> unit_offsets_;
  int64_t total_numel_ = 0;
  int64_t num_parameters_ = 0;
};

}  // namespace mingpt
