// AsyncFile: a file read and written with asynchronous direct I/O through
// io_uring, for the NVMe offload: transfers bypass the page cache (O_DIRECT),
// so that the disk, not memory, holds the offloaded state, and several run
// at once while the caller computes.
//
// Every transfer needs a buffer address, a length and a file offset that are
// multiples of kDirectAlign (AlignedBlock provides such buffers). Read and
// Write queue the transfer (split into pieces of at most
// AsyncFileLimits::max_piece bytes, as many in flight at once as the ring
// holds: a transfer of any size, the ring submitted whenever it is full)
// and return a ticket at once; Wait(ticket) returns when it has completed.
// A failed or short transfer is an expected failure (a full or failing
// disk): Wait returns one line naming the file and the error, and every
// later call fails the same way.
//
// Where the kernel refuses io_uring (some sandboxes) or the file system
// refuses O_DIRECT, the file falls back to plain pread/pwrite at Wait time
// (buffered when O_DIRECT is refused); mode() says which.
#pragma once

#include <sys/types.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "core/status.h"

namespace mingpt {

inline constexpr size_t kDirectAlign = 4096;

// `bytes` rounded up to a multiple of kDirectAlign.
inline size_t DirectRound(size_t bytes) {
  return (bytes + kDirectAlign - 1) / kDirectAlign * kDirectAlign;
}

// The io_uring ring's depth (requests in flight at once) and the largest
// request (a multiple of kDirectAlign). The defaults are the offload's;
// tests pass small ones, so that a transfer of many pieces needs no large
// file.
struct AsyncFileLimits {
  unsigned queue_depth = 64;
  size_t max_piece = 64u << 20;
};

// A kDirectAlign-aligned heap block, move-only; null when empty.
class AlignedBlock {
 public:
  AlignedBlock() = default;
  explicit AlignedBlock(size_t bytes);  // aborts on OOM
  AlignedBlock(AlignedBlock&&) noexcept = default;
  AlignedBlock& operator=(AlignedBlock&&) noexcept = default;
  void* data() const { return ptr_.get(); }
  float* f32() const { return static_cast<float*>(ptr_.get()); }
  size_t bytes() const { return bytes_; }

 private:
  struct Free {
    void operator()(void* p) const;
  };
  std::unique_ptr<void, Free> ptr_;
  size_t bytes_ = 0;
};

class AsyncFile {
 public:
  enum class Mode { kUring, kDirectSync, kBufferedSync };
  using Ticket = uint64_t;

  // Creates (or truncates) `path` and reserves `bytes` on disk (fallocate):
  // a disk without room fails here, before anything is written.
  static StatusOr<std::unique_ptr<AsyncFile>> Create(const std::string& path, size_t bytes,
                                                     const AsyncFileLimits& limits = {});
  ~AsyncFile();
  AsyncFile(const AsyncFile&) = delete;
  AsyncFile& operator=(const AsyncFile&) = delete;

  Ticket Read(void* buffer, size_t bytes, off_t offset);
  Ticket Write(const void* buffer, size_t bytes, off_t offset);
  Status Wait(Ticket ticket);
  // Waits for every transfer queued so far.
  Status WaitAll();

  Mode mode() const { return mode_; }
  const std::string& path() const { return path_; }
  // Bytes moved by completed transfers, each way.
  uint64_t bytes_read() const { return bytes_read_; }
  uint64_t bytes_written() const { return bytes_written_; }

 private:
  struct Ring;
  struct Pending {
    bool write;
    char* buffer;
    size_t bytes;
    off_t offset;
    Ticket ticket;
  };
  AsyncFile(std::string path, int fd, Mode mode, std::unique_ptr<Ring> ring, size_t max_piece);
  Ticket Queue(bool write, char* buffer, size_t bytes, off_t offset);
  // Submits the requests prepared in the ring. A refusal that cannot pass
  // (anything but EINTR, or EAGAIN / EBUSY while completions are there to
  // reap) fails the file and drops the requests left unsubmitted: nothing
  // waits for a completion that cannot come.
  void Submit();
  // Reaps one completion of a submitted request (blocking).
  void ReapOne();
  // Runs a queued transfer with pread/pwrite (the fallback modes).
  void RunSync(const Pending& p);
  void Fail(const std::string& what, int err);

  std::string path_;
  int fd_ = -1;
  Mode mode_;
  std::unique_ptr<Ring> ring_;
  struct Piece {  // one io_uring request
    Ticket ticket;
    size_t bytes;
    bool write;
  };
  size_t max_piece_;
  Ticket next_ticket_ = 1;
  uint64_t next_piece_ = 1;
  uint64_t unsubmitted_ = 0;  // io_uring: prepared, not yet submitted (the last ids)
  uint64_t in_flight_ = 0;    // io_uring: submitted, not yet reaped
  bool broken_ = false;       // io_uring: a submit failed for good; nothing more is sent
  std::unordered_map<Ticket, int> outstanding_;  // io_uring: pieces in flight per ticket
  std::unordered_map<uint64_t, Piece> pieces_;   // io_uring: in flight, by user_data
  std::vector<Pending> sync_queue_;              // fallback modes: run at Wait
  Status error_;
  uint64_t bytes_read_ = 0, bytes_written_ = 0;
};

}  // namespace mingpt
