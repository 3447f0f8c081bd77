// Every op's backward on the double-precision reference kernels against
// central finite differences of L = sum(out * r), r random; also each
// forward against a direct, naive evaluation of its formula.
#include <cmath>
#include <random>
#include <vector>

#include "backend/backend_test_util.h"
#include "backend/cpu/attention.h"
#include "backend/cpu/crossentropy.h"
#include "backend/cpu/dropout.h"
#include "backend/cpu/encoder.h"
#include "backend/cpu/gelu.h"
#include "backend/cpu/layernorm.h"
#include "backend/cpu/matmul_ref.h"
#include "backend/cpu/residual.h"

namespace mingpt::cpu {
namespace {

using testing::Dot;
using testing::MaxRelError;
using testing::Minus;
using testing::NumericGrad;
using testing::RandomInts;
using testing::RandomVec;
using Vec = std::vector<double>;

constexpr double kTol = 1e-6;

DropoutSpec TestDropout(float p) { return testing::FixedDropout(p, 1234, 7, 3, 5); }

TEST(GradCheck, Encoder) {
  std::mt19937_64 rng(1);
  const int B = 2, T = 3, C = 5, V = 4;
  auto idx = RandomInts(rng, B * T, V);
  Vec wte = RandomVec(rng, V * C), wpe = RandomVec(rng, T * C);
  Vec r = RandomVec(rng, B * T * C), out(B * T * C);
  auto loss = [&] {
    EncoderForward(out.data(), idx.data(), wte.data(), wpe.data(), B, T, C);
    return Dot(out, r);
  };
  loss();
  for (int n = 0; n < B * T; ++n) {
    for (int c = 0; c < C; ++c) {
      EXPECT_EQ(out[n * C + c], wte[idx[n] * C + c] + wpe[(n % T) * C + c]);
    }
  }
  Vec dwte0 = RandomVec(rng, V * C), dwpe0 = RandomVec(rng, T * C);
  Vec dwte = dwte0, dwpe = dwpe0;
  EncoderBackward(dwte.data(), dwpe.data(), r.data(), idx.data(), B, T, C);
  EXPECT_LT(MaxRelError(Minus(dwte, dwte0), NumericGrad(wte, loss)), kTol);
  EXPECT_LT(MaxRelError(Minus(dwpe, dwpe0), NumericGrad(wpe, loss)), kTol);
}

TEST(GradCheck, LayerNorm) {
  std::mt19937_64 rng(2);
  for (int C : {2, 7, 33}) {
    const int N = 3;
    Vec x = RandomVec(rng, N * C, -2, 2), w = RandomVec(rng, C),
        b = RandomVec(rng, C), r = RandomVec(rng, N * C);
    Vec out(N * C), mean(N), rstd(N);
    auto loss = [&] {
      LayerNormForward(out.data(), mean.data(), rstd.data(), x.data(), w.data(),
                       b.data(), N, C);
      return Dot(out, r);
    };
    loss();
    for (int n = 0; n < N; ++n) {  // naive two-pass formula
      double m = 0, var = 0;
      for (int c = 0; c < C; ++c) m += x[n * C + c] / C;
      for (int c = 0; c < C; ++c)
        var += (x[n * C + c] - m) * (x[n * C + c] - m) / C;
      for (int c = 0; c < C; ++c) {
        const double want =
            (x[n * C + c] - m) / std::sqrt(var + 1e-5) * w[c] + b[c];
        EXPECT_NEAR(out[n * C + c], want, 1e-12);
      }
      EXPECT_NEAR(mean[n], m, 1e-12);
    }
    Vec dx0 = RandomVec(rng, N * C), dw0 = RandomVec(rng, C),
        db0 = RandomVec(rng, C);
    Vec dx = dx0, dw = dw0, db = db0;
    LayerNormBackward(dx.data(), dw.data(), db.data(), r.data(), x.data(),
                      w.data(), mean.data(), rstd.data(), N, C);
    EXPECT_LT(MaxRelError(Minus(dx, dx0), NumericGrad(x, loss)), kTol) << C;
    EXPECT_LT(MaxRelError(Minus(dw, dw0), NumericGrad(w, loss)), kTol) << C;
    EXPECT_LT(MaxRelError(Minus(db, db0), NumericGrad(b, loss)), kTol) << C;
  }
}

TEST(GradCheck, MatmulReference) {
  std::mt19937_64 rng(3);
  struct Shape {
    int N, IC, OC;
  };
  for (Shape s : {Shape{1, 1, 1}, Shape{4, 5, 3}, Shape{7, 13, 5}}) {
    for (bool with_bias : {true, false}) {
      for (bool accumulate : {true, false}) {
        const int N = s.N, IC = s.IC, OC = s.OC;
        Vec inp = RandomVec(rng, N * IC), W = RandomVec(rng, OC * IC),
            bias = RandomVec(rng, OC), r = RandomVec(rng, N * OC), out(N * OC);
        const double* bias_ptr = with_bias ? bias.data() : nullptr;
        auto loss = [&] {
          MatmulForwardRef(out.data(), inp.data(), W.data(), bias_ptr, N, IC,
                           OC);
          return Dot(out, r);
        };
        loss();
        for (int n = 0; n < N; ++n) {
          for (int o = 0; o < OC; ++o) {
            double want = with_bias ? bias[o] : 0;
            for (int i = 0; i < IC; ++i)
              want += inp[n * IC + i] * W[o * IC + i];
            EXPECT_NEAR(out[n * OC + o], want, 1e-12);
          }
        }
        Vec dinp0 = RandomVec(rng, N * IC), dW0 = RandomVec(rng, OC * IC),
            db0 = RandomVec(rng, OC);
        Vec dinp = dinp0, dW = dW0, db = db0;
        MatmulBackwardRef(dinp.data(), dW.data(),
                          with_bias ? db.data() : nullptr, r.data(), inp.data(),
                          W.data(), N, IC, OC, accumulate);
        Vec dinp_new = accumulate ? Minus(dinp, dinp0) : dinp;
        EXPECT_LT(MaxRelError(dinp_new, NumericGrad(inp, loss)), kTol);
        EXPECT_LT(MaxRelError(Minus(dW, dW0), NumericGrad(W, loss)), kTol);
        if (with_bias) {
          EXPECT_LT(MaxRelError(Minus(db, db0), NumericGrad(bias, loss)), kTol);
        } else {
          EXPECT_EQ(db, db0);
        }
      }
    }
  }
}

// Attention written the naive way: full score matrix, -inf mask, softmax,
// dropout element by element through DropoutKeep.
Vec NaiveAttention(const Vec& q, const Vec& k, const Vec& v, int B, int T,
                   int C, int NH, const DropoutSpec& d) {
  const int hs = C / NH;
  Vec out(B * T * C, 0.0);
  for (int b = 0; b < B; ++b) {
    for (int h = 0; h < NH; ++h) {
      for (int i = 0; i < T; ++i) {
        std::vector<double> s(T);
        double mx = -INFINITY;
        for (int j = 0; j < T; ++j) {
          double dot = 0;
          for (int c = 0; c < hs; ++c) {
            dot += q[(b * T + i) * C + h * hs + c] *
                   k[(b * T + j) * C + h * hs + c];
          }
          s[j] = j <= i ? dot / std::sqrt(double(hs)) : -INFINITY;
          mx = std::max(mx, s[j]);
        }
        double sum = 0;
        for (int j = 0; j < T; ++j) sum += std::exp(s[j] - mx);
        for (int j = 0; j < T; ++j) {
          double p = std::exp(s[j] - mx) / sum;
          if (d.enabled()) {
            p = DropoutKeep(d, b, (int64_t(h) * T + i) * T + j)
                    ? p * double(d.scale())
                    : 0.0;
          }
          for (int c = 0; c < hs; ++c) {
            out[(b * T + i) * C + h * hs + c] +=
                p * v[(b * T + j) * C + h * hs + c];
          }
        }
      }
    }
  }
  return out;
}

TEST(GradCheck, Attention) {
  std::mt19937_64 rng(4);
  struct Shape {
    int B, T, C, NH;
  };
  // T = 70: three blocks of query rows and of key tiles (32 each), the last
  // partial, so that the online softmax, delta_i and the kept dropout bits
  // span tiles.
  for (Shape s : {Shape{1, 1, 4, 1}, Shape{2, 5, 6, 2}, Shape{1, 6, 20, 4},
                  Shape{2, 4, 7, 1}, Shape{1, 9, 24, 3}, Shape{1, 17, 20, 2},
                  Shape{1, 70, 6, 2}}) {
    for (float p : {0.0f, 0.3f}) {
      const int B = s.B, T = s.T, C = s.C, NH = s.NH;
      const DropoutSpec d = TestDropout(p);
      Vec q = RandomVec(rng, B * T * C, -2, 2),
          k = RandomVec(rng, B * T * C, -2, 2), v = RandomVec(rng, B * T * C),
          r = RandomVec(rng, B * T * C);
      Vec out(B * T * C), probs(B * NH * T);
      const int threads = 3;  // more threads than (b, h) pairs in some shapes
      Vec scratch(AttentionScratchSize(T, C, NH, threads));
      auto loss = [&] {
        AttentionForward(out.data(), probs.data(), q.data(), k.data(), v.data(),
                         B, T, C, NH, d, scratch.data(), threads);
        return Dot(out, r);
      };
      loss();
      EXPECT_LT(MaxRelError(out, NaiveAttention(q, k, v, B, T, C, NH, d)),
                1e-12);
      Vec dq(B * T * C, 9.0), dk(B * T * C, 9.0), dv(B * T * C, 9.0);
      AttentionBackward(dq.data(), dk.data(), dv.data(), r.data(), q.data(),
                        k.data(), v.data(), out.data(), probs.data(), B, T, C, NH, d,
                        scratch.data(), threads);
      const char* what = p > 0 ? "dropout on" : "dropout off";
      // Errors relative to the op's largest gradient: at T = 1 the exact dq
      // and dk are zero (one visible key), and delta_i = dout_i . out_i
      // cancels P dP only to rounding.
      const Vec nq = NumericGrad(q, loss), nk = NumericGrad(k, loss), nv = NumericGrad(v, loss);
      double scale = 0;
      for (const Vec* g : {&nq, &nk, &nv}) {
        for (double x : *g) scale = std::max(scale, std::abs(x));
      }
      EXPECT_LT(MaxRelError(dq, nq, scale), kTol) << what << " T=" << T;
      EXPECT_LT(MaxRelError(dk, nk, scale), kTol) << what << " T=" << T;
      EXPECT_LT(MaxRelError(dv, nv, scale), kTol) << what << " T=" << T;
    }
  }
}

TEST(GradCheck, Gelu) {
  std::mt19937_64 rng(5);
  const int n = 41;
  Vec x = RandomVec(rng, n, -5, 5), r = RandomVec(rng, n), out(n);
  x[0] = 0.0;
  auto loss = [&] {
    GeluForward(out.data(), x.data(), n);
    return Dot(out, r);
  };
  loss();
  for (int i = 0; i < n; ++i) {  // x * Phi(x), Phi through erfc
    EXPECT_NEAR(out[i], x[i] * 0.5 * std::erfc(-x[i] / std::sqrt(2.0)), 1e-14);
  }
  Vec dx(n);
  GeluBackward(dx.data(), x.data(), r.data(), n);
  EXPECT_LT(MaxRelError(dx, NumericGrad(x, loss)), kTol);
  Vec inplace = r;  // dx aliasing dout
  GeluBackward(inplace.data(), x.data(), inplace.data(), n);
  EXPECT_EQ(inplace, dx);
}

TEST(GradCheck, Dropout) {
  std::mt19937_64 rng(6);
  const int B = 3;
  const int64_t row = 10;
  const DropoutSpec d = TestDropout(0.4f);
  Vec x = RandomVec(rng, B * row), r = RandomVec(rng, B * row), y(B * row);
  auto loss = [&] {
    DropoutForward(y.data(), x.data(), B, row, d);
    return Dot(y, r);
  };
  loss();
  Vec dx(B * row);
  DropoutForward(dx.data(), r.data(), B, row, d);  // backward = same call
  EXPECT_LT(MaxRelError(dx, NumericGrad(x, loss)), kTol);
}

TEST(GradCheck, ResidualAdd) {
  std::mt19937_64 rng(7);
  const int n = 19;
  Vec a = RandomVec(rng, n), b = RandomVec(rng, n), r = RandomVec(rng, n),
      out(n);
  auto loss = [&] {
    Add(out.data(), a.data(), b.data(), n);
    return Dot(out, r);
  };
  loss();
  for (int i = 0; i < n; ++i) EXPECT_EQ(out[i], a[i] + b[i]);
  EXPECT_LT(MaxRelError(r, NumericGrad(a, loss)), kTol);
  EXPECT_LT(MaxRelError(r, NumericGrad(b, loss)), kTol);
}

TEST(GradCheck, CrossEntropy) {
  std::mt19937_64 rng(8);
  for (int V : {1, 2, 5, 65}) {
    const int N = 4;
    const double dloss = 0.37;
    Vec logits = RandomVec(rng, N * V, -4, 4), losses(N);
    auto targets = RandomInts(rng, N, V);
    auto loss = [&] {
      CrossEntropyForward(losses.data(), logits.data(), targets.data(), N, V);
      double s = 0;
      for (double l : losses) s += dloss * l;
      return s;
    };
    loss();
    for (int n = 0; n < N; ++n) {  // -log softmax, straight from exp/log
      long double z = 0;
      for (int j = 0; j < V; ++j) z += std::exp((long double)logits[n * V + j]);
      const double want =
          -std::log(std::exp((long double)logits[n * V + targets[n]]) / z);
      EXPECT_NEAR(losses[n], want, 1e-12);
    }
    Vec dlogits(N * V), losses2(N);
    CrossEntropyForwardBackward(losses2.data(), dlogits.data(), logits.data(),
                                targets.data(), N, V, dloss);
    EXPECT_EQ(losses2, losses);
    EXPECT_LT(MaxRelError(dlogits, NumericGrad(logits, loss)), kTol) << V;
    Vec aliased = logits;  // dlogits written over the logits
    CrossEntropyForwardBackward(losses2.data(), aliased.data(), aliased.data(),
                                targets.data(), N, V, dloss);
    EXPECT_EQ(aliased, dlogits);
  }
}

TEST(CrossEntropy, StableForHugeLogits) {
  const int V = 3;
  std::vector<double> logits = {1000.0, -1000.0, 999.0};
  std::vector<int32_t> target = {2};
  double loss = 0;
  std::vector<double> d(V);
  CrossEntropyForwardBackward(&loss, d.data(), logits.data(), target.data(), 1,
                              V, 1.0);
  EXPECT_NEAR(loss, std::log1p(std::exp(-1.0)) + 1.0, 1e-12);
  for (double x : d) EXPECT_TRUE(std::isfinite(x));
  std::vector<float> lf = {1e30f, 0.0f, -1e30f};
  float lossf = 0;
  CrossEntropyForward(&lossf, lf.data(), target.data(), 1, V);
  EXPECT_TRUE(std::isinf(lossf) || lossf > 1e29f);  // -log(0): huge, not NaN
  EXPECT_FALSE(std::isnan(lossf));
}

}  // namespace
}  // namespace mingpt::cpu
