#include "io/file.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <utility>
#include <vector>

namespace mingpt {

namespace {

// close() that reports failure (a delayed write error can surface here).
Status CloseFd(int fd, const std::string& path) {
  if (::close(fd) != 0) return ErrnoError("cannot close", path, errno);
  return Status::Ok();
}

Status WriteAll(int fd, const void* data, size_t size, const std::string& path) {
  const char* p = static_cast<const char*>(data);
  while (size > 0) {
    // Writes of more than ~2 GiB are split by the kernel anyway.
    const size_t chunk = size < (size_t{1} << 30) ? size : (size_t{1} << 30);
    const ssize_t n = ::write(fd, p, chunk);
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoError("cannot write", path, errno);
    }
    p += n;
    size -= static_cast<size_t>(n);
  }
  return Status::Ok();
}

}  // namespace

Status ReserveOpenFiles(uint64_t count) {
  uint64_t open_now = 0;
  std::error_code ec;
  for (std::filesystem::directory_iterator it("/proc/self/fd", ec), end; !ec && it != end;
       it.increment(ec)) {
    ++open_now;
  }
  // Room too for the few files opened beside them (an output, a meta.json).
  constexpr uint64_t kSpare = 32;
  const uint64_t need = open_now + count + kSpare;
  rlimit limit;
  if (::getrlimit(RLIMIT_NOFILE, &limit) != 0 || limit.rlim_cur == RLIM_INFINITY ||
      limit.rlim_cur >= need) {
    return Status::Ok();
  }
  if (limit.rlim_max != RLIM_INFINITY && limit.rlim_max < need) {
    return Status::Error("needs " + std::to_string(need) + " open files, more than the limit (" +
                         std::to_string(limit.rlim_max) + ", the hard limit: see ulimit -Hn)");
  }
  // The room the process had for its other files stays: `count` more.
  limit.rlim_cur = std::min<rlim_t>(limit.rlim_max, limit.rlim_cur + count + kSpare);
  if (::setrlimit(RLIMIT_NOFILE, &limit) != 0) {
    return Status::Error("needs " + std::to_string(need) +
                         " open files, and the limit cannot be raised: " + ::strerror(errno));
  }
  return Status::Ok();
}

Status ErrnoError(const std::string& what, const std::string& path, int err) {
  return Status::Error(what + " '" + path + "': " + ::strerror(err));
}

std::string StripTrailingSlashes(const std::string& path) {
  std::string p = path;
  while (p.size() > 1 && p.back() == '/') p.pop_back();
  return p;
}

std::string Dirname(const std::string& path) {
  const std::string p = StripTrailingSlashes(path);
  const size_t slash = p.rfind('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return p.substr(0, slash);
}

std::string Basename(const std::string& path) {
  const std::string p = StripTrailingSlashes(path);
  const size_t slash = p.rfind('/');
  return slash == std::string::npos ? p : p.substr(slash + 1);
}

std::string JoinPath(const std::string& dir, const std::string& name) {
  if (dir.empty()) return name;
  if (dir.back() == '/') return dir + name;
  return dir + "/" + name;
}

StatusOr<std::string> ReadFile(const std::string& path) { return ReadFileAt(AT_FDCWD, path, path); }

StatusOr<std::string> ReadFileAt(int dir_fd, const std::string& name, const std::string& path,
                                 int open_flags) {
  // O_NONBLOCK: opening a FIFO must not wait for a writer; it is refused
  // below, as every file that is not a regular one is (a device such as
  // /dev/zero never ends). Regular files ignore the flag.
  int fd = ::openat(dir_fd, name.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK | open_flags);
  if (fd < 0) {
    if (errno == ENOENT) return Status::Error("file '" + path + "' does not exist");
    if (errno == ELOOP && (open_flags & O_NOFOLLOW)) {
      return Status::Error("'" + path + "' is a symlink, which this read does not follow");
    }
    return ErrnoError("cannot open", path, errno);
  }
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    return ErrnoError("cannot stat", path, err);
  }
  if (S_ISDIR(st.st_mode)) {
    ::close(fd);
    return Status::Error("'" + path + "' is a directory, not a file");
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    return Status::Error("'" + path + "' is not a regular file");
  }
  std::string out;
  out.reserve(static_cast<size_t>(st.st_size));
  std::vector<char> buf(1 << 16);
  while (true) {
    const ssize_t n = ::read(fd, buf.data(), buf.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      const int err = errno;
      ::close(fd);
      return ErrnoError("cannot read", path, err);
    }
    if (n == 0) break;
    out.append(buf.data(), static_cast<size_t>(n));
  }
  ::close(fd);
  return out;
}

StatusOr<DurableFileWriter> DurableFileWriter::Create(const std::string& path) {
  std::string temp = path + ".tmp-XXXXXX";
  const int fd = ::mkostemp(temp.data(), O_CLOEXEC);
  if (fd < 0) return ErrnoError("cannot create a temporary file beside", path, errno);
  // mkstemp uses 0600; a weight file is an ordinary file.
  if (::fchmod(fd, 0644) != 0) {
    const int err = errno;
    ::close(fd);
    ::unlink(temp.c_str());
    return ErrnoError("cannot chmod", temp, err);
  }
  return DurableFileWriter(path, std::move(temp), fd);
}

DurableFileWriter::DurableFileWriter(DurableFileWriter&& other) noexcept
    : path_(std::move(other.path_)),
      temp_path_(std::move(other.temp_path_)),
      fd_(std::exchange(other.fd_, -1)) {}

DurableFileWriter& DurableFileWriter::operator=(DurableFileWriter&& other) noexcept {
  if (this != &other) {
    Abandon();
    path_ = std::move(other.path_);
    temp_path_ = std::move(other.temp_path_);
    fd_ = std::exchange(other.fd_, -1);
  }
  return *this;
}

DurableFileWriter::~DurableFileWriter() { Abandon(); }

void DurableFileWriter::Abandon() {
  if (fd_ < 0) return;
  ::close(fd_);
  ::unlink(temp_path_.c_str());
  fd_ = -1;
}

Status DurableFileWriter::Append(const void* data, size_t size) {
  if (fd_ < 0) return Status::Error("write to '" + path_ + "' after it was closed");
  Status s = WriteAll(fd_, data, size, path_);
  if (!s.ok()) Abandon();
  return s;
}

Status DurableFileWriter::WriteAt(uint64_t offset, const void* data, size_t size) {
  if (fd_ < 0) return Status::Error("write to '" + path_ + "' after it was closed");
  struct stat st;
  if (::fstat(fd_, &st) != 0) {
    const int err = errno;
    Abandon();
    return ErrnoError("cannot stat", path_, err);
  }
  const uint64_t written = static_cast<uint64_t>(st.st_size);
  if (offset > written || size > written - offset) {  // nothing written: still usable
    return Status::Error("write at bytes [" + std::to_string(offset) + ", +" +
                         std::to_string(size) + ") past the end (" + std::to_string(written) +
                         " bytes) of '" + path_ + "'");
  }
  const char* p = static_cast<const char*>(data);
  while (size > 0) {
    const size_t chunk = size < (size_t{1} << 30) ? size : (size_t{1} << 30);
    const ssize_t n = ::pwrite(fd_, p, chunk, static_cast<off_t>(offset));
    if (n < 0) {
      if (errno == EINTR) continue;
      const int err = errno;
      Abandon();
      return ErrnoError("cannot write", path_, err);
    }
    p += n;
    size -= static_cast<size_t>(n);
    offset += static_cast<uint64_t>(n);
  }
  return Status::Ok();
}

Status DurableFileWriter::Commit() {
  if (fd_ < 0) return Status::Error("commit of '" + path_ + "' after it was closed");
  if (::fsync(fd_) != 0) {
    const int err = errno;
    Abandon();
    return ErrnoError("cannot fsync", path_, err);
  }
  const int fd = std::exchange(fd_, -1);
  Status s = CloseFd(fd, path_);
  if (s.ok() && ::rename(temp_path_.c_str(), path_.c_str()) != 0) {
    s = ErrnoError("cannot rename a temporary file to", path_, errno);
  }
  if (!s.ok()) {
    ::unlink(temp_path_.c_str());
    return s;
  }
  return FsyncParentDirectory(path_);
}

Status WriteFileDurably(const std::string& path, std::string_view bytes) {
  MINGPT_ASSIGN_OR_RETURN(DurableFileWriter writer, DurableFileWriter::Create(path));
  MINGPT_RETURN_IF_ERROR(writer.Append(bytes));
  return writer.Commit();
}

Status FsyncDirectory(const std::string& dir) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return ErrnoError("cannot open directory", dir, errno);
  if (::fsync(fd) != 0) {
    const int err = errno;
    ::close(fd);
    return ErrnoError("cannot fsync directory", dir, err);
  }
  return CloseFd(fd, dir);
}

Status FsyncParentDirectory(const std::string& path) {
  return FsyncDirectory(Dirname(path));
}

StatusOr<std::string> MakeTempDirBeside(const std::string& path, const std::string& tag) {
  const std::string base = StripTrailingSlashes(path);
  if (base.empty() || base == "/") {
    return Status::Error("cannot make a temporary directory beside '" + path + "'");
  }
  std::string temp = base + "." + tag + "-XXXXXX";
  if (::mkdtemp(temp.data()) == nullptr) {
    return ErrnoError("cannot create a temporary directory beside", base, errno);
  }
  if (::chmod(temp.c_str(), 0755) != 0) {
    const int err = errno;
    ::rmdir(temp.c_str());
    return ErrnoError("cannot chmod", temp, err);
  }
  return temp;
}

}  // namespace mingpt
