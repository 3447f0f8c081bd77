#include "train/state_io.h"

#include <vector>

#include "dist/agree.h"
#include "engine/shard.h"

namespace mingpt {
namespace {

constexpr StateKind kKinds[] = {StateKind::kParams, StateKind::kExpAvg, StateKind::kExpAvgSq};

// The strategy's state as the checkpoint writers read it, each tensor
// downloaded as the file writer reaches it: never more than one tensor in
// host memory (under NVMe offload, the state is never whole in memory).
StateSource Source(const Strategy& s) {
  return [&s](int kind, int unit, int64_t begin, int64_t end, float* dst) {
    s.Download(unit, kKinds[kind], {begin, end}, dst);
  };
}

// The single format from one process.
Status SaveSingle(const std::string& dir, const ModelLayout& layout, const CharTokenizer& tokenizer,
                  const TrainOptions& o, const TrainState& state, const Strategy& s) {
  const StateSource source = Source(s);
  return SaveTrainingCheckpoint(dir, layout, o.model, tokenizer, o, state, source,
                                /*with_optimizer=*/true);
}

// The sharded format, every rank writing its file (model_checkpoint.h's
// sequence) from its shard of each unit, one tensor at a time.
Status SaveSharded(const std::string& dir, const ModelLayout& layout,
                   const CharTokenizer& tokenizer, const TrainOptions& o, const TrainState& state,
                   const Strategy& s, Communicator* comm) {
  const StateSource source = Source(s);
  StatusOr<PendingCheckpoint> pending = Status::Error("not begun");
  std::string version_dir;
  if (comm->rank() == 0) {
    pending = BeginCheckpoint(dir);
    if (pending.ok()) version_dir = pending->version_dir;
  }
  MINGPT_RETURN_IF_ERROR(AgreeOnStatus(comm, comm->rank() == 0 ? pending.status() : Status::Ok()));
  BroadcastString(comm, &version_dir);
  const Status written =
      WriteCheckpointFile(version_dir, ShardFile(layout, s.rank(), s.world(), source));
  const Status all_written = AgreeOnStatus(comm, written);
  Status committed = Status::Ok();
  if (comm->rank() == 0) {
    if (all_written.ok()) {
      committed = CommitCheckpoint(
          *pending, ShardedCheckpointMeta(layout, o.model, tokenizer, o, state, comm->world()),
          ShardFileNames(comm->world()));
    } else {
      AbortCheckpoint(*pending);
    }
  }
  MINGPT_RETURN_IF_ERROR(all_written);
  return AgreeOnStatus(comm, committed);
}

Status ReadHeldState(CheckpointReader* reader, const ModelLayout& layout, Strategy* s,
                     bool with_optimizer) {
  std::vector<float> buffer;
  for (StateKind kind : kKinds) {
    if (kind != StateKind::kParams && !with_optimizer) continue;
    for (int u = 0; u < layout.num_units(); ++u) {
      const ElementRange r = s->Held(u, kind);
      buffer.resize(r.size());
      MINGPT_RETURN_IF_ERROR(reader->Read(u, kind, r, buffer.data()));
      s->Upload(u, kind, buffer.data());
    }
  }
  return Status::Ok();
}

}  // namespace

void InitTrainingState(const GPT& gpt, uint64_t seed, Strategy* s) {
  const ModelLayout& layout = gpt.layout();
  std::vector<float> unit;  // one unit at a time
  for (int u = 0; u < layout.num_units(); ++u) {
    unit.resize(layout.units()[u].numel);
    gpt.InitUnit(seed, u, unit.data());
    const ElementRange r = s->Held(u, StateKind::kParams);
    s->Upload(u, StateKind::kParams, unit.data() + r.begin);
  }
}

Status AgreeOnCheckpointVersion(Communicator* comm, OpenedCheckpoint* ckpt) {
  if (comm->world() == 1) return Status::Ok();
  std::string version = ckpt->checkpoint.data_dir;
  BroadcastString(comm, &version);
  Status status = Status::Ok();
  if (version != ckpt->checkpoint.data_dir) {
    StatusOr<OpenedCheckpoint> again = OpenTrainingCheckpoint(version);
    if (again.ok()) {
      *ckpt = std::move(again).value();
    } else {
      status = again.status();
    }
  }
  return AgreeOnStatus(comm, status);
}

Status LoadTrainingState(const OpenedCheckpoint& ckpt, const ModelLayout& layout, Strategy* s,
                         Communicator* comm, bool with_optimizer) {
  StatusOr<CheckpointReader> reader = CheckpointReader::Open(ckpt, layout, with_optimizer);
  Status read = reader.status();
  if (read.ok()) read = ReadHeldState(&reader.value(), layout, s, with_optimizer);
  MINGPT_RETURN_IF_ERROR(AgreeOnStatus(comm, read));
  // Every rank has read its slices: the tensors split between ranks are
  // checked whole, from every rank's pieces.
  return AgreeOnStatus(comm, reader->CheckPartialReads(comm));
}

Status SaveTrainingState(const std::string& dir, const ModelLayout& layout,
                         const CharTokenizer& tokenizer, const TrainOptions& o,
                         const TrainState& state, Strategy* s, Communicator* comm) {
  if (comm->world() == 1) return SaveSingle(dir, layout, tokenizer, o, state, *s);
  return SaveSharded(dir, layout, tokenizer, o, state, *s, comm);
}

}  // namespace mingpt
