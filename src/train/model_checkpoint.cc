#include "train/model_checkpoint.h"

#include <cmath>

namespace mingpt {
namespace {

using nlohmann::json;

std::vector<TensorRef> Tensors(const ModelLayout& layout, const float* flat,
                               const std::string& prefix) {
  std::vector<TensorRef> refs;
  for (int u = 0; u < layout.num_units(); ++u) {
    for (const ParamEntry& e : layout.units()[u].params) {
      refs.push_back({prefix + e.name, e.shape, TensorDType::kF32,
                      flat + layout.unit_offset(u) + e.offset});
    }
  }
  return refs;
}

json LayoutJson(const ModelLayout& layout) {
  json units = json::array();
  for (const Unit& u : layout.units()) {
    json tensors = json::array();
    for (const ParamEntry& e : u.params) {
      tensors.push_back({{"name", e.name}, {"shape", e.shape}, {"offset", e.offset}});
    }
    units.push_back({{"name", u.name}, {"numel", u.numel}, {"tensors", tensors}});
  }
  return units;
}

// Reads meta[key] as T, or a clear error naming the checkpoint and the key.
template <typename T>
StatusOr<T> Field(const json& obj, const std::string& key, const std::string& where) {
  auto it = obj.find(key);
  if (it == obj.end()) return Status::Error(where + ": meta.json lacks '" + key + "'");
  if constexpr (std::is_same_v<T, std::string>) {
    if (!it->is_string()) return Status::Error(where + ": meta.json '" + key + "' is not a string");
  } else if constexpr (std::is_integral_v<T>) {
    if (!it->is_number_integer()) return Status::Error(where + ": meta.json '" + key + "' is not an integer");
  } else {
    if (!it->is_number()) return Status::Error(where + ": meta.json '" + key + "' is not a number");
  }
  return it->get<T>();
}

}  // namespace

Status SaveTrainingCheckpoint(const std::string& dir, const ModelLayout& layout,
                              const ModelConfig& c, const CharTokenizer& tokenizer,
                              const TrainOptions& o, const TrainState& s, const HostState& host) {
  json meta;
  meta["format_version"] = kCheckpointFormatVersion;
  meta["config"] = {{"n_layer", c.n_layer},   {"n_head", c.n_head},
                    {"n_embd", c.n_embd},     {"block_size", c.block_size},
                    {"vocab_size", c.vocab_size}, {"dropout", c.dropout}};
  meta["vocab"] = tokenizer.vocab();
  meta["step"] = s.step;
  meta["tokens"] = s.tokens;
  meta["seed"] = s.seed;
  meta["rng"] = {{"kind", "philox4x32-10"}, {"seed", s.seed}, {"next_step", s.step}};
  meta["best_val_loss"] = std::isfinite(s.best_val_loss) ? json(s.best_val_loss) : json(nullptr);
  meta["data"] = o.data_path;
  meta["strategy"] = o.strategy;
  meta["world_size"] = 1;
  meta["num_parameters"] = layout.num_parameters();
  meta["units"] = LayoutJson(layout);
  meta["options"] = {{"batch_size", o.batch_size},
                     {"learning_rate", o.optim.learning_rate},
                     {"weight_decay", o.optim.weight_decay},
                     {"betas", {o.optim.beta1, o.optim.beta2}},
                     {"eps", o.optim.eps},
                     {"gradient_clip_val", o.gradient_clip_val},
                     {"accumulate_grad_batches", o.accumulate_grad_batches},
                     {"precision", o.precision}};
  std::vector<CheckpointFile> files;
  files.push_back({"model.safetensors", Tensors(layout, host.params.data(), "")});
  if (!host.exp_avg.empty()) {
    std::vector<TensorRef> opt = Tensors(layout, host.exp_avg.data(), "exp_avg.");
    std::vector<TensorRef> sq = Tensors(layout, host.exp_avg_sq.data(), "exp_avg_sq.");
    opt.insert(opt.end(), sq.begin(), sq.end());
    files.push_back({"optimizer.safetensors", std::move(opt)});
  }
  return SaveCheckpoint(dir, meta, files);
}

StatusOr<OpenedCheckpoint> OpenTrainingCheckpoint(const std::string& dir) {
  MINGPT_ASSIGN_OR_RETURN(Checkpoint ckpt, LoadCheckpoint(dir));
  const std::string where = "checkpoint '" + dir + "'";
  OpenedCheckpoint out{std::move(ckpt), {}, {}, {}, {}};
  const json& meta = out.checkpoint.meta;
  auto cfg_it = meta.find("config");
  if (cfg_it == meta.end() || !cfg_it->is_object()) {
    return Status::Error(where + ": meta.json lacks the 'config' object");
  }
  ModelConfig& c = out.config;
  const json& cfg = *cfg_it;
  MINGPT_ASSIGN_OR_RETURN(c.n_layer, Field<int>(cfg, "n_layer", where));
  MINGPT_ASSIGN_OR_RETURN(c.n_head, Field<int>(cfg, "n_head", where));
  MINGPT_ASSIGN_OR_RETURN(c.n_embd, Field<int>(cfg, "n_embd", where));
  MINGPT_ASSIGN_OR_RETURN(c.block_size, Field<int>(cfg, "block_size", where));
  MINGPT_ASSIGN_OR_RETURN(c.vocab_size, Field<int>(cfg, "vocab_size", where));
  MINGPT_ASSIGN_OR_RETURN(c.dropout, Field<float>(cfg, "dropout", where));
  MINGPT_RETURN_IF_ERROR(c.Validate().WithContext(where));
  MINGPT_ASSIGN_OR_RETURN(std::string vocab, Field<std::string>(meta, "vocab", where));
  auto tok = CharTokenizer::FromVocab(vocab);
  if (!tok.ok()) return tok.status().WithContext(where);
  out.tokenizer = std::move(tok).value();
  if (out.tokenizer.size() != c.vocab_size) {
    return Status::Error(where + ": vocab has " + std::to_string(out.tokenizer.size()) +
                         " characters but config.vocab_size is " + std::to_string(c.vocab_size));
  }
  MINGPT_ASSIGN_OR_RETURN(out.state.step, Field<int64_t>(meta, "step", where));
  MINGPT_ASSIGN_OR_RETURN(out.state.tokens, Field<int64_t>(meta, "tokens", where));
  MINGPT_ASSIGN_OR_RETURN(out.state.seed, Field<uint64_t>(meta, "seed", where));
  auto best = meta.find("best_val_loss");
  if (best != meta.end() && best->is_number()) out.state.best_val_loss = best->get<double>();
  auto data = meta.find("data");
  if (data != meta.end() && data->is_string()) out.data_path = data->get<std::string>();
  return out;
}

Status CheckWeightsMatchConfig(const OpenedCheckpoint& ckpt) {
  MINGPT_ASSIGN_OR_RETURN(SafetensorsFile model, ckpt.checkpoint.Open("model.safetensors"));
  const ModelLayout layout(ckpt.config);
  for (const Unit& u : layout.units()) {
    for (const ParamEntry& e : u.params) {
      const TensorInfo* t = model.Find(e.name);
      if (t == nullptr) return Status::Error(model.path() + ": missing tensor '" + e.name + "'");
      if (t->shape != e.shape) {
        return Status::Error(model.path() + ": tensor '" + e.name + "' has shape " +
                             ShapeString(t->shape) + ", but meta.json's config implies " +
                             ShapeString(e.shape));
      }
    }
  }
  int64_t expected = 0;
  for (const Unit& u : layout.units()) expected += static_cast<int64_t>(u.params.size());
  if (static_cast<int64_t>(model.tensors().size()) != expected) {
    return Status::Error(model.path() + ": holds " + std::to_string(model.tensors().size()) +
                         " tensors, but meta.json's config (" + ckpt.config.ToString() +
                         ") implies " + std::to_string(expected));
  }
  return Status::Ok();
}

Status ReadCheckpointTensors(const OpenedCheckpoint& ckpt, const ModelLayout& layout,
                             float* params, float* exp_avg, float* exp_avg_sq) {
  auto read_all = [&](const SafetensorsFile& file, const std::string& prefix, float* flat) {
    for (int u = 0; u < layout.num_units(); ++u) {
      for (const ParamEntry& e : layout.units()[u].params) {
        MINGPT_RETURN_IF_ERROR(
            file.ReadF32(prefix + e.name, e.shape, flat + layout.unit_offset(u) + e.offset));
      }
    }
    return Status::Ok();
  };
  MINGPT_ASSIGN_OR_RETURN(SafetensorsFile model, ckpt.checkpoint.Open("model.safetensors"));
  MINGPT_RETURN_IF_ERROR(read_all(model, "", params));
  if (exp_avg == nullptr) return Status::Ok();
  MINGPT_ASSIGN_OR_RETURN(SafetensorsFile opt, ckpt.checkpoint.Open("optimizer.safetensors"));
  MINGPT_RETURN_IF_ERROR(read_all(opt, "exp_avg.", exp_avg));
  return read_all(opt, "exp_avg_sq.", exp_avg_sq);
}

}  // namespace mingpt
