// metrics.csv's tokens_per_s is training throughput: the tokens of the
// steps since the last row over the time those steps took, not over a
// window that also holds a validation and a checkpoint save.
#include <string>

#include "cli/cli_fixture.h"
#include "common/metrics_csv.h"

namespace mingpt::cli_test {
namespace {

using TrainThroughputTest = CliTest;

TEST_F(TrainThroughputTest, ValidationAndSavesAreNotTrainingTime) {
  // Validating 1000 batches takes far longer than the two steps it follows;
  // steps 3-4 (after it) train no slower than steps 1-2 (which hold the
  // first step's warm-up).
  WriteText(data_, SyntheticText(400000));
  const ProcessResult r = Train("run", {{"--max_steps", "4"},
                                        {"--log_every_n_steps", "2"},
                                        {"--val_check_interval", "2"},
                                        {"--limit_val_batches", "1000"}});
  ASSERT_TRUE(Succeeded(r));
  const auto rate = test::MetricsColumn(tmp_ / "run", "tokens_per_s");
  ASSERT_TRUE(rate.count(2) && rate.count(4)) << ReadText(tmp_ / "run/metrics.csv");
  EXPECT_GT(rate.at(4), rate.at(2) / 5) << ReadText(tmp_ / "run/metrics.csv");
}

}  // namespace
}  // namespace mingpt::cli_test
