#include <gtest/gtest.h>

#include <cmath>

#include "optim/adamw.h"

namespace mingpt {
namespace {

TEST(LrSchedule, WarmsUpLinearlyThenCosineToTenPercent) {
  LrSchedule s{6e-4, 1000, 11000, true};
  EXPECT_DOUBLE_EQ(s.LearningRate(0), 0.0);
  EXPECT_DOUBLE_EQ(s.LearningRate(500), 3e-4);
  EXPECT_DOUBLE_EQ(s.LearningRate(1000), 6e-4);
  EXPECT_NEAR(s.LearningRate(6000), 6e-4 * 0.5, 1e-12);  // half-way through the cosine
  EXPECT_NEAR(s.LearningRate(11000), 6e-5, 1e-12);       // floor
  EXPECT_NEAR(s.LearningRate(50000), 6e-5, 1e-12);       // stays at the floor
  const double p = 0.25;
  EXPECT_NEAR(s.LearningRate(1000 + p * 10000), 6e-4 * 0.5 * (1 + std::cos(M_PI * p)), 1e-12);
}

TEST(LrSchedule, NoDecayIsConstant) {
  LrSchedule s{1e-3, 1000, 2000, false};
  EXPECT_EQ(s.LearningRate(0), 1e-3);
  EXPECT_EQ(s.LearningRate(1e9), 1e-3);
}

TEST(ClipFactor, MatchesTorchClipGradNorm) {
  EXPECT_EQ(ClipFactor(0.5, 1.0), 1.0);
  EXPECT_NEAR(ClipFactor(4.0, 1.0), 1.0 / (4.0 + 1e-6), 1e-15);
  EXPECT_EQ(ClipFactor(100.0, 0.0), 1.0);  // disabled
}

}  // namespace
}  // namespace mingpt
