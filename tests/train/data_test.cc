#include <gtest/gtest.h>

#include <set>

#include "data/char_dataset.h"

namespace mingpt {
namespace {

TEST(CharTokenizer, VocabularyIsSortedDistinctCharacters) {
  CharTokenizer t = *CharTokenizer::FromText("hello world");
  EXPECT_EQ(t.vocab(), " dehlorw");
  auto ids = t.Encode("world");
  ASSERT_TRUE(ids.ok());
  EXPECT_EQ(t.Decode(*ids), "world");
  EXPECT_EQ((*ids)[0], 7);  // 'w' is the last of " dehlorw"
}

TEST(CharTokenizer, RejectsCharactersOutsideTheVocabulary) {
  CharTokenizer t = *CharTokenizer::FromText("abc");
  auto ids = t.Encode("abz");
  ASSERT_FALSE(ids.ok());
  EXPECT_NE(ids.status().message().find("'z'"), std::string::npos);
  EXPECT_NE(ids.status().message().find("position 2"), std::string::npos);
  // Positions count characters, not bytes; a control character is named by
  // its code point.
  auto other = CharTokenizer::FromText("\u00e9a")->Encode("\u00e9\u00e9\t");
  ASSERT_FALSE(other.ok());
  EXPECT_NE(other.status().message().find("U+0009 at position 2"), std::string::npos)
      << other.status().message();
}

TEST(CharTokenizer, FromVocabRejectsRepeats) {
  EXPECT_FALSE(CharTokenizer::FromVocab("aba").ok());
  EXPECT_FALSE(CharTokenizer::FromVocab("").ok());
  EXPECT_FALSE(CharTokenizer::FromVocab("a\u00e9b\u00e9").ok());
  EXPECT_FALSE(CharTokenizer::FromVocab("a\xff").ok());
}

// As the seed reads its text (Python's UTF-8 str) a character is a code
// point: sorted by code point, one token each, whatever its UTF-8 length.
TEST(CharTokenizer, CharactersAreUnicodeCodePoints) {
  const std::string text = "Gr\u00fc\u00dfe \U0001F600 \u20ac e";  // Grüße 😀 € e
  auto t = CharTokenizer::FromText(text);
  ASSERT_TRUE(t.ok()) << t.status().message();
  EXPECT_EQ(t->vocab(), " Ger\u00df\u00fc\u20ac\U0001F600");
  EXPECT_EQ(t->size(), 8);
  auto ids = t->Encode(text);
  ASSERT_TRUE(ids.ok());
  EXPECT_EQ(ids->size(), 11u);
  EXPECT_EQ((*ids)[2], 5);  // ü
  EXPECT_EQ((*ids)[6], 7);  // 😀
  EXPECT_EQ(t->Piece(7), "\U0001F600");
  EXPECT_EQ(t->Decode(*ids), text);
  auto again = CharTokenizer::FromVocab(t->vocab());
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->Encode(text).value(), ids.value());
}

// Bytes that are not UTF-8 are refused as Python refuses them (no overlong
// forms, surrogates, code points past U+10FFFF, cut sequences), naming the
// byte and its offset.
TEST(CharTokenizer, RefusesTextThatIsNotUtf8) {
  for (const std::string& bad :
       {std::string("ab\xff"), std::string("ab\xc0\xaf"), std::string("ab\xed\xa0\x80"),
        std::string("ab\xf4\x90\x80\x80"), std::string("ab\xe2\x82"),
        std::string("ab\x80"), std::string("ab\xe2\x82x")}) {
    auto t = CharTokenizer::FromText(bad);
    ASSERT_FALSE(t.ok()) << "accepted " << ::testing::PrintToString(bad);
    EXPECT_NE(t.status().message().find("not UTF-8 text"), std::string::npos);
    EXPECT_NE(t.status().message().find("at offset 2"), std::string::npos) << t.status().message();
    EXPECT_FALSE(CharTokenizer::FromText("abc")->Encode(bad).ok());
  }
  EXPECT_TRUE(CharTokenizer::FromText("\xf4\x8f\xbf\xbf").ok());  // U+10FFFF, the last
}

TEST(CharDataset, SplitsNinetyFiveFive) {
  std::vector<int32_t> tokens(1000);
  for (int i = 0; i < 1000; ++i) tokens[i] = i % 7;
  auto d = CharDataset::Create(tokens, 8);
  ASSERT_TRUE(d.ok());
  EXPECT_EQ(d->split_size(Split::kTrain), 900);
  EXPECT_EQ(d->split_size(Split::kVal), 50);
  EXPECT_EQ(d->split_size(Split::kTest), 50);
  EXPECT_EQ(d->epoch_samples(), 100);  // ceil(900 / 9)
  EXPECT_EQ(d->num_eval_windows(Split::kVal), 5);  // 50 / 9
}

TEST(CharDataset, RejectsDataShorterThanAWindow) {
  auto d = CharDataset::Create(std::vector<int32_t>(10, 0), 8);
  ASSERT_FALSE(d.ok());
  EXPECT_NE(d.status().message().find("block_size"), std::string::npos);
}

TEST(CharDataset, TrainSamplesAreShiftedWindowsOfTheTrainSplit) {
  std::vector<int32_t> tokens(2000);
  for (int i = 0; i < 2000; ++i) tokens[i] = i;  // value = position
  auto d = CharDataset::Create(tokens, 16);
  ASSERT_TRUE(d.ok());
  std::set<int32_t> starts;
  for (uint64_t g = 0; g < 500; ++g) {
    int32_t x[16], y[16];
    d->TrainSample(7, g, x, y);
    for (int t = 0; t < 16; ++t) {
      EXPECT_EQ(x[t], x[0] + t);
      EXPECT_EQ(y[t], x[t] + 1);
    }
    EXPECT_GE(x[0], 0);
    EXPECT_LT(y[15], 1800);  // never reaches into val
    starts.insert(x[0]);
  }
  EXPECT_GT(starts.size(), 400u);  // random, not repeating
}

TEST(CharDataset, SamplesDependOnlyOnSeedAndGlobalIndex) {
  auto d = CharDataset::Create(std::vector<int32_t>(3000, 1), 16);
  std::vector<int32_t> tokens(3000);
  for (int i = 0; i < 3000; ++i) tokens[i] = i;
  d = CharDataset::Create(tokens, 16);
  int32_t a[16], b[16], y[16];
  d->TrainSample(1, 123, a, y);
  d->TrainSample(1, 124, b, y);
  d->TrainSample(1, 123, b, y);
  EXPECT_EQ(std::vector<int32_t>(a, a + 16), std::vector<int32_t>(b, b + 16));
  d->TrainSample(2, 123, b, y);
  EXPECT_NE(a[0], b[0]);
}

TEST(CharDataset, EvalWindowsAreConsecutiveAndNonOverlapping) {
  std::vector<int32_t> tokens(2000);
  for (int i = 0; i < 2000; ++i) tokens[i] = i;
  auto d = CharDataset::Create(tokens, 9);
  int32_t x[9], y[9];
  d->EvalWindow(Split::kTest, 2, x, y);
  EXPECT_EQ(x[0], 1900 + 2 * 10);
  EXPECT_EQ(y[8], 1900 + 2 * 10 + 9);
}

TEST(CharDataset, ShortSplitsGiveOneShorterWindow) {
  std::vector<int32_t> tokens(300);
  for (int i = 0; i < 300; ++i) tokens[i] = i;
  auto d = CharDataset::Create(tokens, 64);  // val has 15 characters
  ASSERT_TRUE(d.ok());
  EXPECT_EQ(d->eval_window_length(Split::kVal), 14);
  EXPECT_EQ(d->num_eval_windows(Split::kVal), 1);
}

}  // namespace
}  // namespace mingpt
