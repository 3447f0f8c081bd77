// LocalCommunicator: the Communicator of a one-process world. Every
// collective is complete when it returns: a sum over one rank is the rank's
// own data, so AllReduce and Broadcast do nothing and ReduceScatter and
// AllGather are copies.
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "core/check.h"
#include "dist/communicator.h"

namespace mingpt {
namespace {

class LocalCommunicator final : public Communicator {
 public:
  int rank() const override { return 0; }
  int world() const override { return 1; }
  const char* name() const override { return "local"; }

  Work AllReduce(float* data, int64_t n) override { return Work(); }
  Work AllReduce(double* data, int64_t n) override { return Work(); }

  Work ReduceScatter(const float* send, float* recv, int64_t n) override {
    Copy(send, recv, n);
    return Work();
  }

  Work AllGather(const float* send, float* recv, int64_t n) override {
    Copy(send, recv, n);
    return Work();
  }

  Work Broadcast(void* data, size_t bytes, int root) override {
    MINGPT_CHECK(root == 0, "broadcast root %d outside a world of 1", root);
    return Work();
  }

  void Barrier() override {}

  [[noreturn]] void Abort(int code) override {
    std::fflush(nullptr);
    std::_Exit(code);
  }

 private:
  // n floats from send to recv; nothing when they are the same buffer.
  void Copy(const float* send, float* recv, int64_t n) {
    MINGPT_CHECK(n >= 0, "negative element count %lld", static_cast<long long>(n));
    if (n == 0 || send == recv) return;
    if (copy_) {
      copy_(recv, send, static_cast<size_t>(n) * sizeof(float));
    } else {
      std::memmove(recv, send, static_cast<size_t>(n) * sizeof(float));
    }
  }

 public:
  explicit LocalCommunicator(CopyFn copy = nullptr) : copy_(std::move(copy)) {}

 private:
  CopyFn copy_;
};

// A world seen from one of its ranks without any connection to the others.
class SizeOnlyCommunicator final : public Communicator {
 public:
  SizeOnlyCommunicator(int rank, int world) : rank_(rank), world_(world) {}
  int rank() const override { return rank_; }
  int world() const override { return world_; }
  const char* name() const override { return "size-only"; }
  Work AllReduce(float*, int64_t) override { Unreachable(); }
  Work AllReduce(double*, int64_t) override { Unreachable(); }
  Work ReduceScatter(const float*, float*, int64_t) override { Unreachable(); }
  Work AllGather(const float*, float*, int64_t) override { Unreachable(); }
  Work Broadcast(void*, size_t, int) override { Unreachable(); }
  void Barrier() override { Unreachable(); }
  [[noreturn]] void Abort(int code) override {
    std::fflush(nullptr);
    std::_Exit(code);
  }

 private:
  [[noreturn]] static void Unreachable() {
    MINGPT_CHECK(false, "a collective on a size-only communicator");
    std::abort();
  }
  int rank_, world_;
};

}  // namespace

std::unique_ptr<Communicator> MakeSizeOnlyCommunicator(int rank, int world) {
  MINGPT_CHECK(world >= 1 && rank >= 0 && rank < world, "rank %d of %d", rank, world);
  return std::make_unique<SizeOnlyCommunicator>(rank, world);
}

std::unique_ptr<Communicator> MakeLocalCommunicator(CopyFn copy) {
  return std::make_unique<LocalCommunicator>(std::move(copy));
}

}  // namespace mingpt
