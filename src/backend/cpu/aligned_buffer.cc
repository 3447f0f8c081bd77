#include "backend/cpu/aligned_buffer.h"

#include "core/check.h"

namespace mingpt::cpu {

void* AlignedAlloc(size_t bytes) {
  size_t rounded = (bytes + kAlignment - 1) / kAlignment * kAlignment;
  if (rounded == 0) rounded = kAlignment;
  void* p = std::aligned_alloc(kAlignment, rounded);
  MINGPT_CHECK(p != nullptr, "out of host memory allocating %zu bytes", bytes);
  return p;
}

void* ScratchBuffer::Reserve(size_t bytes) {
  if (bytes > capacity_) {
    ptr_.reset();  // release first so peak memory is not old + new
    ptr_.reset(AlignedAlloc(bytes));
    capacity_ = bytes;
  }
  return ptr_.get();
}

}  // namespace mingpt::cpu
