#include "io/async_file.h"

#include <fcntl.h>
#include <liburing.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>

#include "core/check.h"

namespace mingpt {

struct AsyncFile::Ring {
  io_uring ring;
  bool ready = false;
  ~Ring() {
    if (ready) io_uring_queue_exit(&ring);
  }
};

AlignedBlock::AlignedBlock(size_t bytes) : bytes_(DirectRound(std::max<size_t>(bytes, 1))) {
  void* p = std::aligned_alloc(kDirectAlign, bytes_);
  MINGPT_CHECK(p != nullptr, "out of memory allocating %zu bytes", bytes_);
  ptr_.reset(p);
}

void AlignedBlock::Free::operator()(void* p) const { std::free(p); }

StatusOr<std::unique_ptr<AsyncFile>> AsyncFile::Create(const std::string& path, size_t bytes,
                                                        const AsyncFileLimits& limits) {
  // A request's length is an unsigned int, and every piece but the last
  // must leave the next one aligned.
  if (limits.queue_depth == 0 || limits.max_piece == 0 || limits.max_piece % kDirectAlign != 0 ||
      limits.max_piece > (1u << 31)) {
    return Status::Error("AsyncFile: bad limits for " + path);
  }
  Mode mode = Mode::kDirectSync;
  int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_DIRECT | O_CLOEXEC, 0600);
  if (fd < 0 && errno == EINVAL) {  // the file system refuses direct I/O
    mode = Mode::kBufferedSync;
    fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  }
  if (fd < 0) return Status::Error("cannot create " + path + ": " + std::strerror(errno));
  if (bytes > 0) {
    const int err = ::posix_fallocate(fd, 0, static_cast<off_t>(bytes));
    if (err != 0) {
      ::close(fd);
      ::unlink(path.c_str());
      return Status::Error("cannot reserve " + std::to_string(bytes >> 20) + " MiB for " + path +
                           ": " + std::strerror(err));
    }
  }
  std::unique_ptr<Ring> ring;
  if (mode == Mode::kDirectSync) {
    ring = std::make_unique<Ring>();
    ring->ready = io_uring_queue_init(limits.queue_depth, &ring->ring, 0) == 0;
    if (ring->ready) {
      mode = Mode::kUring;
    } else {
      ring.reset();
    }
  }
  return std::unique_ptr<AsyncFile>(
      new AsyncFile(path, fd, mode, std::move(ring), limits.max_piece));
}

AsyncFile::AsyncFile(std::string path, int fd, Mode mode, std::unique_ptr<Ring> ring,
                     size_t max_piece)
    : path_(std::move(path)), fd_(fd), mode_(mode), ring_(std::move(ring)), max_piece_(max_piece) {}

AsyncFile::~AsyncFile() {
  (void)WaitAll();  // no transfer may outlive its buffer
  ring_.reset();
  if (fd_ >= 0) ::close(fd_);
}

void AsyncFile::Fail(const std::string& what, int err) {
  if (error_.ok()) {
    error_ = Status::Error(what + " " + path_ + ": " +
                           (err == 0 ? std::string("short transfer") : std::strerror(err)));
  }
}

AsyncFile::Ticket AsyncFile::Read(void* buffer, size_t bytes, off_t offset) {
  return Queue(false, static_cast<char*>(buffer), bytes, offset);
}

AsyncFile::Ticket AsyncFile::Write(const void* buffer, size_t bytes, off_t offset) {
  return Queue(true, static_cast<char*>(const_cast<void*>(buffer)), bytes, offset);
}

AsyncFile::Ticket AsyncFile::Queue(bool write, char* buffer, size_t bytes, off_t offset) {
  const Ticket t = next_ticket_++;
  if (mode_ != Mode::kUring) {
    sync_queue_.push_back({write, buffer, bytes, offset, t});
    return t;
  }
  for (size_t done = 0; done < bytes && !broken_; done += max_piece_) {
    const size_t n = std::min(max_piece_, bytes - done);
    io_uring_sqe* sqe = io_uring_get_sqe(&ring_->ring);
    while (sqe == nullptr && !broken_) {
      // The ring is full: what it holds must be submitted before any of it
      // can complete and make room (a transfer of more pieces than the ring
      // holds would otherwise wait for requests never sent).
      Submit();
      if (in_flight_ > 0) ReapOne();
      sqe = io_uring_get_sqe(&ring_->ring);
    }
    if (sqe == nullptr) break;  // broken: the ticket completes with the error
    if (write) {
      io_uring_prep_write(sqe, fd_, buffer + done, static_cast<unsigned>(n), offset + done);
    } else {
      io_uring_prep_read(sqe, fd_, buffer + done, static_cast<unsigned>(n), offset + done);
    }
    const uint64_t id = next_piece_++;
    sqe->user_data = id;
    pieces_[id] = {t, n, write};
    ++outstanding_[t];
    ++unsubmitted_;
  }
  Submit();
  return t;
}

void AsyncFile::Submit() {
  while (unsubmitted_ > 0 && !broken_) {
    const int n = io_uring_submit(&ring_->ring);
    if (n > 0) {
      unsubmitted_ -= static_cast<uint64_t>(n);
      in_flight_ += static_cast<uint64_t>(n);
    } else if (n == -EINTR) {
      continue;
    } else if ((n == -EAGAIN || n == -EBUSY) && in_flight_ > 0) {
      ReapOne();  // the kernel wants completions taken first
    } else {
      Fail("submitting requests for", n < 0 ? -n : EIO);
      broken_ = true;
    }
  }
  if (!broken_) return;
  // The unsubmitted requests are the newest ones; the kernel never sees
  // them (nothing is submitted again), so no completion will come.
  for (; unsubmitted_ > 0; --unsubmitted_) {
    auto piece = pieces_.find(next_piece_ - unsubmitted_);
    auto it = outstanding_.find(piece->second.ticket);
    if (--it->second == 0) outstanding_.erase(it);
    pieces_.erase(piece);
  }
}

void AsyncFile::ReapOne() {
  io_uring_cqe* cqe = nullptr;
  int err = io_uring_wait_cqe(&ring_->ring, &cqe);
  while (err == -EINTR) err = io_uring_wait_cqe(&ring_->ring, &cqe);
  // Submitted requests still in flight write into the callers' buffers:
  // returning without their completions could let a buffer be freed under
  // a transfer, so a ring that cannot be waited on ends the process.
  MINGPT_CHECK(err == 0, "io_uring_wait_cqe on %s: %s", path_.c_str(), std::strerror(-err));
  const uint64_t id = cqe->user_data;
  const int res = cqe->res;
  io_uring_cqe_seen(&ring_->ring, cqe);
  --in_flight_;
  auto piece = pieces_.find(id);
  MINGPT_CHECK(piece != pieces_.end(), "io_uring completion for an unknown request");
  const Piece p = piece->second;
  pieces_.erase(piece);
  if (res < 0 || static_cast<size_t>(res) != p.bytes) {  // a short direct transfer: the disk's end
    Fail(p.write ? "writing" : "reading", res < 0 ? -res : 0);
  } else {
    (p.write ? bytes_written_ : bytes_read_) += p.bytes;
  }
  auto it = outstanding_.find(p.ticket);
  if (--it->second == 0) outstanding_.erase(it);
}

void AsyncFile::RunSync(const Pending& p) {
  for (size_t done = 0; done < p.bytes;) {
    const ssize_t n = p.write ? ::pwrite(fd_, p.buffer + done, p.bytes - done, p.offset + done)
                              : ::pread(fd_, p.buffer + done, p.bytes - done, p.offset + done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      Fail(p.write ? "writing" : "reading", n < 0 ? errno : 0);
      return;
    }
    done += static_cast<size_t>(n);
    (p.write ? bytes_written_ : bytes_read_) += static_cast<uint64_t>(n);
  }
}

Status AsyncFile::Wait(Ticket t) {
  if (mode_ != Mode::kUring) return WaitAll();
  while (outstanding_.count(t) > 0) ReapOne();
  return error_;
}

Status AsyncFile::WaitAll() {
  if (mode_ != Mode::kUring) {
    for (const Pending& p : sync_queue_) {
      if (error_.ok()) RunSync(p);
    }
    sync_queue_.clear();
    return error_;
  }
  while (!outstanding_.empty()) ReapOne();
  return error_;
}

}  // namespace mingpt
