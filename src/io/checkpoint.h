// Checkpoints: a directory holding meta.json (which must carry
// "format_version") and safetensors files, saved atomically.
//
// On-disk scheme. For a checkpoint at path D (e.g. runs/x/checkpoints/best):
//   D                  a symlink to "<basename(D)>.ckpt-XXXXXX" (relative);
//   D.ckpt-XXXXXX      the directory holding meta.json and the safetensors
//                      files of the current version (XXXXXX from mkdtemp).
// SaveCheckpoint(D):
//   1. removes leftovers of earlier crashed saves: D.tmp-link, and every
//      directory D.ckpt-?????? that D does not point to;
//   2. writes meta.json and every file into a fresh D.ckpt-XXXXXX (each file
//      fsync'd, the directory and its parent fsync'd);
//   3. creates the symlink D.tmp-link -> D.ckpt-XXXXXX and rename()s it over D,
//      an atomic replacement, then fsyncs the parent. If D is a real directory
//      (a checkpoint written by other means), renameat2(RENAME_EXCHANGE)
//      swaps the two atomically instead; on a filesystem without
//      RENAME_EXCHANGE, D is first renamed aside (a short window in which D
//      is absent: the only non-atomic case);
//   4. removes the previous version directory (step 1's rule again).
// So a crash (kill -9, power loss) at any moment leaves at D either the old
// checkpoint or the new one, complete; never a mixture or a half-written one.
// Leftovers of a crash are removed by the next save to D.
//
// Caveats: one writer per D at a time (the trainer); a checkpoint named
// "<D>.ckpt-XXXXXX" beside D would be taken for a leftover; copy a checkpoint
// with `cp -rL` (the directory is behind a symlink).
//
// Test hook: if the environment variable MINGPT_CRASH_DURING_SAVE is a number
// k >= 1, SaveCheckpoint calls _exit(70) right after it has written its k-th
// file (meta.json counts as the first), simulating a crash mid-save.
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/status.h"
#include "io/safetensors.h"

namespace mingpt {

inline constexpr int kCheckpointFormatVersion = 1;
inline constexpr char kCheckpointMetaFile[] = "meta.json";
inline constexpr char kCrashDuringSaveEnv[] = "MINGPT_CRASH_DURING_SAVE";
inline constexpr int kCrashDuringSaveExitCode = 70;

// One safetensors file of a checkpoint. `filename` is a plain name
// ("model.safetensors"), not a path, and not "meta.json".
struct CheckpointFile {
  std::string filename;
  std::vector<TensorRef> tensors;
};

// Saves `meta` (a JSON object; "format_version" is added if absent and must
// equal kCheckpointFormatVersion if present) and `files` as the checkpoint at
// `dir`, atomically replacing any previous one (see the scheme above).
// Creates missing parent directories.
Status SaveCheckpoint(const std::string& dir, const nlohmann::json& meta,
                      const std::vector<CheckpointFile>& files);

struct Checkpoint {
  std::string dir;       // as given to LoadCheckpoint
  std::string data_dir;  // where the files are read: dir's symlink target,
                         // resolved once so that all reads see one version
  nlohmann::json meta;

  // Opens (and validates) one of the checkpoint's safetensors files.
  StatusOr<SafetensorsFile> Open(const std::string& filename) const;
};

// Loads meta.json of the checkpoint at `dir`. Errors: the directory does not
// exist or is not a directory; meta.json is missing, not valid JSON, not an
// object, lacks "format_version", or has an unsupported one.
StatusOr<Checkpoint> LoadCheckpoint(const std::string& dir);

}  // namespace mingpt
