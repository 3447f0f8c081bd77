// The emulator's warp matrix functions (backend/cuda/emulation/wmma.h):
// products with CUDA's results for bf16 and fp16 operands in both layouts,
// fragments whose element layout is nobody's business (code assuming one is
// wrong), stores that others read only after a __syncwarp, and the
// documented requirements (256-bit aligned pointers, ldm a multiple of 16
// bytes, the whole warp at the same call with the same arguments) refused as
// fatal errors naming the kernel.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <vector>

#include "backend/cuda/device.cuh"
#include "cuda_emulation/emulation_test_util.h"

namespace {

using mingpt::testing::DeviceCopy;
using mingpt::testing::HostCopy;

using namespace nvcuda;

template <typename Op>
using FragA = wmma::fragment<wmma::matrix_a, 16, 16, 16, Op, wmma::row_major>;
template <typename Op>
using FragACol = wmma::fragment<wmma::matrix_a, 16, 16, 16, Op, wmma::col_major>;
template <typename Op>
using FragB = wmma::fragment<wmma::matrix_b, 16, 16, 16, Op, wmma::row_major>;
template <typename Op>
using FragBCol = wmma::fragment<wmma::matrix_b, 16, 16, 16, Op, wmma::col_major>;
using FragC = wmma::fragment<wmma::accumulator, 16, 16, 16, float>;

// d1 = A B + C with A row-major (ld 24), B column-major (ld 16), C and d1
// row-major (ld 20); d2 = A B with A column-major and B row-major (the same
// memory read the other way: A^T, B^T), stored column-major (ld 16).
template <typename Op>
__global__ void ProductKernel(float* d1, float* d2, const Op* a, const Op* b, const float* c) {
  FragA<Op> fa;
  FragBCol<Op> fb;
  FragC fc;
  wmma::load_matrix_sync(fa, a, 24);
  wmma::load_matrix_sync(fb, b, 16);
  wmma::load_matrix_sync(fc, c, 20, wmma::mem_row_major);
  wmma::mma_sync(fc, fa, fb, fc);
  wmma::store_matrix_sync(d1, fc, 20, wmma::mem_row_major);
  FragACol<Op> ta;
  FragB<Op> tb;
  FragC acc;
  wmma::fill_fragment(acc, 0.0f);
  wmma::load_matrix_sync(ta, a, 24);
  wmma::load_matrix_sync(tb, b, 16);
  wmma::mma_sync(acc, ta, tb, acc);
  wmma::store_matrix_sync(d2, acc, 16, wmma::mem_col_major);
}

template <typename Op>
void CheckProduct(Op (*convert)(float)) {
  // Small integers and halves: exact in both operand types, products and
  // sums exact in fp32, so the results are exact.
  std::vector<Op> a(16 * 24), b(16 * 16);
  std::vector<float> af(a.size()), bf(b.size()), c(16 * 20);
  for (size_t i = 0; i < a.size(); ++i) a[i] = convert(af[i] = float(int(i * 7 % 13) - 6) / 2);
  for (size_t i = 0; i < b.size(); ++i) b[i] = convert(bf[i] = float(int(i * 5 % 11) - 5));
  for (size_t i = 0; i < c.size(); ++i) c[i] = float(int(i % 9) - 4);
  Op* da = DeviceCopy(a);
  Op* db = DeviceCopy(b);
  float* dc = DeviceCopy(c);
  float* d1 = DeviceCopy(std::vector<float>(16 * 20, -1.0f));
  float* d2 = DeviceCopy(std::vector<float>(16 * 16, -1.0f));
  MINGPT_LAUNCH(ProductKernel<Op>, 1, 32, 0, nullptr, d1, d2, da, db, dc);
  ASSERT_EQ(cudaGetLastError(), cudaSuccess);
  const std::vector<float> r1 = HostCopy(d1, 16 * 20), r2 = HostCopy(d2, 16 * 16);
  for (int i = 0; i < 16; ++i) {
    for (int j = 0; j < 16; ++j) {
      double s1 = c[i * 20 + j], s2 = 0;
      for (int k = 0; k < 16; ++k) {
        s1 += double(af[i * 24 + k]) * bf[j * 16 + k];  // B column-major: B[k][j] at j*16 + k
        s2 += double(af[k * 24 + i]) * bf[k * 16 + j];  // A column-major: A[i][k] at k*24 + i
      }
      EXPECT_EQ(r1[i * 20 + j], s1) << i << "," << j;
      EXPECT_EQ(r2[j * 16 + i], s2) << i << "," << j;  // stored column-major
    }
    for (int j = 16; j < 20; ++j) EXPECT_EQ(r1[i * 20 + j], -1.0f);  // past the tile: untouched
  }
  for (void* p : {static_cast<void*>(da), static_cast<void*>(db), static_cast<void*>(dc),
                  static_cast<void*>(d1), static_cast<void*>(d2)}) {
    cudaFree(p);
  }
}

TEST(WmmaEmulation, ProductsOfBf16AndFp16Tiles) {
  CheckProduct<__nv_bfloat16>([](float x) { return __float2bfloat16_rn(x); });
  CheckProduct<__half>([](float x) { return __float2half_rn(x); });
}

// Element e of every lane's accumulator set to lane * 8 + e, as if the
// fragment held the tile row-major by lane: the stored tile is not that
// (the layout is unspecified), while a uniform fill stores the same value
// everywhere and scaling every element scales the tile.
__global__ void LayoutKernel(float* assumed, float* uniform) {
  FragC f;
  for (int e = 0; e < f.num_elements; ++e) f.x[e] = static_cast<float>(threadIdx.x * 8 + e);
  wmma::store_matrix_sync(assumed, f, 16, wmma::mem_row_major);
  FragC g;
  wmma::fill_fragment(g, 1.5f);
  for (int e = 0; e < g.num_elements; ++e) g.x[e] *= 2;
  wmma::store_matrix_sync(uniform, g, 16, wmma::mem_row_major);
}

TEST(WmmaEmulation, FragmentLayoutIsUnspecified) {
  float* assumed = DeviceCopy(std::vector<float>(256, -1.0f));
  float* uniform = DeviceCopy(std::vector<float>(256, -1.0f));
  MINGPT_LAUNCH(LayoutKernel, 1, 32, 0, nullptr, assumed, uniform);
  const std::vector<float> a = HostCopy(assumed, 256), u = HostCopy(uniform, 256);
  int in_place = 0;
  std::vector<int> seen(256, 0);
  for (int i = 0; i < 256; ++i) {
    in_place += a[i] == static_cast<float>(i);
    ASSERT_GE(a[i], 0.0f);
    ++seen[static_cast<int>(a[i])];  // every element of every lane stored once
  }
  EXPECT_LT(in_place, 16);  // a permutation, not the row-major order
  EXPECT_EQ(seen, std::vector<int>(256, 1));
  EXPECT_EQ(u, std::vector<float>(256, 3.0f));
  cudaFree(assumed);
  cudaFree(uniform);
}

// A store, then each lane reads the whole tile back from shared memory,
// with or without the __syncwarp that orders the other lanes' writes first.
__global__ void StoreThenReadKernel(float* out, bool sync) {
  __shared__ __align__(32) float tile[256];
  FragC f;
  wmma::fill_fragment(f, 1.0f);
  for (int i = threadIdx.x; i < 256; i += 32) tile[i] = NAN;
  __syncwarp();
  wmma::store_matrix_sync(tile, f, 16, wmma::mem_row_major);
  if (sync) __syncwarp();
  float sum = 0;
  for (int i = 0; i < 256; ++i) sum += tile[i];
  out[threadIdx.x] = sum;
}

TEST(WmmaEmulation, StoresAreVisibleToOtherLanesAfterSyncwarp) {
  float* out = DeviceCopy(std::vector<float>(32, 0.0f));
  MINGPT_LAUNCH(StoreThenReadKernel, 1, 32, 0, nullptr, out, true);
  EXPECT_EQ(HostCopy(out, 32), std::vector<float>(32, 256.0f));
  MINGPT_LAUNCH(StoreThenReadKernel, 1, 32, 0, nullptr, out, false);
  int unwritten = 0;
  for (float v : HostCopy(out, 32)) unwritten += std::isnan(v);
  EXPECT_GT(unwritten, 0);  // the first lane on reads what others have still to write
  cudaFree(out);
}

__global__ void MisalignedKernel(const __nv_bfloat16* a) {
  FragA<__nv_bfloat16> f;
  wmma::load_matrix_sync(f, a + 8, 16);  // 16 bytes past a 32-byte boundary
}
__global__ void BadOperandLdmKernel(const __half* a) {
  FragBCol<__half> f;
  wmma::load_matrix_sync(f, a, 20);  // not a multiple of 8 halves
}
__global__ void BadAccumulatorLdmKernel(float* d) {
  FragC f;
  wmma::fill_fragment(f, 0.0f);
  wmma::store_matrix_sync(d, f, 18, wmma::mem_row_major);  // not a multiple of 4 floats
}
__global__ void DivergentWmmaKernel(const __nv_bfloat16* a) {
  FragA<__nv_bfloat16> f;
  if (threadIdx.x < 16) {
    wmma::load_matrix_sync(f, a, 16);
  } else {
    wmma::load_matrix_sync(f, a, 16);
  }
}
__global__ void HalfWarpWmmaKernel(const __nv_bfloat16* a) {
  if (threadIdx.x >= 16) return;
  FragA<__nv_bfloat16> f;
  wmma::load_matrix_sync(f, a, 16);
}
__global__ void LanePointersKernel(const __nv_bfloat16* a) {
  FragA<__nv_bfloat16> f;
  wmma::load_matrix_sync(f, a + 16 * (threadIdx.x % 2), 16);  // aligned, but per lane
}

TEST(WmmaEmulationDeathTest, MisuseIsFatalAndNamed) {
  __nv_bfloat16* a = DeviceCopy(std::vector<__nv_bfloat16>(16 * 32));
  __half* h = DeviceCopy(std::vector<__half>(16 * 32));
  float* d = DeviceCopy(std::vector<float>(16 * 32));
  EXPECT_DEATH(MINGPT_LAUNCH(MisalignedKernel, 1, 32, 0, nullptr, a),
               "MisalignedKernel.*load_matrix_sync: pointer .* not 256-bit \\(32-byte\\) aligned");
  EXPECT_DEATH(MINGPT_LAUNCH(BadOperandLdmKernel, 1, 32, 0, nullptr, h),
               "BadOperandLdmKernel.*load_matrix_sync: ldm 20 is not a multiple of 8");
  EXPECT_DEATH(MINGPT_LAUNCH(BadAccumulatorLdmKernel, 1, 32, 0, nullptr, d),
               "BadAccumulatorLdmKernel.*store_matrix_sync: ldm 18 is not a multiple of 4");
  EXPECT_DEATH(MINGPT_LAUNCH(DivergentWmmaKernel, 1, 32, 0, nullptr, a),
               "DivergentWmmaKernel.*different shuffles or warp operations");
  EXPECT_DEATH(MINGPT_LAUNCH(HalfWarpWmmaKernel, 1, 32, 0, nullptr, a),
               "HalfWarpWmmaKernel.*(16 live lanes|exited while)");
  EXPECT_DEATH(MINGPT_LAUNCH(LanePointersKernel, 1, 32, 0, nullptr, a),
               "LanePointersKernel.*different pointers");
  cudaFree(a);
  cudaFree(h);
  cudaFree(d);
}

}  // namespace
