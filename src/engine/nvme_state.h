// NvmeState: the ZeRO-3 state that NVMe offload (deepspeed_stage_3_offload_nvme)
// keeps in files instead of memory: for every unit, this rank's shard of the
// fp32 parameters (the master weights; unless they stay in host memory),
// of the AdamW moments and of the gradient (the sum of the reduced shards
// of the step's micro-batches). One file per kind under
// <dir>/mingpt-rank-<r>-<pid>/, unit u's shard at a kDirectAlign-aligned offset,
// moved by direct asynchronous I/O (io/async_file.h) through buffers whose
// total is fixed when the run starts (the pool, --offload_buffer_mb), so the
// memory used does not grow with the model:
//
//   optimizer step   Step streams every unit's shards in chunks through two
//                    sets of 4 chunk buffers (p, g, m, v): the reads of chunk
//                    k+1 and the writes of chunk k-1 run while AdamW steps
//                    chunk k.
//   gradients        AddGrads writes a unit's reduced shard (the first
//                    micro-batch of a step) or reads, adds and writes it (the
//                    following ones), from one of two staging buffers (the
//                    engine's two gradient stagings), so that backward goes
//                    on while the last write runs.
//   parameters       ReadParams starts reading a unit's parameter shard into
//                    the caller's aligned buffer (the gather's prefetch) and
//                    FinishRead waits for it.
//
// Every I/O error (a full or failing disk) is returned as a Status naming
// the file; the engine stops the run with it.
//
// The run's directory is removed when the object goes; a run that dies
// first (kill -9, out of memory) leaves it, and the next Create under the
// same directory removes it: each run holds an exclusive flock on its own
// directory while it lives, so one nobody holds is a dead run's.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "core/status.h"
#include "engine/shard.h"
#include "io/async_file.h"

namespace mingpt {

struct NvmeOptions {
  std::string dir;                   // --offload_dir: must exist and be writable
  bool params = true;                // --offload_params nvme (else host memory)
  size_t buffer_bytes = 256u << 20;  // --offload_buffer_mb: the optimizer's chunk pool
};

class NvmeState {
 public:
  enum Kind { kParams, kExpAvg, kExpAvgSq, kGrads, kNumKinds };

  // Removes dead runs' directories (saying so on stderr), checks the
  // directory (exists, writable, room for the files), creates this rank's
  // files and reserves their space. `shards`: this rank's
  // ShardRange of every unit.
  static StatusOr<std::unique_ptr<NvmeState>> Create(const NvmeOptions& options,
                                                     const std::vector<ShardRange>& shards,
                                                     int rank);
  ~NvmeState();

  // The directory exists, is writable and has `need` bytes free: one clear
  // line for the first that fails.
  static Status CheckDirectory(const std::string& dir, size_t need);

  // Bytes the files take on disk; bytes of memory this object holds.
  static size_t DiskBytes(const std::vector<ShardRange>& shards, bool params);
  static size_t MemoryBytes(const std::vector<ShardRange>& shards, size_t buffer_bytes);
  size_t disk_bytes() const;
  size_t memory_bytes() const;
  // The buffers device copies read or write (the optimizer's pool, the
  // gradient staging), for the engine to page-lock on a GPU.
  std::vector<std::pair<void*, size_t>> device_copy_buffers();
  bool params_on_disk() const { return options_.params; }
  const std::string& dir() const { return run_dir_; }

  // Unit u's shard of `kind`, shard-relative elements [from, from + n):
  // synchronous, through a bounce buffer (checkpoints). Writes of a whole
  // shard zero its padding.
  Status Read(Kind kind, int unit, int64_t from, int64_t n, float* dst);
  Status WriteShard(Kind kind, int unit, const float* src, int64_t n);

  // Gradients, through staging buffer i (0 or 1). StagingBuffer(i): a
  // kDirectAlign-aligned buffer of the largest shard, free to fill (waits
  // for its previous write). AddGrads(u, i, ...) then adds it to unit u's
  // gradient on disk (first: replaces it), leaving the sum in the buffer (so
  // the caller can take its norm), and starts the write.
  static constexpr int kStagingBuffers = 2;
  StatusOr<float*> StagingBuffer(int i);
  Status AddGrads(int unit, int i, bool first);

  // Parameter shard of unit u into `dst` (kDirectAlign-aligned, at least
  // DirectRound(shard * 4) bytes): ReadParams starts it, FinishRead waits.
  AsyncFile::Ticket ReadParams(int unit, float* dst);
  Status FinishRead(AsyncFile::Ticket ticket);

  // The optimizer pass over every unit's shard, in order, chunk by chunk:
  // fn(unit, from, n, p, g, m, v) with shard-relative elements [from, from+n)
  // (p null when the parameters are not on disk); p, m, v are written back.
  using StepFn = std::function<void(int unit, int64_t from, int64_t n, float* p, float* g,
                                    float* m, float* v)>;
  Status Step(const StepFn& fn);

  // Seconds spent blocked on the disk, and bytes moved, since the start.
  double io_wait_seconds() const { return io_wait_; }
  uint64_t bytes_read() const;
  uint64_t bytes_written() const;

 private:
  NvmeState(NvmeOptions options, std::vector<ShardRange> shards, std::string run_dir,
            int lock_fd);
  off_t Offset(int unit, int64_t from) const { return unit_base_[unit] + from * 4; }
  // Waits for `ticket` (kAll: every transfer queued), counting the time.
  static constexpr AsyncFile::Ticket kAll = ~AsyncFile::Ticket{0};
  Status TimedWait(AsyncFile* file, AsyncFile::Ticket ticket);

  NvmeOptions options_;
  std::vector<ShardRange> shards_;
  std::string run_dir_;
  int lock_fd_;  // run_dir_, flock'd while this lives
  std::vector<off_t> unit_base_;  // bytes; the same in every file
  size_t file_bytes_ = 0;
  int64_t max_shard_ = 0;
  int64_t chunk_ = 0;  // floats per optimizer chunk
  std::unique_ptr<AsyncFile> files_[kNumKinds];
  AlignedBlock pool_;    // 2 sets x {p, g, m, v} x chunk_
  AlignedBlock bounce_;  // Read / WriteShard / the grads read-add
  AlignedBlock staging_[kStagingBuffers];
  AsyncFile::Ticket staging_write_[kStagingBuffers] = {0, 0};
  double io_wait_ = 0;
};

}  // namespace mingpt
