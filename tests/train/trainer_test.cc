#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "common/metrics_csv.h"
#include "io/file.h"
#include "train/model_checkpoint.h"
#include "train/trainer.h"

namespace mingpt {
namespace {

namespace fs = std::filesystem;

class TrainerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::path(::testing::TempDir()) /
           ("mingpt_trainer_" + std::to_string(::getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    std::string text;
    for (int i = 0; i < 400; ++i) text += "To be, or not to be: that is the question.\n";
    std::ofstream(dir_ / "data.txt") << text;
  }
  void TearDown() override { fs::remove_all(dir_); }

  TrainOptions Options(const std::string& root) {
    TrainOptions o;
    o.model.n_layer = 2;
    o.model.n_head = 2;
    o.model.n_embd = 16;
    o.model.block_size = 12;
    o.model.dropout = 0.1f;
    o.batch_size = 4;
    o.max_steps = 6;
    o.val_check_interval = 3;
    o.limit_val_batches = 2;
    o.warmup_tokens = 100;
    o.num_threads = 1;
    o.log_every_n_steps = 1;
    o.progress = 0;
    o.data_path = (dir_ / "data.txt").string();
    o.default_root_dir = (dir_ / root).string();
    return o;
  }

  std::vector<float> Weights(const std::string& root, const char* which = "last") {
    auto ckpt = OpenTrainingCheckpoint((dir_ / root / "checkpoints" / which).string());
    EXPECT_TRUE(ckpt.ok()) << ckpt.status().message();
    ModelLayout layout(ckpt->config);
    std::vector<float> w(layout.total_numel());
    EXPECT_TRUE(ReadCheckpointTensors(*ckpt, layout, w.data(), nullptr, nullptr).ok());
    return w;
  }

  // train_loss column of metrics.csv, by step.
  std::map<int, std::string> TrainLosses(const std::string& root) {
    return test::TrainLossCells((dir_ / root).string());
  }

  fs::path dir_;
};

double RelDiff(const std::vector<float>& a, const std::vector<float>& b) {
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    num += (double(a[i]) - b[i]) * (double(a[i]) - b[i]);
    den += double(b[i]) * b[i];
  }
  return std::sqrt(num / den);
}

TEST_F(TrainerTest, ResumeIsBitIdentical) {
  auto full = Train(Options("full"));
  ASSERT_TRUE(full.ok()) << full.status().message();
  EXPECT_EQ(full->steps, 6);

  TrainOptions first = Options("split");
  first.max_steps = 3;
  ASSERT_TRUE(Train(first).ok());
  TrainOptions second = Options("split");
  second.ckpt_path = (dir_ / "split/checkpoints/last").string();
  auto resumed = Train(second);
  ASSERT_TRUE(resumed.ok()) << resumed.status().message();
  EXPECT_EQ(resumed->steps, 6);
  EXPECT_EQ(resumed->tokens, full->tokens);

  // Same weights bit for bit, and the same losses after the resume point.
  EXPECT_EQ(Weights("full"), Weights("split"));
  auto a = TrainLosses("full"), b = TrainLosses("split");
  for (int s = 1; s <= 6; ++s) EXPECT_EQ(a[s], b[s]) << "step " << s;
  EXPECT_EQ(full->last_train_loss, resumed->last_train_loss);
}

TEST_F(TrainerTest, GradientAccumulationEqualsALargerBatch) {
  TrainOptions big = Options("big");
  big.batch_size = 8;
  TrainOptions acc = Options("acc");
  acc.batch_size = 4;
  acc.accumulate_grad_batches = 2;
  auto rb = Train(big), ra = Train(acc);
  ASSERT_TRUE(rb.ok() && ra.ok());
  EXPECT_EQ(rb->tokens, ra->tokens);
  // Same samples, same dropout masks (keyed by global sample index): only
  // the order of float summation differs.
  EXPECT_LT(RelDiff(Weights("acc"), Weights("big")), 1e-5);
  EXPECT_NEAR(ra->last_train_loss, rb->last_train_loss, 1e-5 * std::abs(rb->last_train_loss));
}

TEST_F(TrainerTest, WritesMetricsAndBestAndLastCheckpoints) {
  auto r = Train(Options("run"));
  ASSERT_TRUE(r.ok());
  std::ifstream f(dir_ / "run/metrics.csv");
  std::string header;
  std::getline(f, header);
  EXPECT_EQ(header, "step,tokens,train_loss,val_loss,lr,grad_norm,tokens_per_s,elapsed,state_bytes,peak_rss_bytes");
  EXPECT_EQ(TrainLosses("run").size(), 6u);
  auto best = OpenTrainingCheckpoint((dir_ / "run/checkpoints/best").string());
  auto last = OpenTrainingCheckpoint((dir_ / "run/checkpoints/last").string());
  ASSERT_TRUE(best.ok() && last.ok());
  EXPECT_EQ(last->state.step, 6);
  EXPECT_EQ(last->state.tokens, 6 * 4 * 12);
  EXPECT_TRUE(std::isfinite(best->state.best_val_loss));
  EXPECT_EQ(best->state.best_val_loss, r->best_val_loss);
  EXPECT_EQ(last->tokenizer.vocab(), best->tokenizer.vocab());
  EXPECT_EQ(last->data_path, fs::absolute(dir_ / "data.txt").lexically_normal().string());
}

TEST_F(TrainerTest, StopFlagSavesLastAndEndsEarly) {
  std::atomic<bool> stop{true};
  auto r = Train(Options("stopped"), &stop);
  ASSERT_TRUE(r.ok());
  EXPECT_TRUE(r->interrupted);
  EXPECT_EQ(r->steps, 1);
  auto last = OpenTrainingCheckpoint((dir_ / "stopped/checkpoints/last").string());
  ASSERT_TRUE(last.ok());
  EXPECT_EQ(last->state.step, 1);
}

TEST_F(TrainerTest, LossDecreasesOnRepetitiveText) {
  TrainOptions o = Options("learn");
  o.max_steps = 150;
  o.val_check_interval = 150;
  o.optim.learning_rate = 3e-3f;
  o.model.dropout = 0.0f;
  auto r = Train(o);
  ASSERT_TRUE(r.ok());
  // The text repeats one sentence: a model that learns gets far below the
  // unigram entropy (about 2.9 nats for this sentence).
  EXPECT_LT(r->best_val_loss, 1.0);
}

}  // namespace
}  // namespace mingpt
