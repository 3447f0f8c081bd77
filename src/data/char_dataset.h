// Character-level data, as the seed's CharDataset: the text is UTF-8 (as
// Python reads it) and the vocabulary is the sorted set of its distinct
// characters (Unicode code points: `sorted(set(text))`); the text splits
// contiguously into 90% train, 5% val, 5% test.
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
#include <string_view>
#include <unordered_map>
#include <vector>

#include "core/status.h"

namespace mingpt {

class CharTokenizer {
 public:
  CharTokenizer() = default;
  // Vocabulary = sorted distinct characters of `text`; an error names the
  // first byte that is not UTF-8 (Python's UnicodeDecodeError).
  static StatusOr<CharTokenizer> FromText(std::string_view text);
  // Vocabulary given in id order, as UTF-8 (as stored in a checkpoint).
  static StatusOr<CharTokenizer> FromVocab(const std::string& vocab);

  // The characters in id order, as UTF-8.
  const std::string& vocab() const { return vocab_; }
  int size() const { return static_cast<int>(pieces_.size()); }
  // Error naming the first character outside the vocabulary, or the first
  // byte that is not UTF-8.
  StatusOr<std::vector<int32_t>> Encode(std::string_view text) const;
  std::string Decode(const std::vector<int32_t>& ids) const;
  // Token `id`'s character as UTF-8 (1 to 4 bytes).
  const std::string& Piece(int32_t id) const { return pieces_[id]; }

 private:
  int Id(char32_t c) const;  // -1: not in the vocabulary

  std::string vocab_;
  std::vector<std::string> pieces_;
  int ascii_[128];                            // ids of ASCII characters, -1 none
  std::unordered_map<char32_t, int> others_;  // and of the rest
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
