// Launch (see launch.h): the launcher environment variables, the mpirun
// command line and its MCA defaults, and running mpirun with SIGINT/SIGTERM
// forwarded to the ranks.
#include "dist/launch.h"

#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <charconv>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <optional>
#include <set>
#include <sstream>
#include <string_view>
#include <thread>
#include <utility>

namespace mingpt {
namespace {

// ---- the launcher's environment ----

// A non-negative integer environment variable; nullopt if unset or malformed.
std::optional<int> EnvInt(const char* name) {
  const char* text = std::getenv(name);
  if (text == nullptr || *text == '\0') return std::nullopt;
  int value = 0;
  const char* end = text + std::strlen(text);
  auto [ptr, ec] = std::from_chars(text, end, value);
  if (ec != std::errc() || ptr != end || value < 0) return std::nullopt;
  return value;
}

// `env` marked launched, or nullopt if its numbers contradict each other.
// size 0 (unknown) only where the launcher does not publish it.
std::optional<MpiEnvironment> Consistent(MpiEnvironment env, bool size_known = true) {
  const bool size_ok = size_known ? env.rank < env.size : env.size == 0;
  const bool ok = size_ok && env.local_rank < env.local_size;
  if (!ok) return std::nullopt;
  env.launched = true;
  return env;
}

std::optional<MpiEnvironment> FromOpenMpi() {
  auto rank = EnvInt("OMPI_COMM_WORLD_RANK"), size = EnvInt("OMPI_COMM_WORLD_SIZE");
  if (!rank || !size) return std::nullopt;
  return Consistent({.rank = *rank,
                     .size = *size,
                     .local_rank = EnvInt("OMPI_COMM_WORLD_LOCAL_RANK").value_or(0),
                     .local_size = EnvInt("OMPI_COMM_WORLD_LOCAL_SIZE").value_or(1)});
}

// Slurm's compressed task counts per node, "2(x3),1" = 2,2,2,1: the count of
// node `node`, or nullopt if the list is malformed or shorter.
std::optional<int> SlurmTasksOnNode(const char* text, int node) {
  if (text == nullptr) return std::nullopt;
  std::istringstream in(text);
  std::string item;
  while (std::getline(in, item, ',')) {
    int count = 0, repeat = 1;
    char tail[8] = {};
    const int fields = std::sscanf(item.c_str(), "%d(x%d)%7s", &count, &repeat, tail);
    if (fields < 1 || fields > 2 || count < 0 || repeat < 1) return std::nullopt;
    if (node < repeat) return count;
    node -= repeat;
  }
  return std::nullopt;
}

std::optional<MpiEnvironment> FromSlurmStep() {
  auto rank = EnvInt("SLURM_PROCID"), size = EnvInt("SLURM_STEP_NUM_TASKS");
  if (!rank || !size) return std::nullopt;
  const std::optional<int> local_size = SlurmTasksOnNode(std::getenv("SLURM_STEP_TASKS_PER_NODE"),
                                                         EnvInt("SLURM_NODEID").value_or(0));
  return Consistent({.rank = *rank,
                     .size = *size,
                     .local_rank = EnvInt("SLURM_LOCALID").value_or(0),
                     .local_size = local_size.value_or(1)});
}

std::optional<MpiEnvironment> FromPmi() {
  auto rank = EnvInt("PMI_RANK"), size = EnvInt("PMI_SIZE");
  if (!rank || !size) return std::nullopt;
  return Consistent({.rank = *rank,
                     .size = *size,
                     .local_rank = EnvInt("MPI_LOCALRANKID").value_or(0),
                     .local_size = EnvInt("MPI_LOCALNRANKS").value_or(1)});
}

std::optional<MpiEnvironment> FromPmix() {
  auto rank = EnvInt("PMIX_RANK");
  if (!rank) return std::nullopt;
  return Consistent({.rank = *rank, .size = 0}, /*size_known=*/false);
}

// Marks the ranks of a job RunUnderMpirun started (see PinLaunchedRank).
constexpr const char* kLaunchedRanksEnv = "MINGPT_LAUNCHED_RANKS";

constexpr int kMaxRanksPerCore = 8;  // MaxLocalRanks

// ---- the machine ----

int AllowedCpuCount() {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (::sched_getaffinity(0, sizeof(set), &set) != 0) return 1;
  return std::max(1, CPU_COUNT(&set));
}

std::string ReadFirstLine(const std::string& path) {
  std::ifstream in(path);
  std::string line;
  std::getline(in, line);
  return line;
}

// Distinct (package, core) pairs among the CPUs this process may use: the
// slots mpirun counts. Falls back to the CPU count.
int AllowedPhysicalCores() {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (::sched_getaffinity(0, sizeof(set), &set) != 0) return 1;
  std::set<std::string> cores;
  for (int cpu = 0; cpu < CPU_SETSIZE; ++cpu) {
    if (!CPU_ISSET(cpu, &set)) continue;
    const std::string dir = "/sys/devices/system/cpu/cpu" + std::to_string(cpu) + "/topology/";
    const std::string package = ReadFirstLine(dir + "physical_package_id");
    const std::string core = ReadFirstLine(dir + "core_id");
    if (package.empty() || core.empty()) return AllowedCpuCount();
    cores.insert(package + ":" + core);
  }
  return std::max<int>(1, static_cast<int>(cores.size()));
}

// Whether this process may read a child's memory with process_vm_readv:
// what OpenMPI's shared-memory transport does between ranks for large
// messages (each rank allows it with PR_SET_PTRACER_ANY, as the child here).
bool CrossMemoryAttachWorks() {
  volatile uint64_t probe = 0x6d696e6770742121ull;
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) return false;
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::prctl(PR_SET_PTRACER, PR_SET_PTRACER_ANY, 0, 0, 0);
    char c;
    ::close(fds[1]);
    while (::read(fds[0], &c, 1) < 0 && errno == EINTR) {
    }
    ::_exit(0);
  }
  ::close(fds[0]);
  uint64_t seen = 0;
  bool ok = false;
  if (pid > 0) {
    iovec local{&seen, sizeof(seen)};
    iovec remote{const_cast<uint64_t*>(&probe), sizeof(seen)};
    ok = ::process_vm_readv(pid, &local, 1, &remote, 1, 0) == sizeof(seen) && seen == probe;
  }
  ::close(fds[1]);  // the child's read returns; it exits
  if (pid > 0) {
    while (::waitpid(pid, nullptr, 0) < 0 && errno == EINTR) {
    }
  }
  return ok;
}

// ---- the mpirun command ----

std::optional<std::string> FindOnPath(const std::string& program) {
  const char* path = std::getenv("PATH");
  std::istringstream dirs(path != nullptr ? path : "");
  std::string dir;
  while (std::getline(dirs, dir, ':')) {
    const std::string candidate = (dir.empty() ? "." : dir) + "/" + program;
    std::error_code ec;
    if (std::filesystem::is_regular_file(candidate, ec) && ::access(candidate.c_str(), X_OK) == 0) {
      return candidate;
    }
  }
  return std::nullopt;
}

StatusOr<std::string> SelfExecutable() {
  std::error_code ec;
  const std::filesystem::path exe = std::filesystem::read_symlink("/proc/self/exe", ec);
  if (ec) return Status::Error("cannot read /proc/self/exe: " + ec.message());
  const std::string text = exe.string();
  static constexpr std::string_view kDeleted = " (deleted)";
  if (text.size() > kDeleted.size() && text.ends_with(kDeleted)) {
    return Status::Error("the running executable " + text + " was replaced or removed");
  }
  return text;
}

// Whether the user set MCA parameter `name` for mpirun: in the environment
// or in ~/.openmpi/mca-params.conf.
bool UserSetMca(const std::string& name) {
  if (std::getenv(("OMPI_MCA_" + name).c_str()) != nullptr) return true;
  const char* home = std::getenv("HOME");
  if (home == nullptr) return false;
  std::ifstream conf(std::string(home) + "/.openmpi/mca-params.conf");
  std::string line;
  while (std::getline(conf, line)) {
    const size_t start = line.find_first_not_of(" \t");
    if (start == std::string::npos || line[start] == '#') continue;
    const size_t end = line.find_first_of(" \t=", start);
    if (line.compare(start, end - start, name) == 0) return true;
  }
  return false;
}

std::vector<std::pair<std::string, std::string>> DefaultMca() {
  std::vector<std::pair<std::string, std::string>> mca = {
      {"pml", "ob1"}, {"btl", "self,vader"}, {"btl_base_warn_component_unused", "0"}};
  if (!UserSetMca("btl_vader_single_copy_mechanism") && !CrossMemoryAttachWorks()) {
    mca.push_back({"btl_vader_single_copy_mechanism", "none"});
  }
  std::vector<std::pair<std::string, std::string>> unset;
  for (auto& [name, value] : mca) {
    if (!UserSetMca(name)) unset.emplace_back(name, value);
  }
  return unset;
}

// ---- running mpirun ----

// SIGINT/SIGTERM received while mpirun runs: a count and the latest one.
// Process-wide because signal handlers are; lock-free atomics only.
std::atomic<int> g_signal_count{0};
std::atomic<int> g_last_signal{0};

void RecordSignal(int signal) {
  g_last_signal.store(signal);
  g_signal_count.fetch_add(1);
}

// Installs RecordSignal for SIGINT and SIGTERM; puts the old handlers back.
class ScopedSignalRecorder {
 public:
  ScopedSignalRecorder() {
    g_signal_count.store(0);
    struct sigaction action = {};
    action.sa_handler = RecordSignal;
    sigemptyset(&action.sa_mask);
    ::sigaction(SIGINT, &action, &old_int_);
    ::sigaction(SIGTERM, &action, &old_term_);
  }
  ~ScopedSignalRecorder() {
    ::sigaction(SIGINT, &old_int_, nullptr);
    ::sigaction(SIGTERM, &old_term_, nullptr);
  }
  ScopedSignalRecorder(const ScopedSignalRecorder&) = delete;
  ScopedSignalRecorder& operator=(const ScopedSignalRecorder&) = delete;

 private:
  struct sigaction old_int_ = {}, old_term_ = {};
};

// The processes whose parent is `parent` (from /proc/<pid>/stat).
std::vector<pid_t> ChildrenOf(pid_t parent) {
  std::vector<pid_t> children;
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator("/proc", ec)) {
    const std::string name = entry.path().filename().string();
    if (name.find_first_not_of("0123456789") != std::string::npos) continue;
    const std::string stat = ReadFirstLine("/proc/" + name + "/stat");
    const size_t close = stat.rfind(')');  // the command name may hold anything
    if (close == std::string::npos) continue;
    char state = 0;
    int ppid = 0;
    if (std::sscanf(stat.c_str() + close + 1, " %c %d", &state, &ppid) != 2) continue;
    if (ppid == parent) children.push_back(static_cast<pid_t>(std::stoi(name)));
  }
  return children;
}

// The executable `pid` runs ("" if unknown); a file replaced since it was
// started is still the one it runs.
std::string ExecutableOf(pid_t pid) {
  std::error_code ec;
  std::string exe =
      std::filesystem::read_symlink("/proc/" + std::to_string(pid) + "/exe", ec).string();
  static constexpr std::string_view kDeleted = " (deleted)";
  if (exe.ends_with(kDeleted)) exe.resize(exe.size() - kDeleted.size());
  return exe;
}

// Seconds since `pid` started (its fork), from /proc/<pid>/stat's starttime;
// -1 if unknown.
double SecondsRunning(pid_t pid) {
  const std::string stat = ReadFirstLine("/proc/" + std::to_string(pid) + "/stat");
  const size_t close = stat.rfind(')');  // the command name may hold anything
  if (close == std::string::npos) return -1;
  std::istringstream fields(stat.substr(close + 1));
  std::string field;
  for (int i = 3; i <= 22; ++i) {  // fields 3 (state) to 22 (starttime)
    if (!(fields >> field)) return -1;
  }
  timespec now;
  if (::clock_gettime(CLOCK_BOOTTIME, &now) != 0) return -1;
  return static_cast<double>(now.tv_sec) + 1e-9 * static_cast<double>(now.tv_nsec) -
         std::strtod(field.c_str(), nullptr) / static_cast<double>(::sysconf(_SC_CLK_TCK));
}

// How long a rank may run without a handler for the signal before it is
// sent the signal all the same: one that installs none (evaluate) then stops
// as one process would.
constexpr double kHandlerGraceSeconds = 2;

// Sends `signal` (the first SIGINT/SIGTERM) to the ranks once all `ranks`
// children of mpirun run `exe` and catch it (or have had kHandlerGraceSeconds
// to); false while it must wait. A child of mpirun between its fork and its
// exec still has mpirun's handlers, which pass the signal on to mpirun,
// which aborts the job without a word; and a rank that has not yet installed
// its handler would die of it.
bool SignalRanksWhenReady(pid_t mpirun, int ranks, const std::string& exe, int signal) {
  std::vector<pid_t> ready;
  for (pid_t child : ChildrenOf(mpirun)) {
    if (ExecutableOf(child) != exe) continue;  // not yet a rank
    if (CatchesSignal(child, signal) || SecondsRunning(child) >= kHandlerGraceSeconds) {
      ready.push_back(child);
    }
  }
  if (static_cast<int>(ready.size()) < ranks) return false;
  for (pid_t rank : ready) ::kill(rank, signal);
  std::fprintf(stderr, "mingpt: SIG%s sent to the %zu ranks; send it again to abort the job\n",
               ::sigabbrev_np(signal), ready.size());
  return true;
}

struct Argv {
  std::vector<std::string> strings;
  std::vector<char*> pointers;  // null-terminated, into strings
};

Argv MakeArgv(std::vector<std::string> strings) {
  Argv argv{std::move(strings), {}};
  for (std::string& s : argv.strings) argv.pointers.push_back(s.data());
  argv.pointers.push_back(nullptr);
  return argv;
}

// In the forked child: only async-signal-safe calls until execv.
[[noreturn]] void ExecMpirun(const Argv& argv, pid_t parent, int err) {
  ::setpgid(0, 0);
  ::prctl(PR_SET_PDEATHSIG, SIGTERM, 0, 0, 0);
  if (::getppid() != parent) ::_exit(127);  // the parent died before prctl
  sigset_t none;
  sigemptyset(&none);
  ::sigprocmask(SIG_SETMASK, &none, nullptr);
  const int devnull = ::open("/dev/null", O_RDONLY);
  if (devnull >= 0) ::dup2(devnull, STDIN_FILENO);
  ::dup2(err, STDERR_FILENO);  // the pipe to the launcher (dup2 clears O_CLOEXEC)
  ::execv(argv.pointers[0], argv.pointers.data());
  ::_exit(127);
}

enum class Pumped { kData, kNothing, kEnd };

// Passes what `fd` (non-blocking) holds through the filter, waiting up to
// `wait_ms` for something to come.
Pumped PumpErr(int fd, int wait_ms, MpirunErrFilter* filter) {
  pollfd p = {fd, POLLIN, 0};
  if (::poll(&p, 1, wait_ms) <= 0) return Pumped::kNothing;  // (or EINTR)
  Pumped result = Pumped::kNothing;
  char buf[4096];
  while (true) {
    const ssize_t n = ::read(fd, buf, sizeof(buf));
    if (n > 0) {
      filter->Feed(std::string_view(buf, static_cast<size_t>(n)));
      result = Pumped::kData;
      continue;
    }
    if (n == 0 || (errno != EAGAIN && errno != EINTR)) return Pumped::kEnd;
    return result;
  }
}

// Waits for mpirun, whose `ranks` ranks run `exe`, forwarding the signals
// RecordSignal saw (the first to the ranks, once they can take it; any later
// one to mpirun) and passing its standard error (the read end `err`) through
// the filter; its wait status.
StatusOr<int> WaitForwardingSignals(pid_t pid, int ranks, const std::string& exe, int err,
                                    MpirunErrFilter* filter) {
  int forwarded = 0;
  int held = 0;  // the first signal, until the ranks can take it
  bool open = true;
  while (true) {
    int status = 0;
    const pid_t done = ::waitpid(pid, &status, WNOHANG);
    if (done == pid) {
      // What the ranks and mpirun wrote last, to the end of the pipe. A
      // process left holding it (mpirun killed before its ranks) must not
      // hold the launcher: it stops after 2 s with nothing new.
      while (open && PumpErr(err, 2000, filter) == Pumped::kData) {
      }
      filter->Finish();
      return status;
    }
    if (done < 0 && errno != EINTR) {
      filter->Finish();
      return Status::Error(std::string("waiting for mpirun: ") + std::strerror(errno));
    }
    for (const int count = g_signal_count.load(); forwarded < count; ++forwarded) {
      if (forwarded == 0) {
        held = g_last_signal.load();
      } else {
        held = 0;
        ::kill(pid, g_last_signal.load());
      }
    }
    if (held != 0 && SignalRanksWhenReady(pid, ranks, exe, held)) held = 0;
    if (open) {
      open = PumpErr(err, 20, filter) != Pumped::kEnd;
    } else {
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  }
}

bool IsRuler(std::string_view line) {
  while (!line.empty() && (line.back() == '\n' || line.back() == '\r')) line.remove_suffix(1);
  return line.size() >= 20 && line.find_first_not_of('-') == std::string_view::npos;
}

// OpenMPI's banners on a rank's non-zero exit (help-errmgr-base.txt of 4.x).
bool IsExitBanner(std::string_view block) {
  const bool aborted = block.find("non-zero exit code") != std::string_view::npos &&
                       block.find("the job has been aborted") != std::string_view::npos;
  const bool detected =
      block.find("exited with non-zero status") != std::string_view::npos;
  return aborted || detected;
}

constexpr std::string_view kErrorLine = "mingpt: error: ";

}  // namespace

void MpirunErrFilter::Feed(std::string_view data) {
  while (!data.empty()) {
    const size_t nl = data.find('\n');
    const std::string_view piece =
        data.substr(0, nl == std::string_view::npos ? data.size() : nl + 1);
    data.remove_prefix(piece.size());
    if (line_start_.size() < kErrorLine.size()) {
      line_start_.append(piece.substr(0, kErrorLine.size() - line_start_.size()));
    }
    const bool ends = piece.back() == '\n';
    if (line_passed_) {
      out_(piece);  // the rest of a line that went out in part
    } else {
      line_ += piece;
      if (ends) {
        Line(line_);
      } else if (block_.empty() && line_.find_first_not_of('-') != std::string::npos) {
        out_(line_);  // not a ruler, nor inside a banner: out now
        line_passed_ = true;
      }
    }
    if (ends) {
      if (line_start_ == kErrorLine) error_line_ = true;
      line_.clear();
      line_start_.clear();
      line_passed_ = false;
    }
  }
}

void MpirunErrFilter::Line(std::string_view line) {
  if (block_.empty()) {
    if (IsRuler(line)) {
      block_ = line;
    } else {
      out_(line);
    }
    return;
  }
  block_ += line;
  if (!IsRuler(line)) return;
  if (IsExitBanner(block_)) {
    exit_banners_.push_back(std::move(block_));
  } else {
    out_(block_);
  }
  block_.clear();
}

void MpirunErrFilter::Finish() {
  if (!line_passed_) block_ += line_;  // an unfinished banner, or a last line without '\n'
  line_.clear();
  line_start_.clear();
  line_passed_ = false;
  if (!error_line_) {
    for (const std::string& banner : exit_banners_) out_(banner);
  }
  exit_banners_.clear();
  if (!block_.empty()) out_(block_);
  block_.clear();
}

int PeerFailureExitCode() { return std::getenv(kLaunchedRanksEnv) != nullptr ? 0 : 1; }

MpiEnvironment DetectMpiEnvironment() {
  for (auto detect : {FromOpenMpi, FromSlurmStep, FromPmi, FromPmix}) {
    if (std::optional<MpiEnvironment> env = detect()) return *env;
  }
  return MpiEnvironment{};
}

int MaxLocalRanks() { return kMaxRanksPerCore * AllowedPhysicalCores(); }

StatusOr<std::vector<std::string>> MpirunCommand(int ranks, const std::vector<std::string>& args) {
  if (ranks < 1) {
    return Status::Error("the number of ranks must be at least 1, got " + std::to_string(ranks));
  }
  if (ranks > MaxLocalRanks()) {
    return Status::Error(std::to_string(ranks) + " ranks are more than " +
                         std::to_string(kMaxRanksPerCore) + " per core of this machine (" +
                         std::to_string(AllowedPhysicalCores()) +
                         " cores); for more machines start the ranks with mpirun --hostfile or srun");
  }
  const std::optional<std::string> mpirun = FindOnPath("mpirun");
  if (!mpirun) {
    return Status::Error(
        "mpirun not found on PATH: install OpenMPI (Debian/Ubuntu: apt install openmpi-bin) or "
        "start the ranks yourself with mpirun or srun");
  }
  MINGPT_ASSIGN_OR_RETURN(const std::string exe, SelfExecutable());
  std::vector<std::string> command = {*mpirun};
  if (::geteuid() == 0) command.push_back("--allow-run-as-root");
  command.insert(command.end(), {"-np", std::to_string(ranks)});
  if (ranks > AllowedPhysicalCores()) command.push_back("--oversubscribe");
  command.insert(command.end(), {"--bind-to", "none"});
  for (const auto& [name, value] : DefaultMca()) {
    command.insert(command.end(), {"--mca", name, value});
  }
  command.push_back(exe);
  command.insert(command.end(), args.begin(), args.end());
  return command;
}

StatusOr<int> RunUnderMpirun(int ranks, const std::vector<std::string>& args) {
  const MpiEnvironment env = DetectMpiEnvironment();
  if (env.launched) {
    return Status::Error("this process is already rank " + std::to_string(env.rank) +
                         " of an MPI job; it cannot start another");
  }
  MINGPT_ASSIGN_OR_RETURN(std::vector<std::string> command, MpirunCommand(ranks, args));
  MINGPT_ASSIGN_OR_RETURN(const std::string exe, SelfExecutable());  // the ranks' (MpirunCommand)
  const Argv argv = MakeArgv(std::move(command));
  ::setenv(kLaunchedRanksEnv, "1", 1);  // inherited by mpirun and its ranks
  int err[2];
  if (::pipe2(err, O_CLOEXEC) != 0) {
    return Status::Error(std::string("cannot start mpirun: ") + std::strerror(errno));
  }
  ScopedSignalRecorder recorder;  // before fork: no signal is lost
  std::fflush(nullptr);
  const pid_t parent = ::getpid();
  const pid_t pid = ::fork();
  if (pid < 0) {
    ::close(err[0]);
    ::close(err[1]);
    return Status::Error(std::string("cannot start mpirun: ") + std::strerror(errno));
  }
  if (pid == 0) ExecMpirun(argv, parent, err[1]);
  ::close(err[1]);
  ::fcntl(err[0], F_SETFL, ::fcntl(err[0], F_GETFL) | O_NONBLOCK);
  MpirunErrFilter filter([](std::string_view text) {
    std::fwrite(text.data(), 1, text.size(), stderr);
    std::fflush(stderr);
  });
  StatusOr<int> waited = WaitForwardingSignals(pid, ranks, exe, err[0], &filter);
  ::close(err[0]);
  MINGPT_ASSIGN_OR_RETURN(const int status, std::move(waited));
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return WEXITSTATUS(status);
}

std::vector<int> RankCpus(std::vector<int> allowed, int local_rank, int local_size, int threads) {
  if (local_size <= 1 || threads < 1 || local_rank < 0 || local_rank >= local_size) return {};
  std::sort(allowed.begin(), allowed.end());
  if (static_cast<int64_t>(local_size) * threads > static_cast<int64_t>(allowed.size())) return {};
  const auto first = allowed.begin() + static_cast<int64_t>(local_rank) * threads;
  return std::vector<int>(first, first + threads);
}

std::vector<int> PinLaunchedRank(const MpiEnvironment& env, int threads) {
  if (!env.launched || std::getenv(kLaunchedRanksEnv) == nullptr) return {};
  cpu_set_t set;
  CPU_ZERO(&set);
  if (::sched_getaffinity(0, sizeof(set), &set) != 0) return {};
  std::vector<int> allowed;
  for (int c = 0; c < CPU_SETSIZE; ++c) {
    if (CPU_ISSET(c, &set)) allowed.push_back(c);
  }
  const std::vector<int> mine = RankCpus(allowed, env.local_rank, env.local_size, threads);
  if (mine.empty()) return {};
  CPU_ZERO(&set);
  for (int c : mine) CPU_SET(c, &set);
  if (::sched_setaffinity(0, sizeof(set), &set) != 0) return {};
  return mine;
}

int LocalCoresPerRank(const MpiEnvironment& env) {
  return std::max(1, AllowedCpuCount() / std::max(1, env.local_size));
}

bool CatchesSignal(pid_t pid, int signal) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  for (std::string line; std::getline(in, line);) {
    if (line.rfind("SigCgt:", 0) == 0) {
      return (std::strtoull(line.c_str() + 7, nullptr, 16) >> (signal - 1)) & 1;
    }
  }
  return false;
}

}  // namespace mingpt
