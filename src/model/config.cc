#include "model/config.h"

#include <map>
#include <sstream>
#include <tuple>

namespace mingpt {

Status ModelConfig::Validate() const {
  // Upper bounds far beyond any trainable model keep every size product
  // within 64 bits.
  auto in_range = [](const char* name, int v, int max) -> Status {
    if (v <= 0) return Status::Error(std::string(name) + " must be positive, got " + std::to_string(v));
    if (v > max) {
      return Status::Error(std::string(name) + " must be at most " + std::to_string(max) + ", got " +
                           std::to_string(v));
    }
    return Status::Ok();
  };
  MINGPT_RETURN_IF_ERROR(in_range("n_layer", n_layer, 1 << 12));
  MINGPT_RETURN_IF_ERROR(in_range("n_head", n_head, 1 << 12));
  MINGPT_RETURN_IF_ERROR(in_range("n_embd", n_embd, 1 << 17));
  MINGPT_RETURN_IF_ERROR(in_range("block_size", block_size, 1 << 20));
  MINGPT_RETURN_IF_ERROR(in_range("vocab_size", vocab_size, 1 << 24));
  if (n_embd % n_head != 0) {
    return Status::Error("n_embd (" + std::to_string(n_embd) + ") must be divisible by n_head (" +
                         std::to_string(n_head) + ")");
  }
  if (!(dropout >= 0.0f && dropout < 1.0f)) {
    return Status::Error("dropout must be in [0, 1), got " + std::to_string(dropout));
  }
  return Status::Ok();
}

std::string ModelConfig::ToString() const {
  std::ostringstream s;
  s << "n_layer=" << n_layer << " n_head=" << n_head << " n_embd=" << n_embd
    << " block_size=" << block_size << " vocab_size=" << vocab_size << " dropout=" << dropout;
  return s.str();
}

Status ApplyPreset(const std::string& model_type, ModelConfig* config) {
  // minGPT's presets (n_layer, n_head, n_embd).
  static const std::map<std::string, std::tuple<int, int, int>> kPresets = {
      {"openai-gpt", {12, 12, 768}}, {"gpt1", {12, 12, 768}},      {"gpt2", {12, 12, 768}},
      {"gpt2-medium", {24, 16, 1024}}, {"gpt2-large", {36, 20, 1280}}, {"gpt2-xl", {48, 25, 1600}},
      {"gopher-44m", {8, 16, 512}},  {"gpt-mini", {6, 6, 192}},   {"gpt-micro", {4, 4, 128}},
      {"gpt-nano", {3, 3, 48}},
  };
  auto it = kPresets.find(model_type);
  if (it == kPresets.end()) {
    std::string known;
    for (const auto& [name, _] : kPresets) known += (known.empty() ? "" : ", ") + name;
    return Status::Error("unknown --model_type '" + model_type + "' (known: " + known + ")");
  }
  std::tie(config->n_layer, config->n_head, config->n_embd) = it->second;
  return Status::Ok();
}

}  // namespace mingpt
