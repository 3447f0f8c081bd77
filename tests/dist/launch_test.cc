// Launch: DetectMpiEnvironment from each launcher's variables, the cores
// per rank, and the mpirun command line (flags, MCA defaults that yield to
// the user's, errors).
#include "dist/launch.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "common/scoped_temp_dir.h"

namespace mingpt {
namespace {

// Clears every variable a launcher sets (and PATH/HOME when asked), sets
// the given ones, and puts the old environment back at the end.
class ScopedEnv {
 public:
  ScopedEnv() : ScopedEnv(std::map<std::string, std::string>{}) {}
  explicit ScopedEnv(const std::map<std::string, std::string>& set) {
    for (const char* name : kLauncherVars) Unset(name);
    for (const auto& [name, value] : set) Set(name, value);
  }
  ~ScopedEnv() {
    for (const auto& [name, value] : saved_) {
      if (value) {
        ::setenv(name.c_str(), value->c_str(), 1);
      } else {
        ::unsetenv(name.c_str());
      }
    }
  }
  ScopedEnv(const ScopedEnv&) = delete;
  ScopedEnv& operator=(const ScopedEnv&) = delete;

  void Set(const std::string& name, const std::string& value) {
    Save(name);
    ::setenv(name.c_str(), value.c_str(), 1);
  }
  void Unset(const std::string& name) {
    Save(name);
    ::unsetenv(name.c_str());
  }

 private:
  static constexpr const char* kLauncherVars[] = {"OMPI_COMM_WORLD_RANK",
                                                  "OMPI_COMM_WORLD_SIZE",
                                                  "OMPI_COMM_WORLD_LOCAL_RANK",
                                                  "OMPI_COMM_WORLD_LOCAL_SIZE",
                                                  "SLURM_PROCID",
                                                  "SLURM_NTASKS",
                                                  "SLURM_STEP_NUM_TASKS",
                                                  "SLURM_LOCALID",
                                                  "SLURM_NODEID",
                                                  "SLURM_STEP_TASKS_PER_NODE",
                                                  "PMI_RANK",
                                                  "PMI_SIZE",
                                                  "MPI_LOCALRANKID",
                                                  "MPI_LOCALNRANKS",
                                                  "PMIX_RANK"};

  void Save(const std::string& name) {
    if (saved_.count(name)) return;
    const char* value = std::getenv(name.c_str());
    saved_[name] = value ? std::optional<std::string>(value) : std::nullopt;
  }

  std::map<std::string, std::optional<std::string>> saved_;
};

void ExpectEnv(const MpiEnvironment& env, bool launched, int rank, int size, int local_rank,
               int local_size) {
  EXPECT_EQ(env.launched, launched);
  EXPECT_EQ(env.rank, rank);
  EXPECT_EQ(env.size, size);
  EXPECT_EQ(env.local_rank, local_rank);
  EXPECT_EQ(env.local_size, local_size);
}

TEST(DetectMpiEnvironment, NoLauncherIsAWorldOfOne) {
  ScopedEnv env;
  ExpectEnv(DetectMpiEnvironment(), false, 0, 1, 0, 1);
}

TEST(DetectMpiEnvironment, OpenMpi) {
  ScopedEnv env({{"OMPI_COMM_WORLD_RANK", "5"},
                 {"OMPI_COMM_WORLD_SIZE", "8"},
                 {"OMPI_COMM_WORLD_LOCAL_RANK", "1"},
                 {"OMPI_COMM_WORLD_LOCAL_SIZE", "4"},
                 // Also inside a Slurm step: OpenMPI's own variables win.
                 {"SLURM_PROCID", "0"},
                 {"SLURM_STEP_NUM_TASKS", "1"}});
  ExpectEnv(DetectMpiEnvironment(), true, 5, 8, 1, 4);
}

TEST(DetectMpiEnvironment, SlurmStepWithCompressedTasksPerNode) {
  ScopedEnv env({{"SLURM_PROCID", "6"},
                 {"SLURM_STEP_NUM_TASKS", "7"},
                 {"SLURM_LOCALID", "0"},
                 {"SLURM_NODEID", "3"},
                 {"SLURM_STEP_TASKS_PER_NODE", "2(x3),1"}});
  ExpectEnv(DetectMpiEnvironment(), true, 6, 7, 0, 1);
  env.Set("SLURM_PROCID", "3");
  env.Set("SLURM_LOCALID", "1");
  env.Set("SLURM_NODEID", "1");
  ExpectEnv(DetectMpiEnvironment(), true, 3, 7, 1, 2);
}

TEST(DetectMpiEnvironment, SlurmBatchScriptIsNotARank) {
  // sbatch sets these for the batch script too; only srun sets the step's.
  ScopedEnv env({{"SLURM_PROCID", "0"}, {"SLURM_NTASKS", "4"}, {"SLURM_LOCALID", "0"}});
  EXPECT_FALSE(DetectMpiEnvironment().launched);
}

TEST(DetectMpiEnvironment, MpichPmi) {
  ScopedEnv env(
      {{"PMI_RANK", "2"}, {"PMI_SIZE", "3"}, {"MPI_LOCALRANKID", "2"}, {"MPI_LOCALNRANKS", "3"}});
  ExpectEnv(DetectMpiEnvironment(), true, 2, 3, 2, 3);
}

TEST(DetectMpiEnvironment, PmixAloneLeavesTheSizeUnknown) {
  ScopedEnv env;
  env.Set("PMIX_RANK", "4");
  ExpectEnv(DetectMpiEnvironment(), true, 4, 0, 0, 1);
}

TEST(DetectMpiEnvironment, MalformedOrInconsistentValuesAreIgnored) {
  for (const auto& [rank, size] : std::vector<std::pair<std::string, std::string>>{
           {"x", "2"}, {"1", ""}, {"-1", "2"}, {"2", "2"}, {"1", "2junk"}, {"0", "0"}}) {
    ScopedEnv env({{"OMPI_COMM_WORLD_RANK", rank}, {"OMPI_COMM_WORLD_SIZE", size}});
    EXPECT_FALSE(DetectMpiEnvironment().launched) << rank << " of " << size;
  }
  ScopedEnv env({{"OMPI_COMM_WORLD_RANK", "0"},
                 {"OMPI_COMM_WORLD_SIZE", "2"},
                 {"OMPI_COMM_WORLD_LOCAL_RANK", "3"},
                 {"OMPI_COMM_WORLD_LOCAL_SIZE", "2"}});
  EXPECT_FALSE(DetectMpiEnvironment().launched);
}

TEST(LocalCoresPerRank, DividesTheAllowedCpusAtLeastOne) {
  const int all = LocalCoresPerRank(MpiEnvironment{});
  EXPECT_GE(all, 1);
  EXPECT_EQ(LocalCoresPerRank(MpiEnvironment{.local_size = 2}), std::max(1, all / 2));
  EXPECT_EQ(LocalCoresPerRank(MpiEnvironment{.local_size = 100000}), 1);
}

bool Contains(const std::vector<std::string>& v, const std::vector<std::string>& run) {
  return std::search(v.begin(), v.end(), run.begin(), run.end()) != v.end();
}

TEST(RankCpus, ConsecutiveSlicesOfTheSortedAllowedCpus) {
  EXPECT_EQ(RankCpus({3, 1, 0, 2}, 0, 2, 2), (std::vector<int>{0, 1}));
  EXPECT_EQ(RankCpus({3, 1, 0, 2}, 1, 2, 2), (std::vector<int>{2, 3}));
  EXPECT_EQ(RankCpus({0, 1, 2, 3, 4, 5}, 2, 3, 1), (std::vector<int>{2}));
  EXPECT_EQ(RankCpus({4, 6, 8}, 1, 3, 1), (std::vector<int>{6}));
}

TEST(RankCpus, NoPinningAloneOrOversubscribed) {
  EXPECT_TRUE(RankCpus({0, 1, 2, 3}, 0, 1, 4).empty());   // one rank: the OS decides
  EXPECT_TRUE(RankCpus({0, 1}, 1, 2, 2).empty());         // 4 threads on 2 CPUs
  EXPECT_TRUE(RankCpus({0, 1, 2}, 3, 2, 1).empty());      // not a rank of the job
  EXPECT_TRUE(RankCpus({0, 1, 2}, 0, 2, 0).empty());
}

TEST(MpirunCommand, RunsThisExecutableWithTheArguments) {
  ScopedEnv env;
  for (const char* mca :
       {"OMPI_MCA_pml", "OMPI_MCA_btl", "OMPI_MCA_btl_base_warn_component_unused"}) {
    env.Unset(mca);
  }
  StatusOr<std::vector<std::string>> command = MpirunCommand(3, {"train", "--x=1"});
  ASSERT_TRUE(command.ok()) << command.status().message();
  const std::vector<std::string>& c = *command;
  EXPECT_EQ(std::filesystem::path(c[0]).filename(), "mpirun");
  EXPECT_TRUE(Contains(c, {"-np", "3"}));
  EXPECT_TRUE(Contains(c, {"--bind-to", "none"}));
  EXPECT_EQ(Contains(c, {"--allow-run-as-root"}), ::geteuid() == 0);
  EXPECT_TRUE(Contains(c, {"--mca", "pml", "ob1"}));
  EXPECT_TRUE(Contains(c, {"--mca", "btl", "self,vader"}));
  EXPECT_TRUE(Contains(c, {"--mca", "btl_base_warn_component_unused", "0"}));
  ASSERT_GE(c.size(), 3u);
  EXPECT_EQ(c[c.size() - 3], std::filesystem::read_symlink("/proc/self/exe").string());
  EXPECT_EQ(c[c.size() - 2], "train");
  EXPECT_EQ(c[c.size() - 1], "--x=1");
  // More ranks than cores: allowed explicitly, up to 8 a core.
  StatusOr<std::vector<std::string>> many = MpirunCommand(MaxLocalRanks(), {});
  ASSERT_TRUE(many.ok()) << many.status().message();
  EXPECT_TRUE(Contains(*many, {"--oversubscribe"}));
  StatusOr<std::vector<std::string>> too_many = MpirunCommand(MaxLocalRanks() + 1, {});
  ASSERT_FALSE(too_many.ok());
  EXPECT_NE(too_many.status().message().find("per core"), std::string::npos)
      << too_many.status().message();
}

TEST(MpirunCommand, UserMcaSettingsWin) {
  ScopedTempDir home("dist_home");
  std::filesystem::create_directories(home.Join(".openmpi"));
  {
    std::FILE* f = std::fopen(home.Join(".openmpi/mca-params.conf").c_str(), "w");
    std::fputs("# mine\nbtl = self,tcp\n", f);
    std::fclose(f);
  }
  ScopedEnv env({{"OMPI_MCA_pml", "ucx"}, {"HOME", home.path()}});
  env.Unset("OMPI_MCA_btl");
  env.Unset("OMPI_MCA_btl_base_warn_component_unused");
  StatusOr<std::vector<std::string>> command = MpirunCommand(2, {});
  ASSERT_TRUE(command.ok()) << command.status().message();
  EXPECT_FALSE(Contains(*command, {"--mca", "pml"}));
  EXPECT_FALSE(Contains(*command, {"--mca", "btl"}));
  EXPECT_TRUE(Contains(*command, {"--mca", "btl_base_warn_component_unused", "0"}));
}

TEST(MpirunCommand, Errors) {
  EXPECT_FALSE(MpirunCommand(0, {}).ok());
  EXPECT_NE(MpirunCommand(-2, {}).status().message().find("at least 1"), std::string::npos);
  ScopedTempDir empty("dist_path");
  ScopedEnv env;
  env.Set("PATH", empty.path());
  const Status status = MpirunCommand(2, {}).status();
  EXPECT_NE(status.message().find("mpirun not found"), std::string::npos) << status.message();
  EXPECT_NE(status.message().find("openmpi-bin"), std::string::npos) << status.message();
  // RunUnderMpirun passes the error on.
  EXPECT_EQ(RunUnderMpirun(2, {}).status().message(), status.message());
}

TEST(RunUnderMpirun, RefusesInsideAnMpiJob) {
  ScopedEnv env({{"OMPI_COMM_WORLD_RANK", "1"}, {"OMPI_COMM_WORLD_SIZE", "2"}});
  StatusOr<int> code = RunUnderMpirun(2, {});
  ASSERT_FALSE(code.ok());
  EXPECT_NE(code.status().message().find("already rank 1"), std::string::npos);
}

}  // namespace
}  // namespace mingpt
