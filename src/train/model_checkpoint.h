// Training checkpoints on top of io/checkpoint.h, in two formats named by
// meta.json's "format" (a missing "format" is "single", as in checkpoints
// written before the sharded format existed).
//
// meta.json (both formats): format_version, format, config, vocab, step,
// tokens, seed, rng, best_val_loss, data path, strategy, world_size,
// num_parameters, units (the unit layout: name, numel, tensors with name,
// shape, offset), options.
//
// "single" (world size 1):
//   model.safetensors      fp32 weights under the seed's PyTorch names
//   optimizer.safetensors  AdamW moments: exp_avg.<name>, exp_avg_sq.<name>
// PyTorch loads model.safetensors into the seed's GPT as is.
//
// "sharded" (world size N > 1, written by all ranks in parallel): meta.json
// also holds "shards", the N file names, and rank r's file
//   shard-<r:05>-of-<N:05>.safetensors
// holds, for every unit u, elements [ShardRange(u.numel, r, N).begin, .end)
// of u's flat buffers (padding included) as 1-D F32 tensors
//   params.<unit name>, exp_avg.<unit name>, exp_avg_sq.<unit name>
// (possibly of length 0), and __metadata__ {"rank": "r", "world_size": "N"}.
//
// Saving a sharded checkpoint from N ranks (the trainer does this; io/ never
// communicates). `comm` is the trainer's communicator:
//   1. every rank: its ShardRange of every unit, each kind: a ShardState
//      (ShardOf() when the rank holds the full state), or a StateSource;
//   2. rank 0:     StatusOr<PendingCheckpoint> p = BeginCheckpoint(dir);
//      comm:       broadcast from rank 0 whether p.ok() and p->version_dir;
//                  if Begin failed every rank returns that error (nothing was
//                  written);
//   3. every rank: Status s = WriteCheckpointFile(version_dir,
//                                                 ShardFile(layout, ...));
//   4. comm:       all-reduce (logical and) of s.ok() over the ranks;
//   5. rank 0:     all ok: c = CommitCheckpoint(*p, ShardedCheckpointMeta(...,
//                                N), ShardFileNames(N));
//                  else:   AbortCheckpoint(*p) (the old checkpoint stays);
//   6. comm:       broadcast c.ok() from rank 0 (this is also the barrier: no
//                  rank starts the next save to `dir`, or exits, before the
//                  commit is done), so every rank returns the same outcome.
// A crash of any rank at any point leaves the previous checkpoint at `dir`.
//
// Reading: CheckpointReader reads any element range of any unit's flat
// buffer from either format, so a checkpoint saved by N ranks resumes at any
// world size; ReadCheckpointTensors, CheckWeightsMatchConfig and
// WriteConsolidatedWeights (`mingpt convert`) are built on it.
#pragma once

#include <functional>

#include <cstdint>
#include <limits>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/status.h"
#include "data/char_dataset.h"
#include "dist/communicator.h"
#include "engine/strategy.h"
#include "io/checkpoint.h"
#include "io/safetensors.h"
#include "model/config.h"
#include "model/layout.h"
#include "optim/loss_scaler.h"
#include "train/options.h"

namespace mingpt {

enum class CheckpointFormat { kSingle, kSharded };
const char* CheckpointFormatName(CheckpointFormat format);  // "single", "sharded"

// The largest world size a sharded checkpoint may record (5-digit names).
inline constexpr int kMaxCheckpointWorldSize = 99999;

struct TrainState {
  int64_t step = 0;    // training steps completed (skipped fp16 steps included)
  int64_t tokens = 0;  // training tokens consumed
  double best_val_loss = std::numeric_limits<double>::infinity();
  uint64_t seed = 42;
  // AdamW updates applied: `step` less the fp16 steps skipped on overflow
  // (Adam's bias correction counts these). Older checkpoints: = step.
  int64_t optimizer_steps = 0;
  // --precision 16 runs only: the dynamic loss scaler.
  std::optional<LossScalerState> loss_scaler;
};

// Host copies of a model's flat buffers, in layout order.
struct HostState {
  std::vector<float> params, exp_avg, exp_avg_sq;
};

// Saves the "single" format (world size 1). Without moments (empty exp_avg)
// no optimizer.safetensors is written.
Status SaveTrainingCheckpoint(const std::string& dir, const ModelLayout& layout,
                              const ModelConfig& config, const CharTokenizer& tokenizer,
                              const TrainOptions& options, const TrainState& state,
                              const HostState& host);

// The same from a source of the state, read one tensor at a time as the
// files are written (a state that is never whole in memory: NVMe offload):
// source(kind, unit, begin, end, dst) copies elements [begin, end) of unit
// `unit` of kind 0 (parameters), 1 (exp_avg) or 2 (exp_avg_sq) into dst.
using StateSource =
    std::function<void(int kind, int unit, int64_t begin, int64_t end, float* dst)>;
Status SaveTrainingCheckpoint(const std::string& dir, const ModelLayout& layout,
                              const ModelConfig& config, const CharTokenizer& tokenizer,
                              const TrainOptions& options, const TrainState& state,
                              const StateSource& source, bool with_optimizer);

// One rank's shard of the training state in host memory: params[u] (and
// exp_avg[u], exp_avg_sq[u]) hold elements [ShardRange(numel, rank,
// world).begin, .end) of unit u's flat buffer.
struct ShardState {
  int rank = 0, world = 1;
  std::vector<std::vector<float>> params, exp_avg, exp_avg_sq;  // [unit]
};

// Rank `rank`'s shard of a full host state (which holds all three kinds).
ShardState ShardOf(const ModelLayout& layout, const HostState& host, int rank, int world);

// "shard-00001-of-00004.safetensors"; ShardFileNames(N) lists ranks 0..N-1.
std::string ShardFileName(int rank, int world);
std::vector<std::string> ShardFileNames(int world);

// Rank shard.rank's file of a sharded checkpoint. Its tensors point into
// `shard`, which must outlive the write. `shard` must hold every unit's
// ShardRange sizes (checked: a mismatch is a bug in the caller).
CheckpointFile ShardFile(const ModelLayout& layout, const ShardState& shard);
// Rank `rank`'s file of a sharded checkpoint of `world` ranks, each tensor
// read from `source` (as for SaveTrainingCheckpoint; the rank's ShardRange of
// each unit) as the writer reaches it: never more than one tensor in host
// memory. `source` must outlive the write.
CheckpointFile ShardFile(const ModelLayout& layout, int rank, int world, const StateSource& source);

// meta.json of a sharded checkpoint written by `world` ranks.
nlohmann::json ShardedCheckpointMeta(const ModelLayout& layout, const ModelConfig& config,
                                     const CharTokenizer& tokenizer, const TrainOptions& options,
                                     const TrainState& state, int world);

// A checkpoint opened and its meta.json checked: config, vocabulary, state,
// format and world size.
struct OpenedCheckpoint {
  Checkpoint checkpoint;
  ModelConfig config;
  CharTokenizer tokenizer;
  TrainState state;
  std::string data_path;
  CheckpointFormat format = CheckpointFormat::kSingle;
  int world_size = 1;  // the ranks that wrote it (the shard count if sharded)
};
// `confined`: LoadCheckpoint's (no file of the checkpoint may be a symlink).
StatusOr<OpenedCheckpoint> OpenTrainingCheckpoint(const std::string& dir, bool confined = false);

// Reads element ranges of the units' flat buffers from a checkpoint of
// either format. Move-only; reads are const and thread-safe.
class CheckpointReader {
 public:
  // Validates everything up front, from meta.json and the files' headers,
  // against `layout` (the one ckpt.config implies); the first problem is one
  // error line naming the file. Single: every tensor of model.safetensors
  // (and of optimizer.safetensors if `with_optimizer`) is present, F32, of
  // its layout shape, and nothing else is there. Sharded: meta.json's
  // "shards" lists the world size's file names and its "units" table equals
  // the layout; every shard file exists, its __metadata__ rank/world_size
  // match its name, and it holds exactly the 3 tensors per unit, F32, of the
  // rank's ShardRange length.
  static StatusOr<CheckpointReader> Open(const OpenedCheckpoint& ckpt, const ModelLayout& layout,
                                         bool with_optimizer = true);

  // Reads elements [range.begin, range.end) of unit `unit`'s flat buffer of
  // `kind` into dst (range.size() floats); padding between tensors reads as
  // zeros. Errors: a unit or range outside the layout, optimizer state asked
  // of a reader opened without it, a read failure (naming the file), a
  // checksum mismatch of a tensor read whole. A tensor read only in part
  // is remembered for CheckPartialReads.
  Status Read(int unit, StateKind kind, ElementRange range, float* dst);

  // Checks the tensors that the ranks read only in part (a rank reading its
  // slice of a checkpoint saved at another world size) against their
  // checksums: every rank's pieces of a tensor are gathered and combined
  // (SafetensorsFile::CheckPieces), so the tensor is checked without any
  // rank reading it whole. A collective: every rank calls it after its
  // reads, and every rank gets the same result. A tensor that the ranks'
  // pieces do not cover is not checked.
  Status CheckPartialReads(Communicator* comm) const;

  CheckpointFormat format() const { return format_; }
  int world_size() const { return world_; }

 private:
  CheckpointReader() = default;
  Status ReadSingle(int unit, StateKind kind, ElementRange range, float* dst);
  Status ReadSharded(int unit, StateKind kind, ElementRange range, float* dst);
  // Reads elements [begin, begin + count) of tensor `name` of files_[file],
  // remembering the piece if it is not the whole tensor of `numel`.
  Status ReadPiece(int file, const std::string& name, int64_t begin, int64_t count, int64_t numel,
                   float* dst);

  std::string dir_;  // for messages
  std::vector<Unit> units_;
  CheckpointFormat format_ = CheckpointFormat::kSingle;
  int world_ = 1;
  bool with_optimizer_ = false;
  // Single: model.safetensors, then optimizer.safetensors if with_optimizer_.
  // Sharded: the shard of rank r at index r.
  std::vector<SafetensorsFile> files_;
  struct PartialRead {
    int file;
    std::string tensor;
    TensorPiece piece;
  };
  std::vector<PartialRead> partial_reads_;
};

// Checks, from the files' headers alone, that the checkpoint holds exactly
// the weights its config implies (CheckpointReader::Open without optimizer
// state): a corrupted meta.json is caught before anything is allocated.
Status CheckWeightsMatchConfig(const OpenedCheckpoint& ckpt);

// Reads the weights (and, if exp_avg is non-null, the AdamW moments) into
// flat host buffers of layout.total_numel() floats, from either format.
Status ReadCheckpointTensors(const OpenedCheckpoint& ckpt, const ModelLayout& layout,
                             float* params, float* exp_avg, float* exp_avg_sq);

// Writes the checkpoint's weights, of either format, to `path` as one fp32
// safetensors file under the seed's PyTorch names: exactly the tensors of a
// single-format model.safetensors. Durable (temp file + rename): `path` is
// never left half-written.
Status WriteConsolidatedWeights(const OpenedCheckpoint& ckpt, const std::string& path);

}  // namespace mingpt
