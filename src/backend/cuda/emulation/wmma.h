// nvcuda::wmma (CUDA's warp matrix functions, <mma.h>) for the CPU emulator
// (emulator.h): the 16x16x16 shape with __nv_bfloat16 or __half operands and
// float accumulators, the part of the API the attention kernels use.
//
// As the CUDA C++ Programming Guide describes them, and checked:
//   - load_matrix_sync, store_matrix_sync and mma_sync are warp-collective:
//     all 32 lanes must reach the same call (the same call of the source, the
//     same number of warp operations made), with the same pointer, ldm and
//     layout, as at a full-mask shuffle; anything else is a fatal error
//     naming the kernel, block and thread.
//   - "mptr must be a 256-bit aligned pointer" and "ldm ... must be a
//     multiple of 8 for __half element type or multiple of 4 for float
//     element type" (16 bytes either way; bf16 as __half): a pointer not
//     32-byte aligned or such an ldm is a fatal error.
//   - "The mapping of matrix elements into fragment internal storage is
//     unspecified": here each lane holds a fixed, arbitrary (pseudo-random)
//     share of the 16x16 elements, a different permutation for matrix_a,
//     matrix_b and accumulator fragments, so code that assumes a layout
//     computes wrong numbers. Element-wise operations applied to every
//     element alike (fill_fragment, scaling x[]) work as on a GPU; the
//     fragment sizes (num_elements) are the toolkit's, operand fragments of
//     __half holding each element twice across the warp.
//   - A load reads the lane's own share when the lane arrives (before the
//     others), and a store writes the lane's share after all have arrived,
//     lanes running last first, so that a lane reading what others wrote
//     without a __syncwarp (or __syncthreads) between reads stale values.
//   - mma_sync: D = A B + C, each element's 16 products (exact for 16-bit
//     operands) and C summed in double and rounded once to float (tensor
//     cores add several products before rounding).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <array>
#include <cstdint>
#include <cstdio>
#include <source_location>
#include <type_traits>

#include "backend/cuda/emulation/emulator.h"

namespace nvcuda::wmma {

struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };

namespace detail {

// A fixed permutation of the 256 elements of a 16x16 tile (row * 16 + column).
constexpr std::array<uint8_t, 256> Permutation(uint32_t seed) {
  std::array<uint8_t, 256> p{};
  for (int i = 0; i < 256; ++i) p[i] = static_cast<uint8_t>(i);
  for (int i = 255; i > 0; --i) {
    seed = seed * 1664525u + 1013904223u;
    const int j = static_cast<int>((seed >> 8) % static_cast<uint32_t>(i + 1));
    const uint8_t t = p[i];
    p[i] = p[j];
    p[j] = t;
  }
  return p;
}
inline constexpr std::array<uint8_t, 256> kPermutations[3] = {Permutation(0x5eed1u),
                                                              Permutation(0xb0b2u),
                                                              Permutation(0xacc3u)};

template <typename Use>
constexpr int UseIndex() {
  if constexpr (std::is_same_v<Use, matrix_a>) return 0;
  if constexpr (std::is_same_v<Use, matrix_b>) return 1;
  return 2;
}

template <typename Use, typename T>
constexpr int Elements() {
  if constexpr (std::is_same_v<Use, accumulator>) return 8;
  if constexpr (std::is_same_v<T, __half>) return 16;  // each element in two lanes
  return 8;
}

// The tile element (row * 16 + column) that element e of lane `lane` holds.
template <typename Use, int kElements>
inline int Position(int lane, int e) {
  return kPermutations[UseIndex<Use>()][(lane * kElements + e) % 256];
}

inline float ToFloat(float v) { return v; }
inline float ToFloat(__half v) { return __half2float(v); }
inline float ToFloat(__nv_bfloat16 v) { return __bfloat162float(v); }

// What each lane brings to a load or store (all must agree).
struct MemoryArgs {
  const void* ptr;
  unsigned ldm;
  int column_major;
};

[[noreturn]] inline void Refuse(const char* function, const char* detail) {
  char what[256];
  std::snprintf(what, sizeof(what), "wmma::%s: %s", function, detail);
  ::mingpt::cuda::emu::Fatal(what);
}

// The documented requirements on mptr and ldm.
inline void CheckMemory(const char* function, const void* ptr, unsigned ldm,
                        size_t element_bytes) {
  char detail[160];
  if (reinterpret_cast<uintptr_t>(ptr) % 32 != 0) {
    std::snprintf(detail, sizeof(detail), "pointer %p is not 256-bit (32-byte) aligned", ptr);
    Refuse(function, detail);
  }
  const unsigned multiple = static_cast<unsigned>(16 / element_bytes);
  if (ldm % multiple != 0) {
    std::snprintf(detail, sizeof(detail), "ldm %u is not a multiple of %u elements (16 bytes)",
                  ldm, multiple);
    Refuse(function, detail);
  }
}

inline void CheckSameMemory(const uint64_t* values, const char* function) {
  const auto* first = reinterpret_cast<const MemoryArgs*>(values[0]);
  for (int lane = 1; lane < 32; ++lane) {
    const auto* mine = reinterpret_cast<const MemoryArgs*>(values[lane]);
    if (mine->ptr != first->ptr || mine->ldm != first->ldm ||
        mine->column_major != first->column_major) {
      char detail[160];
      std::snprintf(detail, sizeof(detail),
                    "lanes 0 and %d of the warp pass different pointers, ldm or layouts", lane);
      Refuse(function, detail);
    }
  }
}

inline void CheckLoadOp(const uint64_t* values, void*) {
  CheckSameMemory(values, "load_matrix_sync");
}
inline void CheckStoreOp(const uint64_t* values, void*) {
  CheckSameMemory(values, "store_matrix_sync");
}

}  // namespace detail

template <typename Use, int m, int n, int k, typename T, typename Layout = void>
class fragment {
  static_assert(m == 16 && n == 16 && k == 16, "the emulator has the 16x16x16 shape only");
  static_assert(std::is_same_v<Use, accumulator>
                    ? std::is_same_v<T, float>
                    : std::is_same_v<T, __half> || std::is_same_v<T, __nv_bfloat16>,
                "the emulator has __half / __nv_bfloat16 operands and float accumulators");
  static_assert(std::is_same_v<Use, accumulator> == std::is_same_v<Layout, void>,
                "operand fragments take row_major or col_major, accumulators no layout");

 public:
  using element_type = T;
  using storage_element_type = T;
  static constexpr int num_elements = detail::Elements<Use, T>();
  T x[num_elements];
};

template <typename Use, int m, int n, int k, typename T, typename Layout>
inline void fill_fragment(fragment<Use, m, n, k, T, Layout>& f, const T& v) {
  for (int e = 0; e < f.num_elements; ++e) f.x[e] = v;
}

namespace detail {

template <typename Use, typename T, typename Layout>
void LoadShare(fragment<Use, 16, 16, 16, T, Layout>& f, const T* ptr, unsigned ldm,
               bool column_major) {
  constexpr int kE = fragment<Use, 16, 16, 16, T, Layout>::num_elements;
  const int lane = ::mingpt::cuda::emu::LaneId();
  for (int e = 0; e < kE; ++e) {
    const int pos = Position<Use, kE>(lane, e), r = pos / 16, c = pos % 16;
    f.x[e] = column_major ? ptr[size_t(c) * ldm + r] : ptr[size_t(r) * ldm + c];
  }
}

}  // namespace detail

// Operands: the layout is the fragment's.
template <typename Use, typename T, typename Layout>
void load_matrix_sync(fragment<Use, 16, 16, 16, T, Layout>& f, const T* ptr, unsigned ldm,
                      std::source_location where = std::source_location::current()) {
  static_assert(!std::is_same_v<Use, accumulator>, "an accumulator load takes a layout_t");
  detail::CheckMemory("load_matrix_sync", ptr, ldm, sizeof(T));
  const bool column_major = std::is_same_v<Layout, col_major>;
  detail::LoadShare(f, ptr, ldm, column_major);
  detail::MemoryArgs args{ptr, ldm, column_major};
  ::mingpt::cuda::emu::WarpCollective(reinterpret_cast<uint64_t>(&args), &detail::CheckLoadOp,
                                      nullptr, where);
}

inline void load_matrix_sync(fragment<accumulator, 16, 16, 16, float>& f, const float* ptr,
                             unsigned ldm, layout_t layout,
                             std::source_location where = std::source_location::current()) {
  detail::CheckMemory("load_matrix_sync", ptr, ldm, sizeof(float));
  const bool column_major = layout == mem_col_major;
  detail::LoadShare(f, ptr, ldm, column_major);
  detail::MemoryArgs args{ptr, ldm, column_major};
  ::mingpt::cuda::emu::WarpCollective(reinterpret_cast<uint64_t>(&args), &detail::CheckLoadOp,
                                      nullptr, where);
}

inline void store_matrix_sync(float* ptr, const fragment<accumulator, 16, 16, 16, float>& f,
                              unsigned ldm, layout_t layout,
                              std::source_location where = std::source_location::current()) {
  detail::CheckMemory("store_matrix_sync", ptr, ldm, sizeof(float));
  const bool column_major = layout == mem_col_major;
  detail::MemoryArgs args{ptr, ldm, column_major};
  ::mingpt::cuda::emu::WarpCollective(reinterpret_cast<uint64_t>(&args), &detail::CheckStoreOp,
                                      nullptr, where);
  const int lane = ::mingpt::cuda::emu::LaneId();
  for (int e = 0; e < f.num_elements; ++e) {
    const int pos = detail::Position<accumulator, 8>(lane, e), r = pos / 16, c = pos % 16;
    (column_major ? ptr[size_t(c) * ldm + r] : ptr[size_t(r) * ldm + c]) = f.x[e];
  }
}

namespace detail {

template <typename T, typename LayoutA, typename LayoutB>
struct MmaArgs {
  fragment<accumulator, 16, 16, 16, float>* d;
  const fragment<matrix_a, 16, 16, 16, T, LayoutA>* a;
  const fragment<matrix_b, 16, 16, 16, T, LayoutB>* b;
  const fragment<accumulator, 16, 16, 16, float>* c;
};

// Run by the last lane to arrive, the others waiting: the whole product,
// from and into every lane's fragments.
template <typename T, typename LayoutA, typename LayoutB>
void MmaOp(const uint64_t* values, void*) {
  using Args = MmaArgs<T, LayoutA, LayoutB>;
  constexpr int kE = fragment<matrix_a, 16, 16, 16, T, LayoutA>::num_elements;
  float a[256], b[256], c[256];
  for (int lane = 0; lane < 32; ++lane) {
    const Args& x = *reinterpret_cast<const Args*>(values[lane]);
    for (int e = 0; e < kE; ++e) {
      a[Position<matrix_a, kE>(lane, e)] = ToFloat(x.a->x[e]);
      b[Position<matrix_b, kE>(lane, e)] = ToFloat(x.b->x[e]);
    }
    for (int e = 0; e < 8; ++e) c[Position<accumulator, 8>(lane, e)] = x.c->x[e];
  }
  for (int lane = 0; lane < 32; ++lane) {
    const Args& x = *reinterpret_cast<const Args*>(values[lane]);
    for (int e = 0; e < 8; ++e) {
      const int pos = Position<accumulator, 8>(lane, e), r = pos / 16, col = pos % 16;
      double sum = c[pos];
      for (int kk = 0; kk < 16; ++kk) sum += double(a[r * 16 + kk]) * b[kk * 16 + col];
      x.d->x[e] = static_cast<float>(sum);
    }
  }
}

}  // namespace detail

template <typename T, typename LayoutA, typename LayoutB>
void mma_sync(fragment<accumulator, 16, 16, 16, float>& d,
              const fragment<matrix_a, 16, 16, 16, T, LayoutA>& a,
              const fragment<matrix_b, 16, 16, 16, T, LayoutB>& b,
              const fragment<accumulator, 16, 16, 16, float>& c, bool satf = false,
              std::source_location where = std::source_location::current()) {
  if (satf) ::mingpt::cuda::emu::Fatal("wmma::mma_sync: satf is not emulated");
  detail::MmaArgs<T, LayoutA, LayoutB> args{&d, &a, &b, &c};
  ::mingpt::cuda::emu::WarpCollective(reinterpret_cast<uint64_t>(&args),
                                      &detail::MmaOp<T, LayoutA, LayoutB>, nullptr, where);
}

}  // namespace nvcuda::wmma
