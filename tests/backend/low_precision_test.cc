// bf16 / fp16 rounding (backend/cpu/low_precision.h) against independent
// references (the exhaustive bf16 neighbours, GCC's _Float16 conversion),
// and the CPU backend's matrix products under each MatmulPrecision against
// double-precision products of the rounded operands.
#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <vector>

#include "backend/backend.h"
#include "backend/cpu/cpu_backend.h"
#include "backend/cpu/low_precision.h"
#include "backend/cpu/matmul_ref.h"
#include "backend/cpu/onednn_matmul.h"

namespace mingpt::cpu {
namespace {

// Nearest bf16 by comparing the two candidates in double; ties to even.
float Bf16Reference(float x) {
  if (std::isnan(x) || std::isinf(x)) return x;
  const uint32_t b = std::bit_cast<uint32_t>(x);
  const float lo = std::bit_cast<float>(b & 0xFFFF0000u);
  const float hi = std::bit_cast<float>((b & 0xFFFF0000u) + 0x10000u);  // next, away from 0
  const double dlo = std::fabs(static_cast<double>(x)) - std::fabs(static_cast<double>(lo));
  // Past bf16's largest finite the next value up is 2^128 (which is inf).
  const double hi_value = std::isinf(hi) ? std::ldexp(1.0, 128) : static_cast<double>(std::fabs(hi));
  const double dhi = hi_value - std::fabs(static_cast<double>(x));
  if (dlo != dhi) return dlo < dhi ? lo : hi;
  return ((b >> 16) & 1u) == 0 ? lo : hi;
}

std::vector<float> InterestingFloats() {
  std::vector<float> v = {0.0f, -0.0f, 1.0f, -1.0f, 65504.0f, 65505.0f, 65519.0f, 65519.99f,
                          65520.0f, -65520.0f, 1e5f, 6.1e-5f, 6.103515625e-05f, 5.96e-8f,
                          2.98e-8f, 2.99e-8f, 1e-9f, 1e-30f, 1e-45f,
                          std::numeric_limits<float>::max(), -std::numeric_limits<float>::max(),
                          std::numeric_limits<float>::infinity(),
                          -std::numeric_limits<float>::infinity(),
                          std::numeric_limits<float>::denorm_min(), 3.0e38f, 1.0039062f,
                          1.0078125f, 1.01171875f};
  std::mt19937 rng(7);
  for (int i = 0; i < 200000; ++i) {
    uint32_t bits = rng();
    float f = std::bit_cast<float>(bits);
    if (!std::isnan(f)) v.push_back(f);
  }
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (int i = 0; i < 100000; ++i) v.push_back(normal(rng) * std::ldexp(1.0f, (i % 60) - 30));
  return v;
}

TEST(LowPrecision, Bf16RoundsToNearestEven) {
  for (float x : InterestingFloats()) {
    const float r = RoundToBf16(x), ref = Bf16Reference(x);
    ASSERT_EQ(std::bit_cast<uint32_t>(r), std::bit_cast<uint32_t>(ref)) << x;
    ASSERT_EQ(std::bit_cast<uint32_t>(r) & 0xFFFFu, 0u) << x;
  }
  EXPECT_TRUE(std::isnan(RoundToBf16(std::numeric_limits<float>::quiet_NaN())));
  EXPECT_TRUE(std::isinf(RoundToBf16(std::numeric_limits<float>::max())));
}

TEST(LowPrecision, Fp16MatchesTheCompilersConversion) {
  for (float x : InterestingFloats()) {
    const float ref = static_cast<float>(static_cast<_Float16>(x));
    const float r = RoundToFp16(x);
    ASSERT_EQ(std::bit_cast<uint32_t>(r), std::bit_cast<uint32_t>(ref)) << x;
  }
  EXPECT_TRUE(std::isnan(RoundToFp16(std::numeric_limits<float>::quiet_NaN())));
  EXPECT_EQ(RoundToFp16(65519.0f), 65504.0f);
  EXPECT_TRUE(std::isinf(RoundToFp16(65520.0f)));
  EXPECT_EQ(RoundToFp16(2.9e-8f), 0.0f);  // below half the smallest subnormal
}

TEST(LowPrecision, RoundArrayCoversEveryElementInPlace) {
  std::vector<float> v(100003);
  std::mt19937 rng(3);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (float& x : v) x = normal(rng);
  std::vector<float> src = v;
  RoundArray(v.data(), v.data(), static_cast<int64_t>(v.size()), MatmulPrecision::kFp16);
  for (size_t i = 0; i < v.size(); ++i) ASSERT_EQ(v[i], RoundToFp16(src[i])) << i;
}

// The array conversion (the CPU's instruction where it has one) and the
// scalar one agree on every value: the high bits of the rounded value, a
// signed zero for fp32 subnormals, a quiet NaN for a NaN.
TEST(LowPrecision, ToBf16KeepsTheHighBitsOfTheRoundedValue) {
  std::vector<float> v = InterestingFloats();
  for (uint32_t nan : {0x7F800001u, 0xFFC00000u, 0x7FBFFFFFu}) v.push_back(std::bit_cast<float>(nan));
  std::vector<uint16_t> h(v.size());
  ToBf16Array(h.data(), v.data(), static_cast<int64_t>(v.size()));
  int subnormals = 0;
  for (size_t i = 0; i < v.size(); ++i) {
    const uint32_t got = static_cast<uint32_t>(h[i]) << 16;
    ASSERT_EQ(h[i], ToBf16(v[i])) << v[i];
    if (std::isnan(v[i])) {
      ASSERT_TRUE(std::isnan(std::bit_cast<float>(got))) << i;
    } else if (std::fpclassify(v[i]) == FP_SUBNORMAL) {
      ++subnormals;
      ASSERT_EQ(got, std::bit_cast<uint32_t>(v[i]) & 0x80000000u) << v[i];
    } else {
      ASSERT_EQ(got, std::bit_cast<uint32_t>(RoundToBf16(v[i]))) << v[i];
    }
  }
  EXPECT_GT(subnormals, 0);
}

// n draws of N(0, sigma^2), in order from rng.
std::vector<float> Normals(std::mt19937& rng, size_t n, float sigma) {
  std::normal_distribution<float> normal(0.0f, sigma);
  std::vector<float> v(n);
  for (float& x : v) x = normal(rng);
  return v;
}

// out = inp @ W^T + bias, and the three backward products, under `p`:
// each against double products of the rounded operands. native_bf16: the
// bf16 x bf16 -> fp32 primitive where the CPU has one (else the rounded fp32
// operands); the same arithmetic up to the order of the fp32 sums.
void CheckMatmul(MatmulPrecision p, bool native_bf16 = true, int N = 37, int IC = 53,
                 int OC = 29) {
  std::mt19937 rng(11);
  auto fill = [&](size_t n) { return Normals(rng, n, 1.0f); };
  std::vector<float> inp = fill(N * IC), W = fill(OC * IC), bias = fill(OC), dout = fill(N * OC);
  auto rounded = [&](std::vector<float> v) {
    RoundArray(v.data(), v.data(), static_cast<int64_t>(v.size()), p);
    return v;
  };
  const std::vector<float> ri = rounded(inp), rw = rounded(W), rd = rounded(dout);

  auto backend = std::make_unique<CpuBackend>(2);
  backend->set_native_bf16(native_bf16);
  ASSERT_EQ(backend->native_bf16(), native_bf16 && OnednnMatmul::CpuHasBf16Matmul());
  backend->SetMatmulPrecision(p);
  ASSERT_EQ(backend->matmul_precision(), p);
  std::vector<float> out(N * OC), dinp(N * IC), dW(OC * IC, 0.0f), dbias(OC, 0.0f);
  backend->MatmulForward(out.data(), inp.data(), W.data(), bias.data(), N, IC, OC);
  backend->MatmulBackward(dinp.data(), dW.data(), dbias.data(), dout.data(), inp.data(), W.data(),
                          N, IC, OC, false);
  double worst = 0, worst_vs_fp32 = 0;
  auto compare = [&](double got, double want, double fp32) {
    const double scale = std::max(1.0, std::fabs(want));
    worst = std::max(worst, std::fabs(got - want) / scale);
    worst_vs_fp32 = std::max(worst_vs_fp32, std::fabs(got - fp32) / scale);
  };
  for (int n = 0; n < N; ++n) {
    for (int o = 0; o < OC; ++o) {
      double want = bias[o], fp32 = bias[o];
      for (int i = 0; i < IC; ++i) {
        want += static_cast<double>(ri[n * IC + i]) * rw[o * IC + i];
        fp32 += static_cast<double>(inp[n * IC + i]) * W[o * IC + i];
      }
      compare(out[n * OC + o], want, fp32);
    }
    for (int i = 0; i < IC; ++i) {
      double want = 0, fp32 = 0;
      for (int o = 0; o < OC; ++o) {
        want += static_cast<double>(rd[n * OC + o]) * rw[o * IC + i];
        fp32 += static_cast<double>(dout[n * OC + o]) * W[o * IC + i];
      }
      compare(dinp[n * IC + i], want, fp32);
    }
  }
  for (int o = 0; o < OC; ++o) {
    for (int i = 0; i < IC; ++i) {
      double want = 0, fp32 = 0;
      for (int n = 0; n < N; ++n) {
        want += static_cast<double>(rd[n * OC + o]) * ri[n * IC + i];
        fp32 += static_cast<double>(dout[n * OC + o]) * inp[n * IC + i];
      }
      compare(dW[o * IC + i], want, fp32);
    }
  }
  // fp32 accumulation of exact products: float rounding of sums of ~50 terms
  // of size ~1 (observed ~5e-6), far below the rounding gaps checked below.
  EXPECT_LT(worst, 2e-5);
  if (p == MatmulPrecision::kFp32) {
    EXPECT_LT(worst_vs_fp32, 2e-5);
  } else {
    // Rounding to 8 (bf16) or 11 (fp16) significant bits shows: these
    // products must differ from the fp32 ones by about that much.
    EXPECT_GT(worst_vs_fp32, p == MatmulPrecision::kBf16 ? 3e-3 : 3e-4);
  }
}

TEST(LowPrecision, MatmulFp32) { CheckMatmul(MatmulPrecision::kFp32); }
// IC at least twice OC and N: the backward products whose B is wide and
// row-major (W for dinp, inp for dW) pack B first (OnednnMatmul::PackB).
TEST(LowPrecision, MatmulFp32WideInputPacksB) {
  CheckMatmul(MatmulPrecision::kFp32, true, 37, 160, 29);
  CheckMatmul(MatmulPrecision::kFp32, true, 20, 96, 40);
}
TEST(LowPrecision, MatmulBf16RoundsOperandsAndAccumulatesInFp32) {
  CheckMatmul(MatmulPrecision::kBf16, /*native_bf16=*/false);
}
TEST(LowPrecision, MatmulBf16OnTheCpusBf16Units) {
  if (!OnednnMatmul::CpuHasBf16Matmul()) {
    GTEST_SKIP() << "this CPU has no bf16 dot products (AVX512-BF16 or AMX): "
                    "bf16 runs on rounded fp32 operands, tested above";
  }
  CheckMatmul(MatmulPrecision::kBf16, /*native_bf16=*/true);
}
TEST(LowPrecision, MatmulFp16RoundsOperandsAndAccumulatesInFp32) {
  CheckMatmul(MatmulPrecision::kFp16);
}

// The operand-format ops against their unfused forms on the same backend:
// GeluForwardOperand = ToOperand(GeluForward), GeluBackwardOperand =
// ToOperand(GeluBackward) with BiasBackward's column sums, the layernorms'
// operand forms = ToOperand of theirs (same statistics), and products on
// Converted operands = products on the fp32 ones (which convert the same
// way inside), all bit for bit. Odd sizes reach every tail path.
void CheckOperandOps(MatmulPrecision p, bool native_bf16) {
  const int N = 37, C = 131, OC = 29;
  std::mt19937 rng(5);
  auto fill = [&](size_t n) { return Normals(rng, n, 2.0f); };
  const std::vector<float> x = fill(N * C), dout = fill(N * C), W = fill(OC * C),
                           bias = fill(OC), dy = fill(N * OC), db0 = fill(C);
  auto backend = std::make_unique<CpuBackend>(2);
  backend->set_native_bf16(native_bf16);
  backend->SetMatmulPrecision(p);
  const size_t ob = backend->OperandBytes();
  ASSERT_EQ(ob, p == MatmulPrecision::kBf16 && backend->native_bf16() ? 2u : 4u);
  const size_t n = static_cast<size_t>(N) * C;
  auto bytes = [](const std::vector<char>& a, const std::vector<char>& b) {
    ASSERT_EQ(a.size(), b.size());
    for (size_t i = 0; i < a.size(); ++i) ASSERT_EQ(a[i], b[i]) << "byte " << i;
  };

  // Forward.
  std::vector<float> g(n);
  backend->GeluForward(g.data(), x.data(), static_cast<int64_t>(n));
  std::vector<char> want(n * ob), got(n * ob, 0);
  backend->ToOperand(want.data(), g.data(), static_cast<int64_t>(n));
  backend->GeluForwardOperand(got.data(), x.data(), static_cast<int64_t>(n));
  ASSERT_NO_FATAL_FAILURE(bytes(got, want));

  // Backward, with the bias gradient accumulating onto db0.
  std::vector<float> dg(n), db_want = db0, db_got = db0;
  backend->GeluBackward(dg.data(), x.data(), dout.data(), static_cast<int64_t>(n));
  BiasBackward(db_want.data(), dg.data(), N, C);
  backend->ToOperand(want.data(), dg.data(), static_cast<int64_t>(n));
  backend->GeluBackwardOperand(got.data(), db_got.data(), x.data(), dout.data(), N, C);
  ASSERT_NO_FATAL_FAILURE(bytes(got, want));
  for (int c = 0; c < C; ++c) ASSERT_EQ(db_got[c], db_want[c]) << c;

  // Layernorms (C = 131 spans a tail), alone and after the residual add.
  const std::vector<float> w = fill(C), b = fill(C);
  std::vector<float> ln(n), mean(N), rstd(N), mean2(N), rstd2(N), sum(n), sum2(n);
  backend->LayerNormForward(ln.data(), mean.data(), rstd.data(), x.data(), w.data(), b.data(), N,
                            C);
  backend->ToOperand(want.data(), ln.data(), static_cast<int64_t>(n));
  backend->LayerNormForwardOperand(got.data(), mean2.data(), rstd2.data(), x.data(), w.data(),
                                   b.data(), N, C);
  ASSERT_NO_FATAL_FAILURE(bytes(got, want));
  ASSERT_EQ(mean2, mean);
  ASSERT_EQ(rstd2, rstd);
  backend->ResidualLayerNormForward(sum.data(), ln.data(), mean.data(), rstd.data(), x.data(),
                                    dout.data(), w.data(), b.data(), N, C);
  backend->ToOperand(want.data(), ln.data(), static_cast<int64_t>(n));
  backend->ResidualLayerNormForwardOperand(sum2.data(), got.data(), mean2.data(), rstd2.data(),
                                           x.data(), dout.data(), w.data(), b.data(), N, C);
  ASSERT_NO_FATAL_FAILURE(bytes(got, want));
  ASSERT_EQ(sum2, sum);
  ASSERT_EQ(mean2, mean);
  ASSERT_EQ(rstd2, rstd);

  // Products: Converted operands (the GELU output as the input, dy as dout).
  std::vector<char> gop(n * ob), dyop(static_cast<size_t>(N) * OC * ob);
  backend->GeluForwardOperand(gop.data(), x.data(), static_cast<int64_t>(n));
  backend->ToOperand(dyop.data(), dy.data(), int64_t{N} * OC);
  std::vector<float> out_want(N * OC), out_got(N * OC);
  backend->MatmulForward(out_want.data(), g.data(), W.data(), bias.data(), N, C, OC);
  backend->MatmulForward(out_got.data(), MatmulOperand::Converted(gop.data()), W.data(),
                         bias.data(), N, C, OC);
  for (size_t i = 0; i < out_want.size(); ++i) ASSERT_EQ(out_got[i], out_want[i]) << i;
  std::vector<float> dW_want(OC * C, 0.0f), dW_got(OC * C, 0.0f), dx_want(n), dx_got(n);
  backend->MatmulBackward(dx_want.data(), dW_want.data(), nullptr, dy.data(), g.data(), W.data(),
                          N, C, OC, false);
  backend->MatmulBackward(dx_got.data(), dW_got.data(), nullptr,
                          MatmulOperand::Converted(dyop.data()),
                          MatmulOperand::Converted(gop.data()), W.data(), N, C, OC, false);
  for (size_t i = 0; i < dW_want.size(); ++i) ASSERT_EQ(dW_got[i], dW_want[i]) << i;
  for (size_t i = 0; i < n; ++i) ASSERT_EQ(dx_got[i], dx_want[i]) << i;
}

TEST(LowPrecision, OperandOpsFp32) { CheckOperandOps(MatmulPrecision::kFp32, true); }
TEST(LowPrecision, OperandOpsBf16Rounded) { CheckOperandOps(MatmulPrecision::kBf16, false); }
TEST(LowPrecision, OperandOpsBf16Native) {
  if (!OnednnMatmul::CpuHasBf16Matmul()) {
    GTEST_SKIP() << "this CPU has no bf16 dot products: bf16 operands are rounded fp32, tested "
                    "above";
  }
  CheckOperandOps(MatmulPrecision::kBf16, true);
}
TEST(LowPrecision, OperandOpsFp16) { CheckOperandOps(MatmulPrecision::kFp16, true); }

}  // namespace
}  // namespace mingpt::cpu
