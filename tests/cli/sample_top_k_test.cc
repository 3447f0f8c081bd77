// `mingpt sample`'s top_k on a model whose vocabulary is smaller than the
// default 10: the default fits it (min(10, V)), only a --top_k the user gave
// is checked against it, and --greedy, which ignores top_k, skips the check.
#include "cli/cli_fixture.h"

namespace mingpt::cli_test {
namespace {

class SampleTopKTest : public CliTest {
 protected:
  void SetUp() override {
    CliTest::SetUp();
    std::string abc;
    while (abc.size() < 4000) abc += "abcab";
    abc_ = tmp_ / "abc.txt";
    WriteText(abc_, abc);
    const ProcessResult r = Mingpt(TinyTrainArgs(abc_, tmp_ / "abc_run"));
    ASSERT_TRUE(Succeeded(r));
    last_ = tmp_ / "abc_run/checkpoints/last";
  }
  ProcessResult Sample(const std::vector<std::string>& extra) const {
    std::vector<std::string> args = {"sample", "--checkpoint", last_, "--prompt", "abc",
                                     "--steps", "20", "--num_threads", "1"};
    args.insert(args.end(), extra.begin(), extra.end());
    return Mingpt(args);
  }

  std::string abc_, last_;
};

TEST_F(SampleTopKTest, TheDefaultFitsASmallVocabulary) {
  const ProcessResult r = Sample({});
  ASSERT_TRUE(Succeeded(r));
  EXPECT_EQ(r.out.size(), std::string("abc").size() + 20 + 1) << r.Describe();
  // The default is the vocabulary's size here: every character may be drawn.
  const ProcessResult all = Sample({"--top_k", "3"});
  ASSERT_TRUE(Succeeded(all));
  EXPECT_EQ(r.out, all.out);
}

TEST_F(SampleTopKTest, GreedyIgnoresTopK) {
  const ProcessResult greedy = Sample({"--greedy"});
  ASSERT_TRUE(Succeeded(greedy));
  const ProcessResult with_k = Sample({"--greedy", "--top_k", "50"});
  ASSERT_TRUE(Succeeded(with_k));
  EXPECT_EQ(greedy.out, with_k.out);
}

TEST_F(SampleTopKTest, AGivenTopKAboveTheVocabularyIsRefused) {
  const ProcessResult r = Sample({"--top_k", "5"});
  EXPECT_TRUE(FailsWith(r, 1, {"--top_k", "vocabulary size (3)"}));
  EXPECT_EQ(r.out, "");
}

}  // namespace
}  // namespace mingpt::cli_test
