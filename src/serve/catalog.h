// Catalog: what `mingpt serve` can show, found under one runs directory (the
// root): checkpoints, training runs with their metrics.csv, and the newest
// bench.csv. Every lookup rescans, so runs that appear or grow while the
// server runs are seen. Ids are paths relative to the root; a requested id is
// only ever matched against the scanned list, never opened as a path, and
// nothing whose real path (symlinks resolved) leaves the root is listed: not
// a directory, and not a file in one (a checkpoint with a meta.json or
// weights symlinked out of the root is left out whole). Nor is a run or
// checkpoint whose id a request could not name (not IsSafeId, or not UTF-8),
// so that every listed id can be asked for.
#pragma once

#include <cstdint>
#include <fstream>
#include <istream>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/status.h"

namespace mingpt::serve {

struct CheckpointEntry {
  std::string id;        // "<run>/checkpoints/best", or "checkpoint" for --checkpoint outside root
  std::string path;      // relative to the root (as given for --checkpoint outside root)
  std::string dir;       // the directory to load (absolute, symlinks resolved)
  nlohmann::json config; // meta.json's "config"
  int64_t step = 0;      // meta.json's "step"
};

struct RunEntry {
  std::string id;         // relative to the root; the root's own name when it is a run
  std::string dir;        // absolute
  nlohmann::json config;  // from checkpoints/last (or best) meta.json; null if none
  int64_t last_step = 0;  // the last row of metrics.csv with an integer step (0: none)
};

// The longest id taken: ids are relative paths of at most a few levels.
inline constexpr size_t kMaxIdChars = 4096;
// metrics.csv rows /v1/runs/{id}/metrics answers with at most, besides the
// last row: a chart needs no more, and a long run's file holds millions.
inline constexpr size_t kMaxMetricRows = 2000;

// False for ids that could name something outside the root: empty, absolute,
// with a ".." component, a backslash or a control character, or longer than
// kMaxIdChars.
bool IsSafeId(const std::string& id);

// Reads CSV records (RFC 4180 quoting) one at a time, so that a large file is
// never held whole; blank lines are skipped.
class CsvReader {
 public:
  CsvReader(std::istream& in, size_t max_record_bytes) : in_(in), max_record_bytes_(max_record_bytes) {}
  // The next record; false at the end, or at a record over max_record_bytes
  // (then too_long()).
  bool Next(std::vector<std::string>* record);
  bool too_long() const { return too_long_; }

 private:
  std::istream& in_;
  const size_t max_record_bytes_;
  bool too_long_ = false;
};

// A CSV table: the header and the rows, cells as text.
struct CsvTable {
  std::vector<std::string> columns;
  std::vector<std::vector<std::string>> rows;
};
CsvTable ParseCsv(const std::string& text);
// A cell as JSON: null when empty, a number when it parses as one, else text.
nlohmann::json CsvCell(const std::string& cell);

class Catalog {
 public:
  // `root` may be empty (no runs directory: only `checkpoint`); when given it
  // must be a directory. `checkpoint`, if not empty, must hold meta.json.
  static StatusOr<Catalog> Create(const std::string& root, const std::string& checkpoint);

  std::vector<CheckpointEntry> Checkpoints() const;  // --checkpoint first, then by id
  std::vector<RunEntry> Runs() const;                // by id
  // The entry with this id; "" is the default (--checkpoint, else the first).
  // Errors: no such id (the caller checks IsSafeId first), a --checkpoint
  // that cannot be read now.
  StatusOr<CheckpointEntry> FindCheckpoint(const std::string& id) const;
  StatusOr<RunEntry> FindRun(const std::string& id) const;
  // {"run", "columns", "metrics": {column: [values]}} from the run's
  // metrics.csv: every row when there are at most kMaxMetricRows, else
  // evenly spaced ones (every k-th from the first, k a power of two), and
  // always the last.
  StatusOr<nlohmann::json> Metrics(const RunEntry& run) const;
  // The newest (by modification time) bench.csv under the root as
  // {"path", "columns", "rows": [{column: value}]}; nullopt when none.
  std::optional<nlohmann::json> Bench() const;

  const std::string& root() const { return root_; }
  // A checkpoint's real directory (Checkpoint::HeldPath: no symlinks) that
  // the server may read: in the root, or --checkpoint's (the version it
  // names now, or one beside it that a save has just replaced).
  bool MayRead(const std::string& real_dir) const;

 private:
  // --checkpoint: resolved at each lookup, since the path usually names a
  // symlink (checkpoints/best) that training points at a new version
  // directory, deleting the old one.
  struct Extra {
    std::string given;     // the flag's path
    std::string absolute;  // made absolute at startup, symlinks kept
    std::string id;
    std::string path;   // as listed
  };
  std::optional<CheckpointEntry> ResolveExtra() const;  // nullopt: unreadable now

  // Directories under the root (the root included), not following symlinks,
  // at most a few levels deep.
  std::vector<std::string> Directories() const;
  bool UnderRoot(const std::string& path) const;  // its real path is in the root
  bool InRoot(const std::string& real) const;     // `real`, a resolved path, is in the root
  // A regular file of at most `limit` bytes opened for reading, whose
  // opened file (not its path, which a symlink swapped in after the check
  // could redirect) is in the root; nullopt otherwise. Every file the
  // server reads from the root is read through it; the checkpoints are
  // read confined, from a directory the generator checks with InRoot.
  struct RootedFile {
    std::ifstream in;
    uint64_t size;
  };
  std::optional<RootedFile> OpenUnderRoot(const std::string& path, uint64_t limit) const;
  std::optional<nlohmann::json> ReadRootedMeta(const std::string& dir) const;
  // The directory and every file in it are in the root.
  bool CheckpointUnderRoot(const std::string& dir) const;
  // A regular file in the root of at most `limit` bytes.
  bool ReadableUnderRoot(const std::string& path, size_t limit) const;

  std::string root_;  // absolute, symlinks resolved; empty: none
  std::optional<Extra> extra_;
};

}  // namespace mingpt::serve
