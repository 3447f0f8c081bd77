// A checkpoint written by `mingpt train` loads into the seed's PyTorch model
// as is (load_state_dict(strict=True)), and PyTorch evaluates it to the loss
// `mingpt evaluate` reports.
#include <gtest/gtest.h>

#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>

#include <cstdlib>
#include <string>
#include <stdlib.h>

namespace mingpt {
namespace {

bool HaveTorch() {
  return std::system("/usr/bin/python3 -c 'import torch' >/dev/null 2>&1") == 0;
}

std::string Capture(const std::string& cmd) {
  std::string out;
  std::FILE* p = popen(cmd.c_str(), "r");
  if (!p) return out;
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof(buf), p)) > 0) out.append(buf, n);
  pclose(p);
  return out;
}

TEST(PyTorchInterop, CheckpointLoadsIntoTheSeedModelWithTheSameLoss) {
  if (!HaveTorch()) GTEST_SKIP() << "/usr/bin/python3 cannot import torch (python3-torch)";
  char tmpl[] = "/tmp/mingpt-interop-XXXXXX";
  ASSERT_NE(mkdtemp(tmpl), nullptr);
  const std::string dir = tmpl, data = dir + "/input.txt";
  {
    std::ofstream f(data);
    // Characters beyond ASCII (2, 3 and 4 bytes of UTF-8): one token each, as
    // the seed's CharDataset makes them of the text Python reads.
    for (int i = 0; i < 300; ++i) {
      f << "Now is the winter of our discontent, made glorious summer \u2014 Gr\u00fc\u00dfe \U0001F600.\n";
    }
  }
  const std::string bin = MINGPT_BIN;
  const std::string train = bin + " train --data " + data +
                            " --n_layer 2 --n_head 2 --n_embd 16 --block_size 16 --batch_size 4"
                            " --max_steps 20 --dropout 0.1 --num_threads 1 --limit_val_batches 2"
                            " --default_root_dir " + dir + "/run 2>/dev/null";
  ASSERT_EQ(std::system(train.c_str()), 0);
  const std::string ckpt = dir + "/run/checkpoints/last";
  auto ours = nlohmann::json::parse(
      Capture(bin + " evaluate --checkpoint " + ckpt + " --json --num_threads 1"), nullptr, false);
  auto torch = nlohmann::json::parse(
      Capture("/usr/bin/python3 " MINGPT_SOURCE_DIR "/tests/reference/evaluate_checkpoint.py " +
              ckpt + " " + data),
      nullptr, false);
  ASSERT_FALSE(ours.is_discarded());
  ASSERT_FALSE(torch.is_discarded()) << "the PyTorch side failed to load the checkpoint";
  EXPECT_EQ(ours["windows"], torch["windows"]);
  EXPECT_EQ(torch["vocab_is_the_seeds"], true) << torch.dump();
  const double a = ours["loss"].get<double>(), b = torch["loss"].get<double>();
  EXPECT_NEAR(a, b, 1e-5 * b) << "mingpt " << a << " vs PyTorch " << b;
  std::system(("rm -rf " + dir).c_str());
}

}  // namespace
}  // namespace mingpt
