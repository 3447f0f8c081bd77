// Counter-based randomness (Philox4x32-10, Salmon et al. 2011). A random
// value is a pure function of a 64-bit key and a 128-bit counter, so any
// sample, dropout mask or sampled token can be recomputed anywhere (in
// backward, on another rank, on another backend) from its coordinates alone.
//
// Keys in mingpt:
//   data sampling:  key = seed, counter = (global_sample, 0, kDataStream, 0)
//   dropout mask:   key = seed, counter = (element/4, global_sample, site, step)
//   token sampling: key = seed, counter = (token_index, 0, kSampleStream, 0)
#pragma once

#include <array>
#include <cstdint>

// Functions that CUDA kernels call too (dropout masks must agree bit for bit
// between backends): __host__ __device__ under nvcc, nothing elsewhere.
#if defined(__CUDACC__)
#define MINGPT_HOST_DEVICE __host__ __device__
#else
#define MINGPT_HOST_DEVICE
#endif

namespace mingpt {

inline constexpr uint32_t kDataStream = 0xDA7A0000u;
inline constexpr uint32_t kSampleStream = 0x5A3B1E00u;

MINGPT_HOST_DEVICE inline std::array<uint32_t, 4> Philox4x32(uint64_t key, uint32_t c0, uint32_t c1,
                                                             uint32_t c2, uint32_t c3) {
  constexpr uint32_t kM0 = 0xD2511F53u, kM1 = 0xCD9E8D57u;
  constexpr uint32_t kW0 = 0x9E3779B9u, kW1 = 0xBB67AE85u;
  uint32_t k0 = static_cast<uint32_t>(key), k1 = static_cast<uint32_t>(key >> 32);
  for (int round = 0; round < 10; ++round) {
    uint64_t p0 = static_cast<uint64_t>(kM0) * c0;
    uint64_t p1 = static_cast<uint64_t>(kM1) * c2;
    uint32_t n0 = static_cast<uint32_t>(p1 >> 32) ^ c1 ^ k0;
    uint32_t n2 = static_cast<uint32_t>(p0 >> 32) ^ c3 ^ k1;
    c1 = static_cast<uint32_t>(p1);
    c3 = static_cast<uint32_t>(p0);
    c0 = n0;
    c2 = n2;
    k0 += kW0;
    k1 += kW1;
  }
  return {c0, c1, c2, c3};
}

// Uniform in [0, 1) with 24 bits of resolution (exact in float).
MINGPT_HOST_DEVICE inline float UniformFromBits(uint32_t bits) {
  return static_cast<float>(bits >> 8) * (1.0f / 16777216.0f);
}

// Uniform 64-bit value for the given coordinates.
inline uint64_t Random64(uint64_t key, uint32_t c0, uint32_t c1, uint32_t c2,
                         uint32_t c3) {
  auto r = Philox4x32(key, c0, c1, c2, c3);
  return (static_cast<uint64_t>(r[0]) << 32) | r[1];
}

}  // namespace mingpt
