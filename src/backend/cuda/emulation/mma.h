// The warp-level matrix multiply-accumulate instruction
//   mma.sync.aligned.m16n8k16.row.col.f32.{bf16,f16}.{bf16,f16}.f32  d, a, b, c
// for the CPU emulator (emulator.h), as backend/cuda/mma.cuh issues it.
//
// Unlike WMMA's, this instruction's fragment layouts are documented, in the
// PTX ISA, section "Matrix Fragments for mma.m16n8k16 with floating point
// type" (section 9.7.14.5.8 in recent versions), and implemented here exactly, so
// that kernels relying on them compute what they compute on a GPU. With
//   groupID = %laneid >> 2,  threadID_in_group = %laneid % 4:
//   A (16x16, row): four .b32 registers of two elements each, a0..a7 (a0 in
//     the low half of the first register, a1 in its high half, ...):
//       row = groupID      for a_i with 0 <= i < 2 or 4 <= i < 6
//             groupID + 8  otherwise
//       col = threadID_in_group * 2 + (i & 1)      for a_i with i < 4
//             threadID_in_group * 2 + (i & 1) + 8  for a_i with i >= 4
//   B (16x8, col): two .b32 registers, b0..b3:
//       row = threadID_in_group * 2 + (i & 1)      for b_i with i < 2
//             threadID_in_group * 2 + (i & 1) + 8  for b_i with i >= 2
//       col = groupID
//   C, D (16x8, f32): four .f32 registers, c0..c3:
//       row = groupID      for c_i with i < 2
//             groupID + 8  for c_i with i >= 2
//       col = threadID_in_group * 2 + (i & 1)
// As with wmma.h: the instruction is warp-collective (.sync.aligned: all 32
// lanes at the same call of the source, the same number of warp operations
// made; anything else is a fatal error naming the kernel, block and thread),
// and each element of D is the 16 products (exact for 16-bit operands) and
// C summed in double, rounded once to float.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <source_location>
#include <type_traits>

#include "backend/cuda/emulation/emulator.h"

namespace mingpt::cuda::emu {
namespace mma_detail {

// The documented position of element i of a lane's fragments.
struct RowCol {
  int row, col;
};
inline RowCol AElement(int lane, int i) {
  const int group = lane >> 2, tig = lane % 4;
  const bool upper = !(i < 2 || (i >= 4 && i < 6));
  return {group + (upper ? 8 : 0), tig * 2 + (i & 1) + (i >= 4 ? 8 : 0)};
}
inline RowCol BElement(int lane, int i) {
  const int group = lane >> 2, tig = lane % 4;
  return {tig * 2 + (i & 1) + (i >= 2 ? 8 : 0), group};
}
inline RowCol CElement(int lane, int i) {
  const int group = lane >> 2, tig = lane % 4;
  return {group + (i >= 2 ? 8 : 0), tig * 2 + (i & 1)};
}

// Element i (0 or 1) of a .b32 register holding two 16-bit values.
template <typename Op>
float Element(uint32_t reg, int i) {
  const auto bits = static_cast<unsigned short>(i == 0 ? reg & 0xFFFFu : reg >> 16);
  if constexpr (std::is_same_v<Op, __nv_bfloat16>) {
    __nv_bfloat16_raw raw;
    raw.x = bits;
    return __bfloat162float(__nv_bfloat16(raw));
  } else {
    static_assert(std::is_same_v<Op, __half>, "bf16 or f16 operands");
    __half_raw raw;
    raw.x = bits;
    return __half2float(__half(raw));
  }
}

struct Args {
  float* d;
  const uint32_t* a;
  const uint32_t* b;
  const float* c;
};

// Run by the last lane to arrive, the others waiting: gathers A, B and C
// from every lane's registers, then writes every lane's D (d may be c).
template <typename Op>
void MmaOp(const uint64_t* values, void*) {
  float a[16][16], b[16][8], c[16][8];
  for (int lane = 0; lane < 32; ++lane) {
    const Args& x = *reinterpret_cast<const Args*>(values[lane]);
    for (int i = 0; i < 8; ++i) {
      const RowCol p = AElement(lane, i);
      a[p.row][p.col] = Element<Op>(x.a[i / 2], i % 2);
    }
    for (int i = 0; i < 4; ++i) {
      const RowCol p = BElement(lane, i);
      b[p.row][p.col] = Element<Op>(x.b[i / 2], i % 2);
    }
    for (int i = 0; i < 4; ++i) {
      const RowCol p = CElement(lane, i);
      c[p.row][p.col] = x.c[i];
    }
  }
  for (int lane = 0; lane < 32; ++lane) {
    const Args& x = *reinterpret_cast<const Args*>(values[lane]);
    for (int i = 0; i < 4; ++i) {
      const RowCol p = CElement(lane, i);
      double sum = c[p.row][p.col];
      for (int k = 0; k < 16; ++k) sum += double(a[p.row][k]) * b[k][p.col];
      x.d[i] = static_cast<float>(sum);
    }
  }
}

}  // namespace mma_detail

// d = a b + c for the warp (Op: __nv_bfloat16 or __half operands).
template <typename Op>
void MmaM16N8K16(float d[4], const uint32_t a[4], const uint32_t b[2], const float c[4],
                 const std::source_location& where) {
  mma_detail::Args args{d, a, b, c};
  WarpCollective(reinterpret_cast<uint64_t>(&args), &mma_detail::MmaOp<Op>, nullptr, where);
}

}  // namespace mingpt::cuda::emu
