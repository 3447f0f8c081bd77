// Tests of io/checkpoint.h: round trip, replacement, cleanup of leftovers,
// load errors, the save's phases run by several processes, and atomicity: a
// save that crashes (the MINGPT_CRASH_DURING_SAVE hook in the saving process
// or in one of several writing processes, or SIGKILL at random moments) never
// leaves anything but a complete old or new checkpoint at the path.
#include "io/checkpoint.h"

#include <gtest/gtest.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "common/scoped_temp_dir.h"
#include "io/file.h"

namespace mingpt {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;


std::set<std::string> ListDir(const std::string& dir) {
  std::set<std::string> names;
  for (const auto& e : fs::directory_iterator(dir)) names.insert(e.path().filename().string());
  return names;
}

// The deterministic contents of one checkpoint version: for each file, a
// float matrix "w" [rows, 64], a scalar "step" and int64 token ids "ids".
class Version {
 public:
  Version(int id, std::vector<std::string> filenames, int64_t rows) : id_(id), rows_(rows) {
    for (size_t f = 0; f < filenames.size(); ++f) {
      Part part;
      part.filename = filenames[f];
      part.w.resize(static_cast<size_t>(rows * 64));
      for (size_t j = 0; j < part.w.size(); ++j) {
        part.w[j] = static_cast<float>(id) * 0.5f + static_cast<float>(f) * 0.25f +
                    static_cast<float>(j % 100003) * 1e-3f;
      }
      part.step = static_cast<float>(id * 10 + static_cast<int>(f));
      part.ids = {id, -id, static_cast<int64_t>(f), 65};
      parts_.push_back(std::move(part));
    }
    meta_ = {{"version", id},
             {"config", {{"n_layer", 2}, {"n_head", 2}, {"n_embd", 64}, {"vocab_size", 65}}},
             {"vocab", "\n !abc"},
             {"files", filenames}};
  }

  int id() const { return id_; }
  const json& meta() const { return meta_; }
  int num_writes() const { return 1 + static_cast<int>(parts_.size()); }  // + meta.json

  std::vector<CheckpointFile> Files() const {
    std::vector<CheckpointFile> files;
    for (const Part& p : parts_) {
      files.push_back({p.filename,
                       {{"w", {rows_, 64}, TensorDType::kF32, p.w.data()},
                        {"step", {}, TensorDType::kF32, &p.step},
                        {"ids", {4}, TensorDType::kI64, p.ids.data()}}});
    }
    return files;
  }

  Status Save(const std::string& dir) const { return SaveCheckpoint(dir, meta_, Files()); }

  // The checkpoint at `dir` is exactly this version: meta, files, tensors.
  ::testing::AssertionResult Matches(const std::string& dir) const {
    StatusOr<Checkpoint> ckpt = LoadCheckpoint(dir);
    if (!ckpt.ok()) return ::testing::AssertionFailure() << ckpt.status().message();
    return Matches(*ckpt);
  }

  // The loaded checkpoint `ckpt` is exactly this version.
  ::testing::AssertionResult Matches(const StatusOr<Checkpoint>& ckpt) const {
    json expected_meta = meta_;
    expected_meta["format_version"] = kCheckpointFormatVersion;
    if (ckpt->meta != expected_meta) {
      return ::testing::AssertionFailure() << "meta " << ckpt->meta.dump() << " != "
                                           << expected_meta.dump();
    }
    std::set<std::string> expected_files = {"meta.json"};
    for (const Part& p : parts_) expected_files.insert(p.filename);
    if (ListDir(ckpt->data_dir) != expected_files) {
      return ::testing::AssertionFailure() << "unexpected files in " << ckpt->data_dir;
    }
    std::vector<float> w(static_cast<size_t>(rows_ * 64));
    for (const Part& p : parts_) {
      StatusOr<SafetensorsFile> file = ckpt->Open(p.filename);
      if (!file.ok()) return ::testing::AssertionFailure() << file.status().message();
      if (file->names() != std::vector<std::string>{"w", "step", "ids"}) {
        return ::testing::AssertionFailure() << p.filename << ": wrong tensors";
      }
      float step = 0;
      std::vector<int32_t> ids(4);
      Status s = file->ReadF32("w", {rows_, 64}, w.data());
      if (s.ok()) s = file->ReadF32("step", {}, &step);
      if (s.ok()) s = file->ReadI32("ids", {4}, ids.data());
      if (!s.ok()) return ::testing::AssertionFailure() << s.message();
      if (std::memcmp(w.data(), p.w.data(), w.size() * sizeof(float)) != 0 || step != p.step ||
          !std::equal(ids.begin(), ids.end(), p.ids.begin())) {
        return ::testing::AssertionFailure() << p.filename << ": contents differ from version "
                                             << id_;
      }
    }
    return ::testing::AssertionSuccess();
  }

 private:
  struct Part {
    std::string filename;
    std::vector<float> w;
    float step = 0;
    std::vector<int64_t> ids;
  };
  int id_;
  int64_t rows_;
  json meta_;
  std::vector<Part> parts_;
};

// Runs `body` in a forked child, which exits with body's return value (or
// however it dies); returns the waitpid status.
template <typename Body>
int RunInChild(Body body) {
  std::fflush(nullptr);
  const pid_t pid = ::fork();
  if (pid < 0) std::abort();
  if (pid == 0) ::_exit(body());
  int status = 0;
  if (::waitpid(pid, &status, 0) != pid) std::abort();
  return status;
}

class CheckpointTest : public ::testing::Test {
 protected:
  std::string dir() const { return tmp_.Join("best"); }
  // Saves `v` at dir() in a child process whose save exits after file k
  // (MINGPT_CRASH_DURING_SAVE=k); returns the child's wait status.
  template <typename V>
  int SaveCrashingAfter(const V& v, int k) {
    return RunInChild([&] {
      ::setenv(kCrashDuringSaveEnv, std::to_string(k).c_str(), 1);
      return v.Save(dir()).ok() ? 0 : 1;
    });
  }
  ScopedTempDir tmp_;
};

TEST_F(CheckpointTest, RoundTrip) {
  const Version v(1, {"model.safetensors", "optim.rank0.safetensors"}, 3);
  ASSERT_TRUE(v.Save(dir()).ok());
  EXPECT_TRUE(v.Matches(dir()));
  // The layout of the scheme: `best` is a relative symlink to its version.
  ASSERT_TRUE(fs::is_symlink(dir()));
  const std::string target = fs::read_symlink(dir()).string();
  EXPECT_EQ(target.rfind("best.ckpt-", 0), 0u) << target;
  EXPECT_EQ(ListDir(tmp_.path()), (std::set<std::string>{"best", target}));
  StatusOr<Checkpoint> ckpt = LoadCheckpoint(dir() + "/");
  ASSERT_TRUE(ckpt.ok());
  EXPECT_EQ(ckpt->dir, dir());
  EXPECT_EQ(ckpt->data_dir, tmp_.Join(target));
}

// Loaded confined, a checkpoint's files are read only from its held
// directory, whose real path HeldPath gives from the open directory: a
// meta.json or safetensors file swapped for a symlink is refused, naming
// it; loaded as usual, the links are followed.
TEST_F(CheckpointTest, AConfinedLoadFollowsNoSymlinkAndNamesItsDirectory) {
  const Version v(1, {"model.safetensors"}, 2), elsewhere(2, {"model.safetensors"}, 2);
  ASSERT_TRUE(v.Save(dir()).ok());
  ASSERT_TRUE(elsewhere.Save(tmp_.Join("elsewhere")).ok());
  {
    StatusOr<Checkpoint> ckpt = LoadCheckpoint(dir(), /*confined=*/true);
    ASSERT_TRUE(ckpt.ok()) << ckpt.status().message();
    EXPECT_TRUE(v.Matches(ckpt));
    EXPECT_EQ(ckpt->HeldPath(), fs::canonical(dir()).string());
    ckpt->Release();
    EXPECT_EQ(ckpt->HeldPath(), "");
  }
  const std::string version = fs::canonical(dir()).string();
  const std::string other = fs::canonical(tmp_.Join("elsewhere")).string();
  fs::remove(version + "/model.safetensors");
  fs::create_symlink(other + "/model.safetensors", version + "/model.safetensors");
  {
    StatusOr<Checkpoint> ckpt = LoadCheckpoint(dir(), /*confined=*/true);
    ASSERT_TRUE(ckpt.ok()) << ckpt.status().message();
    StatusOr<SafetensorsFile> file = ckpt->Open("model.safetensors");
    ASSERT_FALSE(file.ok());
    EXPECT_NE(file.status().message().find("model.safetensors"), std::string::npos);
    EXPECT_NE(file.status().message().find("symlink"), std::string::npos)
        << file.status().message();
    StatusOr<Checkpoint> followed = LoadCheckpoint(dir());
    ASSERT_TRUE(followed.ok());
    EXPECT_TRUE(followed->Open("model.safetensors").ok());
  }
  fs::rename(version + "/meta.json", version + "/meta.real.json");
  fs::create_symlink(version + "/meta.real.json", version + "/meta.json");
  StatusOr<Checkpoint> refused = LoadCheckpoint(dir(), /*confined=*/true);
  ASSERT_FALSE(refused.ok());
  EXPECT_NE(refused.status().message().find("meta.json' is a symlink"), std::string::npos)
      << refused.status().message();
  EXPECT_TRUE(LoadCheckpoint(dir()).ok());
}

// A loaded checkpoint holds its version: saves meanwhile leave it in place
// (and it reads whole), and the first save after its release removes it.
TEST_F(CheckpointTest, ALoadedCheckpointKeepsItsVersionThroughSaves) {
  const Version a(1, {"model.safetensors"}, 2);
  const Version b(2, {"model.safetensors"}, 3);
  ASSERT_TRUE(a.Save(dir()).ok());
  StatusOr<Checkpoint> held = LoadCheckpoint(dir());
  ASSERT_TRUE(held.ok()) << held.status().message();
  const std::string held_version = Basename(held->data_dir);
  ASSERT_TRUE(b.Save(dir()).ok());
  ASSERT_TRUE(b.Save(dir()).ok());
  EXPECT_TRUE(b.Matches(dir()));
  EXPECT_TRUE(a.Matches(held));
  const std::string current = fs::read_symlink(dir()).string();
  EXPECT_EQ(ListDir(tmp_.path()), (std::set<std::string>{"best", current, held_version}));

  // A copy holds it too; the last one to go lets it be removed.
  Checkpoint copy = *held;
  held->Release();
  ASSERT_TRUE(b.Save(dir()).ok());
  EXPECT_TRUE(fs::exists(tmp_.Join(held_version)));
  copy.Release();
  RemoveCrashLeftovers(dir());
  EXPECT_EQ(ListDir(tmp_.path()).size(), 2u);
  EXPECT_FALSE(fs::exists(tmp_.Join(held_version)));
}

// A process saving to the checkpoint as fast as it can, another loading and
// reading it meanwhile: every read succeeds and sees one whole version,
// whichever it is, and what the readers held is gone once they are.
TEST_F(CheckpointTest, ReadsBesideASavingProcessSeeOneWholeVersion) {
  const std::vector<Version> versions = {Version(1, {"model.safetensors", "optim.safetensors"}, 64),
                                         Version(2, {"model.safetensors"}, 32)};
  ASSERT_TRUE(versions[0].Save(dir()).ok());
  std::fflush(nullptr);
  const pid_t saver = ::fork();
  ASSERT_GE(saver, 0);
  if (saver == 0) {
    const auto end = std::chrono::steady_clock::now() + std::chrono::milliseconds(1500);
    for (int i = 1; std::chrono::steady_clock::now() < end; ++i) {
      if (!versions[i % 2].Save(dir()).ok()) ::_exit(1);
    }
    ::_exit(0);
  }
  int reads = 0;
  int saves_seen = 0;
  std::string last_seen;
  for (;;) {
    int status = 0;
    const bool saver_done = ::waitpid(saver, &status, WNOHANG) == saver;
    StatusOr<Checkpoint> ckpt = LoadCheckpoint(dir());
    ASSERT_TRUE(ckpt.ok()) << ckpt.status().message();
    const int id = ckpt->meta["version"].get<int>();
    ASSERT_TRUE(id == 1 || id == 2) << id;
    ASSERT_TRUE(versions[id - 1].Matches(ckpt)) << "read " << reads;
    ++reads;
    if (ckpt->data_dir != last_seen) ++saves_seen;
    last_seen = ckpt->data_dir;
    if (saver_done) {
      ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
      break;
    }
  }
  EXPECT_GT(saves_seen, 3) << reads << " reads";
  std::printf("%d reads saw %d versions\n", reads, saves_seen);
  RemoveCrashLeftovers(dir());
  EXPECT_EQ(ListDir(tmp_.path()).size(), 2u);
}

TEST_F(CheckpointTest, SavesWithNoSafetensorsFilesAndCreatesParents) {
  const std::string nested = tmp_.Join("runs/x/checkpoints/last");
  ASSERT_TRUE(SaveCheckpoint(nested, {{"step", 7}}, {}).ok());
  StatusOr<Checkpoint> ckpt = LoadCheckpoint(nested);
  ASSERT_TRUE(ckpt.ok()) << ckpt.status().message();
  EXPECT_EQ(ckpt->meta, json({{"step", 7}, {"format_version", 1}}));
}

TEST_F(CheckpointTest, OverwriteKeepsOnlyTheNewCheckpoint) {
  const Version a(1, {"model.safetensors", "extra.safetensors"}, 2);
  const Version b(2, {"model.safetensors"}, 5);
  ASSERT_TRUE(a.Save(dir()).ok());
  ASSERT_TRUE(b.Save(dir()).ok());
  EXPECT_TRUE(b.Matches(dir()));  // also checks extra.safetensors is gone
  const std::string target = fs::read_symlink(dir()).string();
  EXPECT_EQ(ListDir(tmp_.path()), (std::set<std::string>{"best", target}));
  ASSERT_TRUE(a.Save(dir()).ok());
  EXPECT_TRUE(a.Matches(dir()));
  EXPECT_EQ(ListDir(tmp_.path()).size(), 2u);
}

TEST_F(CheckpointTest, SeveralCheckpointsSideBySide) {
  const Version a(1, {"model.safetensors"}, 2);
  const Version b(2, {"model.safetensors"}, 3);
  ASSERT_TRUE(a.Save(tmp_.Join("best")).ok());
  ASSERT_TRUE(b.Save(tmp_.Join("last")).ok());
  ASSERT_TRUE(b.Save(tmp_.Join("last")).ok());
  EXPECT_TRUE(a.Matches(tmp_.Join("best")));
  EXPECT_TRUE(b.Matches(tmp_.Join("last")));
  EXPECT_EQ(ListDir(tmp_.path()).size(), 4u);
}

TEST_F(CheckpointTest, StaleLeftoversAreCleaned) {
  const Version a(1, {"model.safetensors"}, 2);
  ASSERT_TRUE(a.Save(dir()).ok());
  // Leftovers of crashed saves: version dirs, a dangling link, an old real
  // directory under the link name (crash right after an exchange).
  fs::create_directories(tmp_.Join("best.ckpt-AAAAAA/sub"));
  std::ofstream(tmp_.Join("best.ckpt-AAAAAA/sub/junk")) << "junk";
  fs::create_directory(tmp_.Join("best.ckpt-Zz0123"));
  fs::create_directory_symlink("best.ckpt-gone00", tmp_.Join("best.tmp-link"));
  // Not leftovers of `best`: must survive.
  fs::create_directory(tmp_.Join("best.ckpt-toolong"));
  fs::create_directory(tmp_.Join("bestx.ckpt-AAAAAA"));
  fs::create_directory(tmp_.Join("other"));
  std::ofstream(tmp_.Join("best.ckpt-FILE00")) << "a file, not a directory";

  const Version b(2, {"model.safetensors"}, 4);
  ASSERT_TRUE(b.Save(dir()).ok());
  EXPECT_TRUE(b.Matches(dir()));
  const std::string target = fs::read_symlink(dir()).string();
  EXPECT_EQ(ListDir(tmp_.path()),
            (std::set<std::string>{"best", target, "best.ckpt-toolong", "bestx.ckpt-AAAAAA",
                                   "other", "best.ckpt-FILE00"}));

  // An old real directory left under the link name is removed too.
  fs::create_directories(tmp_.Join("best.tmp-link/inner"));
  ASSERT_TRUE(a.Save(dir()).ok());
  EXPECT_FALSE(fs::exists(fs::symlink_status(tmp_.Join("best.tmp-link"))));
}

TEST_F(CheckpointTest, ReplacesARealDirectory) {
  // A checkpoint directory written by other means (e.g. copied with cp -rL).
  const Version a(1, {"model.safetensors"}, 2);
  ASSERT_TRUE(a.Save(tmp_.Join("src")).ok());
  fs::copy(tmp_.Join("src"), dir(), fs::copy_options::recursive);
  ASSERT_TRUE(fs::is_directory(fs::symlink_status(dir())));
  EXPECT_TRUE(a.Matches(dir()));
  StatusOr<Checkpoint> ckpt = LoadCheckpoint(dir());
  ASSERT_TRUE(ckpt.ok());
  EXPECT_EQ(ckpt->data_dir, dir());

  const Version b(2, {"model.safetensors", "more.safetensors"}, 3);
  ASSERT_TRUE(b.Save(dir()).ok());
  EXPECT_TRUE(b.Matches(dir()));
  EXPECT_TRUE(fs::is_symlink(dir()));
  // The reader of the real directory still reads its files (2 rows), not
  // those its path names now (3 rows): it reads through the held directory,
  // which the exchange moved aside and the save left in place.
  StatusOr<SafetensorsFile> old_file = ckpt->Open("model.safetensors");
  ASSERT_TRUE(old_file.ok()) << old_file.status().message();
  EXPECT_EQ(old_file->Find("w")->shape[0], 2);
  EXPECT_TRUE(fs::exists(tmp_.Join("best.tmp-link")));
  ckpt->Release();
  RemoveCrashLeftovers(dir());
  const std::string target = fs::read_symlink(dir()).string();
  const std::string src_target = fs::read_symlink(tmp_.Join("src")).string();
  EXPECT_EQ(ListDir(tmp_.path()), (std::set<std::string>{"best", target, "src", src_target}));
}

// The real directory the first save exchanged out of the path, held by a
// reader, outlives the saves after it too (the second one replaces the link
// name it sits under), and goes once released.
TEST_F(CheckpointTest, AHeldRealDirectoryOutlivesLaterSaves) {
  const Version a(1, {"model.safetensors"}, 2);
  ASSERT_TRUE(a.Save(tmp_.Join("src")).ok());
  fs::copy(tmp_.Join("src"), dir(), fs::copy_options::recursive);
  StatusOr<Checkpoint> ckpt = LoadCheckpoint(dir());
  ASSERT_TRUE(ckpt.ok()) << ckpt.status().message();
  const Version b(2, {"model.safetensors"}, 3);
  for (int save = 0; save < 3; ++save) ASSERT_TRUE(b.Save(dir()).ok());
  EXPECT_TRUE(b.Matches(dir()));
  EXPECT_TRUE(a.Matches(ckpt));
  EXPECT_EQ(ckpt->HeldPath().rfind(tmp_.Join("best.ckpt-"), 0), 0u) << ckpt->HeldPath();
  ckpt->Release();
  ASSERT_TRUE(b.Save(dir()).ok());
  const std::string target = fs::read_symlink(dir()).string();
  const std::string src_target = fs::read_symlink(tmp_.Join("src")).string();
  EXPECT_EQ(ListDir(tmp_.path()), (std::set<std::string>{"best", target, "src", src_target}));
}

TEST_F(CheckpointTest, LoadErrors) {
  auto load_error = [](const std::string& path) {
    StatusOr<Checkpoint> c = LoadCheckpoint(path);
    return c.ok() ? std::string("OK") : c.status().message();
  };
  EXPECT_EQ(load_error(tmp_.Join("x")), "checkpoint directory '" + tmp_.Join("x") + "' does not exist");
  std::ofstream(tmp_.Join("file")) << "x";
  EXPECT_EQ(load_error(tmp_.Join("file")), "checkpoint path '" + tmp_.Join("file") + "' is not a directory");
  fs::create_directory_symlink("nowhere", tmp_.Join("dangling"));
  EXPECT_EQ(load_error(tmp_.Join("dangling")),
            "checkpoint directory '" + tmp_.Join("dangling") + "' does not exist");

  const std::string d = tmp_.Join("d");
  fs::create_directory(d);
  EXPECT_EQ(load_error(d), "checkpoint '" + d + "' has no meta.json (not a checkpoint?)");
  fs::create_directory(d + "/meta.json");
  EXPECT_NE(load_error(d).find("is a directory"), std::string::npos);
  fs::remove(d + "/meta.json");
  const std::string shown = d + "/meta.json: ";
  auto with_meta = [&](const std::string& text) {
    std::ofstream(d + "/meta.json", std::ios::trunc) << text;
    return load_error(d);
  };
  EXPECT_EQ(with_meta("{\"format_version\": 1,"), d + "/meta.json is not valid JSON");
  EXPECT_EQ(with_meta(""), d + "/meta.json is not valid JSON");
  // nlohmann alone would keep the last "step" and stop reading at the NUL.
  EXPECT_EQ(with_meta("{\"format_version\": 1, \"step\": 2, \"step\": 99999}"),
            d + "/meta.json has duplicate key 'step'");
  EXPECT_EQ(with_meta(std::string("{\"format_version\": 1}\0junk", 26)),
            d + "/meta.json has a NUL byte at offset 21");
  EXPECT_EQ(with_meta("[1]"), shown + "not a JSON object");
  EXPECT_EQ(with_meta("{\"step\": 1}"), shown + "missing \"format_version\"");
  EXPECT_EQ(with_meta("{\"format_version\": 2}"),
            shown + "unsupported format_version 2 (this build reads format_version 1)");
  EXPECT_EQ(with_meta("{\"format_version\": \"1\"}"),
            shown + "unsupported format_version \"1\" (this build reads format_version 1)");
  EXPECT_EQ(with_meta("{\"format_version\": [[[1]]]}"),
            shown + "unsupported format_version (an array) (this build reads format_version 1)");
  EXPECT_EQ(with_meta("{\"format_version\": 1}"), "OK");

  StatusOr<Checkpoint> ckpt = LoadCheckpoint(d);
  ASSERT_TRUE(ckpt.ok());
  StatusOr<SafetensorsFile> f = ckpt->Open("model.safetensors");
  ASSERT_FALSE(f.ok());
  EXPECT_EQ(f.status().message(), d + "/model.safetensors: file does not exist");
  EXPECT_FALSE(ckpt->Open("../d/meta.json").ok());
}

TEST_F(CheckpointTest, SaveErrors) {
  const float v = 1.0f;
  auto save_error = [&](const std::string& path, const json& meta,
                        const std::vector<CheckpointFile>& files) {
    Status s = SaveCheckpoint(path, meta, files);
    return s.ok() ? std::string("OK") : s.message();
  };
  const std::string prefix = "cannot save checkpoint '" + dir() + "': ";
  EXPECT_EQ(save_error(dir(), json::array(), {}), prefix + "meta is not a JSON object");
  EXPECT_EQ(save_error(dir(), {{"format_version", 3}}, {}),
            prefix + "meta has format_version 3, expected 1");
  EXPECT_EQ(save_error(dir(), json::object(), {{"a/b.safetensors", {}}}),
            prefix + "file name 'a/b.safetensors' is not a plain file name");
  EXPECT_EQ(save_error(dir(), json::object(), {{"..", {}}}),
            prefix + "file name '..' is not a plain file name");
  EXPECT_EQ(save_error(dir(), json::object(), {{"meta.json", {}}}),
            prefix + "file name 'meta.json' is reserved");
  EXPECT_EQ(save_error(dir(), json::object(), {{"m", {}}, {"m", {}}}),
            prefix + "file name 'm' appears twice");
  // A bad tensor fails the save and leaves nothing behind.
  const std::string err = save_error(
      dir(), json::object(), {{"m", {{"x", {2}, TensorDType::kF32, nullptr}}}});
  EXPECT_NE(err.find("tensor 'x' has no data"), std::string::npos) << err;
  EXPECT_TRUE(ListDir(tmp_.path()).empty());
  // A regular file at the path is not replaced.
  std::ofstream(dir()) << "precious";
  EXPECT_EQ(save_error(dir(), json::object(), {{"m", {{"x", {}, TensorDType::kF32, &v}}}}),
            prefix + "'" + dir() + "' exists and is not a checkpoint directory");
  EXPECT_EQ(ListDir(tmp_.path()), std::set<std::string>{"best"});
  EXPECT_EQ(ReadFile(dir()).value(), "precious");
}

// The crash hook: a save of B over A that dies after its k-th file, for
// every k, leaves A loadable and intact at the path.
TEST_F(CheckpointTest, CrashDuringSaveKeepsPreviousCheckpoint) {
  const Version a(1, {"model.safetensors", "optim.rank0.safetensors", "optim.rank1.safetensors"}, 8);
  const Version b(2, {"model.safetensors", "optim.rank0.safetensors", "other.safetensors"}, 9);
  ASSERT_TRUE(a.Save(dir()).ok());
  for (int k = 1; k <= b.num_writes(); ++k) {
    SCOPED_TRACE("crash after file " + std::to_string(k));
    const int status = SaveCrashingAfter(b, k);
    ASSERT_TRUE(WIFEXITED(status));
    EXPECT_EQ(WEXITSTATUS(status), kCrashDuringSaveExitCode);
    EXPECT_TRUE(a.Matches(dir()));
    EXPECT_GE(ListDir(tmp_.path()).size(), 3u);  // the crashed save's directory is left
  }
  // With k past the last file the hook never fires.
  const int status = SaveCrashingAfter(b, b.num_writes() + 1);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0);
  EXPECT_TRUE(b.Matches(dir()));
  EXPECT_EQ(ListDir(tmp_.path()).size(), 2u);  // the successful save cleaned up
}

TEST_F(CheckpointTest, CrashDuringFirstSaveLeavesNoCheckpoint) {
  const Version a(1, {"model.safetensors"}, 2);
  const int status = SaveCrashingAfter(a, 2);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), kCrashDuringSaveExitCode);
  StatusOr<Checkpoint> ckpt = LoadCheckpoint(dir());
  ASSERT_FALSE(ckpt.ok());
  EXPECT_EQ(ckpt.status().message(), "checkpoint directory '" + dir() + "' does not exist");
  ASSERT_TRUE(a.Save(dir()).ok());
  EXPECT_TRUE(a.Matches(dir()));
  EXPECT_EQ(ListDir(tmp_.path()).size(), 2u);
}

TEST_F(CheckpointTest, CrashWhileReplacingARealDirectory) {
  const Version a(1, {"model.safetensors"}, 2);
  const Version b(2, {"model.safetensors", "x.safetensors"}, 3);
  ASSERT_TRUE(a.Save(tmp_.Join("src")).ok());
  fs::copy(tmp_.Join("src"), dir(), fs::copy_options::recursive);
  for (int k = 1; k <= b.num_writes(); ++k) {
    const int status = SaveCrashingAfter(b, k);
    ASSERT_TRUE(WIFEXITED(status));
    EXPECT_EQ(WEXITSTATUS(status), kCrashDuringSaveExitCode);
    EXPECT_TRUE(a.Matches(dir()));
    EXPECT_TRUE(fs::is_directory(fs::symlink_status(dir())));
  }
}

// The phases of a save run by several processes, as the ranks of a sharded
// run do: this process begins and commits; each file is written by its own
// forked "rank". Returns the "ranks'" wait statuses (all-reduced by the
// caller).
std::vector<int> WriteFilesInChildren(const std::string& version_dir,
                                      const std::vector<CheckpointFile>& files,
                                      int crashing_rank = -1) {
  std::vector<pid_t> pids;
  std::fflush(nullptr);
  for (size_t r = 0; r < files.size(); ++r) {
    const pid_t pid = ::fork();
    if (pid < 0) std::abort();
    if (pid == 0) {
      if (static_cast<int>(r) == crashing_rank) ::setenv(kCrashDuringSaveEnv, "1", 1);
      ::_exit(WriteCheckpointFile(version_dir, files[r]).ok() ? 0 : 1);
    }
    pids.push_back(pid);
  }
  std::vector<int> statuses;
  for (pid_t pid : pids) {
    int status = 0;
    if (::waitpid(pid, &status, 0) != pid) std::abort();
    statuses.push_back(status);
  }
  return statuses;
}

bool AllExitedOk(const std::vector<int>& statuses) {
  for (int s : statuses) {
    if (!WIFEXITED(s) || WEXITSTATUS(s) != 0) return false;
  }
  return true;
}

std::vector<std::string> FileNames(const std::vector<CheckpointFile>& files) {
  std::vector<std::string> names;
  for (const CheckpointFile& f : files) names.push_back(f.filename);
  return names;
}

TEST_F(CheckpointTest, PhasedSaveBySeveralProcesses) {
  const Version a(1, {"shard-0.safetensors", "shard-1.safetensors"}, 2);
  const Version b(2, {"shard-0.safetensors", "shard-1.safetensors", "shard-2.safetensors"}, 3);
  ASSERT_TRUE(a.Save(dir()).ok());
  StatusOr<PendingCheckpoint> pending = BeginCheckpoint(dir() + "/");
  ASSERT_TRUE(pending.ok()) << pending.status().message();
  EXPECT_EQ(pending->dir, dir());
  EXPECT_EQ(Dirname(pending->version_dir), tmp_.path());
  EXPECT_EQ(Basename(pending->version_dir).rfind("best.ckpt-", 0), 0u);
  EXPECT_TRUE(a.Matches(dir()));  // nothing visible before the commit
  ASSERT_TRUE(AllExitedOk(WriteFilesInChildren(pending->version_dir, b.Files())));
  EXPECT_TRUE(a.Matches(dir()));
  const Status s = CommitCheckpoint(*pending, b.meta(), FileNames(b.Files()));
  ASSERT_TRUE(s.ok()) << s.message();
  EXPECT_TRUE(b.Matches(dir()));
  EXPECT_EQ(ListDir(tmp_.path()).size(), 2u);  // the link and its version
}

TEST_F(CheckpointTest, WriteCheckpointFileWritesMetadata) {
  StatusOr<PendingCheckpoint> pending = BeginCheckpoint(dir());
  ASSERT_TRUE(pending.ok());
  const float v = 1.5f;
  CheckpointFile file{"shard.safetensors", {{"v", {1}, TensorDType::kF32, &v}},
                      {{"rank", "2"}, {"world_size", "3"}}};
  ASSERT_TRUE(WriteCheckpointFile(pending->version_dir, file).ok());
  ASSERT_TRUE(CommitCheckpoint(*pending, {{"step", 1}}, {"shard.safetensors"}).ok());
  StatusOr<Checkpoint> ckpt = LoadCheckpoint(dir());
  ASSERT_TRUE(ckpt.ok());
  StatusOr<SafetensorsFile> f = ckpt->Open("shard.safetensors");
  ASSERT_TRUE(f.ok());
  EXPECT_EQ(f->metadata(), (std::map<std::string, std::string>{{"rank", "2"}, {"world_size", "3"}}));
}

TEST_F(CheckpointTest, PhaseErrors) {
  const Version a(1, {"model.safetensors"}, 2);
  ASSERT_TRUE(a.Save(dir()).ok());
  StatusOr<PendingCheckpoint> pending = BeginCheckpoint(dir());
  ASSERT_TRUE(pending.ok());
  const std::string v = pending->version_dir;
  auto write_error = [&](const std::string& name) {
    const Status s = WriteCheckpointFile(v, {name, {}, {}});
    return s.ok() ? std::string("OK") : s.message();
  };
  EXPECT_EQ(write_error("a/b"), "cannot write into '" + v + "': file name 'a/b' is not a plain file name");
  EXPECT_EQ(write_error("meta.json"), "cannot write into '" + v + "': file name 'meta.json' is reserved");
  EXPECT_EQ(write_error("ok.safetensors"), "OK");
  // A file some rank never wrote: the commit fails naming it, removes the
  // version directory, and the old checkpoint stays.
  const Status s = CommitCheckpoint(*pending, {{"step", 2}}, {"ok.safetensors", "rank1.safetensors"});
  EXPECT_EQ(s.message(), "cannot save checkpoint '" + dir() + "': file 'rank1.safetensors' was not written into '" + v + "'");
  EXPECT_FALSE(fs::exists(v));
  EXPECT_TRUE(a.Matches(dir()));
  // A bad meta fails the commit the same way.
  pending = BeginCheckpoint(dir());
  ASSERT_TRUE(pending.ok());
  EXPECT_EQ(CommitCheckpoint(*pending, json::array()).message(),
            "cannot save checkpoint '" + dir() + "': meta is not a JSON object");
  EXPECT_FALSE(fs::exists(pending->version_dir));
  EXPECT_TRUE(a.Matches(dir()));
  // Begin refuses what SaveCheckpoint refuses.
  EXPECT_EQ(BeginCheckpoint("/").status().message(), "cannot save checkpoint '/': not a usable checkpoint path");
  std::ofstream(tmp_.Join("file")) << "x";
  EXPECT_EQ(BeginCheckpoint(tmp_.Join("file")).status().message(),
            "cannot save checkpoint '" + tmp_.Join("file") + "': '" + tmp_.Join("file") +
                "' exists and is not a checkpoint directory");
}

// A "rank" that fails or dies while writing its file: the caller aborts (or,
// if the process that began dies too, never commits); the old checkpoint
// stays and the next save cleans up.
TEST_F(CheckpointTest, AWriterProcessCrashingKeepsPreviousCheckpoint) {
  const Version a(1, {"r0.safetensors", "r1.safetensors", "r2.safetensors"}, 4);
  const Version b(2, {"r0.safetensors", "r1.safetensors", "r2.safetensors"}, 5);
  ASSERT_TRUE(a.Save(dir()).ok());
  for (int crashing = 0; crashing < 3; ++crashing) {
    SCOPED_TRACE("rank " + std::to_string(crashing) + " crashes");
    StatusOr<PendingCheckpoint> pending = BeginCheckpoint(dir());
    ASSERT_TRUE(pending.ok());
    const std::vector<int> statuses = WriteFilesInChildren(pending->version_dir, b.Files(), crashing);
    ASSERT_TRUE(WIFEXITED(statuses[crashing]));
    EXPECT_EQ(WEXITSTATUS(statuses[crashing]), kCrashDuringSaveExitCode);
    EXPECT_FALSE(AllExitedOk(statuses));
    if (crashing == 0) {
      AbortCheckpoint(*pending);
      EXPECT_FALSE(fs::exists(pending->version_dir));
    }  // else: as if the beginning process died as well; the directory is left
    EXPECT_TRUE(a.Matches(dir()));
  }
  // The committing process dies right after meta.json (its first file).
  const int status = RunInChild([&] {
    StatusOr<PendingCheckpoint> pending = BeginCheckpoint(dir());
    if (!pending.ok() || !AllExitedOk(WriteFilesInChildren(pending->version_dir, b.Files()))) {
      return 1;
    }
    ::setenv(kCrashDuringSaveEnv, "1", 1);
    return CommitCheckpoint(*pending, b.meta()).ok() ? 0 : 1;
  });
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), kCrashDuringSaveExitCode);
  EXPECT_TRUE(a.Matches(dir()));
  ASSERT_TRUE(b.Save(dir()).ok());
  EXPECT_TRUE(b.Matches(dir()));
  EXPECT_EQ(ListDir(tmp_.path()).size(), 2u);  // every leftover removed
}

// SIGKILL at random moments while a child saves large checkpoints in a loop:
// the path always holds one complete version, the old or the new one.
TEST_F(CheckpointTest, SigkillAtRandomMomentsLeavesOldOrNew) {
  const std::vector<std::string> names = {"model.safetensors", "optim.rank0.safetensors",
                                          "optim.rank1.safetensors"};
  const int64_t rows = 40000;  // 3 files x 40000 x 64 floats = ~30 MB per version
  const Version v1(1, names, rows);
  const Version v2(2, names, rows);
  const auto start = std::chrono::steady_clock::now();
  ASSERT_TRUE(v1.Save(dir()).ok());
  const double save_s =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();

  std::mt19937 rng(12345);
  std::uniform_real_distribution<double> delay(0.0, 3.0 * save_s);
  int seen[3] = {0, 0, 0};
  for (int trial = 0; trial < 10; ++trial) {
    std::fflush(nullptr);
    const pid_t pid = ::fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      for (int i = 0;; ++i) {
        if (!(i % 2 == 0 ? v2 : v1).Save(dir()).ok()) ::_exit(1);
      }
    }
    const double d = delay(rng);
    const struct timespec ts = {static_cast<time_t>(d),
                                static_cast<long>((d - static_cast<double>(static_cast<time_t>(d))) * 1e9)};
    ::nanosleep(&ts, nullptr);
    ASSERT_EQ(::kill(pid, SIGKILL), 0);
    int status = 0;
    ASSERT_EQ(::waitpid(pid, &status, 0), pid);
    ASSERT_TRUE(WIFSIGNALED(status)) << "child failed to save, status " << status;

    StatusOr<Checkpoint> ckpt = LoadCheckpoint(dir());
    ASSERT_TRUE(ckpt.ok()) << "trial " << trial << ": " << ckpt.status().message();
    const int id = ckpt->meta.value("version", 0);
    ASSERT_TRUE(id == 1 || id == 2) << ckpt->meta.dump();
    EXPECT_TRUE((id == 1 ? v1 : v2).Matches(dir())) << "trial " << trial << " after " << d << " s";
    ++seen[id];
  }
  std::printf("one save took %.3f s; after 10 kills: version 1 %d times, version 2 %d times\n",
              save_s, seen[1], seen[2]);
  // The next save removes whatever the killed saves left.
  ASSERT_TRUE(v2.Save(dir()).ok());
  EXPECT_TRUE(v2.Matches(dir()));
  EXPECT_EQ(ListDir(tmp_.path()).size(), 2u);
}

}  // namespace
}  // namespace mingpt
