// Helpers shared by the backend tests: random data, central finite
// differences in double precision, and tolerant comparisons.
#pragma once

#include <gtest/gtest.h>

#include "backend/dropout.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <random>
#include <string>
#include <vector>

namespace mingpt::testing {

// A fixed, non-trivial dropout site for tests (every coordinate non-zero).
inline DropoutSpec FixedDropout(float p, uint64_t seed, uint32_t step, uint32_t site,
                                uint64_t sample_base) {
  DropoutSpec d;
  d.p = p;
  d.seed = seed;
  d.step = step;
  d.site = site;
  d.sample_base = sample_base;
  return d;
}

inline std::vector<double> RandomVec(std::mt19937_64& rng, size_t n,
                                     double lo = -1.0, double hi = 1.0) {
  std::uniform_real_distribution<double> dist(lo, hi);
  std::vector<double> v(n);
  for (auto& x : v) x = dist(rng);
  return v;
}

inline std::vector<int32_t> RandomInts(std::mt19937_64& rng, size_t n,
                                       int32_t upper) {
  std::uniform_int_distribution<int32_t> dist(0, upper - 1);
  std::vector<int32_t> v(n);
  for (auto& x : v) x = dist(rng);
  return v;
}

inline std::vector<float> ToFloat(const std::vector<double>& v) {
  return std::vector<float>(v.begin(), v.end());
}
inline std::vector<double> ToDouble(const std::vector<float>& v) {
  return std::vector<double>(v.begin(), v.end());
}

inline double Dot(const std::vector<double>& a, const std::vector<double>& b) {
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}

// dL/dx by central differences, L = loss() read after each perturbation.
inline std::vector<double> NumericGrad(std::vector<double>& x,
                                       const std::function<double()>& loss,
                                       double h = 1e-5) {
  std::vector<double> g(x.size());
  for (size_t i = 0; i < x.size(); ++i) {
    const double saved = x[i];
    x[i] = saved + h;
    const double plus = loss();
    x[i] = saved - h;
    const double minus = loss();
    x[i] = saved;
    g[i] = (plus - minus) / (2 * h);
  }
  return g;
}

// Largest elementwise relative error |a - b| / max(|a|, |b|, floor), floor
// being 1e-3 of the largest |b| (so that near-zero entries are judged
// against the tensor's scale, not against their own rounding noise).
// `scale`, when given, replaces b's largest magnitude as what the floor is
// relative to: for a gradient that is zero in exact arithmetic (a query that
// sees one key has dq = 0) while the op's other gradients are not, and
// rounding leaves a trace.
inline double MaxRelError(const std::vector<double>& a,
                          const std::vector<double>& b, double scale = -1) {
  EXPECT_EQ(a.size(), b.size());
  if (scale < 0) {
    scale = 0;
    for (double x : b) scale = std::max(scale, std::abs(x));
  }
  const double floor = std::max(1e-3 * scale, 1e-30);
  double err = 0;
  for (size_t i = 0; i < a.size() && i < b.size(); ++i) {
    const double denom = std::max({std::abs(a[i]), std::abs(b[i]), floor});
    err = std::max(err, std::abs(a[i] - b[i]) / denom);
  }
  return err;
}

inline std::vector<double> Minus(const std::vector<double>& a,
                                 const std::vector<double>& b) {
  std::vector<double> d(a.size());
  for (size_t i = 0; i < a.size(); ++i) d[i] = a[i] - b[i];
  return d;
}

// Expects float results close to a double reference: |a - b| <= atol + rtol |b|
// elementwise; reports the first few mismatches.
inline void ExpectNear(const std::vector<float>& got,
                       const std::vector<double>& want, double rtol,
                       double atol, const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  int reported = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const double diff = std::abs(static_cast<double>(got[i]) - want[i]);
    if (!(diff <= atol + rtol * std::abs(want[i]))) {
      ADD_FAILURE() << what << "[" << i << "]: got " << got[i] << ", want "
                    << want[i];
      if (++reported == 5) return;
    }
  }
}

}  // namespace mingpt::testing
