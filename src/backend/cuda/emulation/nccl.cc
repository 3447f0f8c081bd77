// The NCCL functions dist/nccl_communicator.cc calls, for the emulator: the
// ranks of a communicator are processes of one machine (one emulated device
// each), which meet in a POSIX shared-memory segment named by the unique
// id. A collective moves its data through one slot per rank, a chunk at a
// time, between process-shared barriers; sums run in rank order, in stream
// order like the emulator's other device work.
// A world of one needs no segment: its collectives are copies.
#include <fcntl.h>
#include <nccl.h>
#include <pthread.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <thread>

#include "backend/cuda/emulation/runtime_state.h"

namespace {

constexpr size_t kSlotBytes = size_t{1} << 20;  // per rank, per round

struct Segment {
  std::atomic<int> ready;  // set by rank 0 once the barrier is made
  int nranks;
  pthread_barrier_t barrier;
  // then nranks slots of kSlotBytes, at SlotsOffset()
};

size_t SlotsOffset() { return (sizeof(Segment) + 255) / 256 * 256; }

size_t TypeBytes(ncclDataType_t t) {
  switch (t) {
    case ncclInt8:
    case ncclUint8:
      return 1;
    case ncclFloat16:
    case ncclBfloat16:
      return 2;
    case ncclInt32:
    case ncclUint32:
    case ncclFloat32:
      return 4;
    case ncclInt64:
    case ncclUint64:
    case ncclFloat64:
      return 8;
    default:
      return 0;
  }
}

bool Summable(ncclDataType_t t) { return t == ncclFloat32 || t == ncclFloat64; }

}  // namespace

struct ncclComm {
  int nranks, rank;
  Segment* segment = nullptr;
  size_t mapped = 0;

  unsigned char* Slot(int r) const {
    return reinterpret_cast<unsigned char*>(segment) + SlotsOffset() + r * kSlotBytes;
  }
  void Wait() const { pthread_barrier_wait(&segment->barrier); }
};

namespace {

// out[i] = the sum over ranks, in rank order, of slot element i, i < count.
template <typename T>
void SumSlots(const ncclComm* c, T* out, size_t count) {
  for (size_t i = 0; i < count; ++i) {
    T acc = reinterpret_cast<const T*>(c->Slot(0))[i];
    for (int r = 1; r < c->nranks; ++r) acc += reinterpret_cast<const T*>(c->Slot(r))[i];
    out[i] = acc;
  }
}

// Only the sums mingpt uses are emulated (Summable).
void Sum(const ncclComm* c, void* out, size_t count, ncclDataType_t t) {
  if (t == ncclFloat64) {
    SumSlots(c, static_cast<double*>(out), count);
  } else {
    SumSlots(c, static_cast<float*>(out), count);
  }
}

}  // namespace

const char* ncclGetErrorString(ncclResult_t result) {
  switch (result) {
    case ncclSuccess:
      return "no error";
    case ncclSystemError:
      return "system error (emulator: the shared-memory segment)";
    case ncclInvalidArgument:
      return "invalid argument (emulator)";
    case ncclInvalidUsage:
      return "invalid usage (emulator)";
    default:
      return "error (emulator)";
  }
}

ncclResult_t ncclGetUniqueId(ncclUniqueId* id) {
  std::random_device rd;
  const std::string name = "/mingpt-nccl-emu-" + std::to_string(getpid()) + "-" +
                           std::to_string(rd()) + std::to_string(rd());
  std::memset(id->internal, 0, sizeof(id->internal));
  std::memcpy(id->internal, name.data(), std::min(name.size(), sizeof(id->internal) - 1));
  return ncclSuccess;
}

ncclResult_t ncclCommInitRank(ncclComm_t* out, int nranks, ncclUniqueId id, int rank) {
  if (nranks < 1 || rank < 0 || rank >= nranks) return ncclInvalidArgument;
  auto* c = new ncclComm{nranks, rank};
  *out = c;
  if (nranks == 1) return ncclSuccess;
  const std::string name(id.internal, strnlen(id.internal, sizeof(id.internal)));
  c->mapped = SlotsOffset() + nranks * kSlotBytes;
  int fd = -1;
  if (rank == 0) {
    fd = shm_open(name.c_str(), O_CREAT | O_EXCL | O_RDWR, 0600);
    if (fd < 0 || ftruncate(fd, static_cast<off_t>(c->mapped)) != 0) return ncclSystemError;
  } else {
    // Rank 0 makes the segment; wait for it (a minute at most).
    const auto give_up = std::chrono::steady_clock::now() + std::chrono::minutes(1);
    while ((fd = shm_open(name.c_str(), O_RDWR, 0600)) < 0) {
      if (std::chrono::steady_clock::now() > give_up) return ncclSystemError;
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
  }
  void* p = mmap(nullptr, c->mapped, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  close(fd);
  if (p == MAP_FAILED) return ncclSystemError;
  c->segment = static_cast<Segment*>(p);
  if (rank == 0) {
    pthread_barrierattr_t attr;
    pthread_barrierattr_init(&attr);
    pthread_barrierattr_setpshared(&attr, PTHREAD_PROCESS_SHARED);
    pthread_barrier_init(&c->segment->barrier, &attr, static_cast<unsigned>(nranks));
    pthread_barrierattr_destroy(&attr);
    c->segment->nranks = nranks;
    c->segment->ready.store(1, std::memory_order_release);
  } else {
    const auto give_up = std::chrono::steady_clock::now() + std::chrono::minutes(1);
    while (c->segment->ready.load(std::memory_order_acquire) != 1) {
      if (std::chrono::steady_clock::now() > give_up) return ncclSystemError;
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    if (c->segment->nranks != nranks) return ncclInvalidUsage;
  }
  c->Wait();  // everyone is attached: the name can go
  if (rank == 0) shm_unlink(name.c_str());
  return ncclSuccess;
}

// The emulator's errors are the returned codes alone.
const char* ncclGetLastError(ncclComm_t) { return ""; }

// No collective fails asynchronously here, unless a test says so:
// MINGPT_NCCL_EMULATOR_ASYNC_ERROR=<ncclResult_t> is reported as the error
// a running collective met.
ncclResult_t ncclCommGetAsyncError(ncclComm_t c, ncclResult_t* async) {
  if (c == nullptr || async == nullptr) return ncclInvalidArgument;
  const char* injected = std::getenv("MINGPT_NCCL_EMULATOR_ASYNC_ERROR");
  *async = injected ? static_cast<ncclResult_t>(std::atoi(injected)) : ncclSuccess;
  return ncclSuccess;
}

ncclResult_t ncclCommFinalize(ncclComm_t c) { return c ? ncclSuccess : ncclInvalidArgument; }

ncclResult_t ncclCommDestroy(ncclComm_t c) {
  if (c == nullptr) return ncclInvalidArgument;
  if (c->segment) munmap(c->segment, c->mapped);
  delete c;
  return ncclSuccess;
}

// Each collective is checked now and runs in stream order (runtime_state.h),
// as NCCL's kernels do.

ncclResult_t ncclAllReduce(const void* send, void* recv, size_t count, ncclDataType_t t,
                           ncclRedOp_t op, ncclComm_t c, cudaStream_t stream) {
  const size_t e = TypeBytes(t);
  if (c == nullptr || !Summable(t) || op != ncclSum) return ncclInvalidArgument;
  mingpt::cuda::emu::Enqueue(stream, [=] {
    if (c->nranks == 1) {
      if (send != recv) std::memcpy(recv, send, count * e);
      return;
    }
    const size_t per = kSlotBytes / e;
    for (size_t at = 0; at < count; at += per) {
      const size_t n = std::min(per, count - at);
      std::memcpy(c->Slot(c->rank), static_cast<const unsigned char*>(send) + at * e, n * e);
      c->Wait();
      Sum(c, static_cast<unsigned char*>(recv) + at * e, n, t);
      c->Wait();
    }
  });
  return ncclSuccess;
}

ncclResult_t ncclReduceScatter(const void* send, void* recv, size_t recvcount, ncclDataType_t t,
                               ncclRedOp_t op, ncclComm_t c, cudaStream_t stream) {
  const size_t e = TypeBytes(t);
  if (c == nullptr || !Summable(t) || op != ncclSum) return ncclInvalidArgument;
  mingpt::cuda::emu::Enqueue(stream, [=] {
    if (c->nranks == 1) {
      if (send != recv) std::memcpy(recv, send, recvcount * e);
      return;
    }
    const size_t per = kSlotBytes / e;
    // Rank d's block of every rank's send, summed into rank d's recv.
    for (int d = 0; d < c->nranks; ++d) {
      for (size_t at = 0; at < recvcount; at += per) {
        const size_t n = std::min(per, recvcount - at);
        std::memcpy(c->Slot(c->rank),
                    static_cast<const unsigned char*>(send) + (d * recvcount + at) * e, n * e);
        c->Wait();
        if (d == c->rank) Sum(c, static_cast<unsigned char*>(recv) + at * e, n, t);
        c->Wait();
      }
    }
  });
  return ncclSuccess;
}

ncclResult_t ncclAllGather(const void* send, void* recv, size_t sendcount, ncclDataType_t t,
                           ncclComm_t c, cudaStream_t stream) {
  const size_t e = TypeBytes(t);
  if (c == nullptr || e == 0) return ncclInvalidArgument;
  mingpt::cuda::emu::Enqueue(stream, [=] {
    auto* out = static_cast<unsigned char*>(recv);
    if (c->nranks == 1) {
      if (send != recv) std::memmove(out, send, sendcount * e);
      return;
    }
    const size_t per = kSlotBytes / e;
    for (size_t at = 0; at < sendcount; at += per) {
      const size_t n = std::min(per, sendcount - at);
      std::memcpy(c->Slot(c->rank), static_cast<const unsigned char*>(send) + at * e, n * e);
      c->Wait();
      for (int r = 0; r < c->nranks; ++r) {
        std::memcpy(out + (r * sendcount + at) * e, c->Slot(r), n * e);
      }
      c->Wait();
    }
  });
  return ncclSuccess;
}

ncclResult_t ncclBroadcast(const void* send, void* recv, size_t count, ncclDataType_t t, int root,
                           ncclComm_t c, cudaStream_t stream) {
  const size_t e = TypeBytes(t);
  if (c == nullptr || e == 0 || root < 0 || root >= c->nranks) return ncclInvalidArgument;
  mingpt::cuda::emu::Enqueue(stream, [=] {
    if (c->nranks == 1) {
      if (send != recv) std::memcpy(recv, send, count * e);
      return;
    }
    for (size_t at = 0; at < count * e; at += kSlotBytes) {
      const size_t n = std::min(kSlotBytes, count * e - at);
      if (c->rank == root) {
        std::memcpy(c->Slot(root), static_cast<const unsigned char*>(send) + at, n);
      }
      c->Wait();
      std::memcpy(static_cast<unsigned char*>(recv) + at, c->Slot(root), n);
      c->Wait();
    }
  });
  return ncclSuccess;
}
