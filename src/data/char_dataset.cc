#include "data/char_dataset.h"

#include <algorithm>
#include <cstdio>

#include "core/rng.h"

namespace mingpt {

namespace {

// The code point at text[*pos] (advancing *pos past it), or -1 when the
// bytes there are not UTF-8: strictly, as Python decodes (no overlong forms,
// surrogates or code points past U+10FFFF).
int32_t NextCodePoint(std::string_view text, size_t* pos) {
  const auto byte = [&](size_t i) { return static_cast<unsigned char>(text[i]); };
  const size_t i = *pos;
  const unsigned char b0 = byte(i);
  if (b0 < 0x80) {
    *pos = i + 1;
    return b0;
  }
  int len;
  int32_t cp;
  int32_t min;
  if ((b0 & 0xE0) == 0xC0) {
    len = 2, cp = b0 & 0x1F, min = 0x80;
  } else if ((b0 & 0xF0) == 0xE0) {
    len = 3, cp = b0 & 0x0F, min = 0x800;
  } else if ((b0 & 0xF8) == 0xF0) {
    len = 4, cp = b0 & 0x07, min = 0x10000;
  } else {
    return -1;
  }
  if (i + len > text.size()) return -1;
  for (int k = 1; k < len; ++k) {
    const unsigned char b = byte(i + k);
    if ((b & 0xC0) != 0x80) return -1;
    cp = (cp << 6) | (b & 0x3F);
  }
  if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return -1;
  *pos = i + len;
  return cp;
}

std::string Utf8(char32_t c) {
  std::string s;
  if (c < 0x80) {
    s.push_back(static_cast<char>(c));
  } else if (c < 0x800) {
    s.push_back(static_cast<char>(0xC0 | (c >> 6)));
    s.push_back(static_cast<char>(0x80 | (c & 0x3F)));
  } else if (c < 0x10000) {
    s.push_back(static_cast<char>(0xE0 | (c >> 12)));
    s.push_back(static_cast<char>(0x80 | ((c >> 6) & 0x3F)));
    s.push_back(static_cast<char>(0x80 | (c & 0x3F)));
  } else {
    s.push_back(static_cast<char>(0xF0 | (c >> 18)));
    s.push_back(static_cast<char>(0x80 | ((c >> 12) & 0x3F)));
    s.push_back(static_cast<char>(0x80 | ((c >> 6) & 0x3F)));
    s.push_back(static_cast<char>(0x80 | (c & 0x3F)));
  }
  return s;
}

Status NotUtf8(std::string_view text, size_t pos) {
  char buf[96];
  std::snprintf(buf, sizeof(buf), "not UTF-8 text (byte 0x%02x at offset %zu)",
                static_cast<unsigned char>(text[pos]), pos);
  return Status::Error(buf);
}

// The character as the error names it: itself when printable, else U+XXXX.
std::string Printable(char32_t c) {
  if (c >= 32 && c != 127 && !(c >= 0x80 && c < 0xA0)) {
    std::string s = "'";
    s += Utf8(c);
    s += '\'';
    return s;
  }
  char buf[16];
  std::snprintf(buf, sizeof(buf), "U+%04X", static_cast<unsigned>(c));
  return buf;
}

}  // namespace

StatusOr<CharTokenizer> CharTokenizer::FromText(std::string_view text) {
  if (text.empty()) return Status::Error("there is no text (the file is empty)");
  bool ascii[128] = {};
  std::vector<char32_t> others;
  for (size_t pos = 0; pos < text.size();) {
    const size_t at = pos;
    const int32_t c = NextCodePoint(text, &pos);
    if (c < 0) return NotUtf8(text, at);
    if (c < 128) {
      ascii[c] = true;
    } else {
      others.push_back(static_cast<char32_t>(c));
    }
  }
  std::sort(others.begin(), others.end());
  others.erase(std::unique(others.begin(), others.end()), others.end());
  std::string vocab;
  for (int c = 0; c < 128; ++c) {
    if (ascii[c]) vocab.push_back(static_cast<char>(c));
  }
  for (char32_t c : others) vocab += Utf8(c);
  return FromVocab(vocab);
}

StatusOr<CharTokenizer> CharTokenizer::FromVocab(const std::string& vocab) {
  if (vocab.empty()) return Status::Error("vocabulary is empty");
  CharTokenizer t;
  t.vocab_ = vocab;
  std::fill(std::begin(t.ascii_), std::end(t.ascii_), -1);
  for (size_t pos = 0; pos < vocab.size();) {
    const size_t at = pos;
    const int32_t c = NextCodePoint(vocab, &pos);
    if (c < 0) return NotUtf8(vocab, at).WithContext("vocabulary");
    const int id = static_cast<int>(t.pieces_.size());
    if (t.Id(static_cast<char32_t>(c)) >= 0) {
      return Status::Error("vocabulary repeats the character " + Printable(c));
    }
    if (c < 128) {
      t.ascii_[c] = id;
    } else {
      t.others_.emplace(static_cast<char32_t>(c), id);
    }
    t.pieces_.push_back(vocab.substr(at, pos - at));
  }
  return t;
}

int CharTokenizer::Id(char32_t c) const {
  if (c < 128) return ascii_[c];
  const auto it = others_.find(c);
  return it == others_.end() ? -1 : it->second;
}

StatusOr<std::vector<int32_t>> CharTokenizer::Encode(std::string_view text) const {
  std::vector<int32_t> ids;
  ids.reserve(text.size());
  for (size_t pos = 0; pos < text.size();) {
    const size_t at = pos;
    const int32_t c = NextCodePoint(text, &pos);
    if (c < 0) return NotUtf8(text, at);
    const int id = Id(static_cast<char32_t>(c));
    if (id < 0) {
      return Status::Error("character " + Printable(c) + " at position " +
                           std::to_string(ids.size()) + " is not in the model's vocabulary");
    }
    ids.push_back(id);
  }
  return ids;
}

std::string CharTokenizer::Decode(const std::vector<int32_t>& ids) const {
  std::string s;
  s.reserve(ids.size());
  for (int32_t id : ids) s += pieces_[id];
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
