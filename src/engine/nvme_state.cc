#include "engine/nvme_state.h"

#include <fcntl.h>
#include <stdlib.h>
#include <sys/file.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>

namespace mingpt {
namespace {

namespace fs = std::filesystem;

const char* const kFileNames[NvmeState::kNumKinds] = {"params.bin", "exp_avg.bin",
                                                      "exp_avg_sq.bin", "grads.bin"};

int64_t MaxShard(const std::vector<ShardRange>& shards) {
  int64_t m = 0;
  for (const ShardRange& s : shards) m = std::max(m, s.shard);
  return m;
}

size_t FileBytes(const std::vector<ShardRange>& shards) {
  size_t bytes = 0;
  for (const ShardRange& s : shards) bytes += DirectRound(static_cast<size_t>(s.shard) * 4);
  return bytes;
}

// Floats per optimizer chunk: the pool holds 2 sets of 4 chunks; a chunk is
// a whole number of kDirectAlign blocks and never more than the largest shard.
int64_t ChunkFloats(const std::vector<ShardRange>& shards, size_t buffer_bytes) {
  const int64_t block = kDirectAlign / 4;
  const int64_t by_pool = static_cast<int64_t>(buffer_bytes / (8 * 4)) / block * block;
  const int64_t by_shard = (MaxShard(shards) + block - 1) / block * block;
  return std::max(block, std::min(by_pool, by_shard));
}

std::string HumanBytes(double b) {
  char s[32];
  std::snprintf(s, sizeof(s), "%.1f GiB", b / (1u << 30));
  return s;
}

// Each run's directory under --offload_dir: "mingpt-rank-<r>-<pid>".
constexpr char kRunPrefix[] = "mingpt-rank-";

// Removes the run directories under `dir` that no live process holds. Each
// run keeps an exclusive flock on its own while it lives (Create), which the
// kernel drops when the process dies however it dies (kill -9, the OOM
// killer), so an unlocked one is the leftover of a run that never reached
// its destructor: a copy of that run's whole state, which nothing else would
// remove. Says so in one line for each. Where the file system has no flock,
// nothing can be told apart and nothing is removed.
void RemoveDeadRuns(const std::string& dir) {
  std::error_code ec;
  std::vector<fs::path> runs;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    std::error_code status_ec;
    if (it->path().filename().string().rfind(kRunPrefix, 0) == 0 &&
        fs::is_directory(it->symlink_status(status_ec))) {
      runs.push_back(it->path());
    }
  }
  for (const fs::path& run : runs) {
    const int fd = ::open(run.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) continue;
    if (::flock(fd, LOCK_EX | LOCK_NB) == 0) {  // its owner is gone; kept while removing
      uintmax_t bytes = 0;
      for (fs::recursive_directory_iterator it(run, ec), end; !ec && it != end; it.increment(ec)) {
        std::error_code size_ec;
        if (it->is_regular_file(size_ec)) bytes += it->file_size(size_ec);
      }
      std::error_code remove_ec;
      fs::remove_all(run, remove_ec);
      if (!remove_ec) {
        std::fprintf(stderr, "mingpt: removed %s (%s), the NVMe offload files of a run that died\n",
                     run.c_str(), HumanBytes(static_cast<double>(bytes)).c_str());
      }
    }
    ::close(fd);
  }
}

// Creates `run_dir` (in `dir`) holding its lock (see RemoveDeadRuns): made
// under a temporary name, locked, then renamed, so that no other run's
// sweep ever sees it unlocked. Returns the locked descriptor.
StatusOr<int> CreateLockedRunDir(const std::string& dir, const std::string& run_dir) {
  std::string temp = (fs::path(dir) / ".mingpt-new-XXXXXX").string();
  if (::mkdtemp(temp.data()) == nullptr) {
    return Status::Error("cannot create a directory in " + dir + ": " + std::strerror(errno));
  }
  const int fd = ::open(temp.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0 || ::flock(fd, LOCK_EX | LOCK_NB) != 0) {
    // No flock on this file system: the run goes on unlocked, and no sweep
    // (which needs the lock too) can remove it.
    if (fd < 0 || (errno != ENOLCK && errno != EOPNOTSUPP && errno != EINVAL)) {
      const int err = errno;
      if (fd >= 0) ::close(fd);
      ::rmdir(temp.c_str());
      return Status::Error("cannot lock " + temp + ": " + std::strerror(err));
    }
  }
  // Fails where a live run of the same name (the same rank and pid, in
  // another container sharing the directory) has its files there.
  if (::rename(temp.c_str(), run_dir.c_str()) != 0) {
    const int err = errno;
    ::close(fd);
    ::rmdir(temp.c_str());
    return Status::Error("cannot create " + run_dir + ": " + std::strerror(err));
  }
  return fd;
}

}  // namespace

size_t NvmeState::DiskBytes(const std::vector<ShardRange>& shards, bool params) {
  return FileBytes(shards) * (params ? 4 : 3);
}

size_t NvmeState::MemoryBytes(const std::vector<ShardRange>& shards, size_t buffer_bytes) {
  const size_t shard = DirectRound(static_cast<size_t>(MaxShard(shards)) * 4);
  return 8 * 4 * static_cast<size_t>(ChunkFloats(shards, buffer_bytes)) + 3 * shard;
}

Status NvmeState::CheckDirectory(const std::string& dir, size_t need) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return Status::Error("--offload_dir " + dir + " is not a directory");
  if (::access(dir.c_str(), W_OK | X_OK) != 0) {
    return Status::Error("--offload_dir " + dir + " is not writable: " + std::strerror(errno));
  }
  struct statvfs st;
  if (::statvfs(dir.c_str(), &st) == 0) {
    const double avail = static_cast<double>(st.f_bavail) * st.f_frsize;
    if (avail < static_cast<double>(need)) {
      return Status::Error("--offload_dir " + dir + " has " + HumanBytes(avail) +
                           " free; this rank's offloaded state needs " +
                           HumanBytes(static_cast<double>(need)));
    }
  }
  return Status::Ok();
}

StatusOr<std::unique_ptr<NvmeState>> NvmeState::Create(const NvmeOptions& o,
                                                       const std::vector<ShardRange>& shards,
                                                       int rank) {
  if (o.dir.empty()) return Status::Error("NVMe offload needs --offload_dir");
  RemoveDeadRuns(o.dir);  // first: their space counts as free
  MINGPT_RETURN_IF_ERROR(CheckDirectory(o.dir, DiskBytes(shards, o.params)));
  const std::string run_dir =
      (fs::path(o.dir) / (kRunPrefix + std::to_string(rank) + "-" + std::to_string(::getpid())))
          .string();
  MINGPT_ASSIGN_OR_RETURN(const int lock_fd, CreateLockedRunDir(o.dir, run_dir));
  std::unique_ptr<NvmeState> s(new NvmeState(o, shards, run_dir, lock_fd));
  for (int k = 0; k < kNumKinds; ++k) {
    if (k == kParams && !o.params) continue;
    StatusOr<std::unique_ptr<AsyncFile>> f =
        AsyncFile::Create((fs::path(run_dir) / kFileNames[k]).string(), s->file_bytes_);
    if (!f.ok()) return Status::Error("--offload_dir: " + f.status().message());
    s->files_[k] = std::move(f).value();
  }
  return s;
}

NvmeState::NvmeState(NvmeOptions options, std::vector<ShardRange> shards, std::string run_dir,
                     int lock_fd)
    : options_(std::move(options)),
      shards_(std::move(shards)),
      run_dir_(std::move(run_dir)),
      lock_fd_(lock_fd) {
  size_t base = 0;
  for (const ShardRange& s : shards_) {
    unit_base_.push_back(static_cast<off_t>(base));
    base += DirectRound(static_cast<size_t>(s.shard) * 4);
  }
  file_bytes_ = base;
  max_shard_ = MaxShard(shards_);
  chunk_ = ChunkFloats(shards_, options_.buffer_bytes);
  pool_ = AlignedBlock(8 * 4 * static_cast<size_t>(chunk_));
  const size_t shard_bytes = static_cast<size_t>(max_shard_) * 4;
  bounce_ = AlignedBlock(shard_bytes);
  for (AlignedBlock& b : staging_) b = AlignedBlock(shard_bytes);
}

NvmeState::~NvmeState() {
  for (auto& f : files_) f.reset();  // waits for its transfers, closes
  std::error_code ec;
  fs::remove_all(run_dir_, ec);  // scratch: checkpoints hold the state
  ::close(lock_fd_);              // after the removal: no sweep races it
}

std::vector<std::pair<void*, size_t>> NvmeState::device_copy_buffers() {
  return {{pool_.data(), pool_.bytes()},
          {staging_[0].data(), staging_[0].bytes()},
          {staging_[1].data(), staging_[1].bytes()}};
}

size_t NvmeState::disk_bytes() const { return DiskBytes(shards_, options_.params); }

size_t NvmeState::memory_bytes() const {
  return pool_.bytes() + bounce_.bytes() + staging_[0].bytes() + staging_[1].bytes();
}

uint64_t NvmeState::bytes_read() const {
  uint64_t b = 0;
  for (const auto& f : files_) b += f ? f->bytes_read() : 0;
  return b;
}

uint64_t NvmeState::bytes_written() const {
  uint64_t b = 0;
  for (const auto& f : files_) b += f ? f->bytes_written() : 0;
  return b;
}

Status NvmeState::TimedWait(AsyncFile* file, AsyncFile::Ticket ticket) {
  const auto start = std::chrono::steady_clock::now();
  Status s = ticket == kAll ? file->WaitAll() : file->Wait(ticket);
  io_wait_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return s;
}

Status NvmeState::Read(Kind kind, int unit, int64_t from, int64_t n, float* dst) {
  if (n <= 0) return Status::Ok();
  if (from < 0 || from + n > shards_[unit].shard) {
    return Status::Error("NVMe offload: read past the shard of unit " + std::to_string(unit));
  }
  // The aligned blocks that cover [from, from + n).
  const int64_t block = kDirectAlign / 4;
  const int64_t first = from / block * block;
  const size_t bytes = DirectRound(static_cast<size_t>(from + n - first) * 4);
  AsyncFile* f = files_[kind].get();
  MINGPT_RETURN_IF_ERROR(TimedWait(f, f->Read(bounce_.data(), bytes, Offset(unit, first))));
  std::memcpy(dst, bounce_.f32() + (from - first), static_cast<size_t>(n) * 4);
  return Status::Ok();
}

Status NvmeState::WriteShard(Kind kind, int unit, const float* src, int64_t n) {
  const int64_t shard = shards_[unit].shard;
  if (n < 0 || n > shard) {
    return Status::Error("NVMe offload: write past the shard of unit " + std::to_string(unit));
  }
  std::memcpy(bounce_.data(), src, static_cast<size_t>(n) * 4);
  std::memset(bounce_.f32() + n, 0, static_cast<size_t>(shard - n) * 4);
  AsyncFile* f = files_[kind].get();
  return TimedWait(f, f->Write(bounce_.data(), DirectRound(static_cast<size_t>(shard) * 4),
                               Offset(unit, 0)));
}

StatusOr<float*> NvmeState::StagingBuffer(int i) {
  if (i < 0 || i >= kStagingBuffers) return Status::Error("no staging buffer " + std::to_string(i));
  if (staging_write_[i] != 0) {
    MINGPT_RETURN_IF_ERROR(TimedWait(files_[kGrads].get(), staging_write_[i]));
    staging_write_[i] = 0;
  }
  return staging_[i].f32();
}

Status NvmeState::AddGrads(int unit, int i, bool first) {
  if (i < 0 || i >= kStagingBuffers) return Status::Error("no staging buffer " + std::to_string(i));
  float* staged = staging_[i].f32();
  AsyncFile* f = files_[kGrads].get();
  const size_t bytes = DirectRound(static_cast<size_t>(shards_[unit].shard) * 4);
  if (!first) {  // this step's earlier micro-batches: read (after their writes), add
    for (AsyncFile::Ticket& t : staging_write_) {
      if (t != 0) MINGPT_RETURN_IF_ERROR(TimedWait(f, t));
      t = 0;
    }
    MINGPT_RETURN_IF_ERROR(TimedWait(f, f->Read(bounce_.data(), bytes, Offset(unit, 0))));
    const float* old = bounce_.f32();
    const int64_t n = shards_[unit].shard;
#pragma omp parallel for simd schedule(static) if (n > 65536)
    for (int64_t e = 0; e < n; ++e) staged[e] += old[e];
  }
  staging_write_[i] = f->Write(staged, bytes, Offset(unit, 0));
  return Status::Ok();
}

AsyncFile::Ticket NvmeState::ReadParams(int unit, float* dst) {
  return files_[kParams]->Read(dst, DirectRound(static_cast<size_t>(shards_[unit].shard) * 4),
                               Offset(unit, 0));
}

Status NvmeState::FinishRead(AsyncFile::Ticket ticket) {
  return TimedWait(files_[kParams].get(), ticket);
}

Status NvmeState::Step(const StepFn& fn) {
  MINGPT_RETURN_IF_ERROR(TimedWait(files_[kGrads].get(), kAll));  // every gradient on disk
  staging_write_[0] = staging_write_[1] = 0;
  struct Chunk {
    int unit;
    int64_t from, n;
  };
  std::vector<Chunk> chunks;
  for (int u = 0; u < static_cast<int>(shards_.size()); ++u) {
    for (int64_t from = 0; from < shards_[u].shard; from += chunk_) {
      chunks.push_back({u, from, std::min(chunk_, shards_[u].shard - from)});
    }
  }
  // Set s, array a (p, g, m, v in kind order) of the pool.
  auto buf = [&](int set, int kind) { return pool_.f32() + (set * 4 + kind) * chunk_; };
  const bool params = options_.params;
  AsyncFile::Ticket reads[2][kNumKinds] = {}, writes[2][kNumKinds] = {};
  auto issue_reads = [&](size_t k) {
    const int set = static_cast<int>(k % 2);
    const Chunk& c = chunks[k];
    const size_t bytes = DirectRound(static_cast<size_t>(c.n) * 4);
    for (int kind = 0; kind < kNumKinds; ++kind) {
      if (!files_[kind]) continue;
      reads[set][kind] = files_[kind]->Read(buf(set, kind), bytes, Offset(c.unit, c.from));
    }
  };
  auto wait = [&](AsyncFile::Ticket (&t)[kNumKinds]) -> Status {
    for (int kind = 0; kind < kNumKinds; ++kind) {
      if (t[kind] != 0) MINGPT_RETURN_IF_ERROR(TimedWait(files_[kind].get(), t[kind]));
      t[kind] = 0;
    }
    return Status::Ok();
  };
  if (!chunks.empty()) issue_reads(0);
  for (size_t k = 0; k < chunks.size(); ++k) {
    const int set = static_cast<int>(k % 2), other = set ^ 1;
    MINGPT_RETURN_IF_ERROR(wait(reads[set]));
    if (k + 1 < chunks.size()) {  // the other set's writes first: it is refilled
      MINGPT_RETURN_IF_ERROR(wait(writes[other]));
      issue_reads(k + 1);
    }
    const Chunk& c = chunks[k];
    fn(c.unit, c.from, c.n, params ? buf(set, kParams) : nullptr, buf(set, kGrads),
       buf(set, kExpAvg), buf(set, kExpAvgSq));
    const size_t bytes = DirectRound(static_cast<size_t>(c.n) * 4);
    for (int kind : {kParams, kExpAvg, kExpAvgSq}) {
      if (!files_[kind]) continue;
      writes[set][kind] = files_[kind]->Write(buf(set, kind), bytes, Offset(c.unit, c.from));
    }
  }
  MINGPT_RETURN_IF_ERROR(wait(writes[0]));
  return wait(writes[1]);
}

}  // namespace mingpt
