// Moving a strategy's training state (parameters and AdamW moments, unit by
// unit, each rank its own part) in from an initialisation or a checkpoint
// and out to a checkpoint.
#pragma once

#include <string>

#include "core/status.h"
#include "dist/communicator.h"
#include "engine/strategy.h"
#include "model/gpt.h"
#include "train/model_checkpoint.h"

namespace mingpt {

// The seed's initialisation (GPT::InitParameters), each rank keeping its part.
void InitTrainingState(const GPT& gpt, uint64_t seed, Strategy* strategy);

// Every rank of the job reads the same version of a checkpoint: a link such
// as checkpoints/last, which a running trainer moves to each new save, is
// followed once, by rank 0, and the others reopen that version if they had
// followed it elsewhere. A collective; every rank gets the same result.
Status AgreeOnCheckpointVersion(Communicator* comm, OpenedCheckpoint* ckpt);

// Loads parameters and moments (only the parameters, for a strategy built
// for inference, with `with_optimizer` false) from a checkpoint saved at any
// world size, each rank reading just what it holds; the tensors that ranks
// read in slices are checked against their checksums from every rank's
// slices (CheckpointReader::CheckPartialReads). A collective: every rank
// gets the same result.
Status LoadTrainingState(const OpenedCheckpoint& ckpt, const ModelLayout& layout,
                         Strategy* strategy, Communicator* comm, bool with_optimizer = true);

// Saves the state as the checkpoint `dir`. A collective: every rank calls it;
// every rank gets the same result.
Status SaveTrainingState(const std::string& dir, const ModelLayout& layout,
                         const CharTokenizer& tokenizer, const TrainOptions& options,
                         const TrainState& state, Strategy* strategy, Communicator* comm);

}  // namespace mingpt
