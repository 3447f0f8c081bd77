// Rounding fp32 values to bf16 or fp16 and back, for matrix products under
// --precision bf16 / 16 on a CPU without bf16 or fp16 matrix products (AVX2
// only; or fp16 anywhere, which oneDNN 2.x lacks on CPUs): the operands are
// rounded and the product runs in fp32. A product of two bf16 (or fp16)
// values is exact in fp32, so this is bit for bit the arithmetic of a bf16
// GEMM that accumulates in fp32, which is what bf16 hardware does.
//
//   RoundToBf16: round to nearest even on the 16 high bits; inf and NaN kept;
//                values past bf16's largest finite become inf, as a cast does.
//   RoundToFp16: round to nearest even to fp16's 11 significant bits; values
//                from 65520 up become inf (fp16's largest finite is 65504),
//                below 2^-14 to multiples of 2^-24 (fp16 subnormals), so
//                tiny values flush to zero exactly where fp16 would: the
//                overflow and underflow that loss scaling exists for.
// Both are branch-free bit arithmetic so that the array loop vectorises.
#pragma once

#include <bit>
#include <cstdint>

#include "backend/backend.h"

namespace mingpt::cpu {

inline float RoundToBf16(float x) {
  const uint32_t b = std::bit_cast<uint32_t>(x);
  const uint32_t rounded = (b + 0x7FFFu + ((b >> 16) & 1u)) & 0xFFFF0000u;
  const bool nan = (b & 0x7FFFFFFFu) > 0x7F800000u;
  return std::bit_cast<float>(nan ? b : rounded);
}

inline float RoundToFp16(float x) {
  const uint32_t b = std::bit_cast<uint32_t>(x);
  const uint32_t sign = b & 0x80000000u, mag = b & 0x7FFFFFFFu;
  // Normal range: keep 10 mantissa bits, round to nearest even.
  uint32_t normal = (mag + 0xFFFu + ((mag >> 13) & 1u)) & 0xFFFFE000u;
  normal = normal > 0x477FE000u ? 0x7F800000u : normal;  // > 65504: inf
  // Subnormal range: adding 0.75 (ulp 2^-24) rounds to a multiple of 2^-24.
  const float small = (std::bit_cast<float>(mag) + 0.75f) - 0.75f;
  uint32_t r = mag < 0x38800000u ? std::bit_cast<uint32_t>(small) : normal;  // < 2^-14
  r = mag >= 0x7F800000u ? mag : r;  // inf and NaN unchanged
  return std::bit_cast<float>(sign | r);
}

// The 16 high bits of RoundToBf16(x): x as a bf16 value in storage, as the
// CPU's conversion instruction makes it: a NaN stays a (quiet) NaN, and
// subnormal inputs (|x| < 2^-126) become zeros of their sign (the bf16 units
// treat subnormals as zero anyway, so GEMM results do not change).
inline uint16_t ToBf16(float x) {
  const uint32_t b = std::bit_cast<uint32_t>(x);
  const bool nan = (b & 0x7FFFFFFFu) > 0x7F800000u;
  const bool subnormal = (b & 0x7F800000u) == 0;
  const uint32_t r = nan         ? (b | 0x00400000u)
                     : subnormal ? (b & 0x80000000u)
                                 : std::bit_cast<uint32_t>(RoundToBf16(x));
  return static_cast<uint16_t>(r >> 16);
}

// On the calling thread: dst[i] = ToBf16(src[i]) and dst[i] = src[i] rounded
// to `precision` (a copy for kFp32; dst may alias src), for fused kernels that
// convert what they have just computed.
void ToBf16Span(uint16_t* dst, const float* src, int64_t n);
void RoundSpan(float* dst, const float* src, int64_t n, MatmulPrecision precision);

// dst[i] = ToBf16(src[i]), in parallel; with AVX512-BF16 through its conversion
// instruction (the same rounding), 32 values at a time.
void ToBf16Array(uint16_t* dst, const float* src, int64_t n);

// dst[i] = src[i] rounded to `precision` (a copy for kFp32); dst may alias src.
void RoundArray(float* dst, const float* src, int64_t n, MatmulPrecision precision);

}  // namespace mingpt::cpu
