// Catalog: what `mingpt serve` can show, found under one runs directory (the
// root): checkpoints, training runs with their metrics.csv, and the newest
// bench.csv. Every lookup rescans, so runs that appear or grow while the
// server runs are seen. Ids are paths relative to the root; a requested id is
// only ever matched against the scanned list, never opened as a path, and
// nothing whose real path (symlinks resolved) leaves the root is listed.
#pragma once

#include <cstdint>
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
  int64_t last_step = 0;  // the last row of metrics.csv
};

// False for ids that could name something outside the root: empty, absolute,
// with a ".." component, a backslash or a control character.
bool IsSafeId(const std::string& id);

// A CSV table (RFC 4180 quoting): the header and the rows, cells as text.
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
  // Errors: no such id (the caller checks IsSafeId first).
  StatusOr<CheckpointEntry> FindCheckpoint(const std::string& id) const;
  StatusOr<RunEntry> FindRun(const std::string& id) const;
  // {"run", "columns", "metrics": {column: [values]}} from the run's metrics.csv.
  StatusOr<nlohmann::json> Metrics(const RunEntry& run) const;
  // The newest (by modification time) bench.csv under the root as
  // {"path", "columns", "rows": [{column: value}]}; nullopt when none.
  std::optional<nlohmann::json> Bench() const;

  const std::string& root() const { return root_; }

 private:
  // Directories under the root (the root included), not following symlinks,
  // at most a few levels deep.
  std::vector<std::string> Directories() const;
  bool UnderRoot(const std::string& path) const;  // its real path is in the root

  std::string root_;  // absolute, symlinks resolved; empty: none
  std::optional<CheckpointEntry> extra_;
};

}  // namespace mingpt::serve
