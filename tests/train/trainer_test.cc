#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <sstream>
#include <thread>

#include "common/metrics_csv.h"
#include "io/file.h"
#include "model/gpt.h"
#include "train/model_checkpoint.h"
#include "train/trainer.h"

namespace mingpt {
namespace {

namespace fs = std::filesystem;

class TrainerTest : public ::testing::Test {
 public:
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

  // The train rows of metrics.csv by step, without the timing and memory
  // columns (tokens_per_s .. peak_rss_bytes), which differ from run to run.
  std::map<int, std::string> MetricsRows(const std::string& root) {
    std::ifstream f(dir_ / root / "metrics.csv");
    std::string line;
    std::getline(f, line);
    std::map<int, std::string> rows;
    while (std::getline(f, line)) {
      std::vector<std::string> cells;
      std::stringstream ss(line);
      for (std::string c; std::getline(ss, c, ',');) cells.push_back(c);
      cells.resize(12);
      if (cells[2].empty()) continue;  // a validation row
      rows[std::stoi(cells[0])] = cells[0] + "," + cells[1] + "," + cells[2] + "," + cells[4] +
                                  "," + cells[5] + "," + cells[10] + "," + cells[11];
    }
    return rows;
  }

  // Column `name` of metrics.csv's train rows, by step ("" when empty).
  std::map<int, std::string> Column(const std::string& root, const std::string& name) {
    std::ifstream f(dir_ / root / "metrics.csv");
    std::string line;
    std::getline(f, line);
    std::vector<std::string> header;
    std::stringstream hs(line);
    for (std::string c; std::getline(hs, c, ',');) header.push_back(c);
    const size_t col = std::find(header.begin(), header.end(), name) - header.begin();
    std::map<int, std::string> out;
    while (std::getline(f, line)) {
      std::vector<std::string> cells;
      std::stringstream ss(line);
      for (std::string c; std::getline(ss, c, ',');) cells.push_back(c);
      cells.resize(header.size());
      if (!cells[2].empty()) out[std::stoi(cells[0])] = cells[col];
    }
    return out;
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

// Trains `base` for its max_steps in one run and in two (stopping halfway,
// resuming from the checkpoint): same weights bit for bit, same metrics rows
// (losses, gradient norms, loss scales) after the resume point.
void ExpectResumeIsBitIdentical(TrainerTest* t, const std::function<TrainOptions(const std::string&)>& opts) {
  TrainOptions whole = opts("full");
  const int64_t steps = whole.max_steps;
  auto full = Train(whole);
  ASSERT_TRUE(full.ok()) << full.status().message();
  EXPECT_EQ(full->steps, steps);

  TrainOptions first = opts("split");
  first.max_steps = steps / 2;
  ASSERT_TRUE(Train(first).ok());
  TrainOptions second = opts("split");
  second.ckpt_path = first.default_root_dir + "/checkpoints/last";
  auto resumed = Train(second);
  ASSERT_TRUE(resumed.ok()) << resumed.status().message();
  EXPECT_EQ(resumed->steps, steps);
  EXPECT_EQ(resumed->tokens, full->tokens);
  EXPECT_EQ(resumed->skipped_steps, full->skipped_steps);

  EXPECT_EQ(t->Weights("full"), t->Weights("split"));
  auto a = t->MetricsRows("full"), b = t->MetricsRows("split");
  for (int s = 1; s <= steps; ++s) EXPECT_EQ(a[s], b[s]) << "step " << s;
  EXPECT_EQ(full->last_train_loss, resumed->last_train_loss);
}

TEST_F(TrainerTest, ResumeIsBitIdentical) {
  ExpectResumeIsBitIdentical(this, [&](const std::string& root) { return Options(root); });
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
  EXPECT_EQ(header,
            "step,tokens,train_loss,val_loss,lr,grad_norm,tokens_per_s,elapsed,state_bytes,"
            "peak_rss_bytes,loss_scale,skipped_steps");
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

// A stop during training (SIGINT/SIGTERM set the flag): the step ends,
// `last` is saved at it, and the run ends there.
TEST_F(TrainerTest, StopFlagSavesLastAndEndsEarly) {
  TrainOptions o = Options("stopped");
  o.max_steps = 100000;
  o.val_check_interval = 100000;
  std::atomic<bool> stop{false};
  std::thread stopper([&] {  // once two steps are logged
    const fs::path metrics = dir_ / "stopped/metrics.csv";
    while (!stop.load()) {
      std::ifstream in(metrics);
      std::string line;
      int rows = 0;
      while (std::getline(in, line)) ++rows;
      if (rows >= 3) stop.store(true);  // the header and two steps
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
  });
  auto r = Train(o, &stop);
  stop.store(true);
  stopper.join();
  ASSERT_TRUE(r.ok()) << r.status().message();
  EXPECT_TRUE(r->interrupted);
  EXPECT_GE(r->steps, 2);
  EXPECT_LT(r->steps, o.max_steps);
  auto last = OpenTrainingCheckpoint((dir_ / "stopped/checkpoints/last").string());
  ASSERT_TRUE(last.ok()) << last.status().message();
  EXPECT_EQ(last->state.step, r->steps);
}

// A stop asked for before the first step (during a long setup) ends the
// run at once: no step, no save, and the run directory it made removed;
// a resumed checkpoint stays as it was.
TEST_F(TrainerTest, StopFlagBeforeTheFirstStepTrainsNothing) {
  std::atomic<bool> stop{true};
  auto r = Train(Options("early"), &stop);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("stopped before the first step"), std::string::npos)
      << r.status().message();
  EXPECT_FALSE(fs::exists(dir_ / "early"));

  ASSERT_TRUE(Train(Options("base")).ok());
  const std::string last = (dir_ / "base/checkpoints/last").string();
  const std::string version = fs::read_symlink(last).string();
  TrainOptions resumed = Options("base");
  resumed.ckpt_path = last;
  resumed.max_steps = 12;
  r = Train(resumed, &stop);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(fs::read_symlink(last).string(), version);
  EXPECT_TRUE(fs::exists(dir_ / "base/metrics.csv"));  // a directory it did not make stays
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

// --precision bf16: bf16 matrix-product operands change the numbers (so the
// setting is in effect) by about bf16's rounding, not more.
TEST_F(TrainerTest, Bf16FollowsTheFp32Trajectory) {
  TrainOptions fp32 = Options("fp32"), bf16 = Options("bf16");
  bf16.precision = "bf16-mixed";
  auto a = Train(fp32), b = Train(bf16);
  ASSERT_TRUE(a.ok() && b.ok()) << b.status().message();
  auto la = TrainLosses("fp32"), lb = TrainLosses("bf16");
  ASSERT_EQ(la.size(), 6u);
  ASSERT_EQ(lb.size(), 6u);
  bool any_differs = false;
  for (int s = 1; s <= 6; ++s) {
    const double x = std::stod(la[s]), y = std::stod(lb[s]);
    EXPECT_NEAR(y, x, 5e-3 * x) << "step " << s;
    any_differs |= la[s] != lb[s];
  }
  EXPECT_TRUE(any_differs) << "bf16 losses equal fp32's to 6 digits: no rounding happened";
  const double d = RelDiff(Weights("bf16"), Weights("fp32"));
  EXPECT_GT(d, 1e-7);
  EXPECT_LT(d, 1e-2);
  EXPECT_TRUE(Column("fp32", "loss_scale").at(6).empty()) << "a loss scale without fp16";
}

// --precision 16 from a loss scale of 2^32: the first steps overflow fp16
// (the logits' gradients alone are ~2^32 / (B*T)), are skipped and halve the
// scale (after hysteresis absorbs the first), until the scaled gradients fit;
// then training proceeds. Skipped steps leave the weights exactly as they were.
TEST_F(TrainerTest, Fp16SkipsOverflowingStepsAndLowersTheScale) {
  TrainOptions o = Options("fp16");
  o.precision = "16";
  o.initial_scale_power = 32;
  o.max_steps = 30;
  o.val_check_interval = 30;
  auto r = Train(o);
  ASSERT_TRUE(r.ok()) << r.status().message();
  // 2^32 / 48 outputs ~ 2^26.4 must fall below 65504 ~ 2^16: at least 10
  // halvings after the hysteresis step.
  EXPECT_GE(r->skipped_steps, 11);
  EXPECT_LT(r->skipped_steps, 30);
  EXPECT_TRUE(std::isfinite(r->last_train_loss));
  auto scale = Column("fp16", "loss_scale"), skipped = Column("fp16", "skipped_steps"),
       norm = Column("fp16", "grad_norm");
  ASSERT_EQ(scale.size(), 30u);
  EXPECT_EQ(scale[1], "4294967296");  // step 1 ran at 2^32 (hysteresis: not yet halved)
  EXPECT_EQ(skipped[1], "1");
  EXPECT_TRUE(norm[1].empty()) << "a skipped step has no gradient norm";
  EXPECT_EQ(std::stoll(skipped[30]), r->skipped_steps);
  EXPECT_LT(std::stod(scale[30]), 4294967296.0 / 1024);
  EXPECT_FALSE(norm[30].empty());

  auto last = OpenTrainingCheckpoint((dir_ / "fp16/checkpoints/last").string());
  ASSERT_TRUE(last.ok());
  EXPECT_EQ(last->state.optimizer_steps, 30 - r->skipped_steps);
  ASSERT_TRUE(last->state.loss_scaler.has_value());
  EXPECT_EQ(last->state.loss_scaler->skipped_steps, r->skipped_steps);

  // Five steps that all overflow: the weights are the initial ones.
  TrainOptions few = Options("skipped");
  few.precision = "16";
  few.initial_scale_power = 32;
  few.max_steps = 5;
  few.val_check_interval = 5;
  auto rf = Train(few);
  ASSERT_TRUE(rf.ok());
  ASSERT_EQ(rf->skipped_steps, 5);
  auto ckpt = OpenTrainingCheckpoint((dir_ / "skipped/checkpoints/last").string());
  ASSERT_TRUE(ckpt.ok());
  std::unique_ptr<Backend> backend = MakeCpuBackend(1);
  GPT gpt(backend.get(), ckpt->config, 1);
  std::vector<float> init(gpt.layout().total_numel());
  gpt.InitParameters(few.seed, init.data());
  EXPECT_EQ(Weights("skipped"), init);
  EXPECT_EQ(ckpt->state.optimizer_steps, 0);
}

// The loss scaler and Adam's step count are part of the checkpoint: a run
// resumed in the middle of its overflow phase continues exactly.
TEST_F(TrainerTest, Fp16ResumeIsBitIdentical) {
  ExpectResumeIsBitIdentical(this, [&](const std::string& root) {
    TrainOptions o = Options(root);
    o.precision = "16";
    o.initial_scale_power = 26;
    o.max_steps = 12;
    o.val_check_interval = 6;
    return o;
  });
}

}  // namespace
}  // namespace mingpt
