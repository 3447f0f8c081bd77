// DynamicLossScaler: DeepSpeed's dynamic loss scaling rules, step by step.
#include <gtest/gtest.h>

#include <vector>

#include "optim/loss_scaler.h"

namespace mingpt {
namespace {

TEST(LossScaler, StartsAtTwoToTheSixteenWithHysteresisTwo) {
  DynamicLossScaler s;
  EXPECT_EQ(s.scale(), 65536.0);
  EXPECT_EQ(s.state().hysteresis, 2);
  EXPECT_EQ(s.state().skipped_steps, 0);
}

TEST(LossScaler, HysteresisAbsorbsTheFirstOverflowThenEachOneHalves) {
  DynamicLossScaler s;
  EXPECT_TRUE(s.Update(true));
  EXPECT_EQ(s.scale(), 65536.0);  // credit 2 -> 1, scale kept
  EXPECT_EQ(s.state().hysteresis, 1);
  EXPECT_TRUE(s.Update(true));
  EXPECT_EQ(s.scale(), 32768.0);
  EXPECT_TRUE(s.Update(false));   // a clean step does not restore the credit
  EXPECT_TRUE(s.Update(true));
  EXPECT_EQ(s.scale(), 16384.0);
  EXPECT_EQ(s.state().skipped_steps, 3);
}

TEST(LossScaler, DoublesAfterAWindowOfCleanStepsAndRestoresHysteresis) {
  LossScalerConfig c;
  c.window = 10;
  DynamicLossScaler s(c);
  for (int i = 0; i < 9; ++i) s.Update(false);
  EXPECT_EQ(s.scale(), 65536.0);
  s.Update(false);  // the 10th clean step
  EXPECT_EQ(s.scale(), 131072.0);

  s.Update(true);  // overflow at iteration 10: credit 2 -> 1
  EXPECT_EQ(s.scale(), 131072.0);
  EXPECT_EQ(s.state().hysteresis, 1);
  for (int i = 0; i < 9; ++i) s.Update(false);
  EXPECT_EQ(s.scale(), 131072.0);
  EXPECT_EQ(s.state().hysteresis, 1);
  s.Update(false);  // 10 clean steps after the overflow
  EXPECT_EQ(s.scale(), 262144.0);
  EXPECT_EQ(s.state().hysteresis, 2);
}

TEST(LossScaler, NeverGoesBelowTheMinimumAndReportsOverflowThere) {
  LossScalerConfig c;
  c.initial_scale_power = 1;
  c.hysteresis = 1;
  DynamicLossScaler s(c);
  EXPECT_TRUE(s.Update(true));
  EXPECT_EQ(s.scale(), 1.0);
  EXPECT_FALSE(s.Update(true));
  EXPECT_EQ(s.scale(), 1.0);
}

TEST(LossScaler, ResumesFromItsStateExactly) {
  LossScalerConfig c;
  c.window = 4;
  const std::vector<bool> overflows = {false, true, false, false, true, true, false,
                                       false, false, false, false, true, false};
  DynamicLossScaler whole(c), first(c);
  std::vector<double> a, b;
  for (size_t i = 0; i < overflows.size(); ++i) {
    whole.Update(overflows[i]);
    a.push_back(whole.scale());
  }
  for (size_t i = 0; i < 6; ++i) {
    first.Update(overflows[i]);
    b.push_back(first.scale());
  }
  DynamicLossScaler resumed(c, first.state());
  for (size_t i = 6; i < overflows.size(); ++i) {
    resumed.Update(overflows[i]);
    b.push_back(resumed.scale());
  }
  EXPECT_EQ(a, b);
  EXPECT_EQ(whole.state().skipped_steps, resumed.state().skipped_steps);
}

}  // namespace
}  // namespace mingpt
