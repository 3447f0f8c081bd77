// 64-byte aligned host memory for the CPU backend: a one-shot allocator that
// aborts on OOM, and a reusable scratch buffer that only ever grows.
#pragma once

#include <cstddef>
#include <cstdlib>
#include <memory>

namespace mingpt::cpu {

inline constexpr size_t kAlignment = 64;

// `bytes` rounded up to a multiple of 64 (at least 64), 64-byte aligned.
// Aborts with file:line when the allocation fails. Free with std::free.
void* AlignedAlloc(size_t bytes);

// Backend-owned scratch: Reserve() reallocates only when asked for more than
// it holds (contents are not kept), so a warm caller allocates nothing.
class ScratchBuffer {
 public:
  void* Reserve(size_t bytes);
  void* data() const { return ptr_.get(); }
  size_t capacity() const { return capacity_; }

 private:
  struct FreeDeleter {
    void operator()(void* p) const { std::free(p); }
  };
  std::unique_ptr<void, FreeDeleter> ptr_;
  size_t capacity_ = 0;
};

}  // namespace mingpt::cpu
