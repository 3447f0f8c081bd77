// Dropout masks: statistics, determinism, agreement between a batch and its
// shards (what makes ranks agree), the identity at p = 0, and attention
// dropout sharding.
#include "backend/cpu/dropout.h"

#include <cmath>
#include <random>
#include <vector>

#include "backend/backend_test_util.h"
#include "backend/cpu/cpu_backend.h"

namespace mingpt::cpu {
namespace {

using FVec = std::vector<float>;

DropoutSpec Spec(float p, uint64_t sample_base = 0) {
  DropoutSpec d;
  d.p = p;
  d.seed = 0xC0FFEE;
  d.step = 12;
  d.site = 4;
  d.sample_base = sample_base;
  return d;
}

FVec RandomFloats(std::mt19937_64& rng, size_t n) {
  return testing::ToFloat(testing::RandomVec(rng, n, 0.5, 2.0));  // no zeros
}

class DropoutTest : public ::testing::Test {
 protected:
  CpuBackend backend_{0};
  std::mt19937_64 rng_{7};
};

TEST_F(DropoutTest, KeptFractionIsOneMinusP) {
  const int B = 8;
  const int64_t row = 12345;
  const double n = double(B) * row;
  FVec x(B * row, 1.0f), y(B * row);
  for (float p : {0.1f, 0.5f, 0.9f}) {
    const DropoutSpec d = Spec(p);
    backend_.Dropout(y.data(), x.data(), B, row, d);
    double kept = 0, sum = 0;
    for (float v : y) {
      if (v != 0.0f) {
        ++kept;
        EXPECT_EQ(v, d.scale());
      }
      sum += v;
    }
    const double sigma = std::sqrt(p * (1.0 - p) / n);
    EXPECT_NEAR(kept / n, 1.0 - p, 5 * sigma) << "p=" << p;
    EXPECT_NEAR(sum / n, 1.0, 5 * sigma / (1.0 - p)) << "p=" << p;  // unbiased
  }
}

TEST_F(DropoutTest, MasksAreDeterministicAndKeyed) {
  const int B = 3;
  const int64_t row = 1001;
  FVec x = RandomFloats(rng_, B * row), y1(B * row), y2(B * row), y3(B * row);
  backend_.Dropout(y1.data(), x.data(), B, row, Spec(0.3f));
  backend_.Dropout(y2.data(), x.data(), B, row, Spec(0.3f));
  EXPECT_EQ(y1, y2);
  for (int field = 0; field < 3; ++field) {  // seed, step, site all matter
    DropoutSpec d = Spec(0.3f);
    if (field == 0) d.seed += 1;
    if (field == 1) d.step += 1;
    if (field == 2) d.site += 1;
    backend_.Dropout(y3.data(), x.data(), B, row, d);
    EXPECT_NE(y3, y1) << "field " << field;
  }
  // Element e of row b follows DropoutKeep(spec, b, e), also for odd rows.
  const DropoutSpec d = Spec(0.3f, 5);
  const int64_t odd = 7;
  FVec xo = RandomFloats(rng_, B * odd), yo(B * odd);
  backend_.Dropout(yo.data(), xo.data(), B, odd, d);
  for (int b = 0; b < B; ++b) {
    for (int64_t e = 0; e < odd; ++e) {
      const float want =
          DropoutKeep(d, b, e) ? xo[b * odd + e] * d.scale() : 0.0f;
      EXPECT_EQ(yo[b * odd + e], want);
    }
  }
}

TEST_F(DropoutTest, ShardedBatchMatchesWholeBatch) {
  const int64_t row = 999;
  FVec x = RandomFloats(rng_, 4 * row), whole(4 * row), shard(2 * row);
  backend_.Dropout(whole.data(), x.data(), 4, row, Spec(0.25f, 0));
  backend_.Dropout(shard.data(), x.data() + 2 * row, 2, row, Spec(0.25f, 2));
  EXPECT_EQ(shard, FVec(whole.begin() + 2 * row, whole.end()));
  // And the double kernel agrees with the float one on the mask.
  std::vector<double> xd(x.begin(), x.end()), yd(4 * row);
  DropoutForward(yd.data(), xd.data(), 4, row, Spec(0.25f, 0));
  for (int64_t i = 0; i < 4 * row; ++i)
    EXPECT_EQ(yd[i] == 0.0, whole[i] == 0.0f);
}

TEST_F(DropoutTest, AttentionDropoutShardsAgree) {
  const int T = 13, C = 12, NH = 3;
  const int64_t n = int64_t(T) * C;
  FVec q = RandomFloats(rng_, 4 * n), k = RandomFloats(rng_, 4 * n),
       v = RandomFloats(rng_, 4 * n), dout = RandomFloats(rng_, 4 * n);
  FVec out(4 * n), probs(4 * NH * T), dq(4 * n), dk(4 * n), dv(4 * n);
  backend_.AttentionForward(out.data(), probs.data(), q.data(), k.data(),
                            v.data(), 4, T, C, NH, Spec(0.2f, 0));
  backend_.AttentionBackward(dq.data(), dk.data(), dv.data(), dout.data(),
                             q.data(), k.data(), v.data(), out.data(), probs.data(), 4, T,
                             C, NH, Spec(0.2f, 0));
  FVec out2(2 * n), probs2(2 * NH * T), dq2(2 * n), dk2(2 * n), dv2(2 * n);
  backend_.AttentionForward(out2.data(), probs2.data(), q.data() + 2 * n,
                            k.data() + 2 * n, v.data() + 2 * n, 2, T, C, NH,
                            Spec(0.2f, 2));
  backend_.AttentionBackward(dq2.data(), dk2.data(), dv2.data(),
                             dout.data() + 2 * n, q.data() + 2 * n,
                             k.data() + 2 * n, v.data() + 2 * n, out2.data(), probs2.data(),
                             2, T, C, NH, Spec(0.2f, 2));
  EXPECT_EQ(out2, FVec(out.begin() + 2 * n, out.end()));
  EXPECT_EQ(dq2, FVec(dq.begin() + 2 * n, dq.end()));
  EXPECT_EQ(dk2, FVec(dk.begin() + 2 * n, dk.end()));
  EXPECT_EQ(dv2, FVec(dv.begin() + 2 * n, dv.end()));
  // Dropout is really on: without it the output differs.
  FVec plain(4 * n);
  backend_.AttentionForward(plain.data(), probs.data(), q.data(), k.data(),
                            v.data(), 4, T, C, NH, Spec(0.0f, 0));
  EXPECT_NE(plain, out);
}

TEST_F(DropoutTest, ZeroPIsIdentityAndInPlaceWorks) {
  const int B = 5;
  const int64_t row = 3001;
  FVec x = RandomFloats(rng_, B * row), y(B * row, -1.0f);
  backend_.Dropout(y.data(), x.data(), B, row, Spec(0.0f));
  EXPECT_EQ(y, x);
  FVec z = x;
  backend_.Dropout(z.data(), z.data(), B, row, Spec(0.0f));
  EXPECT_EQ(z, x);
  // In place with p > 0 equals out of place.
  backend_.Dropout(y.data(), x.data(), B, row, Spec(0.5f));
  backend_.Dropout(z.data(), z.data(), B, row, Spec(0.5f));
  EXPECT_EQ(z, y);
}

}  // namespace
}  // namespace mingpt::cpu
