#include <gtest/gtest.h>

#include "model/layout.h"

namespace mingpt {
namespace {

TEST(ModelLayout, NamesAndShapesAreTheSeedsStateDict) {
  ModelConfig c;
  c.n_layer = 2; c.n_head = 2; c.n_embd = 8; c.block_size = 5; c.vocab_size = 11;
  ModelLayout l(c);
  std::vector<std::string> names;
  for (const Unit& u : l.units())
    for (const ParamEntry& e : u.params) names.push_back(e.name);
  ASSERT_EQ(l.num_units(), 4);
  EXPECT_EQ(names.front(), "tok_emb.weight");
  EXPECT_EQ(names[1], "pos_emb");
  EXPECT_EQ(names[2], "blocks.0.ln1.weight");
  EXPECT_EQ(names[6], "blocks.0.attn.key.weight");
  EXPECT_EQ(names[14], "blocks.0.mlp.0.weight");
  EXPECT_EQ(names[16], "blocks.0.mlp.2.weight");
  EXPECT_EQ(names.back(), "head.weight");
  int u, i;
  ASSERT_TRUE(l.Find("pos_emb", &u, &i));
  EXPECT_EQ(l.units()[u].params[i].shape, (std::vector<int64_t>{1, 5, 8}));
  ASSERT_TRUE(l.Find("blocks.1.mlp.2.weight", &u, &i));
  EXPECT_EQ(u, 2);
  EXPECT_EQ(l.units()[u].params[i].shape, (std::vector<int64_t>{8, 32}));
  EXPECT_FALSE(l.Find("blocks.2.ln1.weight", &u, &i));
}

TEST(ModelLayout, CountsParametersLikePyTorch) {
  ModelConfig c;
  c.n_layer = 6; c.n_head = 6; c.n_embd = 192; c.block_size = 128; c.vocab_size = 65;
  ModelLayout l(c);
  const int64_t C = 192, V = 65, T = 128;
  const int64_t block = 4 * C + 4 * (C * C + C) + (4 * C * C + 4 * C) + (4 * C * C + C);
  EXPECT_EQ(l.num_parameters(), V * C + T * C + 6 * block + 2 * C + V * C);
}

TEST(ModelLayout, TensorsAreAlignedAndDisjoint) {
  ModelConfig c;
  c.n_layer = 1; c.n_head = 1; c.n_embd = 3; c.block_size = 7; c.vocab_size = 5;
  ModelLayout l(c);
  for (const Unit& u : l.units()) {
    int64_t end = 0;
    EXPECT_EQ(u.numel % kAlign, 0);
    for (const ParamEntry& e : u.params) {
      EXPECT_EQ(e.offset % kAlign, 0) << e.name;
      EXPECT_GE(e.offset, end) << e.name;
      end = e.offset + e.numel;
    }
    EXPECT_LE(end, u.numel);
  }
}

TEST(ModelLayout, WeightDecayOnLinearAndEmbeddingWeightsOnly) {
  ModelConfig c;
  c.n_layer = 1; c.n_head = 1; c.n_embd = 4; c.block_size = 4; c.vocab_size = 3;
  ModelLayout l(c);
  for (const Unit& u : l.units()) {
    for (const ParamEntry& e : u.params) {
      const bool linear_or_embedding = e.name.ends_with(".weight") && e.name.find("ln") == std::string::npos;
      EXPECT_EQ(e.decay, linear_or_embedding) << e.name;
    }
  }
}

TEST(ModelConfig, PresetsAndValidation) {
  ModelConfig c;
  ASSERT_TRUE(ApplyPreset("gpt-micro", &c).ok());
  EXPECT_EQ(c.n_layer, 4); EXPECT_EQ(c.n_head, 4); EXPECT_EQ(c.n_embd, 128);
  ASSERT_TRUE(ApplyPreset("gpt1", &c).ok());
  EXPECT_EQ(c.n_embd, 768);
  EXPECT_FALSE(ApplyPreset("gpt-huge", &c).ok());
  c.vocab_size = 10;
  c.n_head = 5;
  EXPECT_NE(c.Validate().message().find("divisible"), std::string::npos);
  c.n_head = 4; c.block_size = 0;
  EXPECT_FALSE(c.Validate().ok());
}

}  // namespace
}  // namespace mingpt
