// The float CpuBackend (oneDNN matmul, float kernels) against the double
// reference kernels, forward and backward, on identical (float-rounded)
// inputs; plus the oneDNN primitive cache and the attention invariants.
#include "backend/cpu/cpu_backend.h"

#include <algorithm>
#include <cmath>
#include <ostream>
#include <random>
#include <vector>

#include "backend/backend_test_util.h"
#include "backend/cpu/attention.h"
#include "backend/cpu/crossentropy.h"
#include "backend/cpu/encoder.h"
#include "backend/cpu/gelu.h"
#include "backend/cpu/layernorm.h"
#include "backend/cpu/matmul_ref.h"
#include "backend/cpu/reductions.h"
#include "backend/cpu/residual.h"

namespace mingpt::cpu {
namespace {

using testing::ExpectNear;
using testing::RandomInts;
using testing::ToDouble;
using testing::ToFloat;
using DVec = std::vector<double>;
using FVec = std::vector<float>;

// Random values that are exactly representable in float, in both types.
struct Data {
  FVec f;
  DVec d;
};
Data RandomData(std::mt19937_64& rng, size_t n, double lo = -1, double hi = 1) {
  Data x;
  x.f = ToFloat(testing::RandomVec(rng, n, lo, hi));
  x.d = ToDouble(x.f);
  return x;
}

double MaxAbs(const DVec& v) {
  double m = 0;
  for (double x : v) m = std::max(m, std::abs(x));
  return m;
}

// Float result vs double reference, tolerance relative to the tensor's scale.
void ExpectClose(const FVec& got, const DVec& want, const std::string& what,
                 double rtol = 2e-5) {
  ExpectNear(got, want, rtol, rtol * std::max(MaxAbs(want), 1e-6), what);
}

class CpuBackendTest : public ::testing::Test {
 protected:
  CpuBackend backend_{0};
  std::mt19937_64 rng_{42};
};

TEST_F(CpuBackendTest, MemoryIsAlignedAndCopies) {
  for (size_t bytes : {size_t(1), size_t(63), size_t(64), size_t(1000)}) {
    void* p = backend_.Malloc(bytes);
    ASSERT_NE(p, nullptr);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(p) % 64, 0u);
    std::vector<unsigned char> src(bytes, 7), dst(bytes, 1);
    backend_.CopyToDevice(p, src.data(), bytes);
    backend_.CopyToHost(dst.data(), p, bytes);
    EXPECT_EQ(dst, src);
    backend_.Memset0(p, bytes);
    backend_.CopyToHost(dst.data(), p, bytes);
    EXPECT_EQ(dst, std::vector<unsigned char>(bytes, 0));
    backend_.Free(p);
  }
  Buffer buf(&backend_, 100);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(buf.f32()) % 64, 0u);
}

TEST_F(CpuBackendTest, Encoder) {
  const int B = 4, T = 33, C = 80, V = 11;  // big enough to run threaded
  auto idx = RandomInts(rng_, B * T, V);
  Data wte = RandomData(rng_, V * C), wpe = RandomData(rng_, T * C),
       dout = RandomData(rng_, B * T * C), g0 = RandomData(rng_, V * C),
       p0 = RandomData(rng_, T * C);
  FVec out(B * T * C);
  DVec out_ref(B * T * C);
  backend_.EncoderForward(out.data(), idx.data(), wte.f.data(), wpe.f.data(), B,
                          T, C);
  EncoderForward(out_ref.data(), idx.data(), wte.d.data(), wpe.d.data(), B, T,
                 C);
  ExpectClose(out, out_ref, "out");
  FVec dwte = g0.f, dwpe = p0.f;
  DVec dwte_ref = g0.d, dwpe_ref = p0.d;
  backend_.EncoderBackward(dwte.data(), dwpe.data(), dout.f.data(), idx.data(),
                           B, T, C, V);
  EncoderBackward(dwte_ref.data(), dwpe_ref.data(), dout.d.data(), idx.data(),
                  B, T, C);
  ExpectClose(dwte, dwte_ref, "dwte");
  ExpectClose(dwpe, dwpe_ref, "dwpe");
}

// The fused residual add + layernorm: the same floats as Add then
// LayerNormForward (the same operations in the same order), bit for bit.
TEST_F(CpuBackendTest, ResidualLayerNormEqualsAddThenLayerNorm) {
  for (int C : {20, 48, 385}) {
    const int N = 37;
    Data x = RandomData(rng_, N * C, -3, 5), br = RandomData(rng_, N * C),
         w = RandomData(rng_, C), b = RandomData(rng_, C);
    FVec sum(N * C), out(N * C), mean(N), rstd(N);
    FVec sum2(N * C), out2(N * C), mean2(N), rstd2(N);
    backend_.ResidualLayerNormForward(sum.data(), out.data(), mean.data(), rstd.data(),
                                      x.f.data(), br.f.data(), w.f.data(), b.f.data(), N, C);
    backend_.Add(sum2.data(), x.f.data(), br.f.data(), static_cast<int64_t>(N) * C);
    backend_.LayerNormForward(out2.data(), mean2.data(), rstd2.data(), sum2.data(), w.f.data(),
                              b.f.data(), N, C);
    EXPECT_EQ(sum, sum2);
    EXPECT_EQ(out, out2);
    EXPECT_EQ(mean, mean2);
    EXPECT_EQ(rstd, rstd2);
  }
}

TEST_F(CpuBackendTest, LayerNorm) {
  for (int C : {20, 48, 385}) {
    const int N = 37;
    Data x = RandomData(rng_, N * C, -3, 5), w = RandomData(rng_, C),
         b = RandomData(rng_, C), dout = RandomData(rng_, N * C),
         dx0 = RandomData(rng_, N * C), dw0 = RandomData(rng_, C),
         db0 = RandomData(rng_, C);
    FVec out(N * C), mean(N), rstd(N);
    DVec out_ref(N * C), mean_ref(N), rstd_ref(N);
    backend_.LayerNormForward(out.data(), mean.data(), rstd.data(), x.f.data(),
                              w.f.data(), b.f.data(), N, C);
    LayerNormForward(out_ref.data(), mean_ref.data(), rstd_ref.data(),
                     x.d.data(), w.d.data(), b.d.data(), N, C);
    ExpectClose(out, out_ref, "out");
    ExpectClose(mean, mean_ref, "mean");
    ExpectClose(rstd, rstd_ref, "rstd");
    FVec dx = dx0.f, dw = dw0.f, db = db0.f;
    DVec dx_ref = dx0.d, dw_ref = dw0.d, db_ref = db0.d;
    backend_.LayerNormBackward(dx.data(), dw.data(), db.data(), dout.f.data(),
                               x.f.data(), w.f.data(), mean.data(), rstd.data(),
                               N, C);
    LayerNormBackward(dx_ref.data(), dw_ref.data(), db_ref.data(),
                      dout.d.data(), x.d.data(), w.d.data(), mean_ref.data(),
                      rstd_ref.data(), N, C);
    ExpectClose(dx, dx_ref, "dx");
    ExpectClose(dw, dw_ref, "dw");
    ExpectClose(db, db_ref, "db");
  }
}

struct MatmulCase {
  int N, IC, OC;
  bool bias, accumulate, with_dinp, with_dbias;
};

void PrintTo(const MatmulCase& c, std::ostream* os) {
  *os << c.N << "x" << c.IC << "x" << c.OC << (c.bias ? " bias" : " no-bias")
      << (c.accumulate ? " dinp+=" : " dinp=")
      << (c.with_dinp ? "" : " dinp-null")
      << (c.with_dbias ? "" : " dbias-null");
}

class MatmulTest : public CpuBackendTest,
                   public ::testing::WithParamInterface<MatmulCase> {};

TEST_P(MatmulTest, OnednnMatchesReference) {
  const MatmulCase c = GetParam();
  const int N = c.N, IC = c.IC, OC = c.OC;
  Data inp = RandomData(rng_, N * IC), W = RandomData(rng_, OC * IC),
       bias = RandomData(rng_, OC), dout = RandomData(rng_, N * OC),
       dinp0 = RandomData(rng_, N * IC), dW0 = RandomData(rng_, OC * IC),
       db0 = RandomData(rng_, OC);
  for (int rep = 0; rep < 2; ++rep) {  // the second call runs cached primitives
    FVec out(N * OC, NAN);
    DVec out_ref(N * OC);
    backend_.MatmulForward(out.data(), inp.f.data(), W.f.data(),
                           c.bias ? bias.f.data() : nullptr, N, IC, OC);
    MatmulForwardRef(out_ref.data(), inp.d.data(), W.d.data(),
                     c.bias ? bias.d.data() : nullptr, N, IC, OC);
    ExpectClose(out, out_ref, "out");

    FVec dinp = c.accumulate ? dinp0.f : FVec(N * IC, NAN);
    FVec dW = dW0.f, db = db0.f;
    DVec dinp_ref = dinp0.d, dW_ref = dW0.d, db_ref = db0.d;
    backend_.MatmulBackward(c.with_dinp ? dinp.data() : nullptr, dW.data(),
                            c.with_dbias ? db.data() : nullptr, dout.f.data(),
                            inp.f.data(), W.f.data(), N, IC, OC, c.accumulate);
    MatmulBackwardRef(c.with_dinp ? dinp_ref.data() : nullptr, dW_ref.data(),
                      c.with_dbias ? db_ref.data() : nullptr, dout.d.data(),
                      inp.d.data(), W.d.data(), N, IC, OC, c.accumulate);
    if (c.with_dinp) ExpectClose(dinp, dinp_ref, "dinp");
    ExpectClose(dW, dW_ref, "dW");
    if (c.with_dbias) {
      ExpectClose(db, db_ref, "dbias");
    } else {
      EXPECT_EQ(db, db0.f);
    }
  }
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, MatmulTest,
    ::testing::Values(MatmulCase{7, 13, 5, true, false, true, true},
                      MatmulCase{7, 13, 5, true, true, true, true},
                      MatmulCase{7, 13, 5, false, false, true, false},
                      MatmulCase{7, 13, 5, false, true, false, false},
                      MatmulCase{1, 1, 1, true, true, true, true},
                      MatmulCase{1, 1, 1, false, false, true, true},
                      MatmulCase{33, 48, 144, true, false, true, true},
                      MatmulCase{64, 384, 384, true, true, true, true},
                      MatmulCase{130, 385, 65, false, false, true, false}));

TEST_F(CpuBackendTest, MatmulPrimitivesAreCached) {
  const int N = 9, IC = 12, OC = 10;
  Data inp = RandomData(rng_, N * IC), W = RandomData(rng_, OC * IC),
       bias = RandomData(rng_, OC), dout = RandomData(rng_, N * OC);
  FVec out(N * OC), dinp(N * IC), dW(OC * IC, 0), db(OC, 0);
  auto step = [&] {
    backend_.MatmulForward(out.data(), inp.f.data(), W.f.data(), bias.f.data(),
                           N, IC, OC);
    backend_.MatmulBackward(dinp.data(), dW.data(), db.data(), dout.f.data(),
                            inp.f.data(), W.f.data(), N, IC, OC, false);
  };
  EXPECT_EQ(backend_.num_matmul_primitives(), 0u);
  step();
  const size_t warm = backend_.num_matmul_primitives();
  EXPECT_EQ(warm, 3u);  // forward, backward-data, backward-weights
  for (int i = 0; i < 3; ++i) step();
  EXPECT_EQ(backend_.num_matmul_primitives(), warm);
  backend_.MatmulForward(out.data(), inp.f.data(), W.f.data(), nullptr, N, IC,
                         OC);
  EXPECT_EQ(backend_.num_matmul_primitives(), warm + 1);  // bias is in the key
  // Zero rows: nothing to do, nothing created, nothing touched.
  backend_.MatmulForward(out.data(), inp.f.data(), W.f.data(), nullptr, 0, IC,
                         OC);
  backend_.MatmulBackward(dinp.data(), dW.data(), db.data(), dout.f.data(),
                          inp.f.data(), W.f.data(), 0, IC, OC, true);
  EXPECT_EQ(backend_.num_matmul_primitives(), warm + 1);
}

struct AttnShape {
  int B, T, C, NH;
};

DropoutSpec AttnDropout(float p) { return testing::FixedDropout(p, 99, 3, 1, 11); }

TEST_F(CpuBackendTest, AttentionMatchesReference) {
  for (AttnShape s : {AttnShape{1, 1, 4, 1}, AttnShape{2, 33, 48, 3},
                      AttnShape{3, 17, 20, 4}, AttnShape{1, 64, 128, 2}}) {
    for (float p : {0.0f, 0.1f}) {
      const int B = s.B, T = s.T, C = s.C, NH = s.NH;
      const DropoutSpec d = AttnDropout(p);
      Data q = RandomData(rng_, B * T * C, -2, 2),
           k = RandomData(rng_, B * T * C, -2, 2),
           v = RandomData(rng_, B * T * C), dout = RandomData(rng_, B * T * C);
      FVec out(B * T * C), probs(B * NH * T, NAN);
      DVec out_ref(B * T * C), probs_ref(B * NH * T);
      backend_.AttentionForward(out.data(), probs.data(), q.f.data(),
                                k.f.data(), v.f.data(), B, T, C, NH, d);
      DVec scratch(AttentionScratchSize(T, C, NH, 2));
      AttentionForward(out_ref.data(), probs_ref.data(), q.d.data(), k.d.data(),
                       v.d.data(), B, T, C, NH, d, scratch.data(), 2);
      ExpectClose(out, out_ref, "out");
      ExpectClose(probs, probs_ref, "lse");
      FVec dq(B * T * C, NAN), dk(B * T * C, NAN), dv(B * T * C, NAN);
      DVec dq_ref(B * T * C), dk_ref(B * T * C), dv_ref(B * T * C);
      backend_.AttentionBackward(dq.data(), dk.data(), dv.data(), dout.f.data(),
                                 q.f.data(), k.f.data(), v.f.data(), out.data(),
                                 probs.data(), B, T, C, NH, d);
      AttentionBackward(dq_ref.data(), dk_ref.data(), dv_ref.data(),
                        dout.d.data(), q.d.data(), k.d.data(), v.d.data(), out_ref.data(),
                        probs_ref.data(), B, T, C, NH, d, scratch.data(), 2);
      // Absolute errors relative to the largest of the three gradients: at
      // T = 1 the exact dq and dk are zero, and delta_i = dout_i . out_i
      // cancels P dP only to float rounding.
      const double g = std::max({MaxAbs(dq_ref), MaxAbs(dk_ref), MaxAbs(dv_ref), 1e-6});
      ExpectNear(dq, dq_ref, 1e-4, 1e-4 * g, "dq");
      ExpectNear(dk, dk_ref, 1e-4, 1e-4 * g, "dk");
      ExpectClose(dv, dv_ref, "dv");
    }
  }
}

// The forward keeps, per row, only lse_i = log sum_{j <= i} exp(q_i . k_j /
// sqrt(hs)) (the backward recomputes P from it): every entry written, and
// equal to the sum computed directly in double precision.
TEST_F(CpuBackendTest, AttentionSavesEachRowsLogSumExp) {
  const int B = 2, T = 19, C = 24, NH = 3, hs = C / NH;
  Data q = RandomData(rng_, B * T * C, -3, 3),
       k = RandomData(rng_, B * T * C, -3, 3), v = RandomData(rng_, B * T * C);
  FVec out(B * T * C), lse(B * NH * T, NAN);  // NaN: every entry must be written
  backend_.AttentionForward(out.data(), lse.data(), q.f.data(), k.f.data(),
                            v.f.data(), B, T, C, NH, AttnDropout(0.2f));
  for (int b = 0; b < B; ++b) {
    for (int h = 0; h < NH; ++h) {
      for (int i = 0; i < T; ++i) {
        double sum = 0;
        for (int j = 0; j <= i; ++j) {
          double s = 0;
          for (int c = 0; c < hs; ++c) {
            s += double(q.f[(b * T + i) * C + h * hs + c]) * k.f[(b * T + j) * C + h * hs + c];
          }
          sum += std::exp(s / std::sqrt(double(hs)));
        }
        const float got = lse[(b * NH + h) * T + i];
        EXPECT_NEAR(got, std::log(sum), 1e-5 * std::max(1.0, std::abs(std::log(sum))))
            << "b " << b << " h " << h << " i " << i;
      }
    }
  }
}

TEST_F(CpuBackendTest, AttentionIsCausal) {
  const int B = 2, T = 12, C = 16, NH = 2;
  for (float p : {0.0f, 0.25f}) {
    Data q = RandomData(rng_, B * T * C), k = RandomData(rng_, B * T * C),
         v = RandomData(rng_, B * T * C);
    FVec out(B * T * C), probs(B * NH * T);
    backend_.AttentionForward(out.data(), probs.data(), q.f.data(), k.f.data(),
                              v.f.data(), B, T, C, NH, AttnDropout(p));
    for (int j = 1; j < T; ++j) {
      FVec k2 = k.f, v2 = v.f, q2 = q.f, out2(B * T * C);
      for (int b = 0; b < B; ++b) {
        for (int c = 0; c < C; ++c) {  // perturb position j (and later ones' q)
          k2[(b * T + j) * C + c] += 1.5f;
          v2[(b * T + j) * C + c] -= 2.0f;
          q2[(b * T + j) * C + c] *= -1.0f;
        }
      }
      backend_.AttentionForward(out2.data(), probs.data(), q2.data(), k2.data(),
                                v2.data(), B, T, C, NH, AttnDropout(p));
      bool later_changed = false;
      for (int b = 0; b < B; ++b) {
        for (int i = 0; i < T; ++i) {
          for (int c = 0; c < C; ++c) {
            const int e = (b * T + i) * C + c;
            if (i < j) {
              ASSERT_EQ(out2[e], out[e]) << "position " << i << " saw " << j;
            } else if (out2[e] != out[e]) {
              later_changed = true;
            }
          }
        }
      }
      EXPECT_TRUE(later_changed) << "perturbation at " << j << " had no effect";
    }
  }
}

// The float GELU (AVX2 path where built, scalar otherwise, including the
// n % 8 tail) against the double kernels on a dense grid over [-12, 12]:
// |error| <= 1e-6 * max(1, |exact|) for GELU and for its derivative.
TEST(GeluFloatAccuracy, DenseGridAgainstDouble) {
  const int64_t n = 240007;  // odd: the vector path's scalar tail runs too
  FVec x(n), ones(n, 1.0f), y(n), g(n);
  for (int64_t i = 0; i < n; ++i) {
    x[i] = static_cast<float>(-12.0 + 24.0 * static_cast<double>(i) / (n - 1));
  }
  x[n / 2] = 0.0f;
  const DVec xd = ToDouble(x), onesd(n, 1.0);
  DVec yr(n), gr(n);
  GeluForward(y.data(), x.data(), n);
  GeluForward(yr.data(), xd.data(), n);
  GeluBackward(g.data(), x.data(), ones.data(), n);
  GeluBackward(gr.data(), xd.data(), onesd.data(), n);
  double worst_y = 0, worst_g = 0;
  for (int64_t i = 0; i < n; ++i) {
    worst_y = std::max(worst_y, std::abs(y[i] - yr[i]) /
                                    std::max(1.0, std::abs(yr[i])));
    worst_g = std::max(worst_g, std::abs(g[i] - gr[i]) /
                                    std::max(1.0, std::abs(gr[i])));
  }
  EXPECT_LE(worst_y, 1e-6);
  EXPECT_LE(worst_g, 1e-6);
  EXPECT_EQ(y[n / 2], 0.0f);
  EXPECT_EQ(g[n / 2], 0.5f);
  // In place, both directions, at a size with a tail.
  FVec inplace(x.begin(), x.begin() + 13);
  GeluForward(inplace.data(), inplace.data(), 13);
  for (int i = 0; i < 13; ++i) EXPECT_EQ(inplace[i], y[i]);
  FVec d(13, 1.0f);
  GeluBackward(d.data(), x.data(), d.data(), 13);
  for (int i = 0; i < 13; ++i) EXPECT_EQ(d[i], g[i]);
}

TEST_F(CpuBackendTest, ElementwiseOps) {
  const int64_t n = 5003;  // big enough to run threaded
  Data x = RandomData(rng_, n, -6, 6), y = RandomData(rng_, n),
       dout = RandomData(rng_, n);
  FVec out(n);
  DVec out_ref(n);
  backend_.GeluForward(out.data(), x.f.data(), n);
  GeluForward(out_ref.data(), x.d.data(), n);
  ExpectClose(out, out_ref, "gelu");
  backend_.GeluBackward(out.data(), x.f.data(), dout.f.data(), n);
  GeluBackward(out_ref.data(), x.d.data(), dout.d.data(), n);
  ExpectClose(out, out_ref, "gelu backward");
  FVec inplace = x.f;
  backend_.GeluForward(inplace.data(), inplace.data(), n);
  GeluForward(out_ref.data(), x.d.data(), n);
  ExpectClose(inplace, out_ref, "gelu in place");

  backend_.Add(out.data(), x.f.data(), y.f.data(), n);
  Add(out_ref.data(), x.d.data(), y.d.data(), n);
  ExpectClose(out, out_ref, "add", 1e-7);
  FVec a = x.f;
  backend_.Add(a.data(), a.data(), y.f.data(), n);
  EXPECT_EQ(a, out);

  double ss_ref = 0;
  for (double v : x.d) ss_ref += v * v;
  EXPECT_NEAR(backend_.SumSquares(x.f.data(), n), ss_ref, 1e-12 * ss_ref);
  FVec scaled = x.f;
  backend_.Scale(scaled.data(), n, 0.25f);
  for (int64_t i = 0; i < n; ++i) EXPECT_EQ(scaled[i], x.f[i] * 0.25f);
}

TEST_F(CpuBackendTest, CrossEntropy) {
  for (int V : {65, 1000}) {
    const int N = 23;
    const float dloss = 1.0f / N;
    Data logits = RandomData(rng_, N * V, -8, 8);
    auto targets = RandomInts(rng_, N, V);
    FVec losses(N), dlogits(N * V);
    DVec losses_ref(N), dlogits_ref(N * V);
    backend_.CrossEntropyForward(losses.data(), logits.f.data(), targets.data(),
                                 N, V);
    CrossEntropyForward(losses_ref.data(), logits.d.data(), targets.data(), N,
                        V);
    ExpectClose(losses, losses_ref, "losses");
    backend_.CrossEntropyForwardBackward(losses.data(), dlogits.data(),
                                         logits.f.data(), targets.data(), N, V,
                                         dloss);
    CrossEntropyForwardBackward(losses_ref.data(), dlogits_ref.data(),
                                logits.d.data(), targets.data(), N, V,
                                double(dloss));
    ExpectClose(losses, losses_ref, "losses (fused)");
    ExpectClose(dlogits, dlogits_ref, "dlogits");
    FVec aliased = logits.f;
    backend_.CrossEntropyForwardBackward(losses.data(), aliased.data(),
                                         aliased.data(), targets.data(), N, V,
                                         dloss);
    EXPECT_EQ(aliased, dlogits);
  }
}

}  // namespace
}  // namespace mingpt::cpu
