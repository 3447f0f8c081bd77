// ShardRange: the slices of a flat buffer over N ranks.
#include <gtest/gtest.h>

#include "core/rng.h"
#include "engine/shard.h"

namespace mingpt {
namespace {

// For many sizes and worlds: the ranks' real ranges tile [0, numel) in rank
// order; every slice has the same length, a multiple of kAlign; the padded
// length is world * shard and wastes less than one aligned block per rank.
TEST(ShardRange, SlicesTileTheBufferInEqualAlignedBlocks) {
  for (int world = 1; world <= 9; ++world) {
    for (int i = 0; i < 300; ++i) {
      const int64_t numel = i < 100 ? i : static_cast<int64_t>(Random64(3, i, world, 0, 0) % 5000000);
      int64_t next = 0;
      for (int r = 0; r < world; ++r) {
        const ShardRange s(numel, r, world);
        ASSERT_EQ(s.shard % kAlign, 0);
        ASSERT_EQ(s.offset, r * s.shard);
        ASSERT_EQ(s.padded, world * s.shard);
        ASSERT_GE(s.padded, numel);
        ASSERT_LT(s.padded - numel, world * kAlign) << numel << " over " << world;
        ASSERT_EQ(s.begin, std::min(numel, s.offset));
        ASSERT_EQ(s.begin, next) << "rank " << r << " of " << world << ", numel " << numel;
        ASSERT_LE(s.end - s.begin, s.shard);
        ASSERT_EQ(s.size(), s.end - s.begin);
        next = s.end;
      }
      ASSERT_EQ(next, numel);
    }
  }
}

TEST(ShardRange, SmallBuffersLeaveTheLastRanksEmpty) {
  const ShardRange last(20, 3, 4);  // shard 16: ranks 0 and 1 hold 16 and 4
  EXPECT_EQ(last.shard, 16);
  EXPECT_EQ(last.size(), 0);
  EXPECT_EQ(ShardRange(20, 1, 4).size(), 4);
  EXPECT_EQ(ShardRange(0, 0, 3).size(), 0);
  EXPECT_EQ(ShardRange(0, 0, 3).padded, 0);
}

}  // namespace
}  // namespace mingpt
