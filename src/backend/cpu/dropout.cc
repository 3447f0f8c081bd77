// clang-format off
#include "backend/cpu/fast_math_pragma.h"  // first: see there
// clang-format on
#include "backend/cpu/dropout.h"

#include "backend/cpu/omp_util.h"
#include "core/rng.h"

namespace mingpt::cpu {
namespace {

constexpr int kLanes = 8;

// Philox4x32-10 (core/rng.h) on kLanes counters differing in c0 only,
// structure-of-arrays so each round is a vector loop over the lanes.
inline void PhiloxLanes(uint64_t key, uint32_t c0_first, uint32_t c1,
                        uint32_t c2, uint32_t c3, uint32_t out[4][kLanes]) {
  constexpr uint32_t kM0 = 0xD2511F53u, kM1 = 0xCD9E8D57u;
  constexpr uint32_t kW0 = 0x9E3779B9u, kW1 = 0xBB67AE85u;
  uint32_t x0[kLanes], x1[kLanes], x2[kLanes], x3[kLanes];
  for (int l = 0; l < kLanes; ++l) {
    x0[l] = c0_first + static_cast<uint32_t>(l);
    x1[l] = c1;
    x2[l] = c2;
    x3[l] = c3;
  }
  uint32_t k0 = static_cast<uint32_t>(key),
           k1 = static_cast<uint32_t>(key >> 32);
  for (int round = 0; round < 10; ++round) {
#pragma omp simd
    for (int l = 0; l < kLanes; ++l) {
      const uint64_t p0 = static_cast<uint64_t>(kM0) * x0[l];
      const uint64_t p1 = static_cast<uint64_t>(kM1) * x2[l];
      const uint32_t n0 = static_cast<uint32_t>(p1 >> 32) ^ x1[l] ^ k0;
      const uint32_t n2 = static_cast<uint32_t>(p0 >> 32) ^ x3[l] ^ k1;
      x1[l] = static_cast<uint32_t>(p1);
      x3[l] = static_cast<uint32_t>(p0);
      x0[l] = n0;
      x2[l] = n2;
    }
    k0 += kW0;
    k1 += kW1;
  }
  for (int l = 0; l < kLanes; ++l) {
    out[0][l] = x0[l];
    out[1][l] = x1[l];
    out[2][l] = x2[l];
    out[3][l] = x3[l];
  }
}

}  // namespace

template <typename Real>
void DropoutMultipliers(const DropoutSpec& spec, int64_t b, int64_t g0,
                        int64_t groups, Real* mult) {
  const Real scale = static_cast<Real>(spec.scale());
  const uint32_t sample = static_cast<uint32_t>(spec.sample_base + b);
  for (int64_t g = 0; g < groups; g += kLanes) {
    uint32_t r[4][kLanes];
    PhiloxLanes(spec.seed, static_cast<uint32_t>(g0 + g), sample, spec.site,
                spec.step, r);
    const int lanes = static_cast<int>(std::min<int64_t>(kLanes, groups - g));
    Real* out = mult + 4 * g;
    for (int l = 0; l < lanes; ++l) {
      for (int i = 0; i < 4; ++i) {  // UniformFromBits(bits) >= p
        out[4 * l + i] = UniformFromBits(r[i][l]) >= spec.p ? scale : Real(0);
      }
    }
  }
}

template <typename Real>
void DropoutForward(Real* y, const Real* x, int B, int64_t row_size,
                    const DropoutSpec& spec) {
  const int64_t n = static_cast<int64_t>(B) * row_size;
  if (!spec.enabled()) {
    if (y != x) {
#pragma omp parallel for simd schedule(static) if (Parallel(n))
      for (int64_t i = 0; i < n; ++i) y[i] = x[i];
    }
    return;
  }
  // Work items: (row, chunk of kChunk elements); chunks start on a group.
  constexpr int64_t kChunk = 512;
  const int64_t chunks = (row_size + kChunk - 1) / kChunk;
#pragma omp parallel for collapse(2) schedule(static) if (Parallel(n))
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t c = 0; c < chunks; ++c) {
      alignas(64) Real mult[kChunk];
      const int64_t e0 = c * kChunk;
      const int64_t len = std::min(kChunk, row_size - e0);
      DropoutMultipliers(spec, b, e0 / 4, (len + 3) / 4, mult);
      const Real* xr = x + b * row_size + e0;
      Real* yr = y + b * row_size + e0;
#pragma omp simd
      for (int64_t i = 0; i < len; ++i) yr[i] = xr[i] * mult[i];
    }
  }
}

template void DropoutMultipliers<float>(const DropoutSpec&, int64_t, int64_t,
                                        int64_t, float*);
template void DropoutMultipliers<double>(const DropoutSpec&, int64_t, int64_t,
                                         int64_t, double*);
template void DropoutForward<float>(float*, const float*, int, int64_t,
                                    const DropoutSpec&);
template void DropoutForward<double>(double*, const double*, int, int64_t,
                                     const DropoutSpec&);

}  // namespace mingpt::cpu
