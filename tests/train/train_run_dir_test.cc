// `mingpt train`'s run directory: a default one is new to each run; what
// cannot be written there is found before training (a file where a
// checkpoint goes) or stops the run with one line (metrics.csv, memory.csv
// on a full disk); the last lines say what was saved, and paths need not be
// UTF-8.
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <ctime>
#include <filesystem>
#include <string>
#include <thread>

#include "cli/cli_fixture.h"
#include "common/metrics_csv.h"

namespace mingpt::cli_test {
namespace {

namespace fs = std::filesystem;

using TrainRunDirTest = CliTest;

// runs/<time> as the binary names it, `offset` seconds from now.
std::string RunDirAt(int offset) {
  const std::time_t t = std::time(nullptr) + offset;
  char buf[64];
  std::strftime(buf, sizeof(buf), "runs/%Y%m%d-%H%M%S", std::localtime(&t));
  return buf;
}

// Two runs started in the same second share no directory: the second gets
// runs/<time>-2. (The runs of this and the next seconds are made here
// first, as an earlier run in the same second would have.)
TEST_F(TrainRunDirTest, ADefaultRunDirectoryIsNewToTheRun) {
  for (int offset = 0; offset < 30; ++offset) fs::create_directories(tmp_ / RunDirAt(offset));
  const ProcessResult r = Train("unused", {{"--default_root_dir", ""}});
  ASSERT_TRUE(Succeeded(r));
  for (int offset = 0; offset < 30; ++offset) {
    EXPECT_TRUE(fs::is_empty(tmp_ / RunDirAt(offset))) << RunDirAt(offset) << " was written into";
  }
  const size_t at = r.out.find("checkpoints: runs/");
  ASSERT_NE(at, std::string::npos) << r.Describe();
  const std::string dir = r.out.substr(at + 13, r.out.find("/checkpoints/", at) - at - 13);
  EXPECT_EQ(dir.substr(dir.size() - 2), "-2") << r.Describe();
  EXPECT_TRUE(Exists(tmp_ / (dir + "/metrics.csv"))) << dir;
}

// A file where `last` goes is found before the first step, not at the first
// save; a file where the checkpoints directory goes is named.
TEST_F(TrainRunDirTest, AFileWhereACheckpointGoesIsFoundAtTheStart) {
  fs::create_directories(tmp_ / "f1/checkpoints");
  WriteText(tmp_ / "f1/checkpoints/last", "hi");
  const ProcessResult r =
      Train("f1", {{"--max_steps", "2000"}, {"--val_check_interval", "1000"}});
  EXPECT_TRUE(FailsWith(r, 1, {"f1/checkpoints/last", "exists and is not a checkpoint directory"}));
  EXPECT_FALSE(Exists(tmp_ / "f1/metrics.csv")) << "it trained first";

  fs::create_directories(tmp_ / "f2");
  WriteText(tmp_ / "f2/checkpoints", "hi");
  EXPECT_TRUE(FailsWith(Train("f2"), 1,
                        {"'" + (tmp_ / "f2/checkpoints") + "' exists and is not a directory"}));
}

// metrics.csv and memory.csv on a full disk: one line naming the file, exit 1.
TEST_F(TrainRunDirTest, AFullDiskUnderTheLogsIsOneError) {
  for (const std::string name : {"metrics.csv", "memory.csv"}) {
    const std::string root = tmp_ / ("full-" + name);
    fs::create_directories(root);
    fs::create_symlink("/dev/full", root + "/" + name);
    const ProcessResult r = Train("full-" + name);
    EXPECT_EQ(r.exit_code, 1) << r.Describe();
    EXPECT_NE(r.err.find("mingpt: error: cannot write '" + root + "/" + name +
                         "': No space left on device\n"),
              std::string::npos)
        << r.Describe();
  }
}

// Without validation there is no `best`: the last line names only `last`.
TEST_F(TrainRunDirTest, TheSummaryNamesOnlyTheCheckpointsSaved) {
  const ProcessResult r = Train("noval", {{"--limit_val_batches", "0"}});
  ASSERT_TRUE(Succeeded(r));
  EXPECT_NE(r.out.find("checkpoints: " + (tmp_ / "noval/checkpoints/last") + "\n"),
            std::string::npos)
      << r.Describe();
  EXPECT_FALSE(Exists(tmp_ / "noval/checkpoints/best"));
  const ProcessResult both = Train("val");
  ASSERT_TRUE(Succeeded(both));
  EXPECT_NE(both.out.find("checkpoints: " + (tmp_ / "val/checkpoints/{best,last}") + "\n"),
            std::string::npos)
      << both.Describe();
}

// Ctrl-C under --enable_checkpointing false saves nothing, and says so.
TEST_F(TrainRunDirTest, AnInterruptWithoutCheckpointingSaysNothingWasSaved) {
  const std::string root = tmp_ / "stopped";
  RunOptions o = Options();
  std::atomic<pid_t> pid{0};
  o.on_start = [&](pid_t p) { pid = p; };
  ProcessResult r;
  std::thread run([&] {
    r = RunMingpt(TinyTrainArgs(data_, root,
                                {{"--max_steps", "1000000"},
                                 {"--log_every_n_steps", "1"},
                                 {"--enable_checkpointing", "false"}}),
                  o);
  });
  for (int i = 0; i < 600 && (pid == 0 || test::TrainLosses(root).size() < 2); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  ASSERT_NE(pid, 0);
  ::kill(pid, SIGINT);
  run.join();
  ASSERT_TRUE(Succeeded(r));
  EXPECT_NE(r.err.find("interrupted at step"), std::string::npos) << r.Describe();
  EXPECT_NE(r.err.find("nothing saved (--enable_checkpointing false)"), std::string::npos)
      << r.Describe();
  EXPECT_EQ(r.err.find("saved " + root), std::string::npos) << r.Describe();
  EXPECT_FALSE(Exists(root + "/checkpoints"));
}

// Linux paths are bytes: a data file, run directory or checkpoint whose
// name is not UTF-8 trains as any other.
TEST_F(TrainRunDirTest, PathsThatAreNotUtf8) {
  const std::string data = tmp_ / "d\xe9.txt";
  WriteText(data, SyntheticText(4000));
  EXPECT_TRUE(Succeeded(Mingpt(TinyTrainArgs(data, tmp_ / "r\xe9",
                                             {{"--enable_checkpointing", "false"}}))));
  EXPECT_TRUE(Exists(tmp_ / "r\xe9/metrics.csv"));

  ASSERT_TRUE(Succeeded(Train("run")));
  const std::string ckpt = tmp_ / "ck\xe9";
  ASSERT_TRUE(Succeeded(RunProcess({"/bin/cp", "-rL", tmp_ / "run/checkpoints/last", ckpt})));
  const ProcessResult r = Train("resumed", {{"--n_layer", ""}, {"--n_head", ""}, {"--n_embd", ""},
                                            {"--block_size", ""}, {"--dropout", ""},
                                            {"--max_steps", "4"}, {"--ckpt_path", ckpt}});
  EXPECT_TRUE(Succeeded(r));
}

}  // namespace
}  // namespace mingpt::cli_test
