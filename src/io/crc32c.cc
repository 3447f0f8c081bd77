#include "io/crc32c.h"

#include <array>
#include <cstring>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define MINGPT_CRC32C_X86 1
#include <nmmintrin.h>
#endif

namespace mingpt {

namespace {

// The polynomial 0x1EDC6F41 bit-reversed: the reflected CRC shifts right.
constexpr uint32_t kPoly = 0x82F63B78u;

// kTables[0][b] is the CRC register after one byte b from a zero register;
// kTables[k][b], that of byte b followed by k zero bytes. Slicing by 8 looks
// up each of eight bytes in its own table and xors the results.
constexpr std::array<std::array<uint32_t, 256>, 8> MakeTables() {
  std::array<std::array<uint32_t, 256>, 8> t{};
  for (uint32_t b = 0; b < 256; ++b) {
    uint32_t c = b;
    for (int i = 0; i < 8; ++i) c = (c >> 1) ^ ((c & 1u) ? kPoly : 0u);
    t[0][b] = c;
  }
  for (size_t k = 1; k < 8; ++k) {
    for (uint32_t b = 0; b < 256; ++b) t[k][b] = (t[k - 1][b] >> 8) ^ t[0][t[k - 1][b] & 0xffu];
  }
  return t;
}
constexpr std::array<std::array<uint32_t, 256>, 8> kTables = MakeTables();

uint64_t Load64(const unsigned char* p) {
  uint64_t v;
  std::memcpy(&v, p, 8);  // x86 and the common ARM ABIs are little-endian
  return v;
}

// The raw register update (no initial or final inversion), byte by byte.
uint32_t PortableBytes(uint32_t s, const unsigned char* p, size_t n) {
  for (size_t i = 0; i < n; ++i) s = (s >> 8) ^ kTables[0][(s ^ p[i]) & 0xffu];
  return s;
}

#ifdef MINGPT_CRC32C_X86

// The hardware path runs three streams over the three thirds of a block at
// once (the crc32 instruction's latency is three times its issue interval)
// and then joins them. The CRC register is linear over GF(2): the register
// after bytes A then B equals Shift(register after A, |B|) xor (register
// after B from zero), where Shift(x, n) is the register after n zero bytes
// from x. Shift by a fixed n is a 32x32 bit matrix, kept as four tables of
// 256 entries (one per byte of x).
constexpr size_t kLongLane = 8192;  // bytes per stream in a long block
constexpr size_t kShortLane = 256;  // the rest, in short blocks

struct ShiftTable {
  uint32_t t[4][256];
  uint32_t Apply(uint32_t x) const {
    return t[0][x & 0xffu] ^ t[1][(x >> 8) & 0xffu] ^ t[2][(x >> 16) & 0xffu] ^ t[3][x >> 24];
  }
};

ShiftTable MakeShiftTable(size_t zero_bytes) {
  // The images of the 32 basis vectors, then every byte value of every
  // byte position as the xor of the images of its bits.
  uint32_t basis[32];
  const std::array<unsigned char, 64> zeros{};
  for (int j = 0; j < 32; ++j) {
    uint32_t s = uint32_t{1} << j;
    for (size_t left = zero_bytes; left > 0;) {
      const size_t chunk = left < zeros.size() ? left : zeros.size();
      s = PortableBytes(s, zeros.data(), chunk);
      left -= chunk;
    }
    basis[j] = s;
  }
  ShiftTable table{};
  for (int k = 0; k < 4; ++k) {
    for (uint32_t b = 0; b < 256; ++b) {
      uint32_t v = 0;
      for (int i = 0; i < 8; ++i) {
        if (b & (1u << i)) v ^= basis[8 * k + i];
      }
      table.t[k][b] = v;
    }
  }
  return table;
}

struct ShiftTables {
  ShiftTable long_lane = MakeShiftTable(kLongLane);
  ShiftTable short_lane = MakeShiftTable(kShortLane);
};

const ShiftTables& Shifts() {
  static const ShiftTables tables;
  return tables;
}

// One block of 3 * lane bytes at p, continuing from register s.
__attribute__((target("sse4.2"))) inline uint64_t ThreeLanes(const unsigned char* p, size_t lane,
                                                             uint64_t s, const ShiftTable& shift) {
  uint64_t a = s, b = 0, c = 0;
  const unsigned char* pb = p + lane;
  const unsigned char* pc = p + 2 * lane;
  for (size_t i = 0; i < lane; i += 8) {
    a = _mm_crc32_u64(a, Load64(p + i));
    b = _mm_crc32_u64(b, Load64(pb + i));
    c = _mm_crc32_u64(c, Load64(pc + i));
  }
  a = shift.Apply(static_cast<uint32_t>(a)) ^ b;
  return shift.Apply(static_cast<uint32_t>(a)) ^ c;
}

#endif  // MINGPT_CRC32C_X86

}  // namespace

namespace crc32c_internal {

uint32_t Portable(const void* data, size_t n, uint32_t crc) {
  const unsigned char* p = static_cast<const unsigned char*>(data);
  uint32_t s = ~crc;
  for (; n >= 8; p += 8, n -= 8) {
    const uint64_t w = Load64(p) ^ s;
    s = kTables[7][w & 0xffu] ^ kTables[6][(w >> 8) & 0xffu] ^ kTables[5][(w >> 16) & 0xffu] ^
        kTables[4][(w >> 24) & 0xffu] ^ kTables[3][(w >> 32) & 0xffu] ^
        kTables[2][(w >> 40) & 0xffu] ^ kTables[1][(w >> 48) & 0xffu] ^ kTables[0][w >> 56];
  }
  return ~PortableBytes(s, p, n);
}

#ifdef MINGPT_CRC32C_X86

bool HaveSse42() {
  __builtin_cpu_init();  // harmless if done; needed if called before main
  return __builtin_cpu_supports("sse4.2");
}

__attribute__((target("sse4.2"))) uint32_t Sse42(const void* data, size_t n, uint32_t crc) {
  const unsigned char* p = static_cast<const unsigned char*>(data);
  uint64_t s = ~crc;
  // Up to the next 8-byte boundary byte by byte, so that the loads below
  // are aligned.
  for (; n > 0 && (reinterpret_cast<uintptr_t>(p) & 7) != 0; ++p, --n) {
    s = _mm_crc32_u8(static_cast<uint32_t>(s), *p);
  }
  if (n >= 3 * kShortLane) {
    const ShiftTables& shifts = Shifts();
    for (; n >= 3 * kLongLane; p += 3 * kLongLane, n -= 3 * kLongLane) {
      s = ThreeLanes(p, kLongLane, s, shifts.long_lane);
    }
    for (; n >= 3 * kShortLane; p += 3 * kShortLane, n -= 3 * kShortLane) {
      s = ThreeLanes(p, kShortLane, s, shifts.short_lane);
    }
  }
  for (; n >= 8; p += 8, n -= 8) s = _mm_crc32_u64(s, Load64(p));
  for (; n > 0; ++p, --n) s = _mm_crc32_u8(static_cast<uint32_t>(s), *p);
  return ~static_cast<uint32_t>(s);
}

#else  // no x86-64: the portable loop stands in

bool HaveSse42() { return false; }
uint32_t Sse42(const void* data, size_t n, uint32_t crc) { return Portable(data, n, crc); }

#endif

}  // namespace crc32c_internal

uint32_t Crc32c(const void* data, size_t n, uint32_t crc) {
  static const bool hardware = crc32c_internal::HaveSse42();
  return hardware ? crc32c_internal::Sse42(data, n, crc) : crc32c_internal::Portable(data, n, crc);
}

// The register update is affine in the register: after bytes B from
// register s it is Z(s) ^ (the register after B from 0), where Z is the
// linear map of |B| zero bytes. With the initial and final inversions this
// gives Crc32c(A then B) = Z(Crc32c(A)) ^ Crc32c(B). Z for n bytes is the
// one-byte map raised to the n-th power by squaring: a map is the images of
// the 32 register bits.
uint32_t Crc32cCombine(uint32_t crc_a, uint32_t crc_b, uint64_t len_b) {
  using Map = std::array<uint32_t, 32>;
  auto apply = [](const Map& m, uint32_t x) {
    uint32_t y = 0;
    for (int j = 0; x != 0; ++j, x >>= 1) {
      if (x & 1) y ^= m[j];
    }
    return y;
  };
  Map power;  // zero bytes: 1, 2, 4, ...
  const unsigned char zero = 0;
  for (int j = 0; j < 32; ++j) power[j] = PortableBytes(uint32_t{1} << j, &zero, 1);
  uint32_t s = crc_a;
  for (uint64_t n = len_b; n != 0; n >>= 1) {
    if (n & 1) s = apply(power, s);
    if (n > 1) {
      Map squared;
      for (int j = 0; j < 32; ++j) squared[j] = apply(power, power[j]);
      power = squared;
    }
  }
  return s ^ crc_b;
}

}  // namespace mingpt
