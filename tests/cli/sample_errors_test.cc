// `mingpt sample` refuses bad prompts and sampling flags with one error line;
// nothing of the prompt is echoed to stdout when it is refused.
#include "cli/trained_checkpoint.h"

namespace mingpt::cli_test {
namespace {

using SampleErrorTest = TrainedCheckpointTest;

TEST_F(SampleErrorTest, ValidPromptSamples) {
  const ProcessResult r = Mingpt(SampleArgs(shared_last_, "the king"));
  ASSERT_TRUE(Succeeded(r));
  EXPECT_EQ(r.out.rfind("the king", 0), 0u) << r.Describe();
}

TEST_F(SampleErrorTest, PromptCharacterOutsideVocabulary) {
  const ProcessResult r = Mingpt(SampleArgs(shared_last_, "the Zebra"));  // no 'Z' in the text
  EXPECT_TRUE(FailsWith(r, 1, {"--prompt", "vocabulary"}));
  EXPECT_EQ(r.out, "") << "the refused prompt was echoed";
}

TEST_F(SampleErrorTest, EmptyPrompt) {
  const ProcessResult r = Mingpt(SampleArgs(shared_last_, ""));
  EXPECT_TRUE(FailsWith(r, 1, {"--prompt", "empty"}));
  EXPECT_EQ(r.out, "");
}

TEST_F(SampleErrorTest, TemperatureZero) {
  const ProcessResult r = Mingpt(SampleArgs(shared_last_, "the", {"--temperature", "0"}));
  EXPECT_TRUE(FailsWith(r, 1, {"--temperature", "positive"}));
}

TEST_F(SampleErrorTest, TemperatureNegative) {
  const ProcessResult r = Mingpt(SampleArgs(shared_last_, "the", {"--temperature", "-1"}));
  EXPECT_TRUE(FailsWith(r, 1, {"--temperature", "positive"}));
}

TEST_F(SampleErrorTest, TopKAboveTheVocabulary) {
  const ProcessResult r = Mingpt(SampleArgs(shared_last_, "the", {"--top_k", "1000"}));
  EXPECT_TRUE(FailsWith(r, 1, {"--top_k", "vocabulary size"}));
}

TEST_F(SampleErrorTest, TopKNegative) {
  const ProcessResult r = Mingpt(SampleArgs(shared_last_, "the", {"--top_k", "-1"}));
  EXPECT_TRUE(FailsWith(r, 1, {"--top_k"}));
}

TEST_F(SampleErrorTest, NegativeSeed) {
  const ProcessResult r = Mingpt(SampleArgs(shared_last_, "the", {"--seed", "-3"}));
  EXPECT_TRUE(FailsWith(r, 2, {"--seed", "must be >= 0, got -3"}));
}

TEST_F(SampleErrorTest, EvaluateEmptyData) {
  // Not the data file the checkpoint records, which an absent --data means.
  const ProcessResult r = Mingpt({"evaluate", "--checkpoint", shared_last_, "--data", "",
                                  "--num_threads", "1"});
  EXPECT_TRUE(FailsWith(r, 2, {"--data", "must not be empty"}));
}

TEST_F(SampleErrorTest, MissingCheckpointFlag) {
  const ProcessResult r = Mingpt({"sample", "--prompt", "the", "--num_threads", "1"});
  EXPECT_TRUE(FailsWith(r, 2, {"--checkpoint"}));
}

TEST_F(SampleErrorTest, EvaluateMissingCheckpointFlag) {
  const ProcessResult r = Mingpt({"evaluate", "--data", data_, "--num_threads", "1"});
  EXPECT_TRUE(FailsWith(r, 2, {"--checkpoint"}));
}

TEST_F(SampleErrorTest, InfoMissingCheckpointFlag) {
  EXPECT_TRUE(FailsWith(Mingpt({"info"}), 2, {"--checkpoint"}));
}

TEST_F(SampleErrorTest, EvaluateDataOutsideVocabulary) {
  const std::string other = tmp_ / "other.txt";
  WriteText(other, SyntheticText(2000) + "QQQ");  // 'Q' is not in the checkpoint's vocabulary
  const ProcessResult r = Mingpt({"evaluate", "--checkpoint", shared_last_, "--data", other,
                                  "--num_threads", "1", "--batch_size", "2"});
  EXPECT_TRUE(FailsWith(r, 1, {"other.txt", "vocabulary"}));
}

}  // namespace
}  // namespace mingpt::cli_test
