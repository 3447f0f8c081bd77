// Training checkpoints, single and sharded; the format is described in
// model_checkpoint.h.
#include "train/model_checkpoint.h"

#include <sys/stat.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <limits>
#include <map>
#include <utility>

#include "core/check.h"
#include "dist/agree.h"
#include "engine/shard.h"
#include "io/file.h"

namespace mingpt {
namespace {

using nlohmann::json;

constexpr char kModelFile[] = "model.safetensors";
constexpr char kOptimizerFile[] = "optimizer.safetensors";
constexpr StateKind kKinds[] = {StateKind::kParams, StateKind::kExpAvg, StateKind::kExpAvgSq};

// The tensor-name prefix of a kind in a shard file ("params.").
std::string ShardPrefix(StateKind kind) {
  switch (kind) {
    case StateKind::kParams: return "params.";
    case StateKind::kExpAvg: return "exp_avg.";
    case StateKind::kExpAvgSq: return "exp_avg_sq.";
  }
  return "?";
}

// The tensor-name prefix of a kind in the single format's files.
const char* StateKindName(StateKind kind) {
  switch (kind) {
    case StateKind::kParams:
      return "the parameters";
    case StateKind::kExpAvg:
      return "AdamW's exp_avg";
    case StateKind::kExpAvgSq:
      return "AdamW's exp_avg_sq";
  }
  return "?";
}

std::string SinglePrefix(StateKind kind) {
  return kind == StateKind::kParams ? "" : ShardPrefix(kind);
}

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

// meta.json fields common to both formats.
json BaseMeta(const ModelLayout& layout, const ModelConfig& c, const CharTokenizer& tokenizer,
              const TrainOptions& o, const TrainState& s, CheckpointFormat format, int world) {
  json meta;
  meta["format_version"] = kCheckpointFormatVersion;
  meta["format"] = CheckpointFormatName(format);
  meta["config"] = {{"n_layer", c.n_layer},   {"n_head", c.n_head},
                    {"n_embd", c.n_embd},     {"block_size", c.block_size},
                    {"vocab_size", c.vocab_size}, {"dropout", c.dropout}};
  meta["vocab"] = tokenizer.vocab();
  meta["step"] = s.step;
  meta["tokens"] = s.tokens;
  meta["seed"] = s.seed;
  meta["rng"] = {{"kind", "philox4x32-10"}, {"seed", s.seed}, {"next_step", s.step}};
  meta["best_val_loss"] = std::isfinite(s.best_val_loss) ? json(s.best_val_loss) : json(nullptr);
  meta["optimizer_steps"] = s.optimizer_steps;
  if (s.loss_scaler) {
    const LossScalerState& ls = *s.loss_scaler;
    meta["loss_scaler"] = {{"scale", ls.scale},
                           {"hysteresis", ls.hysteresis},
                           {"iteration", ls.iteration},
                           {"last_overflow", ls.last_overflow},
                           {"skipped_steps", ls.skipped_steps}};
  }
  // A path is bytes, JSON UTF-8: a byte that is not is written as U+FFFD, so
  // that the save succeeds; resuming such a run needs --data again.
  meta["data"] = json::parse(json(o.data_path).dump(-1, ' ', false, json::error_handler_t::replace));
  meta["strategy"] = o.strategy;
  meta["world_size"] = world;
  meta["num_parameters"] = layout.num_parameters();
  meta["units"] = LayoutJson(layout);
  meta["options"] = {{"batch_size", o.batch_size},
                     {"learning_rate", o.optim.learning_rate},
                     {"weight_decay", o.optim.weight_decay},
                     {"betas", {o.optim.beta1, o.optim.beta2}},
                     {"eps", o.optim.eps},
                     {"warmup_tokens", o.warmup_tokens},
                     {"gradient_clip_val", o.gradient_clip_val},
                     {"accumulate_grad_batches", o.accumulate_grad_batches},
                     {"precision", o.precision}};
  return meta;
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
    // The value must be one T holds (get<T> would wrap or truncate it).
    bool fits = false;  // (a negative value never fits an unsigned T)
    if (it->is_number_unsigned()) {
      fits = it->template get<uint64_t>() <= static_cast<uint64_t>(std::numeric_limits<T>::max());
    } else if constexpr (std::is_signed_v<T>) {
      const int64_t v = it->template get<int64_t>();
      fits = v >= std::numeric_limits<T>::min() && v <= std::numeric_limits<T>::max();
    }
    if (!fits) {
      return Status::Error(where + ": meta.json '" + key + "' is " + it->dump() + ", out of range");
    }
  } else {
    if (!it->is_number()) return Status::Error(where + ": meta.json '" + key + "' is not a number");
  }
  return it->get<T>();
}

// A JSON value for an error line: short, and never a recursive dump.
std::string Shown(const json& v) {
  if (v.is_structured()) return v.is_array() ? "an array" : "an object";
  const std::string s = v.dump();
  return s.size() > 40 ? s.substr(0, 37) + "..." : s;
}

// meta.json's "format" and, for a sharded checkpoint, "world_size".
Status ParseFormat(const json& meta, const std::string& where, OpenedCheckpoint* out) {
  auto it = meta.find("format");
  if (it == meta.end()) return Status::Ok();  // written before "format" existed
  if (!it->is_string() || (*it != "single" && *it != "sharded")) {
    return Status::Error(where + ": meta.json 'format' is " + Shown(*it) +
                         "; this build reads \"single\" and \"sharded\"");
  }
  if (*it == "single") return Status::Ok();
  out->format = CheckpointFormat::kSharded;
  MINGPT_ASSIGN_OR_RETURN(int64_t world, Field<int64_t>(meta, "world_size", where));
  if (world < 1 || world > kMaxCheckpointWorldSize) {
    return Status::Error(where + ": meta.json 'world_size' " + std::to_string(world) +
                         " is outside [1, " + std::to_string(kMaxCheckpointWorldSize) + "]");
  }
  out->world_size = static_cast<int>(world);
  return Status::Ok();
}

// `file` holds tensor `name` as F32 of `shape`; `why` says where the shape
// comes from.
Status CheckF32Tensor(const SafetensorsFile& file, const std::string& name,
                      const std::vector<int64_t>& shape, const std::string& why) {
  const TensorInfo* t = file.Find(name);
  if (t == nullptr) return Status::Error(file.path() + ": missing tensor '" + name + "'");
  if (t->shape != shape) {
    return Status::Error(file.path() + ": tensor '" + name + "' has shape " +
                         ShapeString(t->shape) + ", but " + why + " implies " +
                         ShapeString(shape));
  }
  if (t->dtype != TensorDType::kF32) {
    return Status::Error(file.path() + ": tensor '" + name + "' has dtype " +
                         DTypeName(t->dtype) + ", expected F32");
  }
  return Status::Ok();
}

Status CheckTensorCount(const SafetensorsFile& file, size_t expected, const std::string& why) {
  if (file.tensors().size() == expected) return Status::Ok();
  return Status::Error(file.path() + ": holds " + std::to_string(file.tensors().size()) +
                       " tensors, but " + why + " implies " + std::to_string(expected));
}

// One single-format file: the layout's tensors under `prefix` for each kind.
Status CheckSingleFile(const SafetensorsFile& file, const ModelLayout& layout,
                       const std::vector<StateKind>& kinds, const ModelConfig& config) {
  const std::string why = "meta.json's config (" + config.ToString() + ")";
  size_t count = 0;
  for (StateKind kind : kinds) {
    for (const Unit& u : layout.units()) {
      for (const ParamEntry& e : u.params) {
        MINGPT_RETURN_IF_ERROR(CheckF32Tensor(file, SinglePrefix(kind) + e.name, e.shape, why));
        ++count;
      }
    }
  }
  return CheckTensorCount(file, count, why);
}

// meta.json's "shards" lists exactly the world size's file names.
Status CheckShardList(const json& meta, int world, const std::string& where) {
  auto it = meta.find("shards");
  if (it == meta.end() || !it->is_array()) {
    return Status::Error(where + ": meta.json lacks the 'shards' list of a sharded checkpoint");
  }
  if (it->size() != static_cast<size_t>(world)) {
    return Status::Error(where + ": meta.json 'shards' lists " + std::to_string(it->size()) +
                         " files, but its world_size is " + std::to_string(world));
  }
  for (int r = 0; r < world; ++r) {
    const json& name = (*it)[static_cast<size_t>(r)];
    if (!name.is_string() || name != ShardFileName(r, world)) {
      return Status::Error(where + ": meta.json 'shards' entry " + std::to_string(r) + " is " +
                           Shown(name) + ", expected \"" +
                           ShardFileName(r, world) + "\"");
    }
  }
  return Status::Ok();
}

// meta.json's "units" table equals the layout its config implies.
Status CheckUnitsTable(const json& meta, const ModelLayout& layout, const std::string& where) {
  auto it = meta.find("units");
  if (it == meta.end() || !it->is_array()) {
    return Status::Error(where + ": meta.json lacks the 'units' table a sharded checkpoint needs");
  }
  const json expected = LayoutJson(layout);
  if (it->size() != expected.size()) {
    return Status::Error(where + ": meta.json 'units' lists " + std::to_string(it->size()) +
                         " units, but its config implies " + std::to_string(expected.size()));
  }
  for (size_t i = 0; i < expected.size(); ++i) {
    if ((*it)[i] != expected[i]) {
      return Status::Error(where + ": meta.json 'units' entry " + std::to_string(i) + " ('" +
                           expected[i]["name"].get<std::string>() +
                           "') disagrees with the layout its config implies");
    }
  }
  return Status::Ok();
}

// A shard file's __metadata__ names its rank and world size.
Status CheckShardMetadata(const SafetensorsFile& file, int rank, int world) {
  auto value = [&](const char* key) -> std::string {
    auto it = file.metadata().find(key);
    return it == file.metadata().end() ? "" : it->second;
  };
  const std::string r = value("rank"), w = value("world_size");
  if (r.empty() || w.empty()) {
    return Status::Error(file.path() + ": __metadata__ lacks 'rank' or 'world_size' "
                         "(not a shard file?)");
  }
  if (r != std::to_string(rank) || w != std::to_string(world)) {
    return Status::Error(file.path() + ": __metadata__ says rank " + r + " of " + w +
                         ", but the checkpoint lists it as rank " + std::to_string(rank) +
                         " of " + std::to_string(world));
  }
  return Status::Ok();
}

// Rank `rank`'s shard file: metadata, tensors and their lengths.
Status CheckShardFile(const SafetensorsFile& file, const ModelLayout& layout, int rank, int world,
                      bool with_optimizer) {
  MINGPT_RETURN_IF_ERROR(CheckShardMetadata(file, rank, world));
  for (StateKind kind : kKinds) {
    if (kind != StateKind::kParams && !with_optimizer) continue;
    for (const Unit& u : layout.units()) {
      const ShardRange r(u.numel, rank, world);
      const std::string why = "rank " + std::to_string(rank) + "'s slice of unit '" + u.name +
                              "' (" + std::to_string(u.numel) + " elements over " +
                              std::to_string(world) + " ranks)";
      MINGPT_RETURN_IF_ERROR(CheckF32Tensor(file, ShardPrefix(kind) + u.name, {r.size()}, why));
    }
  }
  return CheckTensorCount(file, 3 * layout.units().size(),
                          "a shard of " + std::to_string(layout.num_units()) + " units");
}

// Opens and checks the single format's files.
Status OpenSingle(const OpenedCheckpoint& ckpt, const ModelLayout& layout, bool with_optimizer,
                  std::vector<SafetensorsFile>* files) {
  MINGPT_ASSIGN_OR_RETURN(SafetensorsFile model, ckpt.checkpoint.Open(kModelFile));
  MINGPT_RETURN_IF_ERROR(CheckSingleFile(model, layout, {StateKind::kParams}, ckpt.config));
  files->push_back(std::move(model));
  if (!with_optimizer) return Status::Ok();
  MINGPT_ASSIGN_OR_RETURN(SafetensorsFile opt, ckpt.checkpoint.Open(kOptimizerFile));
  MINGPT_RETURN_IF_ERROR(CheckSingleFile(
      opt, layout, {StateKind::kExpAvg, StateKind::kExpAvgSq}, ckpt.config));
  files->push_back(std::move(opt));
  return Status::Ok();
}

// Opens and checks the sharded format's meta.json tables and shard files.
Status OpenSharded(const OpenedCheckpoint& ckpt, const ModelLayout& layout, bool with_optimizer,
                   std::vector<SafetensorsFile>* files) {
  const std::string where = "checkpoint '" + ckpt.checkpoint.dir + "'";
  const int world = ckpt.world_size;
  MINGPT_RETURN_IF_ERROR(CheckShardList(ckpt.checkpoint.meta, world, where));
  MINGPT_RETURN_IF_ERROR(CheckUnitsTable(ckpt.checkpoint.meta, layout, where));
  // Every shard stays open while the reader lives: a job of a thousand ranks
  // and more outgrows the usual soft limit on open files.
  MINGPT_RETURN_IF_ERROR(ReserveOpenFiles(static_cast<uint64_t>(world))
                             .WithContext(where + ", of " + std::to_string(world) + " shards"));
  for (int r = 0; r < world; ++r) {
    StatusOr<SafetensorsFile> opened = ckpt.checkpoint.Open(ShardFileName(r, world));
    if (!opened.ok()) {
      return Status::Error(opened.status().message() + " (the shard of rank " +
                           std::to_string(r) + " of " + std::to_string(world) + ")");
    }
    SafetensorsFile shard = std::move(opened).value();
    MINGPT_RETURN_IF_ERROR(CheckShardFile(shard, layout, r, world, with_optimizer));
    files->push_back(std::move(shard));
  }
  return Status::Ok();
}

// Rank `rank`'s shard file of `world`, its tensors not yet added.
CheckpointFile EmptyShardFile(int rank, int world) {
  CheckpointFile file;
  file.filename = ShardFileName(rank, world);
  file.metadata = {{"rank", std::to_string(rank)}, {"world_size", std::to_string(world)}};
  return file;
}

// The overlap of [a.begin, a.end) and [b_begin, b_end), empty if none.
ElementRange Overlap(ElementRange a, int64_t b_begin, int64_t b_end) {
  const int64_t lo = std::max(a.begin, b_begin), hi = std::min(a.end, b_end);
  return {lo, std::max(lo, hi)};
}

}  // namespace

const char* CheckpointFormatName(CheckpointFormat format) {
  return format == CheckpointFormat::kSharded ? "sharded" : "single";
}

Status SaveTrainingCheckpoint(const std::string& dir, const ModelLayout& layout,
                              const ModelConfig& c, const CharTokenizer& tokenizer,
                              const TrainOptions& o, const TrainState& s, const HostState& host) {
  const std::vector<float>* flat[] = {&host.params, &host.exp_avg, &host.exp_avg_sq};
  auto source = [&](int kind, int unit, int64_t begin, int64_t end, float* dst) {
    const float* from = flat[kind]->data() + layout.unit_offset(unit);
    std::copy(from + begin, from + end, dst);
  };
  return SaveTrainingCheckpoint(dir, layout, c, tokenizer, o, s, source, !host.exp_avg.empty());
}

Status SaveTrainingCheckpoint(const std::string& dir, const ModelLayout& layout,
                              const ModelConfig& c, const CharTokenizer& tokenizer,
                              const TrainOptions& o, const TrainState& s,
                              const StateSource& source, bool with_optimizer) {
  const json meta = BaseMeta(layout, c, tokenizer, o, s, CheckpointFormat::kSingle, 1);
  // Each tensor read from the source as its file reaches it.
  auto refs = [&](int kind, const std::string& prefix) {
    std::vector<TensorRef> out;
    for (int u = 0; u < layout.num_units(); ++u) {
      for (const ParamEntry& e : layout.units()[u].params) {
        out.push_back({prefix + e.name, e.shape, TensorDType::kF32, nullptr,
                       [&source, kind, u, e](void* dst) {
                         source(kind, u, e.offset, e.offset + e.numel, static_cast<float*>(dst));
                       }});
      }
    }
    return out;
  };
  std::vector<CheckpointFile> files;
  files.push_back({kModelFile, refs(0, ""), {}});
  if (with_optimizer) {
    std::vector<TensorRef> opt = refs(1, "exp_avg.");
    std::vector<TensorRef> sq = refs(2, "exp_avg_sq.");
    opt.insert(opt.end(), sq.begin(), sq.end());
    files.push_back({kOptimizerFile, std::move(opt), {}});
  }
  return SaveCheckpoint(dir, meta, files);
}

ShardState ShardOf(const ModelLayout& layout, const HostState& host, int rank, int world) {
  ShardState shard;
  shard.rank = rank;
  shard.world = world;
  const std::vector<float>* full[] = {&host.params, &host.exp_avg, &host.exp_avg_sq};
  std::vector<std::vector<float>>* part[] = {&shard.params, &shard.exp_avg, &shard.exp_avg_sq};
  for (int k = 0; k < 3; ++k) {
    MINGPT_CHECK(static_cast<int64_t>(full[k]->size()) == layout.total_numel(),
                 "host state kind %d holds %zu floats, the layout %lld", k, full[k]->size(),
                 static_cast<long long>(layout.total_numel()));
    for (int u = 0; u < layout.num_units(); ++u) {
      const ShardRange r(layout.units()[u].numel, rank, world);
      const float* begin = full[k]->data() + layout.unit_offset(u) + r.begin;
      part[k]->emplace_back(begin, begin + r.size());
    }
  }
  return shard;
}

std::string ShardFileName(int rank, int world) {
  char name[64];
  std::snprintf(name, sizeof(name), "shard-%05d-of-%05d.safetensors", rank, world);
  return name;
}

std::vector<std::string> ShardFileNames(int world) {
  std::vector<std::string> names;
  for (int r = 0; r < world; ++r) names.push_back(ShardFileName(r, world));
  return names;
}

CheckpointFile ShardFile(const ModelLayout& layout, const ShardState& shard) {
  CheckpointFile file = EmptyShardFile(shard.rank, shard.world);
  const std::vector<std::vector<float>>* parts[] = {&shard.params, &shard.exp_avg,
                                                    &shard.exp_avg_sq};
  for (int k = 0; k < 3; ++k) {
    MINGPT_CHECK(static_cast<int>(parts[k]->size()) == layout.num_units(),
                 "shard kind %d holds %zu units, the layout %d", k, parts[k]->size(),
                 layout.num_units());
    for (int u = 0; u < layout.num_units(); ++u) {
      const Unit& unit = layout.units()[u];
      const std::vector<float>& data = (*parts[k])[u];
      const ShardRange r(unit.numel, shard.rank, shard.world);
      MINGPT_CHECK(static_cast<int64_t>(data.size()) == r.size(),
                   "unit %s kind %d: %zu floats, ShardRange %lld", unit.name.c_str(), k,
                   data.size(), static_cast<long long>(r.size()));
      file.tensors.push_back(
          {ShardPrefix(kKinds[k]) + unit.name, {r.size()}, TensorDType::kF32, data.data()});
    }
  }
  return file;
}

CheckpointFile ShardFile(const ModelLayout& layout, int rank, int world,
                         const StateSource& source) {
  CheckpointFile file = EmptyShardFile(rank, world);
  for (int k = 0; k < 3; ++k) {
    for (int u = 0; u < layout.num_units(); ++u) {
      const Unit& unit = layout.units()[u];
      const ShardRange r(unit.numel, rank, world);
      file.tensors.push_back({ShardPrefix(kKinds[k]) + unit.name, {r.size()}, TensorDType::kF32,
                              nullptr, [&source, k, u, r](void* dst) {
                                source(k, u, r.begin, r.end, static_cast<float*>(dst));
                              }});
    }
  }
  return file;
}

json ShardedCheckpointMeta(const ModelLayout& layout, const ModelConfig& config,
                           const CharTokenizer& tokenizer, const TrainOptions& options,
                           const TrainState& state, int world) {
  json meta = BaseMeta(layout, config, tokenizer, options, state, CheckpointFormat::kSharded,
                       world);
  meta["shards"] = ShardFileNames(world);
  return meta;
}

StatusOr<OpenedCheckpoint> OpenTrainingCheckpoint(const std::string& dir, bool confined) {
  MINGPT_ASSIGN_OR_RETURN(Checkpoint ckpt, LoadCheckpoint(dir, confined));
  const std::string where = "checkpoint '" + dir + "'";
  OpenedCheckpoint out{std::move(ckpt), {}, {}, {}, {}, CheckpointFormat::kSingle, 1};
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
  // Counts a run reaches: at most 2^53 (where a double's integers end).
  constexpr int64_t kMaxCount = int64_t{1} << 53;
  if (out.state.step < 0 || out.state.step > kMaxCount) {
    return Status::Error(where + ": meta.json 'step' must be in [0, 2^53], got " +
                         std::to_string(out.state.step));
  }
  if (out.state.tokens < 0 || out.state.tokens > kMaxCount) {
    return Status::Error(where + ": meta.json 'tokens' must be in [0, 2^53], got " +
                         std::to_string(out.state.tokens));
  }
  auto best = meta.find("best_val_loss");
  if (best != meta.end() && best->is_number()) out.state.best_val_loss = best->get<double>();
  out.state.optimizer_steps = out.state.step;
  if (meta.contains("optimizer_steps")) {
    MINGPT_ASSIGN_OR_RETURN(out.state.optimizer_steps, Field<int64_t>(meta, "optimizer_steps", where));
    if (out.state.optimizer_steps < 0 || out.state.optimizer_steps > out.state.step) {
      return Status::Error(where + ": meta.json 'optimizer_steps' must be in [0, step]");
    }
  }
  if (meta.contains("loss_scaler")) {
    const json& ls = meta["loss_scaler"];
    const std::string at = where + " (loss_scaler)";
    if (!ls.is_object()) return Status::Error(at + ": meta.json 'loss_scaler' is not an object");
    LossScalerState st;
    MINGPT_ASSIGN_OR_RETURN(st.scale, Field<double>(ls, "scale", at));
    MINGPT_ASSIGN_OR_RETURN(st.hysteresis, Field<int>(ls, "hysteresis", at));
    MINGPT_ASSIGN_OR_RETURN(st.iteration, Field<int64_t>(ls, "iteration", at));
    MINGPT_ASSIGN_OR_RETURN(st.last_overflow, Field<int64_t>(ls, "last_overflow", at));
    MINGPT_ASSIGN_OR_RETURN(st.skipped_steps, Field<int64_t>(ls, "skipped_steps", at));
    if (!(st.scale >= 1.0 && std::isfinite(st.scale)) || st.hysteresis < 0 || st.skipped_steps < 0) {
      return Status::Error(at + ": scale must be a finite number >= 1 and counts non-negative");
    }
    out.state.loss_scaler = st;
  }
  auto data = meta.find("data");
  if (data != meta.end() && data->is_string()) out.data_path = data->get<std::string>();
  MINGPT_RETURN_IF_ERROR(ParseFormat(meta, where, &out));
  return out;
}

StatusOr<CheckpointReader> CheckpointReader::Open(const OpenedCheckpoint& ckpt,
                                                  const ModelLayout& layout,
                                                  bool with_optimizer) {
  CheckpointReader reader;
  reader.dir_ = ckpt.checkpoint.dir;
  reader.units_ = layout.units();
  reader.format_ = ckpt.format;
  reader.world_ = ckpt.world_size;
  reader.with_optimizer_ = with_optimizer;
  if (ckpt.format == CheckpointFormat::kSingle) {
    reader.world_ = 1;
    MINGPT_RETURN_IF_ERROR(OpenSingle(ckpt, layout, with_optimizer, &reader.files_));
  } else {
    MINGPT_RETURN_IF_ERROR(OpenSharded(ckpt, layout, with_optimizer, &reader.files_));
  }
  return reader;
}

Status CheckpointReader::Read(int unit, StateKind kind, ElementRange range, float* dst) {
  const std::string where = "checkpoint '" + dir_ + "'";
  if (unit < 0 || unit >= static_cast<int>(units_.size())) {
    return Status::Error(where + ": no unit " + std::to_string(unit));
  }
  const Unit& u = units_[static_cast<size_t>(unit)];
  if (range.begin < 0 || range.begin > range.end || range.end > u.numel) {
    return Status::Error(where + ": elements [" + std::to_string(range.begin) + ", " +
                         std::to_string(range.end) + ") lie outside unit '" + u.name + "' (" +
                         std::to_string(u.numel) + " elements)");
  }
  if (kind != StateKind::kParams && !with_optimizer_) {
    return Status::Error(where + ": optimizer state was not opened for reading");
  }
  MINGPT_RETURN_IF_ERROR(format_ == CheckpointFormat::kSingle ? ReadSingle(unit, kind, range, dst)
                                                              : ReadSharded(unit, kind, range, dst));
  // A saved state is finite (a step that overflowed was skipped, a diverged
  // run stopped unsaved) and its second moments are >= 0: anything else is
  // a damaged file, refused here rather than trained or sampled from.
  for (int64_t i = 0; i < range.size(); ++i) {
    if (!std::isfinite(dst[i]) || (kind == StateKind::kExpAvgSq && dst[i] < 0)) {
      return Status::Error(where + ": " + StateKindName(kind) + " of unit '" + u.name +
                           "' hold " + std::to_string(dst[i]) + " at element " +
                           std::to_string(range.begin + i) + " (a damaged file?)");
    }
  }
  return Status::Ok();
}

Status CheckpointReader::ReadPiece(int file, const std::string& name, int64_t begin,
                                   int64_t count, int64_t numel, float* dst) {
  uint32_t crc = 0;
  MINGPT_RETURN_IF_ERROR(
      files_[static_cast<size_t>(file)].ReadF32Range(name, begin, count, dst, &crc));
  if (count < numel) partial_reads_.push_back({file, name, {begin, count, crc}});
  return Status::Ok();
}

Status CheckpointReader::ReadSingle(int unit, StateKind kind, ElementRange range, float* dst) {
  const int file = kind == StateKind::kParams ? 0 : 1;
  std::fill(dst, dst + range.size(), 0.0f);  // padding between tensors
  for (const ParamEntry& e : units_[static_cast<size_t>(unit)].params) {
    const ElementRange o = Overlap(range, e.offset, e.offset + e.numel);
    if (o.size() == 0) continue;
    MINGPT_RETURN_IF_ERROR(ReadPiece(file, SinglePrefix(kind) + e.name, o.begin - e.offset,
                                     o.size(), e.numel, dst + (o.begin - range.begin)));
  }
  return Status::Ok();
}

Status CheckpointReader::ReadSharded(int unit, StateKind kind, ElementRange range, float* dst) {
  const Unit& u = units_[static_cast<size_t>(unit)];
  for (int r = 0; r < world_; ++r) {
    const ShardRange shard(u.numel, r, world_);
    const ElementRange o = Overlap(range, shard.begin, shard.end);
    if (o.size() == 0) continue;
    MINGPT_RETURN_IF_ERROR(ReadPiece(r, ShardPrefix(kind) + u.name, o.begin - shard.begin,
                                     o.size(), shard.end - shard.begin,
                                     dst + (o.begin - range.begin)));
  }
  return Status::Ok();
}

Status CheckpointReader::CheckPartialReads(Communicator* comm) const {
  nlohmann::json mine = nlohmann::json::array();
  for (const PartialRead& r : partial_reads_) {
    mine.push_back({r.file, r.tensor, r.piece.elem_offset, r.piece.count, r.piece.crc32c});
  }
  // Every rank's pieces, on every rank, in rank order.
  std::map<std::pair<int, std::string>, std::vector<TensorPiece>> pieces;
  for (int rank = 0; rank < comm->world(); ++rank) {
    std::string text = rank == comm->rank() ? mine.dump() : std::string();
    BroadcastString(comm, &text, rank);
    for (const nlohmann::json& e : nlohmann::json::parse(text)) {
      pieces[{e[0].get<int>(), e[1].get<std::string>()}].push_back(
          {e[2].get<int64_t>(), e[3].get<int64_t>(), e[4].get<uint32_t>()});
    }
  }
  for (const auto& [tensor, list] : pieces) {
    const SafetensorsFile& file = files_[static_cast<size_t>(tensor.first)];
    MINGPT_RETURN_IF_ERROR(file.CheckPieces(tensor.second, list));
  }
  return Status::Ok();
}

Status CheckWeightsMatchConfig(const OpenedCheckpoint& ckpt) {
  const ModelLayout layout(ckpt.config);
  return CheckpointReader::Open(ckpt, layout, /*with_optimizer=*/false).status();
}

Status ReadCheckpointTensors(const OpenedCheckpoint& ckpt, const ModelLayout& layout,
                             float* params, float* exp_avg, float* exp_avg_sq) {
  const bool with_optimizer = exp_avg != nullptr;
  MINGPT_ASSIGN_OR_RETURN(CheckpointReader reader,
                          CheckpointReader::Open(ckpt, layout, with_optimizer));
  float* flat[] = {params, exp_avg, exp_avg_sq};
  for (int k = 0; k < (with_optimizer ? 3 : 1); ++k) {
    for (int u = 0; u < layout.num_units(); ++u) {
      MINGPT_RETURN_IF_ERROR(reader.Read(u, kKinds[k], {0, layout.units()[u].numel},
                                         flat[k] + layout.unit_offset(u)));
    }
  }
  return Status::Ok();
}

Status WriteConsolidatedWeights(const OpenedCheckpoint& ckpt, const std::string& path) {
  struct stat st;
  if (::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode)) {
    return Status::Error("output '" + path + "' is a directory");
  }
  // The output replaces a file: never a device or FIFO (the rename would put
  // a file in its place), nor a file of the checkpoint it reads.
  if (::stat(path.c_str(), &st) == 0 && !S_ISREG(st.st_mode)) {
    return Status::Error("output '" + path + "' exists and is not a regular file");
  }
  std::error_code ec;
  const std::filesystem::path out = std::filesystem::weakly_canonical(path, ec).parent_path();
  for (const std::string& d : {ckpt.checkpoint.dir, ckpt.checkpoint.data_dir}) {
    const std::filesystem::path dir = std::filesystem::weakly_canonical(d, ec);
    const auto [mismatch, _] = std::mismatch(dir.begin(), dir.end(), out.begin(), out.end());
    if (!ec && mismatch == dir.end()) {
      return Status::Error("output '" + path + "' lies inside the checkpoint '" + d +
                           "' it converts");
    }
  }
  const ModelLayout layout(ckpt.config);
  // Opened (validated against the files) before the config sizes anything.
  MINGPT_ASSIGN_OR_RETURN(CheckpointReader reader,
                          CheckpointReader::Open(ckpt, layout, /*with_optimizer=*/false));
  std::vector<float> params(static_cast<size_t>(layout.total_numel()));
  for (int u = 0; u < layout.num_units(); ++u) {
    MINGPT_RETURN_IF_ERROR(reader.Read(u, StateKind::kParams, {0, layout.units()[u].numel},
                                       params.data() + layout.unit_offset(u)));
  }
  return WriteSafetensors(path, Tensors(layout, params.data(), ""));
}

}  // namespace mingpt
