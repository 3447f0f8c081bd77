// The pure parts of `mingpt bench` (train/bench.h): the largest-batch search,
// the FLOP count behind MFU, and the CSV and HTML renderings.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "model/layout.h"
#include "train/bench.h"

namespace mingpt {
namespace {

TEST(LargestFitting, FindsTheThresholdWithFewProbes) {
  for (int threshold : {1, 2, 3, 7, 8, 9, 100, 255, 256}) {
    int probes = 0;
    std::vector<int> tried;
    auto fits = [&](int b) -> StatusOr<bool> {
      tried.push_back(b);
      return b <= threshold;
    };
    StatusOr<int> r = LargestFitting(1, 256, fits, &probes);
    ASSERT_TRUE(r.ok());
    EXPECT_EQ(*r, threshold);
    EXPECT_EQ(probes, static_cast<int>(tried.size()));
    EXPECT_LE(probes, 2 * 8 + 1) << "threshold " << threshold;  // doubling + bisection
    for (int b : tried) EXPECT_TRUE(b >= 1 && b <= 256);
  }
}

TEST(LargestFitting, StopsAtTheLimitAndStartsFromTheKnownFit) {
  int probes = 0;
  StatusOr<int> r = LargestFitting(8, 50, [](int) -> StatusOr<bool> { return true; }, &probes);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(*r, 50);
  EXPECT_EQ(probes, 3);  // 16, 32, 50
  probes = 0;
  r = LargestFitting(8, 8, [](int) -> StatusOr<bool> { return true; }, &probes);
  EXPECT_EQ(*r, 8);
  EXPECT_EQ(probes, 0);
}

TEST(LargestFitting, AProbeErrorEndsTheSearch) {
  int probes = 0;
  StatusOr<int> r = LargestFitting(
      1, 64, [](int b) -> StatusOr<bool> {
        if (b == 4) return Status::Error("interrupted");
        return true;
      },
      &probes);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().message(), "interrupted");
  EXPECT_EQ(probes, 2);
}

TEST(BenchFlops, SixPsiPlusTheAttentionProducts) {
  ModelConfig c;
  c.n_layer = 6;
  c.n_head = 6;
  c.n_embd = 384;
  c.block_size = 128;
  c.vocab_size = 65;
  const int64_t params = ModelLayout(c).num_parameters();
  EXPECT_DOUBLE_EQ(TrainingFlopsPerToken(c, params), 6.0 * params + 12.0 * 6 * 384 * 128);
}

BenchRow Row(const std::string& model, const std::string& strategy, bool ckpt, double t) {
  BenchRow r;
  r.model = model;
  r.config.n_layer = 2;
  r.config.n_head = 2;
  r.config.n_embd = 32;
  r.config.block_size = 16;
  r.parameters = 12345;
  r.strategy = strategy;
  r.activation_checkpointing = ckpt;
  r.batch_size = 4;
  r.ok = t > 0;
  r.error = t > 0 ? "" : "mingpt: error: out of memory, \"really\"";
  r.time_per_iter_s = t;
  r.tokens_per_s = t > 0 ? 64 / t : 0;
  r.peak_rss_bytes = 30 * 1048576.0;
  r.largest_batch = t > 0 ? 96 : 0;
  r.probes = 5;
  r.mfu = 0.5;
  return r;
}

TEST(BenchCsv, OneLinePerRowWithTheSeedsColumns) {
  const std::string csv = BenchCsv({Row("gpt-nano", "deepspeed_stage_2", true, 0.25),
                                    Row("a<b>", "ddp", false, 0)});
  std::vector<std::string> lines;
  size_t start = 0;
  for (size_t nl; (nl = csv.find('\n', start)) != std::string::npos; start = nl + 1) {
    lines.push_back(csv.substr(start, nl - start));
  }
  ASSERT_EQ(lines.size(), 3u);
  EXPECT_EQ(lines[0].rfind("Plugin,Plugin Alias,Model,", 0), 0u);
  EXPECT_NE(lines[0].find("Time per iteration (s)"), std::string::npos);
  EXPECT_NE(lines[0].find("Max Per Device Batch Size"), std::string::npos);
  EXPECT_EQ(lines[1].rfind("DeepSpeed ZeRO Stage 2 w checkpointing,deepspeed_stage_2,gpt-nano,", 0),
            0u);
  EXPECT_NE(lines[1].find(",0.2500,256.0,30.0,96,5,0.5000,ok"), std::string::npos) << lines[1];
  // A failed row: empty measurements, the error quoted (it holds a comma).
  EXPECT_NE(lines[2].find(",,,,,5,,\"mingpt: error: out of memory, \"\"really\"\"\""),
            std::string::npos)
      << lines[2];
}

TEST(BenchHtml, SelfContainedWithOneChartPerMeasure) {
  BenchContext ctx;
  ctx.date = "2026-11-25";
  ctx.machine = "test <cpu>";
  ctx.gemm_ceiling_gflops = 70;
  ctx.memory_budget = 1 << 30;
  const std::string html = BenchHtml({Row("gpt-nano", "ddp", false, 0.1),
                                      Row("gpt-nano", "deepspeed_stage_3", true, 0.2),
                                      Row("<script>", "ddp", false, 0)},
                                     ctx);
  auto count = [&](const std::string& what) {
    size_t n = 0;
    for (size_t p = html.find(what); p != std::string::npos; p = html.find(what, p + 1)) ++n;
    return n;
  };
  EXPECT_EQ(html.rfind("<!DOCTYPE html>", 0), 0u);
  EXPECT_EQ(count("<svg"), 5u);  // time, tokens/s, memory, largest batch, MFU
  EXPECT_EQ(count("<script"), 0u) << "names must be escaped; the page has no scripts";
  EXPECT_EQ(count("http"), 0u) << "no external resources";
  EXPECT_GE(count("&lt;script&gt;"), 1u);
  EXPECT_GE(count("test &lt;cpu&gt;"), 1u);
  EXPECT_GE(count("DeepSpeed ZeRO Stage 3 w checkpointing"), 2u);  // legend and table
  EXPECT_GE(count("out of memory"), 1u);  // the failed row says why
}

}  // namespace
}  // namespace mingpt
