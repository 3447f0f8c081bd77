// ShardRange: rank r's slice of a flat buffer of `numel` elements split over
// `world` ranks. Every rank's slice has the same padded length
// `shard = ceil(numel / world)` rounded up to kAlign, so that collectives move
// equal blocks: rank r owns [offset, offset + shard) with offset = r*shard of
// the buffer padded to `padded` = world*shard elements, of which
// [begin, end) lie inside the real numel (empty for the last ranks when
// numel is small). Pure arithmetic: every rank computes every rank's range.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "model/layout.h"

namespace mingpt {

struct ShardRange {
  int64_t shard = 0;   // padded length of every rank's slice
  int64_t offset = 0;  // r * shard: where the slice starts in the padded buffer
  int64_t begin = 0;   // min(numel, offset)
  int64_t end = 0;     // one past its last real element: min(numel, begin + shard)
  int64_t padded = 0;  // world * shard: the buffer length collectives see
  int64_t size() const { return std::max<int64_t>(0, end - begin); }

  ShardRange(int64_t numel, int rank, int world) {
    const int64_t w = std::max(1, world);
    shard = ((numel + w - 1) / w + kAlign - 1) / kAlign * kAlign;
    offset = rank * shard;
    begin = std::min<int64_t>(numel, offset);
    end = std::min<int64_t>(numel, rank * shard + shard);
    padded = w * shard;
  }
};

// Rank `rank`'s ShardRange of every unit of `layout`, in unit order.
inline std::vector<ShardRange> RankShards(const ModelLayout& layout, int rank, int world) {
  std::vector<ShardRange> shards;
  for (const Unit& u : layout.units()) shards.emplace_back(u.numel, rank, world);
  return shards;
}

}  // namespace mingpt
