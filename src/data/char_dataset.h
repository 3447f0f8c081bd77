// Character-level data, as the seed's CharDataset: the vocabulary is the
// sorted set of distinct bytes of the text; the text splits contiguously into
// 90% train, 5% val, 5% test.
//
// Training samples are random (block_size+1)-character windows of the train
// split. Sample g (a *global* sample index: step, micro-batch and batch row
// folded together) starts at Random64(seed; g, 0, kDataStream, 0) mod
// (len(train) - block_size - 1), the seed's np.random.randint range. Because
// the start depends only on (seed, g), a batch split across ranks sees the
// samples of the unsplit batch. An epoch is ceil(len(train)/(block_size+1))
// samples. Val and test are read as consecutive non-overlapping windows.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/status.h"

namespace mingpt {

class CharTokenizer {
 public:
  CharTokenizer() = default;
  // Vocabulary = sorted distinct bytes of `text`.
  static CharTokenizer FromText(const std::string& text);
  // Vocabulary given in id order (as stored in a checkpoint).
  static StatusOr<CharTokenizer> FromVocab(const std::string& vocab);

  const std::string& vocab() const { return vocab_; }
  int size() const { return static_cast<int>(vocab_.size()); }
  // Error naming the first character outside the vocabulary.
  StatusOr<std::vector<int32_t>> Encode(const std::string& text) const;
  std::string Decode(const std::vector<int32_t>& ids) const;

 private:
  std::string vocab_;
  int stoi_[256];
};

enum class Split { kTrain, kVal, kTest };

class CharDataset {
 public:
  // Splits the encoded text. Errors if the train split cannot hold one
  // training window (block_size + 2 characters).
  static StatusOr<CharDataset> Create(std::vector<int32_t> tokens, int block_size);

  int block_size() const { return block_size_; }
  int64_t split_size(Split s) const;
  // Samples per epoch: ceil(len(train) / (block_size + 1)).
  int64_t epoch_samples() const;

  // Writes training sample g: x[block_size], y[block_size] (y shifted by one).
  void TrainSample(uint64_t seed, uint64_t g, int32_t* x, int32_t* y) const;

  // Evaluation windows of a split: window i covers characters
  // [i*(T+1), i*(T+1)+T+1) with T = block_size, or, when the split is
  // shorter than one window, the whole split (T = len-1).
  int64_t num_eval_windows(Split s) const;
  int eval_window_length(Split s) const;  // T of its windows
  void EvalWindow(Split s, int64_t i, int32_t* x, int32_t* y) const;

 private:
  const int32_t* split_begin(Split s) const;
  std::vector<int32_t> tokens_;
  int64_t train_end_ = 0, val_end_ = 0;
  int block_size_ = 0;
};

}  // namespace mingpt
