// A sharded save under NVMe offload streams each rank's shard to its file
// one tensor at a time, as the single-process save does: saving adds about
// one tensor to a rank's peak memory, never its whole shard of the
// parameters and both moments (which would make memory grow with the model
// again, the one thing NVMe offload is for).
#include <filesystem>

#include "cli/cli_fixture.h"
#include "common/metrics_csv.h"

namespace mingpt::cli_test {
namespace {

using test::PeakRss;

class NvmeSaveMemory : public CliTest {};

TEST_F(NvmeSaveMemory, AShardedSaveAddsAboutOneTensorToEachRanksPeak) {
  // 6.3M parameters: a rank's shard of the three kinds is 38 MB, one unit's
  // shard of one kind at most 1.6 MB.
  const std::string offload = tmp_ / "offload";
  std::filesystem::create_directories(offload);
  auto run = [&](const std::string& root, bool save) {
    return Mingpt(TinyTrainArgs(
        data_, tmp_ / root,
        {{"--n_layer", "8"}, {"--n_head", "4"}, {"--n_embd", "256"}, {"--batch_size", "1"},
         {"--devices", "2"}, {"--strategy", "deepspeed_stage_3_offload_nvme"},
         {"--offload_dir", offload}, {"--offload_buffer_mb", "1"}, {"--max_steps", "1"},
         {"--val_check_interval", "1"}, {"--enable_checkpointing", save ? "true" : "false"}}));
  };
  ASSERT_TRUE(Succeeded(run("unsaved", false)));
  ASSERT_TRUE(Succeeded(run("saved", true)));
  ASSERT_TRUE(std::filesystem::exists(tmp_ / "saved/checkpoints/last/meta.json"));
  const std::vector<double> unsaved = PeakRss(tmp_ / "unsaved"), saved = PeakRss(tmp_ / "saved");
  ASSERT_EQ(unsaved.size(), 2u);
  ASSERT_EQ(saved.size(), 2u);
  const double shard_of_one_kind = 6.3e6 / 2 * 4;  // 12.6 MB
  for (int r = 0; r < 2; ++r) {
    std::printf("rank %d: peak %.1f MiB unsaved, %.1f MiB saved\n", r, unsaved[r] / 1048576,
                saved[r] / 1048576);
    EXPECT_LT(saved[r] - unsaved[r], shard_of_one_kind) << "rank " << r;
  }
}

}  // namespace
}  // namespace mingpt::cli_test
