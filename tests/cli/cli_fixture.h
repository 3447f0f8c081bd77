// The fixture of the command-line tests: a scratch directory holding a small
// synthetic text (never the network: MINGPT_DATA points at it and --data is
// always given), the child's working directory set to the scratch directory,
// and the flags of a tiny, fast model.
#pragma once

#include <map>
#include <string>
#include <utility>
#include <vector>

#include <gtest/gtest.h>

#include "cli/run_cli.h"

namespace mingpt::cli_test {

// Flags of `mingpt train` for a tiny model on `data`, writing into `root`;
// `overrides` replace a flag's value, or add it; an empty value removes it.
inline std::vector<std::string> TinyTrainArgs(
    const std::string& data, const std::string& root,
    const std::vector<std::pair<std::string, std::string>>& overrides = {}) {
  std::vector<std::pair<std::string, std::string>> flags = {
      {"--data", data},          {"--n_layer", "1"},       {"--n_head", "2"},
      {"--n_embd", "16"},        {"--block_size", "8"},    {"--batch_size", "2"},
      {"--max_steps", "2"},      {"--limit_val_batches", "1"}, {"--dropout", "0"},
      {"--num_threads", "1"},    {"--default_root_dir", root}};
  for (const auto& [flag, value] : overrides) {
    bool found = false;
    for (auto& f : flags) {
      if (f.first == flag) {
        f.second = value;
        found = true;
      }
    }
    if (!found) flags.push_back({flag, value});
  }
  std::vector<std::string> args = {"train"};
  for (const auto& [flag, value] : flags) {
    if (value.empty()) continue;
    args.push_back(flag);
    args.push_back(value);
  }
  return args;
}

class CliTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(tmp_.ok()) << "cannot create a temporary directory";
    data_ = tmp_ / "input.txt";
    WriteText(data_, SyntheticText(4000));
  }

  RunOptions Options() const {
    RunOptions o;
    o.env["MINGPT_DATA"] = data_;
    o.cwd = tmp_.path();
    return o;
  }
  ProcessResult Mingpt(const std::vector<std::string>& args) const {
    return RunMingpt(args, Options());
  }
  // A tiny `train` writing into <tmp>/<root_name>.
  ProcessResult Train(const std::string& root_name,
                      const std::vector<std::pair<std::string, std::string>>& overrides = {}) const {
    return Mingpt(TinyTrainArgs(data_, tmp_ / root_name, overrides));
  }

  // `train` with `overrides` must fail with exit `code` and one error line
  // holding `keywords`, and leave no run directory behind.
  void ExpectTrainRefused(const std::vector<std::pair<std::string, std::string>>& overrides,
                          int code, const std::vector<std::string>& keywords) const {
    const std::string root = tmp_ / "refused_run";
    const ProcessResult r = Train("refused_run", overrides);
    EXPECT_TRUE(FailsWith(r, code, keywords));
    EXPECT_FALSE(Exists(root)) << "a refused run left " << root << " behind\n" << r.Describe();
  }

  TempDir tmp_;
  std::string data_;
};

}  // namespace mingpt::cli_test
