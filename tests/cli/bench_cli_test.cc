// `mingpt bench` end to end on a tiny model: every (strategy, checkpointing)
// row measured in child runs, the largest-batch search, CSV and HTML written;
// and its bad input refused with one line.
#include <algorithm>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "cli/cli_fixture.h"

namespace mingpt::cli_test {
namespace {

class BenchCliTest : public CliTest {
 protected:
  // A tiny bench writing into <tmp>/<out>; `overrides` replace a flag's value or add it.
  std::vector<std::string> Args(
      const std::string& out,
      const std::vector<std::pair<std::string, std::string>>& overrides = {}) const {
    std::vector<std::pair<std::string, std::string>> flags = {
        {"--data", data_},     {"--model_types", ""},  {"--sizes", "1/2/16"},
        {"--block_size", "8"}, {"--batch_size", "2"},  {"--steps", "2"},
        {"--warmup", "1"},     {"--num_threads", "1"}, {"--max_batch", "16"},
        {"--out", tmp_ / out}};
    for (const auto& [flag, value] : overrides) {
      auto it = std::find_if(flags.begin(), flags.end(), [&](const auto& f) { return f.first == flag; });
      if (it != flags.end()) {
        it->second = value;
      } else {
        flags.push_back({flag, value});
      }
    }
    std::vector<std::string> a = {"bench"};
    for (const auto& [flag, value] : flags) {
      a.push_back(flag);
      a.push_back(value);
    }
    return a;
  }
  static std::vector<std::vector<std::string>> Csv(const std::string& path) {
    std::vector<std::vector<std::string>> rows;
    std::istringstream in(ReadText(path));
    for (std::string line; std::getline(in, line);) {
      std::vector<std::string> cells;
      std::stringstream ss(line);
      for (std::string c; std::getline(ss, c, ',');) cells.push_back(c);
      rows.push_back(cells);
    }
    return rows;
  }
};

TEST_F(BenchCliTest, MeasuresEveryStrategyAndVariantAndWritesTheReport) {
  const ProcessResult r =
      Mingpt(Args("bench", {{"--strategies", "ddp,deepspeed_stage_3"}, {"--memory_budget", "4GiB"}}));
  ASSERT_TRUE(Succeeded(r));
  const auto rows = Csv(tmp_ / "bench/bench.csv");
  ASSERT_EQ(rows.size(), 5u) << ReadText(tmp_ / "bench/bench.csv");
  const auto& h = rows[0];
  auto col = [&](const std::string& name) {
    return static_cast<size_t>(std::find(h.begin(), h.end(), name) - h.begin());
  };
  const size_t alias = col("Plugin Alias"), ckpt = col("Activation Checkpointing"),
               t = col("Time per iteration (s)"), mem = col("Peak Memory per Rank (MiB)"),
               largest = col("Max Per Device Batch Size"), status = col("Status");
  ASSERT_LT(status, h.size());
  std::vector<std::string> seen;
  for (size_t i = 1; i < rows.size(); ++i) {
    ASSERT_EQ(rows[i].size(), h.size()) << i;
    seen.push_back(rows[i][alias] + "/" + rows[i][ckpt]);
    EXPECT_EQ(rows[i][status], "ok");
    EXPECT_GT(std::stod(rows[i][t]), 0.0);
    EXPECT_GT(std::stod(rows[i][mem]), 1.0);
    // A tiny model within 4 GiB: the search reaches --max_batch.
    EXPECT_EQ(rows[i][largest], "16+");
  }
  EXPECT_EQ(seen, (std::vector<std::string>{"ddp/false", "ddp/true", "deepspeed_stage_3/false",
                                            "deepspeed_stage_3/true"}));
  const std::string html = ReadText(tmp_ / "bench/report.html");
  EXPECT_NE(html.find("DeepSpeed ZeRO Stage 3 w checkpointing"), std::string::npos);
  EXPECT_NE(html.find("<svg"), std::string::npos);
  EXPECT_FALSE(Exists(tmp_ / "bench/runs")) << "the child runs were not cleaned up";
}

TEST_F(BenchCliTest, ABudgetBelowTheRunsPeakSkipsTheSearch) {
  const ProcessResult r = Mingpt(Args("small", {{"--strategies", "ddp"}, {"--activation_checkpointing", "off"},
                                                {"--memory_budget", "1M"}}));
  ASSERT_TRUE(Succeeded(r));
  const auto rows = Csv(tmp_ / "small/bench.csv");
  ASSERT_EQ(rows.size(), 2u);
  const auto& h = rows[0];
  const size_t largest = std::find(h.begin(), h.end(), "Max Per Device Batch Size") - h.begin();
  EXPECT_EQ(rows[1][largest], "");
}

// --offload_dir adds NVMe offload's row; its files are gone afterwards.
TEST_F(BenchCliTest, AnOffloadDirectoryAddsNvmeOffload) {
  const std::string offload = tmp_ / "offload";
  std::filesystem::create_directories(offload);
  const ProcessResult r = Mingpt(Args("nvme", {{"--strategies", "ddp"},
                                               {"--activation_checkpointing", "off"},
                                               {"--offload_dir", offload},
                                               {"--memory_budget", "1M"}}));
  ASSERT_TRUE(Succeeded(r));
  const auto rows = Csv(tmp_ / "nvme/bench.csv");
  ASSERT_EQ(rows.size(), 3u);
  std::string all;
  for (const auto& row : rows) {
    for (const auto& cell : row) all += cell + ",";
  }
  EXPECT_NE(all.find("DeepSpeed ZeRO Stage 3 Offload NVMe"), std::string::npos) << all;
  EXPECT_TRUE(std::filesystem::is_empty(offload));
}

TEST_F(BenchCliTest, BadInputIsRefusedWithOneLine) {
  struct Case {
    std::vector<std::pair<std::string, std::string>> extra;
    std::vector<std::string> keywords;
  };
  const std::vector<Case> cases = {
      {{{"--strategies", "fsdp"}}, {"--strategies", "fsdp"}},
      {{{"--sizes", "6x6x384"}}, {"--sizes", "6x6x384"}},
      {{{"--activation_checkpointing", "sometimes"}}, {"--activation_checkpointing", "sometimes"}},
      {{{"--steps", "0"}}, {"--steps"}},
      {{{"--precision", "8"}}, {"--precision", "8"}},
      {{{"--memory_budget", "lots"}}, {"--memory_budget", "lots"}},
      {{{"--sizes", "2/3/16"}}, {"2/3/16", "divisible"}},
  };
  for (const Case& c : cases) {
    const ProcessResult r = Mingpt(Args("bad", c.extra));
    EXPECT_TRUE(FailsWith(r, 1, c.keywords)) << c.extra[0].first;
  }
}

}  // namespace
}  // namespace mingpt::cli_test
