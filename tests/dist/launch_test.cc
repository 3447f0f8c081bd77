// Launch: DetectMpiEnvironment from each launcher's variables, the cores
// per rank, the mpirun command line (flags, MCA defaults that yield to the
// user's, errors), and a Ctrl-C while mpirun starts the ranks.
#include "dist/launch.h"

#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "common/scoped_temp_dir.h"
#include "dist/subprocess.h"

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

// mpirun's standard error through MpirunErrFilter: `pieces` fed one by one;
// what came out after each piece, and at the end.
struct Filtered {
  std::vector<std::string> after_piece;
  std::string all;
};
Filtered Filter(const std::vector<std::string>& pieces) {
  std::string out;
  MpirunErrFilter filter([&](std::string_view text) { out += text; });
  Filtered f;
  for (const std::string& piece : pieces) {
    filter.Feed(piece);
    f.after_piece.push_back(out);
  }
  filter.Finish();
  f.all = out;
  return f;
}

// OpenMPI 4.1's banners, as mpirun printed them for a rank's exit code 1.
const std::string kRule(74, '-');
const std::string kAbortedBanner = kRule + "\nPrimary job  terminated normally, but 1 process returned\n"
                                   "a non-zero exit code. Per user-direction, the job has been "
                                   "aborted.\n" + kRule + "\n";
const std::string kDetectedBanner =
    kRule + "\nmpirun detected that one or more processes exited with non-zero status, thus "
            "causing\nthe job to be terminated. The first process to do so was:\n\n"
            "  Process name: [[22951,1],1]\n  Exit code:    1\n" + kRule + "\n";
const std::string kSignalBanner =
    kRule + "\nmpirun noticed that process rank 0 with PID 0 on node h exited on signal 9 "
            "(Killed).\n" + kRule + "\n";

TEST(MpirunErrFilter, AFailedJobPrintsItsErrorLineAlone) {
  const std::string error = "mingpt: error: ckpt/model.safetensors: tensor 'x' fails its checksum\n";
  // In the order mpirun printed them: the first banner before the line.
  EXPECT_EQ(Filter({kAbortedBanner, error, kDetectedBanner}).all, error);
  EXPECT_EQ(Filter({"step 1\n", error, kAbortedBanner, kDetectedBanner, "last words\n"}).all,
            "step 1\n" + error + "last words\n");
}

TEST(MpirunErrFilter, BannersStayWithoutAnErrorLineOrForASignal) {
  // No rank reported: the banners are all there is, at the end.
  EXPECT_EQ(Filter({"step 1\n", kAbortedBanner, kDetectedBanner}).all,
            "step 1\n" + kAbortedBanner + kDetectedBanner);
  // A rank killed by a signal is news, error line or not.
  const std::string error = "mingpt: error: out of memory\n";
  EXPECT_EQ(Filter({error, kSignalBanner}).all, error + kSignalBanner);
  // Other banners pass as they come.
  const std::string other = kRule + "\nWARNING: something about the network\n" + kRule + "\n";
  const Filtered f = Filter({other, "x\n"});
  EXPECT_EQ(f.after_piece[0], other);
  EXPECT_EQ(f.all, other + "x\n");
}

TEST(MpirunErrFilter, PiecesPassAsTheyComeAndLinesJoinAcrossPieces) {
  // A progress bar's partial lines go out at once.
  const Filtered bar = Filter({"\rstep 1/3", "\rstep 2/3", "\rstep 3/3\n"});
  EXPECT_EQ(bar.after_piece[0], "\rstep 1/3");
  EXPECT_EQ(bar.after_piece[1], "\rstep 1/3\rstep 2/3");
  EXPECT_EQ(bar.all, "\rstep 1/3\rstep 2/3\rstep 3/3\n");
  // The error line and the banners cut anywhere.
  const std::string error = "mingpt: error: no space left on device\n";
  const std::string text = kAbortedBanner + error + kDetectedBanner;
  for (size_t cut : {size_t{3}, size_t{10}, size_t{40}, kAbortedBanner.size() + 5}) {
    std::vector<std::string> pieces;
    for (size_t at = 0; at < text.size(); at += cut) pieces.push_back(text.substr(at, cut));
    EXPECT_EQ(Filter(pieces).all, error) << "pieces of " << cut;
  }
  // A last line without its newline, and a lone rule, still go out.
  EXPECT_EQ(Filter({"done"}).all, "done");
  EXPECT_EQ(Filter({kRule + "\n"}).all, kRule + "\n");
}

TEST(RunUnderMpirun, RefusesInsideAnMpiJob) {
  ScopedEnv env({{"OMPI_COMM_WORLD_RANK", "1"}, {"OMPI_COMM_WORLD_SIZE", "2"}});
  StatusOr<int> code = RunUnderMpirun(2, {});
  ASSERT_FALSE(code.ok());
  EXPECT_NE(code.status().message().find("already rank 1"), std::string::npos);
}

// Ctrl-C as soon as the launcher takes it, while mpirun is still starting
// the ranks: it reaches every rank once the rank has its handler (not a
// child of mpirun before its exec, whose mpirun handler would make mpirun
// abort the job without a word, nor a rank still starting, which would die
// of it), and the job stops as it does later on.
TEST(RunUnderMpirun, AnEarlySigintStopsEveryRankGracefully) {
  for (const int delay_ms : {0, 20, 50, 100, 150}) {
    dist_test::Subprocess worker({MPI_SELFTEST, "--ranks=2", "--mode=hold"});
    ASSERT_TRUE(worker.started());
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
    while (!CatchesSignal(worker.pid(), SIGINT) && std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(delay_ms));
    worker.Signal(SIGINT);
    EXPECT_EQ(worker.Finish(30), 0) << "SIGINT " << delay_ms << " ms in\n" << worker.output();
    for (const char* line :
         {"rank 0/2: stopped", "rank 1/2: stopped", "SIGINT sent to the 2 ranks"}) {
      EXPECT_NE(worker.output().find(line), std::string::npos)
          << line << ", SIGINT " << delay_ms << " ms in\n" << worker.output();
    }
  }
}

}  // namespace
}  // namespace mingpt
