// Sharded checkpoints written from a test process, since no multi-process
// trainer is needed to make one: the multi-rank save sequence documented in
// train/model_checkpoint.h run for N "ranks" in one process, a re-save of any
// checkpoint as a sharded one, and small helpers to corrupt a checkpoint's
// files in place.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "io/checkpoint.h"
#include "io/file.h"
#include "io/safetensors.h"
#include "model/layout.h"
#include "train/model_checkpoint.h"

namespace mingpt::cli_test {

// The save sequence for shards.size() ranks, rank r's part done with
// shards[r], the communication replaced by plain variables:
//   rank 0 Begin -> "broadcast" the version dir -> every rank writes its
//   shard -> "all-reduce" of success -> rank 0 Commit (or Abort).
inline Status SaveShardedInOneProcess(const std::string& dir, const ModelLayout& layout,
                                      const nlohmann::json& meta,
                                      const std::vector<ShardState>& shards) {
  StatusOr<PendingCheckpoint> pending = BeginCheckpoint(dir);  // rank 0
  if (!pending.ok()) return pending.status();
  const std::string version_dir = pending->version_dir;  // broadcast
  Status first_error;
  for (const ShardState& shard : shards) {  // every rank
    const Status s = WriteCheckpointFile(version_dir, ShardFile(layout, shard));
    if (!s.ok() && first_error.ok()) first_error = s;
  }
  if (!first_error.ok()) {  // the all-reduce said some rank failed
    AbortCheckpoint(*pending);
    return first_error;
  }
  return CommitCheckpoint(*pending, meta, ShardFileNames(static_cast<int>(shards.size())));
}

// Distinct values in every tensor element of all three kinds; zero padding,
// as a trained state has.
inline HostState DistinctState(const ModelLayout& layout) {
  HostState host;
  std::vector<float>* kinds[] = {&host.params, &host.exp_avg, &host.exp_avg_sq};
  for (int k = 0; k < 3; ++k) {
    kinds[k]->assign(static_cast<size_t>(layout.total_numel()), 0.0f);
    for (int u = 0; u < layout.num_units(); ++u) {
      for (const ParamEntry& e : layout.units()[u].params) {
        for (int64_t i = 0; i < e.numel; ++i) {
          const int64_t flat = layout.unit_offset(u) + e.offset + i;
          (*kinds[k])[static_cast<size_t>(flat)] =
              static_cast<float>(k + 1) * 1000.0f + static_cast<float>(flat) * 0.5f + 0.25f;
        }
      }
    }
  }
  return host;
}

// The full state of an opened checkpoint (either format) in host memory.
inline StatusOr<HostState> ReadHostState(const OpenedCheckpoint& ckpt) {
  const ModelLayout layout(ckpt.config);
  HostState host;
  for (std::vector<float>* v : {&host.params, &host.exp_avg, &host.exp_avg_sq}) {
    v->assign(static_cast<size_t>(layout.total_numel()), 0.0f);
  }
  const Status s = ReadCheckpointTensors(ckpt, layout, host.params.data(), host.exp_avg.data(),
                                         host.exp_avg_sq.data());
  if (!s.ok()) return s;
  return host;
}

// Re-saves the checkpoint at `src` (either format) as a sharded checkpoint of
// `world` ranks at `dst`, keeping its meta.json's state, data and options.
inline Status Reshard(const std::string& src, const std::string& dst, int world) {
  StatusOr<OpenedCheckpoint> ckpt = OpenTrainingCheckpoint(src);
  if (!ckpt.ok()) return ckpt.status();
  StatusOr<HostState> host = ReadHostState(*ckpt);
  if (!host.ok()) return host.status();
  const ModelLayout layout(ckpt->config);
  TrainOptions options;
  options.data_path = ckpt->data_path;
  options.strategy = ckpt->checkpoint.meta.value("strategy", std::string("deepspeed_stage_2"));
  nlohmann::json meta =
      ShardedCheckpointMeta(layout, ckpt->config, ckpt->tokenizer, options, ckpt->state, world);
  if (ckpt->checkpoint.meta.contains("options")) meta["options"] = ckpt->checkpoint.meta["options"];
  std::vector<ShardState> shards;
  for (int r = 0; r < world; ++r) shards.push_back(ShardOf(layout, *host, r, world));
  return SaveShardedInOneProcess(dst, layout, meta, shards);
}

// A tensor of a safetensors file, held in memory for rewriting.
struct RawTensor {
  std::string name;
  std::vector<int64_t> shape;
  TensorDType dtype = TensorDType::kF32;
  std::vector<char> bytes;
};

// Rewrites the safetensors file at `path` after `edit` has changed its
// tensors (in file order) and __metadata__.
inline Status RewriteSafetensors(
    const std::string& path,
    const std::function<void(std::vector<RawTensor>*, std::map<std::string, std::string>*)>&
        edit) {
  std::vector<RawTensor> tensors;
  std::map<std::string, std::string> metadata;
  {
    StatusOr<SafetensorsFile> file = SafetensorsFile::Open(path);
    if (!file.ok()) return file.status();
    metadata = file->metadata();
    for (const TensorInfo& info : file->tensors()) {
      RawTensor t{info.name, info.shape, info.dtype, std::vector<char>(info.byte_size())};
      const Status s = file->ReadRaw(info, t.bytes.data());
      if (!s.ok()) return s;
      tensors.push_back(std::move(t));
    }
  }
  edit(&tensors, &metadata);
  std::vector<TensorRef> refs;
  for (const RawTensor& t : tensors) refs.push_back({t.name, t.shape, t.dtype, t.bytes.data()});
  return WriteSafetensors(path, refs, metadata);
}

// As above, editing one tensor at a time (a cleared name drops it).
inline Status RewriteEachTensor(const std::string& path,
                                const std::function<void(RawTensor*)>& edit) {
  return RewriteSafetensors(path, [&](std::vector<RawTensor>* tensors,
                                      std::map<std::string, std::string>*) {
    for (RawTensor& t : *tensors) edit(&t);
    std::erase_if(*tensors, [](const RawTensor& t) { return t.name.empty(); });
  });
}

}  // namespace mingpt::cli_test
