// Warp-level tensor-core products through the PTX instruction
//   mma.sync.aligned.m16n8k16.row.col.f32.{bf16,f16}.{bf16,f16}.f32
// whose fragment layouts the PTX ISA documents ("Matrix Fragments for
// mma.m16n8k16 with floating point type"; emulation/mma.h repeats the
// formulas). With g = lane / 4 and t = lane % 4, a lane holds
//   A (16x16, row-major):  (g, 2t..2t+1), (g+8, 2t..2t+1), (g, 2t+8..2t+9),
//                          (g+8, 2t+8..2t+9)  in x[0..3], two elements each
//                          (the lower column in the low 16 bits);
//   B (16x8, k x n):       (2t..2t+1, g), (2t+8..2t+9, g) in x[0..1];
//   C (16x8, fp32):        (g, 2t), (g, 2t+1), (g+8, 2t), (g+8, 2t+1) in x[0..3].
// So a C fragment's two pairs (two adjacent n-tiles of 8) are, rounded and
// packed, an A fragment (16 columns) of the next product: FromAccumulators.
// Under nvcc (__CUDA_ARCH__) the product is inline PTX; compiled for the CPU
// emulator (MINGPT_CUDA_EMULATION) it is emulation/mma.h's, warp-collective
// and checked as the emulator's shuffles are.
#pragma once

#include <cstdint>
#include <cstring>

#include "backend/cuda/device.cuh"

#if defined(MINGPT_CUDA_EMULATION)
#include <source_location>

#include "backend/cuda/emulation/mma.h"
#endif

namespace mingpt::cuda::mma {

struct FragA {
  uint32_t x[4];
};
struct FragB {
  uint32_t x[2];
};
struct FragC {
  float x[4];
};

__device__ inline FragC Zero() { return FragC{{0.0f, 0.0f, 0.0f, 0.0f}}; }

// The 16-bit pattern of x rounded to nearest even in the operand type.
template <typename Op>
__device__ inline uint32_t Bits(float x);
template <>
__device__ inline uint32_t Bits<__nv_bfloat16>(float x) {
  const __nv_bfloat16_raw raw = __float2bfloat16_rn(x);
  return raw.x;
}
template <>
__device__ inline uint32_t Bits<__half>(float x) {
  const __half_raw raw = __float2half_rn(x);
  return raw.x;
}

// One .b32 register of two operands: lo (the lower index) in the low half.
template <typename Op>
__device__ inline uint32_t Pack(float lo, float hi) {
  return Bits<Op>(lo) | (Bits<Op>(hi) << 16);
}

// Two consecutive operands from memory (4-byte aligned, which the emulator
// checks), as one register.
template <typename Op>
__device__ inline uint32_t LoadPair(const Op* p) {
  return LoadVector<uint32_t>(p);
}

// The lane's A fragment of the 16x16 tile at `tile` (row-major, ld
// elements, ld and the tile's column even).
template <typename Op>
__device__ inline FragA LoadA(const Op* tile, int ld, int lane) {
  const int g = lane >> 2, t = lane & 3;
  const Op* p = tile + g * ld + 2 * t;
  return FragA{{LoadPair(p), LoadPair(p + 8 * ld), LoadPair(p + 8), LoadPair(p + 8 * ld + 8)}};
}

// The lane's B fragment of the 16x8 (k x n) tile stored n-major: element
// (k, n) at tile[n * ld + k] (the rows of K for q k^T, of v transposed for
// P v, ...).
template <typename Op>
__device__ inline FragB LoadB(const Op* tile, int ld, int lane) {
  const int g = lane >> 2, t = lane & 3;
  const Op* p = tile + g * ld + 2 * t;
  return FragB{{LoadPair(p), LoadPair(p + 8)}};
}

// The A fragment (16 x 16) whose columns 0..7 are accumulator tile lo's and
// 8..15 tile hi's, rounded to the operand type: the register reuse of a
// product's output as the next product's left operand.
template <typename Op>
__device__ inline FragA FromAccumulators(const FragC& lo, const FragC& hi) {
  return FragA{{Pack<Op>(lo.x[0], lo.x[1]), Pack<Op>(lo.x[2], lo.x[3]), Pack<Op>(hi.x[0], hi.x[1]),
                Pack<Op>(hi.x[2], hi.x[3])}};
}

// acc = a b + acc for the warp (all 32 lanes).
#if defined(MINGPT_CUDA_EMULATION)
template <typename Op>
inline void MmaAccumulate(FragC& acc, const FragA& a, const FragB& b,
                          std::source_location where = std::source_location::current()) {
  ::mingpt::cuda::emu::MmaM16N8K16<Op>(acc.x, a.x, b.x, acc.x, where);
}
#else
template <typename Op>
__device__ inline void MmaAccumulate(FragC& acc, const FragA& a, const FragB& b);
template <>
__device__ inline void MmaAccumulate<__nv_bfloat16>(FragC& acc, const FragA& a, const FragB& b) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
      "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(acc.x[0]), "+f"(acc.x[1]), "+f"(acc.x[2]), "+f"(acc.x[3])
      : "r"(a.x[0]), "r"(a.x[1]), "r"(a.x[2]), "r"(a.x[3]), "r"(b.x[0]), "r"(b.x[1]));
}
template <>
__device__ inline void MmaAccumulate<__half>(FragC& acc, const FragA& a, const FragB& b) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
      "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(acc.x[0]), "+f"(acc.x[1]), "+f"(acc.x[2]), "+f"(acc.x[3])
      : "r"(a.x[0]), "r"(a.x[1]), "r"(a.x[2]), "r"(a.x[3]), "r"(b.x[0]), "r"(b.x[1]));
}
#endif

}  // namespace mingpt::cuda::mma
