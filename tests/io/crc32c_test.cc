// Tests of io/crc32c.h: the published CRC32C check values, chaining, and the
// SSE4.2 path against the portable one on random data of every length and
// alignment around the hardware path's block boundaries.
#include "io/crc32c.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <random>
#include <string>
#include <vector>

namespace mingpt {
namespace {

using crc32c_internal::HaveSse42;
using crc32c_internal::Portable;
using crc32c_internal::Sse42;

// Every implementation: Crc32c itself, and each one this machine can run.
std::vector<std::pair<std::string, uint32_t (*)(const void*, size_t, uint32_t)>> Impls() {
  std::vector<std::pair<std::string, uint32_t (*)(const void*, size_t, uint32_t)>> impls = {
      {"Crc32c", [](const void* d, size_t n, uint32_t c) { return Crc32c(d, n, c); }},
      {"Portable", Portable}};
  if (HaveSse42()) impls.push_back({"Sse42", Sse42});
  return impls;
}

std::vector<unsigned char> RandomBytes(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<unsigned char> v(n);
  for (unsigned char& b : v) b = static_cast<unsigned char>(rng());
  return v;
}

// The check value of the CRC catalogue and the examples of RFC 3720 (iSCSI),
// appendix B.4.
TEST(Crc32cTest, PublishedCheckValues) {
  std::vector<unsigned char> zeros(32, 0x00), ones(32, 0xff), up(32), down(32);
  for (int i = 0; i < 32; ++i) {
    up[i] = static_cast<unsigned char>(i);
    down[i] = static_cast<unsigned char>(31 - i);
  }
  for (const auto& [name, crc] : Impls()) {
    SCOPED_TRACE(name);
    EXPECT_EQ(crc("123456789", 9, 0), 0xE3069283u);
    EXPECT_EQ(crc(zeros.data(), 32, 0), 0x8A9136AAu);
    EXPECT_EQ(crc(ones.data(), 32, 0), 0x62A8AB43u);
    EXPECT_EQ(crc(up.data(), 32, 0), 0x46DD794Eu);
    EXPECT_EQ(crc(down.data(), 32, 0), 0x113FDB5Cu);
    EXPECT_EQ(crc(nullptr, 0, 0), 0u);                    // no bytes
    EXPECT_EQ(crc(nullptr, 0, 0x12345678u), 0x12345678u);  // continues unchanged
  }
}

TEST(Crc32cTest, DispatchAnswersAsTheHardwarePath) {
  if (!HaveSse42()) GTEST_SKIP() << "this CPU has no SSE4.2: only the portable path runs";
  // Which path ran shows only in the speed; at least the values agree.
  const std::vector<unsigned char> data = RandomBytes(100000, 1);
  EXPECT_EQ(Crc32c(data.data(), data.size()), Sse42(data.data(), data.size(), 0));
}

// Crc32c(b, Crc32c(a)) == Crc32c(ab), split anywhere, also inside the
// hardware path's three-stream blocks (3 x 8192 and 3 x 256 bytes).
TEST(Crc32cTest, ChainsOverPieces) {
  const std::vector<unsigned char> data = RandomBytes(3 * 8192 * 2 + 3 * 256 * 3 + 13, 2);
  for (const auto& [name, crc] : Impls()) {
    SCOPED_TRACE(name);
    const uint32_t whole = crc(data.data(), data.size(), 0);
    for (size_t split = 0; split <= data.size(); split += (split < 1000 ? 1 : 997)) {
      const uint32_t a = crc(data.data(), split, 0);
      ASSERT_EQ(crc(data.data() + split, data.size() - split, a), whole) << "split at " << split;
    }
    // Many small pieces.
    uint32_t c = 0;
    for (size_t at = 0; at < data.size(); at += 7) {
      c = crc(data.data() + at, std::min<size_t>(7, data.size() - at), c);
    }
    EXPECT_EQ(c, whole);
  }
}

// The checksums of pieces, computed apart, combine into the whole's: split
// anywhere (empty pieces included), and over many pieces in order, as the
// ranks' pieces of a tensor combine.
TEST(Crc32cTest, CombinesPiecesComputedApart) {
  const std::vector<unsigned char> data = RandomBytes(3 * 8192 + 3 * 256 + 1001, 3);
  const uint32_t whole = Crc32c(data.data(), data.size());
  for (size_t split = 0; split <= data.size(); split += (split < 600 ? 1 : 331)) {
    const uint32_t a = Crc32c(data.data(), split);
    const uint32_t b = Crc32c(data.data() + split, data.size() - split);
    ASSERT_EQ(Crc32cCombine(a, b, data.size() - split), whole) << "split at " << split;
  }
  uint32_t c = 0;
  for (size_t at = 0, piece = 1; at < data.size(); at += piece, piece = piece * 3 % 4099 + 1) {
    const size_t n = std::min(piece, data.size() - at);
    c = Crc32cCombine(c, Crc32c(data.data() + at, n), n);
  }
  EXPECT_EQ(c, whole);
  // A piece's length is part of the combination: one byte more of zeros
  // gives another checksum.
  const uint32_t a = Crc32c(data.data(), 100), b = Crc32c(data.data() + 100, 50);
  EXPECT_NE(Crc32cCombine(a, b, 50), Crc32cCombine(a, b, 51));
}

// The two paths agree on every length up to a few blocks and at every
// alignment (the hardware path first steps to an 8-byte boundary).
TEST(Crc32cTest, HardwareAgreesWithPortable) {
  if (!HaveSse42()) GTEST_SKIP() << "this CPU has no SSE4.2: only the portable path runs";
  const std::vector<unsigned char> data = RandomBytes(4 * 3 * 8192 + 64, 3);
  std::vector<size_t> lengths;
  for (size_t n = 0; n <= 2 * 3 * 256 + 40; ++n) lengths.push_back(n);
  for (size_t base : {size_t{3 * 8192}, size_t{2 * 3 * 8192}, size_t{3 * 8192 + 3 * 256},
                      size_t{3 * 3 * 8192 + 5 * 3 * 256}}) {
    for (size_t d = 0; d < 24; ++d) {
      lengths.push_back(base + d);
      lengths.push_back(base - d - 1);
    }
  }
  for (size_t n : lengths) {
    for (size_t align = 0; align < 8; ++align) {
      const uint32_t init = static_cast<uint32_t>(n * 2654435761u);
      ASSERT_EQ(Sse42(data.data() + align, n, init), Portable(data.data() + align, n, init))
          << "length " << n << ", offset " << align;
    }
  }
}

// Every single flipped bit changes the checksum (CRC32C detects them all).
TEST(Crc32cTest, EverySingleBitFlipIsSeen) {
  std::vector<unsigned char> data = RandomBytes(1024, 4);
  for (const auto& [name, crc] : Impls()) {
    SCOPED_TRACE(name);
    const uint32_t good = crc(data.data(), data.size(), 0);
    for (size_t bit = 0; bit < data.size() * 8; ++bit) {
      data[bit / 8] ^= static_cast<unsigned char>(1u << (bit % 8));
      const uint32_t flipped = crc(data.data(), data.size(), 0);
      data[bit / 8] ^= static_cast<unsigned char>(1u << (bit % 8));
      ASSERT_NE(flipped, good) << "bit " << bit;
    }
  }
}

}  // namespace
}  // namespace mingpt
