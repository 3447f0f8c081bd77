// Learning: gpt-micro on tinyshakespeare must reach the validation loss the
// PyTorch reference reaches with the same recipe, settings and steps.
//
// Calibration (tests/reference/train_ref.py, same flags, seed 42, Debian's
// torch 1.13): see kReferenceValLoss. Sampling and init draw from different
// generators in the two implementations, so the threshold leaves a margin
// for seed-to-seed spread; a model without working attention stalls near
// the bigram level (about 2.45 nats) and fails it.
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>

#include "train/trainer.h"

namespace mingpt {
namespace {

// train_ref.py --n_layer 4 --n_head 4 --n_embd 128 --block_size 64
//   --batch_size 32 --dropout 0.1 --learning_rate 2e-3 --max_steps 600
//   --limit_val_batches 40 --threads 1   ->  val_loss 2.0022 (2026-11-25);
// mingpt with the same settings reached 2.0129.
constexpr double kReferenceValLoss = 2.0022;
constexpr double kMargin = 0.05;

TEST(Learning, GptMicroOnTinyShakespeareMatchesTheReference) {
  const char* data = std::getenv("MINGPT_DATA");
  if (data == nullptr || !std::filesystem::exists(data)) {
    GTEST_SKIP() << "MINGPT_DATA is not set to tinyshakespeare.txt; the learning test needs it";
  }
  TrainOptions o;
  o.model.n_layer = 4;
  o.model.n_head = 4;
  o.model.n_embd = 128;
  o.model.block_size = 64;
  o.model.dropout = 0.1f;
  o.batch_size = 32;
  o.optim.learning_rate = 2e-3f;
  o.max_steps = 600;
  o.val_check_interval = 600;
  o.limit_val_batches = 40;
  o.num_threads = 2;
  o.log_every_n_steps = 100;
  o.progress = 0;
  o.data_path = data;
  const auto root = std::filesystem::path(::testing::TempDir()) / "mingpt_learning";
  std::filesystem::remove_all(root);
  o.default_root_dir = root.string();
  auto r = Train(o);
  ASSERT_TRUE(r.ok()) << r.status().message();
  std::printf("[ learning ] val loss %.4f (PyTorch reference %.4f, threshold %.4f)\n",
              r->best_val_loss, kReferenceValLoss, kReferenceValLoss + kMargin);
  EXPECT_LT(r->best_val_loss, kReferenceValLoss + kMargin);
  std::filesystem::remove_all(root);
}

}  // namespace
}  // namespace mingpt
