// Checkpoints: a directory holding meta.json (which must carry
// "format_version") and safetensors files, saved atomically, by one process
// or by several processes writing their files in parallel.
//
// On-disk scheme. For a checkpoint at path D (e.g. runs/x/checkpoints/best):
//   D                  a symlink to "<basename(D)>.ckpt-XXXXXX" (relative);
//   D.ckpt-XXXXXX      the directory holding meta.json and the safetensors
//                      files of the current version (XXXXXX from mkdtemp).
// A save runs in three phases; io/ does no communication, so with several
// processes the caller passes the version directory and the outcome around:
//   BeginCheckpoint(D)       (one process)
//     1. removes leftovers of earlier crashed saves: D.tmp-link, and every
//        directory D.ckpt-?????? that D does not point to;
//     2. creates the fresh version directory D.ckpt-XXXXXX.
//   WriteCheckpointFile(V, f)  (any process, any number of files)
//     3. writes f into V durably (temp file, fsync, rename, fsync V).
//   CommitCheckpoint(pending, meta)  (the process that began, after every
//     file is written)
//     4. writes meta.json last, fsyncs V and its parent;
//     5. creates the symlink D.tmp-link -> D.ckpt-XXXXXX and rename()s it
//        over D, an atomic replacement, then fsyncs the parent. If D is a
//        real directory (a checkpoint written by other means),
//        renameat2(RENAME_EXCHANGE) swaps the two atomically instead; on a
//        filesystem without RENAME_EXCHANGE, D is first renamed aside (a
//        short window in which D is absent: the only non-atomic case).
//        The real directory an exchange left at D.tmp-link, if a reader
//        still holds it, is first moved aside under a version name;
//     6. removes the previous version directory (step 1's rule again).
// SaveCheckpoint is the single-process composition of the three. A crash
// (kill -9, power loss) at any moment leaves at D either the old checkpoint
// or the new one, complete; never a mixture or a half-written one. Leftovers
// of a crash are removed by the next save to D, or earlier by
// RemoveCrashLeftovers (the trainer's, as a run starts: a checkpoint such as
// `best` may never be saved again, and a leftover is a checkpoint's size).
//
// Readers (LoadCheckpoint) hold the version they read: a shared flock(2) on
// its directory, kept while their Checkpoint lives (or until Release()).
// Steps 1 and 6 remove only versions no reader holds (an exclusive
// non-blocking flock, kept while removing); a held one is left for a later
// save, or RemoveCrashLeftovers, once released. So a reader beside a
// running trainer (evaluate, sample, the server) reads one whole version,
// however many saves pass meanwhile. Where the filesystem has no flock
// (ENOLCK, EOPNOTSUPP), readers read unheld, as before.
//
// Caveats: one save per D at a time (the trainer); a checkpoint named
// "<D>.ckpt-XXXXXX" beside D would be taken for a leftover; copy a checkpoint
// with `cp -rL` (the directory is behind a symlink).
//
// Test hook: if the environment variable MINGPT_CRASH_DURING_SAVE is a number
// k >= 1, a process calls _exit(70) right after it has written its k-th file
// into one version directory (WriteCheckpointFile's files in call order,
// then CommitCheckpoint's meta.json), simulating a crash mid-save.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/status.h"
#include "io/safetensors.h"

namespace mingpt {

inline constexpr int kCheckpointFormatVersion = 1;
inline constexpr char kCheckpointMetaFile[] = "meta.json";
inline constexpr char kCrashDuringSaveEnv[] = "MINGPT_CRASH_DURING_SAVE";
inline constexpr int kCrashDuringSaveExitCode = 70;

// One safetensors file of a checkpoint. `filename` is a plain name
// ("model.safetensors"), not a path, and not "meta.json". `metadata` goes
// into the file's "__metadata__".
struct CheckpointFile {
  std::string filename;
  std::vector<TensorRef> tensors;
  std::map<std::string, std::string> metadata = {};
};

// A save in progress, from BeginCheckpoint to CommitCheckpoint.
struct PendingCheckpoint {
  std::string dir;          // the checkpoint path D, trailing slashes stripped
  std::string version_dir;  // the fresh D.ckpt-XXXXXX the files go into
};

// Phase 1 (steps 1-2): removes leftovers of crashed saves to `dir` and
// creates the version directory. Creates missing parent directories. Errors:
// an unusable path, `dir` exists and is neither a directory nor a symlink,
// the parent or the version directory cannot be created.
StatusOr<PendingCheckpoint> BeginCheckpoint(const std::string& dir);

// Phase 2 (step 3): writes `file` durably into `version_dir` (a
// PendingCheckpoint's version_dir, possibly received from another process).
// Errors: a file name that is not plain or is "meta.json", an invalid
// tensor, any I/O failure; each names the file.
Status WriteCheckpointFile(const std::string& version_dir, const CheckpointFile& file);

// Phase 3 (steps 4-6): checks that every name in `expected_files` was
// written into the version directory, writes `meta` (a JSON object;
// "format_version" is added if absent and must equal
// kCheckpointFormatVersion if present) as meta.json, and swaps the version
// in. On failure the version directory is removed and the previous
// checkpoint at `pending.dir` stays as it was.
Status CommitCheckpoint(const PendingCheckpoint& pending, const nlohmann::json& meta,
                        const std::vector<std::string>& expected_files = {});

// Gives up a save (some process failed to write its file): removes the
// version directory. The previous checkpoint stays as it was.
void AbortCheckpoint(const PendingCheckpoint& pending);

// Saves `meta` and `files` as the checkpoint at `dir` in one process:
// BeginCheckpoint, WriteCheckpointFile for each file, CommitCheckpoint;
// AbortCheckpoint on failure. File names must be distinct.
Status SaveCheckpoint(const std::string& dir, const nlohmann::json& meta,
                      const std::vector<CheckpointFile>& files);

class VersionHold;  // checkpoint.cc: the held version directory's descriptor

struct Checkpoint {
  std::string dir;       // as given to LoadCheckpoint
  std::string data_dir;  // where the files are read: dir's symlink target,
                         // resolved once so that all reads see one version
  nlohmann::json meta;
  // The hold on data_dir (see the scheme above), shared by copies: its
  // files are opened relative to it, so all reads see the version whose
  // meta.json was read. Null once released.
  std::shared_ptr<const VersionHold> hold;
  // Loaded confined (LoadCheckpoint): its files are opened without
  // following symlinks, so every byte read comes from the held directory.
  bool confined = false;

  // Opens (and validates) one of the checkpoint's safetensors files.
  StatusOr<SafetensorsFile> Open(const std::string& filename) const;
  // The held directory's real path, from the open directory itself (not
  // from a path, which a rename or symlink could redirect after a check);
  // "" once released.
  std::string HeldPath() const;
  // Lets saves remove this version (once no copy holds it): for a reader
  // that keeps the metadata after reading the files it needs. Open() then
  // opens by path.
  void Release() { hold.reset(); }
};

// Loads meta.json of the checkpoint at `dir` and holds its version. Errors:
// the directory does not exist or is not a directory; meta.json is missing,
// not valid JSON (a key repeated in an object, or a NUL byte, included: see
// ParseJsonStrict), not an object, lacks "format_version", or has an
// unsupported one. A save that removed the version between the resolution
// of `dir` and the hold is seen (its meta.json is gone and `dir` names
// another version) and the new version is loaded instead. `confined`: the
// files (meta.json, and those Open() opens) must not be symlinks, so that a
// reader that checks HeldPath() knows where every byte it reads comes from
// (the web server, serving only what lies under its root).
StatusOr<Checkpoint> LoadCheckpoint(const std::string& dir, bool confined = false);

// Step 1 of a save without the save: removes D.tmp-link and the version
// directories of D that D does not point to and no reader holds. Best
// effort; the caller must be the only one saving to D.
void RemoveCrashLeftovers(const std::string& dir);

}  // namespace mingpt
