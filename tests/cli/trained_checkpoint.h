// One tiny model trained once per test process (2 steps, a few seconds at
// most), whose checkpoint the checkpoint, sample and resume tests read or
// copy. Tests never write into it: they corrupt or resume from copies made
// with `cp -rL` (a checkpoint path is a symlink to a sibling directory).
#pragma once

#include <memory>
#include <string>

#include <gtest/gtest.h>

#include "cli/cli_fixture.h"

namespace mingpt::cli_test {

struct TrainedRun {
  TempDir dir;
  std::string data;  // the text it was trained on (SyntheticText(4000))
  std::string root;  // its --default_root_dir
  std::string last;  // root/checkpoints/last
  ProcessResult result;
  bool ok = false;
};

// Trains the shared run on first use; later calls return the same run.
inline const TrainedRun& SharedTrainedRun() {
  static const std::unique_ptr<TrainedRun> run = [] {
    auto r = std::make_unique<TrainedRun>();
    if (!r->dir.ok()) return r;
    r->data = r->dir / "input.txt";
    WriteText(r->data, SyntheticText(4000));
    r->root = r->dir / "run";
    r->last = r->root + "/checkpoints/last";
    RunOptions o;
    o.env["MINGPT_DATA"] = r->data;
    o.cwd = r->dir.path();
    r->result = RunMingpt(TinyTrainArgs(r->data, r->root), o);
    r->ok = r->result.exit_code == 0 && r->result.signal == 0 && !r->result.timed_out &&
            Exists(r->last + "/meta.json") && Exists(r->last + "/model.safetensors");
    return r;
  }();
  return *run;
}

// cp's path; the tests copy checkpoints with `cp -rL`, as the checkpoint
// format's notes tell users to.
inline std::string CpPath() { return Exists("/bin/cp") ? "/bin/cp" : "/usr/bin/cp"; }

class TrainedCheckpointTest : public CliTest {
 protected:
  void SetUp() override {
    CliTest::SetUp();
    const TrainedRun& run = SharedTrainedRun();
    ASSERT_TRUE(run.ok) << "training the shared tiny model failed\n" << run.result.Describe();
    shared_last_ = run.last;
  }

  // Copies the shared checkpoint to <tmp>/<name> (symlinks followed).
  std::string CopyCheckpoint(const std::string& name) {
    const std::string dst = tmp_ / name;
    const ProcessResult r = RunProcess({CpPath(), "-rL", shared_last_, dst});
    EXPECT_TRUE(Succeeded(r));
    EXPECT_TRUE(Exists(dst + "/meta.json"));
    return dst;
  }

  std::vector<std::string> InfoArgs(const std::string& ckpt) const {
    return {"info", "--checkpoint", ckpt};
  }
  std::vector<std::string> EvaluateArgs(const std::string& ckpt) const {
    return {"evaluate", "--checkpoint", ckpt, "--data", data_, "--batch_size", "2",
            "--num_threads", "1"};
  }
  std::vector<std::string> SampleArgs(const std::string& ckpt, const std::string& prompt = "the",
                                      const std::vector<std::string>& extra = {}) const {
    std::vector<std::string> a = {"sample", "--checkpoint", ckpt, "--prompt", prompt,
                                  "--steps", "5", "--num_threads", "1"};
    a.insert(a.end(), extra.begin(), extra.end());
    return a;
  }
  // Resume flags: the tiny run's flags without the model ones (the model
  // comes from the checkpoint), two more steps, into <tmp>/<root_name>.
  std::vector<std::string> ResumeArgs(
      const std::string& ckpt, const std::string& root_name,
      std::vector<std::pair<std::string, std::string>> overrides = {}) const {
    std::vector<std::pair<std::string, std::string>> o = {
        {"--n_layer", ""}, {"--n_head", ""},      {"--n_embd", ""},    {"--block_size", ""},
        {"--dropout", ""}, {"--max_steps", "4"}, {"--ckpt_path", ckpt}};
    o.insert(o.end(), overrides.begin(), overrides.end());
    return TinyTrainArgs(data_, tmp_ / root_name, o);
  }

  std::string shared_last_;
};

}  // namespace mingpt::cli_test
