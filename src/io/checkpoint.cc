#include "io/checkpoint.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cctype>
#include <filesystem>
#include <mutex>
#include <set>
#include <system_error>

#include "io/file.h"

namespace mingpt {

namespace fs = std::filesystem;

namespace {

constexpr char kVersionTag[] = "ckpt";          // D.ckpt-XXXXXX
constexpr char kLinkSuffix[] = ".tmp-link";     // D.tmp-link

// Is `name` a version directory name of the checkpoint whose basename is
// `base`, i.e. "<base>.ckpt-" followed by the 6 characters mkdtemp chose?
bool IsVersionName(const std::string& name, const std::string& base) {
  const std::string prefix = base + "." + kVersionTag + "-";
  if (name.size() != prefix.size() + 6 || name.compare(0, prefix.size(), prefix) != 0) {
    return false;
  }
  for (size_t i = prefix.size(); i < name.size(); ++i) {
    if (!std::isalnum(static_cast<unsigned char>(name[i]))) return false;
  }
  return true;
}

// The target of symlink `path`, or "" if it is not a symlink.
std::string ReadLink(const std::string& path) {
  std::error_code ec;
  if (!fs::is_symlink(fs::symlink_status(path, ec))) return "";
  fs::path target = fs::read_symlink(path, ec);
  return ec ? "" : target.string();
}

// flock() retried on EINTR; false with errno set on failure.
bool Flock(int fd, int operation) {
  while (::flock(fd, operation) != 0) {
    if (errno != EINTR) return false;
  }
  return true;
}

// Removes `path`, a stale version directory (or D.tmp-link), unless a
// reader holds it: its exclusive lock is kept while removing, so a reader
// that comes meanwhile waits and then finds the directory gone.
void RemoveUnlessHeld(const std::string& path) {
  std::error_code ec;
  const int fd = ::open(path.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0) {  // a symlink (D.tmp-link) or gone: nothing to hold
    fs::remove_all(path, ec);
    return;
  }
  if (!Flock(fd, LOCK_EX | LOCK_NB) && errno == EWOULDBLOCK) {
    ::close(fd);  // read now: a later save removes it
    return;
  }
  fs::remove_all(path, ec);
  ::close(fd);
}

// Steps 1 and 6 of the scheme: removes D.tmp-link and all version directories of
// D except the one D points to and those readers hold. Best effort: a failure
// here never fails a save (the next save tries again).
void RemoveStaleSaves(const std::string& dir) {
  const std::string parent = Dirname(dir);
  const std::string base = Basename(dir);
  const std::string current = ReadLink(dir);
  std::error_code ec;
  // A symlink, or an old real directory after an exchange.
  RemoveUnlessHeld(dir + kLinkSuffix);
  std::vector<std::string> stale;
  for (fs::directory_iterator it(parent, ec), end; !ec && it != end; it.increment(ec)) {
    const std::string name = it->path().filename().string();
    if (name == current || !IsVersionName(name, base)) continue;
    std::error_code status_ec;
    if (fs::is_directory(it->symlink_status(status_ec))) stale.push_back(name);
  }
  for (const std::string& name : stale) RemoveUnlessHeld(JoinPath(parent, name));
}

}  // namespace

// A version directory, open (its files are opened relative to it) and
// share-locked (flock) while this lives.
class VersionHold {
 public:
  explicit VersionHold(int fd) : fd_(fd) {}
  VersionHold(const VersionHold&) = delete;
  VersionHold& operator=(const VersionHold&) = delete;
  ~VersionHold() { ::close(fd_); }
  int fd() const { return fd_; }

 private:
  int fd_;
};

void RemoveCrashLeftovers(const std::string& dir) { RemoveStaleSaves(StripTrailingSlashes(dir)); }

namespace {

Status ValidateFilename(const std::string& name) {
  if (name.empty() || name == "." || name == ".." || name.find('/') != std::string::npos) {
    return Status::Error("file name '" + name + "' is not a plain file name");
  }
  if (name == kCheckpointMetaFile) return Status::Error("file name 'meta.json' is reserved");
  return Status::Ok();
}

Status ValidateFilenames(const std::vector<CheckpointFile>& files) {
  std::set<std::string> seen;
  for (const CheckpointFile& f : files) {
    MINGPT_RETURN_IF_ERROR(ValidateFilename(f.filename));
    if (!seen.insert(f.filename).second) {
      return Status::Error("file name '" + f.filename + "' appears twice");
    }
  }
  return Status::Ok();
}

// format_version as text, without dumping (recursing into) a nested value.
std::string VersionText(const nlohmann::json& v) {
  if (v.is_structured()) return v.is_array() ? "(an array)" : "(an object)";
  std::string s = v.dump();
  return s.size() > 40 ? s.substr(0, 37) + "..." : s;
}

StatusOr<nlohmann::json> MetaWithVersion(const nlohmann::json& meta) {
  if (!meta.is_object()) return Status::Error("meta is not a JSON object");
  nlohmann::json out = meta;
  auto it = out.find("format_version");
  if (it == out.end()) {
    out["format_version"] = kCheckpointFormatVersion;
  } else if (!it->is_number_integer() || it->get<int64_t>() != kCheckpointFormatVersion) {
    return Status::Error("meta has format_version " + VersionText(*it) + ", expected " +
                         std::to_string(kCheckpointFormatVersion));
  }
  return out;
}

// The test hook: k from MINGPT_CRASH_DURING_SAVE, or 0 when unset/invalid.
long CrashAfterFiles() {
  const char* v = ::getenv(kCrashDuringSaveEnv);
  if (v == nullptr) return 0;
  char* end = nullptr;
  const long k = ::strtol(v, &end, 10);
  return (end != v && *end == '\0' && k > 0) ? k : 0;
}

// The test hook: exits once this process has written its k-th file into
// one version directory (the count restarts with each new directory).
void CountWrittenFile(const std::string& version_dir) {
  const long crash_after = CrashAfterFiles();
  if (crash_after == 0) return;
  static std::mutex mu;
  static std::string counted_dir;
  static long written = 0;
  std::lock_guard<std::mutex> lock(mu);
  if (counted_dir != version_dir) {
    counted_dir = version_dir;
    written = 0;
  }
  if (++written == crash_after) ::_exit(kCrashDuringSaveExitCode);
}

std::string SaveContext(const std::string& dir) {
  return "cannot save checkpoint '" + dir + "'";
}

bool IsRegularFile(const std::string& path) {
  struct stat st;
  return ::lstat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

// Step 5: makes `dir` name `new_dir` atomically.
Status SwapIn(const std::string& dir, const std::string& new_dir) {
  const std::string link = dir + kLinkSuffix;
  RemoveUnlessHeld(link);
  struct stat st;
  if (::lstat(link.c_str(), &st) == 0) {
    // A real directory an earlier save exchanged out of `dir`, which a
    // reader still holds: moved aside under a version name (onto an empty
    // directory mkdtemp made), which a later save removes once released.
    MINGPT_ASSIGN_OR_RETURN(std::string aside, MakeTempDirBeside(dir, kVersionTag));
    if (::rename(link.c_str(), aside.c_str()) != 0) {
      const int err = errno;
      ::rmdir(aside.c_str());
      return ErrnoError("cannot move aside directory", link, err);
    }
  }
  if (::symlink(Basename(new_dir).c_str(), link.c_str()) != 0) {
    return ErrnoError("cannot create symlink", link, errno);
  }
  const bool exists = ::lstat(dir.c_str(), &st) == 0;
  if (exists && !S_ISDIR(st.st_mode) && !S_ISLNK(st.st_mode)) {
    ::unlink(link.c_str());
    return Status::Error("'" + dir + "' exists and is not a checkpoint directory");
  }
  if (!exists || S_ISLNK(st.st_mode)) {
    // Absent, or our symlink: rename() replaces it atomically.
    if (::rename(link.c_str(), dir.c_str()) != 0) {
      const int err = errno;
      ::unlink(link.c_str());
      return ErrnoError("cannot rename symlink over", dir, err);
    }
  } else if (::renameat2(AT_FDCWD, link.c_str(), AT_FDCWD, dir.c_str(), RENAME_EXCHANGE) != 0) {
    // No RENAME_EXCHANGE here: move the directory aside (onto an empty
    // version-named directory, so a crash leaves a removable leftover).
    if (errno != EINVAL && errno != ENOSYS && errno != ENOTSUP) {
      const int err = errno;
      ::unlink(link.c_str());
      return ErrnoError("cannot exchange symlink with", dir, err);
    }
    MINGPT_ASSIGN_OR_RETURN(std::string aside, MakeTempDirBeside(dir, kVersionTag));
    if (::rename(dir.c_str(), aside.c_str()) != 0) {
      const int err = errno;
      ::unlink(link.c_str());
      return ErrnoError("cannot move aside directory", dir, err);
    }
    if (::rename(link.c_str(), dir.c_str()) != 0) {
      const int err = errno;
      ::rename(aside.c_str(), dir.c_str());  // put the old checkpoint back
      ::unlink(link.c_str());
      return ErrnoError("cannot rename symlink over", dir, err);
    }
  }
  return FsyncParentDirectory(dir);
}

// Steps 4-5: meta.json, fsyncs, and the swap.
Status CommitVersion(const PendingCheckpoint& pending, const nlohmann::json& meta,
                     const std::vector<std::string>& expected_files) {
  MINGPT_ASSIGN_OR_RETURN(nlohmann::json full_meta, MetaWithVersion(meta));
  for (const std::string& name : expected_files) {
    if (!IsRegularFile(JoinPath(pending.version_dir, name))) {
      return Status::Error("file '" + name + "' was not written into '" + pending.version_dir +
                           "'");
    }
  }
  const std::string& v = pending.version_dir;
  MINGPT_RETURN_IF_ERROR(
      WriteFileDurably(JoinPath(v, kCheckpointMetaFile), full_meta.dump(2) + "\n"));
  CountWrittenFile(v);
  MINGPT_RETURN_IF_ERROR(FsyncDirectory(v));
  MINGPT_RETURN_IF_ERROR(FsyncParentDirectory(v));
  return SwapIn(pending.dir, v);
}

}  // namespace

StatusOr<PendingCheckpoint> BeginCheckpoint(const std::string& dir_in) {
  const std::string dir = StripTrailingSlashes(dir_in);
  const std::string context = SaveContext(dir);
  if (dir.empty() || dir == "/" || Basename(dir) == "." || Basename(dir) == "..") {
    return Status::Error(context + ": not a usable checkpoint path");
  }
  struct stat st;
  if (::lstat(dir.c_str(), &st) == 0 && !S_ISDIR(st.st_mode) && !S_ISLNK(st.st_mode)) {
    return Status::Error(context + ": '" + dir + "' exists and is not a checkpoint directory");
  }
  std::error_code ec;
  fs::create_directories(Dirname(dir), ec);
  if (ec) return Status::Error(context + ": cannot create parent directory: " + ec.message());
  RemoveStaleSaves(dir);
  StatusOr<std::string> version_dir = MakeTempDirBeside(dir, kVersionTag);
  if (!version_dir.ok()) return version_dir.status().WithContext(context);
  return PendingCheckpoint{dir, *version_dir};
}

Status WriteCheckpointFile(const std::string& version_dir, const CheckpointFile& file) {
  MINGPT_RETURN_IF_ERROR(ValidateFilename(file.filename)
                             .WithContext("cannot write into '" + version_dir + "'"));
  MINGPT_RETURN_IF_ERROR(
      WriteSafetensors(JoinPath(version_dir, file.filename), file.tensors, file.metadata));
  CountWrittenFile(version_dir);
  return Status::Ok();
}

Status CommitCheckpoint(const PendingCheckpoint& pending, const nlohmann::json& meta,
                        const std::vector<std::string>& expected_files) {
  Status s = CommitVersion(pending, meta, expected_files);
  if (!s.ok()) {
    AbortCheckpoint(pending);
    return s.WithContext(SaveContext(pending.dir));
  }
  RemoveStaleSaves(pending.dir);
  return Status::Ok();
}

void AbortCheckpoint(const PendingCheckpoint& pending) {
  // Never remove the version that `dir` names (a failure after the swap).
  if (ReadLink(pending.dir) == Basename(pending.version_dir)) return;
  std::error_code ec;
  fs::remove_all(pending.version_dir, ec);
}

Status SaveCheckpoint(const std::string& dir_in, const nlohmann::json& meta,
                      const std::vector<CheckpointFile>& files) {
  const std::string context = SaveContext(StripTrailingSlashes(dir_in));
  MINGPT_RETURN_IF_ERROR(ValidateFilenames(files).WithContext(context));
  MINGPT_RETURN_IF_ERROR(MetaWithVersion(meta).status().WithContext(context));
  MINGPT_ASSIGN_OR_RETURN(PendingCheckpoint pending, BeginCheckpoint(dir_in));
  for (const CheckpointFile& f : files) {
    Status s = WriteCheckpointFile(pending.version_dir, f);
    if (!s.ok()) {
      AbortCheckpoint(pending);
      return s.WithContext(context);
    }
  }
  return CommitCheckpoint(pending, meta);
}

namespace {

// Where the checkpoint at `dir` (an existing directory) keeps its files now.
std::string ResolveVersion(const std::string& dir) {
  const std::string target = ReadLink(dir);
  if (target.empty()) return dir;
  return target[0] == '/' ? target : JoinPath(Dirname(dir), target);
}

// Opens and share-locks the version directory `data_dir` of checkpoint
// `dir` (only opens it where the filesystem cannot lock: the version is
// then read unprotected). Null when a save removed that version before the
// lock and `dir` names another one now (*moved is then set).
StatusOr<std::shared_ptr<const VersionHold>> HoldVersion(const std::string& dir,
                                                         const std::string& data_dir,
                                                         bool* moved) {
  *moved = false;
  const int fd = ::open(data_dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) {
    const int err = errno;
    if (err == ENOENT && ResolveVersion(dir) != data_dir) {
      *moved = true;
      return std::shared_ptr<const VersionHold>();
    }
    return ErrnoError("cannot open checkpoint directory", data_dir, err);
  }
  auto hold = std::make_shared<const VersionHold>(fd);
  if (!Flock(fd, LOCK_SH)) return hold;
  // Removed between the open and the lock: the directory is empty now.
  struct stat st;
  if (::fstatat(fd, kCheckpointMetaFile, &st, 0) != 0 && errno == ENOENT &&
      ResolveVersion(dir) != data_dir) {
    *moved = true;
    return std::shared_ptr<const VersionHold>();
  }
  return hold;
}

}  // namespace

StatusOr<Checkpoint> LoadCheckpoint(const std::string& dir_in, bool confined) {
  const std::string dir = StripTrailingSlashes(dir_in);
  struct stat st;
  if (::stat(dir.c_str(), &st) != 0) {
    if (errno == ENOENT) return Status::Error("checkpoint directory '" + dir + "' does not exist");
    return ErrnoError("cannot access checkpoint directory", dir, errno);
  }
  if (!S_ISDIR(st.st_mode)) {
    return Status::Error("checkpoint path '" + dir + "' is not a directory");
  }
  Checkpoint ckpt;
  ckpt.dir = dir;
  ckpt.confined = confined;
  // Each pass loses only to a save that completed meanwhile; a trainer
  // saving every few milliseconds could win a few times, never for long.
  constexpr int kAttempts = 100;
  for (int attempt = 1;; ++attempt) {
    ckpt.data_dir = ResolveVersion(dir);
    bool moved = false;
    MINGPT_ASSIGN_OR_RETURN(ckpt.hold, HoldVersion(dir, ckpt.data_dir, &moved));
    if (!moved) break;
    if (attempt == kAttempts) {
      return Status::Error("checkpoint '" + dir + "' was replaced by " +
                           std::to_string(kAttempts) + " saves while being opened");
    }
  }

  const std::string shown = JoinPath(dir, kCheckpointMetaFile);
  if (::fstatat(ckpt.hold->fd(), kCheckpointMetaFile, &st, 0) != 0 && errno == ENOENT) {
    return Status::Error("checkpoint '" + dir + "' has no meta.json (not a checkpoint?)");
  }
  MINGPT_ASSIGN_OR_RETURN(std::string text,
                          ReadFileAt(ckpt.hold->fd(), kCheckpointMetaFile,
                                     JoinPath(ckpt.data_dir, kCheckpointMetaFile),
                                     confined ? O_NOFOLLOW : 0));
  // Strict, as the safetensors headers: a repeated key or a NUL would let
  // two readers see different values.
  MINGPT_ASSIGN_OR_RETURN(ckpt.meta, ParseJsonStrict(text, shown));
  if (!ckpt.meta.is_object()) return Status::Error(shown + ": not a JSON object");
  auto it = ckpt.meta.find("format_version");
  if (it == ckpt.meta.end()) return Status::Error(shown + ": missing \"format_version\"");
  if (!it->is_number_integer() || it->get<int64_t>() != kCheckpointFormatVersion) {
    return Status::Error(shown + ": unsupported format_version " + VersionText(*it) +
                         " (this build reads format_version " +
                         std::to_string(kCheckpointFormatVersion) + ")");
  }
  return ckpt;
}

StatusOr<SafetensorsFile> Checkpoint::Open(const std::string& filename) const {
  if (filename.empty() || filename.find('/') != std::string::npos) {
    return Status::Error("checkpoint '" + dir + "': '" + filename + "' is not a plain file name");
  }
  const std::string path = JoinPath(data_dir, filename);
  // Through the held directory: its files, whatever `data_dir` names now (a
  // real directory a save exchanged for its link, moved aside meanwhile).
  if (hold) return SafetensorsFile::OpenAt(hold->fd(), filename, path, confined ? O_NOFOLLOW : 0);
  if (confined) return Status::Error("checkpoint '" + dir + "': released, so not confined");
  return SafetensorsFile::Open(path);
}

std::string Checkpoint::HeldPath() const {
  if (!hold) return "";
  std::error_code ec;
  const fs::path real = fs::read_symlink("/proc/self/fd/" + std::to_string(hold->fd()), ec);
  return ec ? "" : real.string();
}

}  // namespace mingpt
