#include "data/char_dataset.h"

#include <algorithm>
#include <cstdio>

#include "core/rng.h"

namespace mingpt {

CharTokenizer CharTokenizer::FromText(const std::string& text) {
  bool seen[256] = {};
  for (unsigned char c : text) seen[c] = true;
  std::string vocab;
  for (int c = 0; c < 256; ++c) {
    if (seen[c]) vocab.push_back(static_cast<char>(c));
  }
  return *FromVocab(vocab);
}

StatusOr<CharTokenizer> CharTokenizer::FromVocab(const std::string& vocab) {
  CharTokenizer t;
  t.vocab_ = vocab;
  std::fill(std::begin(t.stoi_), std::end(t.stoi_), -1);
  for (size_t i = 0; i < vocab.size(); ++i) {
    unsigned char c = vocab[i];
    if (t.stoi_[c] != -1) return Status::Error("vocabulary repeats a character");
    t.stoi_[c] = static_cast<int>(i);
  }
  if (vocab.empty()) return Status::Error("vocabulary is empty");
  return t;
}

namespace {
std::string Printable(unsigned char c) {
  if (c >= 32 && c < 127) return std::string("'") + static_cast<char>(c) + "'";
  char buf[16];
  std::snprintf(buf, sizeof(buf), "byte 0x%02x", c);
  return buf;
}
}  // namespace

StatusOr<std::vector<int32_t>> CharTokenizer::Encode(const std::string& text) const {
  std::vector<int32_t> ids(text.size());
  for (size_t i = 0; i < text.size(); ++i) {
    unsigned char c = text[i];
    if (stoi_[c] < 0) {
      return Status::Error("character " + Printable(c) + " at position " + std::to_string(i) +
                           " is not in the model's vocabulary");
    }
    ids[i] = stoi_[c];
  }
  return ids;
}

std::string CharTokenizer::Decode(const std::vector<int32_t>& ids) const {
  std::string s;
  s.reserve(ids.size());
  for (int32_t id : ids) s.push_back(vocab_[id]);
  return s;
}

StatusOr<CharDataset> CharDataset::Create(std::vector<int32_t> tokens, int block_size) {
  CharDataset d;
  const int64_t n = static_cast<int64_t>(tokens.size());
  d.train_end_ = n * 90 / 100;
  d.val_end_ = n * 95 / 100;
  d.block_size_ = block_size;
  const int64_t needed = static_cast<int64_t>(block_size) + 2;
  if (d.train_end_ < needed) {
    return Status::Error("the data has " + std::to_string(n) + " characters; its 90% train split (" +
                         std::to_string(d.train_end_) + ") must hold at least block_size+2 = " +
                         std::to_string(needed));
  }
  d.tokens_ = std::move(tokens);
  return d;
}

const int32_t* CharDataset::split_begin(Split s) const {
  switch (s) {
    case Split::kTrain: return tokens_.data();
    case Split::kVal: return tokens_.data() + train_end_;
    case Split::kTest: return tokens_.data() + val_end_;
  }
  return nullptr;
}

int64_t CharDataset::split_size(Split s) const {
  switch (s) {
    case Split::kTrain: return train_end_;
    case Split::kVal: return val_end_ - train_end_;
    case Split::kTest: return static_cast<int64_t>(tokens_.size()) - val_end_;
  }
  return 0;
}

int64_t CharDataset::epoch_samples() const {
  return (train_end_ + block_size_) / (block_size_ + 1);
}

void CharDataset::TrainSample(uint64_t seed, uint64_t g, int32_t* x, int32_t* y) const {
  const uint64_t range = static_cast<uint64_t>(train_end_ - block_size_ - 1);
  const uint64_t start = Random64(seed, static_cast<uint32_t>(g), static_cast<uint32_t>(g >> 32),
                                  kDataStream, 0) % range;
  const int32_t* src = tokens_.data() + start;
  std::copy(src, src + block_size_, x);
  std::copy(src + 1, src + block_size_ + 1, y);
}

int CharDataset::eval_window_length(Split s) const {
  const int64_t n = split_size(s);
  if (n >= block_size_ + 1) return block_size_;
  return static_cast<int>(std::max<int64_t>(n - 1, 0));
}

int64_t CharDataset::num_eval_windows(Split s) const {
  const int T = eval_window_length(s);
  if (T <= 0) return 0;
  return split_size(s) / (T + 1);
}

void CharDataset::EvalWindow(Split s, int64_t i, int32_t* x, int32_t* y) const {
  const int T = eval_window_length(s);
  const int32_t* src = split_begin(s) + i * (T + 1);
  std::copy(src, src + T, x);
  std::copy(src + 1, src + T + 1, y);
}

}  // namespace mingpt
