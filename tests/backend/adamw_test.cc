// AdamW (float backend and double kernel) against a hand-written double
// implementation of torch.optim.AdamW's update, over several steps.
#include "backend/cpu/adamw.h"

#include <cmath>
#include <random>
#include <vector>

#include "backend/backend_test_util.h"
#include "backend/cpu/cpu_backend.h"

namespace mingpt::cpu {
namespace {

struct Hyper {
  double lr, b1, b2, eps, wd;
};

// The textbook decoupled-weight-decay Adam step, in double.
void FormulaStep(std::vector<double>& p, const std::vector<double>& g,
                 std::vector<double>& m, std::vector<double>& v, Hyper h,
                 int t) {
  for (size_t i = 0; i < p.size(); ++i) {
    p[i] -= h.lr * h.wd * p[i];
    m[i] = h.b1 * m[i] + (1 - h.b1) * g[i];
    v[i] = h.b2 * v[i] + (1 - h.b2) * g[i] * g[i];
    const double m_hat = m[i] / (1 - std::pow(h.b1, t));
    const double v_hat = v[i] / (1 - std::pow(h.b2, t));
    p[i] -= h.lr * m_hat / (std::sqrt(v_hat) + h.eps);
  }
}

class AdamWTest : public ::testing::TestWithParam<double> {};

TEST_P(AdamWTest, MatchesFormulaOverSteps) {
  const double wd = GetParam();
  // Float-representable hyperparameters, so both sides use the same values.
  const Hyper h{double(1e-2f), double(0.9f), double(0.95f), double(1e-8f),
                double(float(wd))};
  const int n = 10007;
  std::mt19937_64 rng(11);
  auto p0 = testing::ToDouble(testing::ToFloat(testing::RandomVec(rng, n)));
  std::vector<double> p = p0, m(n, 0), v(n, 0);     // formula
  std::vector<double> pd = p0, md(n, 0), vd(n, 0);  // double kernel
  std::vector<float> pf = testing::ToFloat(p0), mf(n, 0), vf(n, 0);  // backend
  CpuBackend backend(0);
  for (int t = 1; t <= 6; ++t) {
    auto g =
        testing::ToDouble(testing::ToFloat(testing::RandomVec(rng, n, -3, 3)));
    g[0] = 0;  // a zero gradient: the step is decay only, eps keeps it finite
    if (t == 1) {
      g[1] = 1e-3;  // |g| >> eps: the first step moves by ~lr (bias correction)
    }
    auto gf = testing::ToFloat(g);
    FormulaStep(p, g, m, v, h, t);
    AdamW(pd.data(), g.data(), md.data(), vd.data(), n, h.lr, h.b1, h.b2, h.eps,
          h.wd, t);
    backend.AdamW(pf.data(), gf.data(), mf.data(), vf.data(), n, float(h.lr),
                  float(h.b1), float(h.b2), float(h.eps), float(h.wd), t);
    if (t == 1) {
      EXPECT_NEAR(p[1] - p0[1] * (1 - h.lr * h.wd), -h.lr,
                  2e-5 * h.lr);  // eps/|g| = 1e-5
      EXPECT_NEAR(pd[1] - p0[1] * (1 - h.lr * h.wd), -h.lr,
                  2e-5 * h.lr);  // eps/|g| = 1e-5
    }
    EXPECT_LT(testing::MaxRelError(pd, p), 1e-12) << "step " << t;
    EXPECT_LT(testing::MaxRelError(md, m), 1e-12) << "step " << t;
    EXPECT_LT(testing::MaxRelError(vd, v), 1e-12) << "step " << t;
    testing::ExpectNear(pf, p, 1e-6, 1e-6, "float p step " + std::to_string(t));
    testing::ExpectNear(mf, m, 1e-5, 1e-6, "float m step " + std::to_string(t));
    testing::ExpectNear(vf, v, 1e-5, 1e-6, "float v step " + std::to_string(t));
  }
  if (wd == 0) {
    EXPECT_EQ(p[0], p0[0]);  // zero gradient, no decay: untouched
    EXPECT_EQ(pd[0], p0[0]);
  } else {
    EXPECT_NE(pd[0], p0[0]);
    EXPECT_NEAR(pd[0], p0[0] * std::pow(1 - h.lr * h.wd, 6), 1e-12);
  }
}

INSTANTIATE_TEST_SUITE_P(WeightDecay, AdamWTest, ::testing::Values(0.0, 0.1));

// Several tensors of one buffer with their own weight decay and the
// gradients read scaled (clipping and loss scaling folded in): the formula
// on the scaled gradients, each tensor with its decay; gaps untouched.
TEST(AdamWTensorsTest, ScaledGradientsAndEachTensorsDecay) {
  const Hyper h{double(1e-2f), double(0.9f), double(0.95f), double(1e-8f), 0};
  const std::vector<Backend::AdamWTensor> tensors = {
      {0, 300, 0.0f}, {301, 5000, 0.1f}, {5301, 7, 0.0f}, {5310, 1025, 0.25f}};
  const int n = 6400;
  const float scale = 0.3125f;  // exact in float: the formula's g * scale is the kernel's
  std::mt19937_64 rng(12);
  const auto p0 = testing::ToDouble(testing::ToFloat(testing::RandomVec(rng, n)));
  std::vector<double> p = p0, m(n, 0), v(n, 0);
  std::vector<float> pf = testing::ToFloat(p0), mf(n, 0), vf(n, 0);
  CpuBackend backend(0);
  for (int t = 1; t <= 3; ++t) {
    const auto g = testing::ToDouble(testing::ToFloat(testing::RandomVec(rng, n, -3, 3)));
    const auto gf = testing::ToFloat(g);
    backend.AdamWTensors(pf.data(), gf.data(), mf.data(), vf.data(), tensors.data(),
                         tensors.size(), float(h.lr), float(h.b1), float(h.b2), float(h.eps), t,
                         scale);
    for (const Backend::AdamWTensor& x : tensors) {
      std::vector<double> pt(p.begin() + x.begin, p.begin() + x.begin + x.n),
          mt(m.begin() + x.begin, m.begin() + x.begin + x.n),
          vt(v.begin() + x.begin, v.begin() + x.begin + x.n), gt(x.n);
      for (int64_t i = 0; i < x.n; ++i) gt[i] = g[x.begin + i] * scale;
      Hyper ht = h;
      ht.wd = double(x.wd);
      FormulaStep(pt, gt, mt, vt, ht, t);
      std::copy(pt.begin(), pt.end(), p.begin() + x.begin);
      std::copy(mt.begin(), mt.end(), m.begin() + x.begin);
      std::copy(vt.begin(), vt.end(), v.begin() + x.begin);
    }
  }
  testing::ExpectNear(pf, p, 1e-6, 1e-6, "p");
  testing::ExpectNear(mf, m, 1e-5, 1e-6, "m");
  testing::ExpectNear(vf, v, 1e-5, 1e-6, "v");
  EXPECT_EQ(pf[300], float(p0[300])) << "a gap between tensors";
  EXPECT_EQ(pf[n - 1], float(p0[n - 1])) << "after the last tensor";
}

}  // namespace
}  // namespace mingpt::cpu
