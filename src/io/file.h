// Small POSIX file helpers with Status errors: whole-file reads, durable
// (fsync'd, atomically replaced) writes, directory fsync, temporary
// directories created beside a path, and room for many open files. Every error is one line naming the path.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>

#include "core/status.h"

namespace mingpt {

// Reads the whole file. Errors name the path: missing, unreadable, is a
// directory, or a read failure.
StatusOr<std::string> ReadFile(const std::string& path);
// ReadFile of `name` relative to the open directory `dir_fd` (openat(2);
// AT_FDCWD for the working directory); errors name `path`, the file as the
// user knows it. `open_flags` are added to openat's (O_NOFOLLOW: a symlink
// is refused, an error saying so).
StatusOr<std::string> ReadFileAt(int dir_fd, const std::string& name, const std::string& path,
                                 int open_flags = 0);

// Writes a file so that after it returns OK the bytes are on disk and `path`
// names them: the data goes to a temporary file beside `path`, which is
// fsync'd, renamed over `path`, and the parent directory fsync'd. A crash
// leaves either the old file or the new one at `path` (and possibly a stale
// "<path>.tmp-XXXXXX" beside it), never a torn file.
Status WriteFileDurably(const std::string& path, std::string_view bytes);

// Streaming form of WriteFileDurably, for data too large to hold twice.
// Move-only. If destroyed without a successful Commit(), the temporary file
// is removed and `path` is untouched.
class DurableFileWriter {
 public:
  // Creates "<path>.tmp-XXXXXX" beside `path`.
  static StatusOr<DurableFileWriter> Create(const std::string& path);

  DurableFileWriter(DurableFileWriter&& other) noexcept;
  DurableFileWriter& operator=(DurableFileWriter&& other) noexcept;
  DurableFileWriter(const DurableFileWriter&) = delete;
  DurableFileWriter& operator=(const DurableFileWriter&) = delete;
  ~DurableFileWriter();

  // Appends bytes (retrying short writes and EINTR).
  Status Append(const void* data, size_t size);
  Status Append(std::string_view bytes) { return Append(bytes.data(), bytes.size()); }
  // Overwrites `size` bytes at `offset` of what was appended so far (a
  // header patched once the data after it is known); the appends continue
  // at the end. Writing past the end is an error.
  Status WriteAt(uint64_t offset, const void* data, size_t size);
  // fsync, close, rename over the final path, fsync the parent directory.
  Status Commit();

  const std::string& path() const { return path_; }

 private:
  DurableFileWriter(std::string path, std::string temp_path, int fd)
      : path_(std::move(path)), temp_path_(std::move(temp_path)), fd_(fd) {}
  void Abandon();

  std::string path_;
  std::string temp_path_;
  int fd_ = -1;
};

// fsyncs a directory, making renames and creations inside it durable.
Status FsyncDirectory(const std::string& dir);
// fsyncs the directory that contains `path` ("." for a bare file name).
Status FsyncParentDirectory(const std::string& path);

// Creates a fresh, empty directory "<path>.<tag>-XXXXXX" (mkdtemp, mode 0700
// adjusted by chmod to 0755) beside `path` and returns its path. Trailing
// slashes of `path` are ignored.
StatusOr<std::string> MakeTempDirBeside(const std::string& path,
                                        const std::string& tag = "tmp");

// Lets this process keep `count` more files open at once (a reader that
// keeps one per shard of a checkpoint): where the soft limit on open files
// (RLIMIT_NOFILE, often 1024) leaves too little room beside those open now,
// it is raised toward the hard limit, as any process may do, and left
// raised. Error (one line): even the hard limit leaves too little room.
Status ReserveOpenFiles(uint64_t count);

// Path helpers on plain strings: "a/b/" -> "a/b"; Dirname("a/b") == "a",
// Dirname("b") == "."; Basename("a/b") == "b"; JoinPath("a", "b") == "a/b".
std::string StripTrailingSlashes(const std::string& path);
std::string Dirname(const std::string& path);
std::string Basename(const std::string& path);
std::string JoinPath(const std::string& dir, const std::string& name);

// "<what> '<path>': <strerror(err)>", the one-line form of a failed syscall.
Status ErrnoError(const std::string& what, const std::string& path, int err);

}  // namespace mingpt
