// The emulator's mma.sync.aligned.m16n8k16 (backend/cuda/emulation/mma.h,
// through backend/cuda/mma.cuh): each lane brings the elements of A, B and C
// that the PTX ISA's fragment layout gives it ("Matrix Fragments for
// mma.m16n8k16 with floating point type"; written out again below from the
// ISA's formulas, independently of mma.h) and gets the elements of A B + C
// at the layout's positions of D, exactly, for bf16 and fp16 operands; the
// loads from memory and the reuse of two accumulator tiles as an A fragment
// (mma.cuh) agree with it; and a lane that misses the call, or reaches
// another one, is a fatal error naming the kernel.
#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <vector>

#include "backend/cuda/mma.cuh"
#include "cuda_emulation/emulation_test_util.h"

namespace {

using mingpt::testing::DeviceCopy;
using mingpt::testing::HostCopy;

using namespace mingpt::cuda;

// The ISA's formulas (groupID = lane >> 2, threadID_in_group = lane % 4).
int ARow(int lane, int i) { return (lane >> 2) + ((i < 2 || (i >= 4 && i < 6)) ? 0 : 8); }
int ACol(int lane, int i) { return (lane % 4) * 2 + (i & 1) + (i < 4 ? 0 : 8); }
int BRow(int lane, int i) { return (lane % 4) * 2 + (i & 1) + (i < 2 ? 0 : 8); }
int BCol(int lane, int) { return lane >> 2; }
int CRow(int lane, int i) { return (lane >> 2) + (i < 2 ? 0 : 8); }
int CCol(int lane, int i) { return (lane % 4) * 2 + (i & 1); }

template <typename Op>
uint16_t BitsOf(float x) {
  if constexpr (std::is_same_v<Op, __nv_bfloat16>) {
    const __nv_bfloat16_raw raw = __float2bfloat16_rn(x);
    return raw.x;
  } else {
    const __half_raw raw = __float2half_rn(x);
    return raw.x;
  }
}

// a [16][16], b [16][8] (k x n), c [16][8], row-major floats; each lane
// packs its documented elements itself (element 2r in the low half of
// register r) and stores D's four at d[lane * 4 + i].
template <typename Op>
__global__ void DocumentedLayoutKernel(float* d, const float* a, const float* b, const float* c) {
  const int lane = threadIdx.x;
  mma::FragA fa;
  mma::FragB fb;
  mma::FragC fc;
  for (int r = 0; r < 4; ++r) {
    fa.x[r] = BitsOf<Op>(a[ARow(lane, 2 * r) * 16 + ACol(lane, 2 * r)]) |
              uint32_t{BitsOf<Op>(a[ARow(lane, 2 * r + 1) * 16 + ACol(lane, 2 * r + 1)])} << 16;
  }
  for (int r = 0; r < 2; ++r) {
    fb.x[r] = BitsOf<Op>(b[BRow(lane, 2 * r) * 8 + BCol(lane, 2 * r)]) |
              uint32_t{BitsOf<Op>(b[BRow(lane, 2 * r + 1) * 8 + BCol(lane, 2 * r + 1)])} << 16;
  }
  for (int i = 0; i < 4; ++i) fc.x[i] = c[CRow(lane, i) * 8 + CCol(lane, i)];
  mma::MmaAccumulate<Op>(fc, fa, fb);
  for (int i = 0; i < 4; ++i) d[lane * 4 + i] = fc.x[i];
}

// Small integers and halves: exact in both operand types, every product
// and sum exact, so D is exact. Each element distinct enough that a lane
// given another's element, or A's row for its column, gets another sum.
struct Matrices {
  std::vector<float> a, b, c;
};
Matrices MakeMatrices() {
  Matrices m{std::vector<float>(256), std::vector<float>(128), std::vector<float>(128)};
  for (int i = 0; i < 256; ++i) m.a[i] = float(int(i * 7 % 23) - 11) / 2;
  for (int i = 0; i < 128; ++i) m.b[i] = float(int(i * 5 % 19) - 9);
  for (int i = 0; i < 128; ++i) m.c[i] = float(int(i * 3 % 17) - 8) / 4;
  return m;
}
double Expected(const Matrices& m, int row, int col) {
  double s = m.c[row * 8 + col];
  for (int k = 0; k < 16; ++k) s += double(m.a[row * 16 + k]) * m.b[k * 8 + col];
  return s;
}

template <typename Op>
void CheckDocumentedLayout() {
  const Matrices m = MakeMatrices();
  float* a = DeviceCopy(m.a);
  float* b = DeviceCopy(m.b);
  float* c = DeviceCopy(m.c);
  float* d = DeviceCopy(std::vector<float>(128, -1.0f));
  MINGPT_LAUNCH(DocumentedLayoutKernel<Op>, 1, 32, 0, nullptr, d, a, b, c);
  ASSERT_EQ(cudaGetLastError(), cudaSuccess);
  const std::vector<float> got = HostCopy(d, 128);
  std::vector<int> seen(128, 0);
  for (int lane = 0; lane < 32; ++lane) {
    for (int i = 0; i < 4; ++i) {
      EXPECT_EQ(got[lane * 4 + i], Expected(m, CRow(lane, i), CCol(lane, i)))
          << "lane " << lane << " c" << i;
      ++seen[CRow(lane, i) * 8 + CCol(lane, i)];
    }
  }
  EXPECT_EQ(seen, std::vector<int>(128, 1));  // D's 128 elements, each once
  for (void* p : {static_cast<void*>(a), static_cast<void*>(b), static_cast<void*>(c),
                  static_cast<void*>(d)}) {
    cudaFree(p);
  }
}

TEST(MmaEmulation, DocumentedFragmentLayoutBf16AndFp16) {
  CheckDocumentedLayout<__nv_bfloat16>();
  CheckDocumentedLayout<__half>();
}

// mma.cuh's loads and register reuse: A [16][16] from a row-major tile at
// ld 24, B (16 x 16, two n-tiles) from its n-major storage bt[n][k] at
// ld 24; D = A B as two accumulator tiles, which FromAccumulators makes the
// A fragment of D E (E [16][8] from et[n][k], ld 16). Out: the 16 x 8 result,
// row-major, from the documented C positions.
template <typename Op>
__global__ void ChainKernel(float* out, const Op* a, const Op* bt, const Op* et) {
  const int lane = threadIdx.x;
  const mma::FragA fa = mma::LoadA(a, 24, lane);
  mma::FragC d0 = mma::Zero(), d1 = mma::Zero();
  mma::MmaAccumulate<Op>(d0, fa, mma::LoadB(bt, 24, lane));
  mma::MmaAccumulate<Op>(d1, fa, mma::LoadB(bt + 8 * 24, 24, lane));
  const mma::FragA fd = mma::FromAccumulators<Op>(d0, d1);
  mma::FragC e = mma::Zero();
  mma::MmaAccumulate<Op>(e, fd, mma::LoadB(et, 16, lane));
  for (int i = 0; i < 4; ++i) out[CRow(lane, i) * 8 + CCol(lane, i)] = e.x[i];
}

template <typename Op>
void CheckChain(Op (*convert)(float)) {
  // A, B and E small integers (A and B not symmetric, so a transposed
  // operand shows); D = A B is integral with |D| <= 16*3*3 = 144, which
  // both operand types hold exactly; the expected value rounds it anyway,
  // as the kernel does.
  std::vector<float> af(16 * 24, 0), btf(16 * 24, 0), etf(8 * 16, 0);
  for (int r = 0; r < 16; ++r) {
    for (int k = 0; k < 16; ++k) af[r * 24 + k] = float((r * 3 + k * 5) % 7 - 3);
  }
  for (int n = 0; n < 16; ++n) {
    for (int k = 0; k < 16; ++k) btf[n * 24 + k] = float((n * 5 + k * 2) % 7 - 3);
  }
  for (int n = 0; n < 8; ++n) {
    for (int k = 0; k < 16; ++k) etf[n * 16 + k] = float((n * 3 + k) % 5 - 2);
  }
  auto ops = [&](const std::vector<float>& f) {
    std::vector<Op> o(f.size());
    for (size_t i = 0; i < f.size(); ++i) o[i] = convert(f[i]);
    return o;
  };
  Op* a = DeviceCopy(ops(af));
  Op* bt = DeviceCopy(ops(btf));
  Op* et = DeviceCopy(ops(etf));
  float* out = DeviceCopy(std::vector<float>(128, -1.0f));
  MINGPT_LAUNCH(ChainKernel<Op>, 1, 32, 0, nullptr, out, a, bt, et);
  const std::vector<float> got = HostCopy(out, 128);
  for (int r = 0; r < 16; ++r) {
    for (int n = 0; n < 8; ++n) {
      double want = 0;
      for (int k = 0; k < 16; ++k) {
        double dk = 0;  // D[r][k] = sum_m A[r][m] B[m][k], B[m][k] = bt[k][m]
        for (int mm = 0; mm < 16; ++mm) dk += double(af[r * 24 + mm]) * btf[k * 24 + mm];
        const Op rounded = convert(static_cast<float>(dk));
        float back;
        if constexpr (std::is_same_v<Op, __half>) {
          back = __half2float(rounded);
        } else {
          back = __bfloat162float(rounded);
        }
        want += double(back) * etf[n * 16 + k];
      }
      EXPECT_EQ(got[r * 8 + n], want) << r << "," << n;
    }
  }
  for (void* p : {static_cast<void*>(a), static_cast<void*>(bt), static_cast<void*>(et),
                  static_cast<void*>(out)}) {
    cudaFree(p);
  }
}

TEST(MmaEmulation, LoadsAndAccumulatorReuseAgreeWithTheLayout) {
  CheckChain<__nv_bfloat16>([](float x) { return __float2bfloat16_rn(x); });
  CheckChain<__half>([](float x) { return __float2half_rn(x); });
}

__global__ void HalfWarpMmaKernel() {
  if (threadIdx.x >= 16) return;
  mma::FragA a{};
  mma::FragB b{};
  mma::FragC c = mma::Zero();
  mma::MmaAccumulate<__nv_bfloat16>(c, a, b);
}
__global__ void OneLaneMissingMmaKernel() {
  if (threadIdx.x == 5) return;
  mma::FragA a{};
  mma::FragB b{};
  mma::FragC c = mma::Zero();
  mma::MmaAccumulate<__half>(c, a, b);
}
__global__ void DivergentMmaKernel() {
  mma::FragA a{};
  mma::FragB b{};
  mma::FragC c = mma::Zero();
  if (threadIdx.x < 16) {
    mma::MmaAccumulate<__nv_bfloat16>(c, a, b);
  } else {
    mma::MmaAccumulate<__nv_bfloat16>(c, a, b);
  }
}

TEST(MmaEmulationDeathTest, MissingOrDivergentLanesAreFatalAndNamed) {
  EXPECT_DEATH(MINGPT_LAUNCH(HalfWarpMmaKernel, 1, 32, 0, nullptr),
               "HalfWarpMmaKernel.*(16 live lanes|exited while)");
  EXPECT_DEATH(MINGPT_LAUNCH(OneLaneMissingMmaKernel, 1, 32, 0, nullptr),
               "OneLaneMissingMmaKernel.*(31 live lanes|exited while)");
  EXPECT_DEATH(MINGPT_LAUNCH(DivergentMmaKernel, 1, 32, 0, nullptr),
               "DivergentMmaKernel.*different shuffles or warp operations");
}

}  // namespace
