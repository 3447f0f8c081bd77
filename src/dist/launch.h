// How a mingpt process finds its MPI world, or creates one.
//
// A process started by a launcher (OpenMPI's mpirun, Slurm's srun, MPICH's
// mpiexec) learns its place from the environment: DetectMpiEnvironment. A
// process started by hand that wants N ranks re-runs its own executable N
// times under the system's mpirun: RunUnderMpirun (one machine only; for
// several machines start the job with mpirun or srun yourself).
//
// Stopping a job that RunUnderMpirun started (measured with OpenMPI 4.1.4):
//   - mpirun runs in its own process group with stdin from /dev/null, so a
//     terminal's Ctrl-C reaches only the launching process, never mpirun
//     directly. (mpirun puts each rank in a process group of its own too.)
//   - The first SIGINT or SIGTERM the launching process gets is sent, as the
//     same signal, straight to every rank (the children of mpirun), and the
//     launcher prints one line saying so. While mpirun is still starting
//     them it is held until every rank runs this executable and has a
//     handler for it (or has run 2 s without one): a child of mpirun between
//     its fork and its exec still has mpirun's handlers, which would make
//     mpirun abort the job without a word, and a rank that has not yet
//     installed its handler would die of it. A rank that handles it (the
//     trainer: finish the step, save `last`, exit 0) ends normally; mpirun
//     then exits 0 and RunUnderMpirun returns 0. The ranks must agree on the
//     step to stop after (each learns of the signal at its own moment): the
//     trainer all-reduces a stop flag every step.
//   - A second SIGINT or SIGTERM goes to mpirun, which aborts the job: the
//     ranks get SIGTERM about 1 s later and SIGKILL 1 s after that
//     (odls_base_sigkill_timeout), and mpirun exits 1 without a message. A
//     third makes mpirun kill the ranks and exit 1 at once.
//     (mpirun would abort like this on the first signal too: OpenMPI cannot
//     forward SIGINT/SIGTERM to the ranks, ess_base_forward_signals refuses
//     them, so the ranks would get only ~1 s to save. Hence the launcher
//     signals the ranks itself.)
//   - If the launching process dies, mpirun gets SIGTERM (PR_SET_PDEATHSIG)
//     and aborts the job as above.
// A rank that dies of a signal or exits non-zero makes mpirun abort the job
// the same way (nothing hangs): it prints "mpirun noticed that process rank
// R with PID P on node H exited on signal S (...)" (OpenMPI 4.1.4 prints
// PID 0 for a killed rank) or names the rank and exit code, and exits with
// 128 + S or that exit code. MPI_Abort(code) on one rank prints "MPI_ABORT
// was invoked on rank R ..." and ends the job with exit code `code`.
//
// Under a mpirun started by hand, Ctrl-C gives the ranks only the ~1 s above
// before SIGKILL; to stop such a job gracefully, send SIGTERM to the rank
// processes (`pkill -TERM -P <mpirun pid>`). Under srun, Ctrl-C twice within
// a second (or scancel) sends SIGINT (SIGTERM) to every task and SIGKILL
// after Slurm's KillWait (30 s by default).
#pragma once

#include <sys/types.h>

#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "core/status.h"

namespace mingpt {

// This process's place in an MPI job, from the launcher's environment.
struct MpiEnvironment {
  bool launched = false;  // started by an MPI launcher
  int rank = 0;
  int size = 1;  // 0 when the launcher does not say (PMIx alone): ask MPI
  int local_rank = 0;
  int local_size = 1;  // ranks on this machine
};

// Reads, first found wins: OpenMPI's OMPI_COMM_WORLD_{RANK,SIZE,LOCAL_RANK,
// LOCAL_SIZE}; an srun step's SLURM_PROCID, SLURM_STEP_NUM_TASKS (only srun
// sets it, so a batch script is not taken for a rank), SLURM_LOCALID and
// SLURM_STEP_TASKS_PER_NODE at SLURM_NODEID; MPICH's PMI_RANK, PMI_SIZE,
// MPI_LOCALRANKID, MPI_LOCALNRANKS; PMIx's PMIX_RANK. Malformed or
// inconsistent values count as absent.
MpiEnvironment DetectMpiEnvironment();

// The command RunUnderMpirun runs:
//   mpirun [--allow-run-as-root] -np N [--oversubscribe] --bind-to none
//          [--mca NAME VALUE]... <this executable> args...
// --allow-run-as-root when the effective uid is 0; --oversubscribe when N
// exceeds the physical cores this process may use. The MCA settings make a
// one-machine job start fast and quietly anywhere, each only when the user
// has not set it (OMPI_MCA_<name> in the environment or a line in
// ~/.openmpi/mca-params.conf):
//   pml ob1, btl self,vader           one machine: shared memory only; no
//                                     probing of UCX/verbs/OFI/TCP hardware
//   btl_base_warn_component_unused 0  no warnings about absent fast networks
//   btl_vader_single_copy_mechanism none
//                                     only when cross-memory attach
//                                     (process_vm_readv, used by the fastest
//                                     path for large messages) is denied, as
//                                     in containers without CAP_SYS_PTRACE;
//                                     otherwise the job would fail at the
//                                     first large message.
// Errors: ranks < 1, mpirun not on PATH, this executable unreadable.
StatusOr<std::vector<std::string>> MpirunCommand(int ranks, const std::vector<std::string>& args);

// Runs MpirunCommand(ranks, args) (args: this process's argv[1..]) and waits
// for it, forwarding SIGINT/SIGTERM as described above. mpirun's standard
// error (its own and the ranks') passes through MpirunErrFilter. Returns
// mpirun's exit code, 128 + the signal if a signal ended it. Errors: those
// of MpirunCommand, already being a rank of an MPI job, fork failure.
StatusOr<int> RunUnderMpirun(int ranks, const std::vector<std::string>& args);

// A job that fails prints one line, as one process does. A rank that fails
// prints "mingpt: error: ..." and exits 1; in a job RunUnderMpirun started,
// the ranks that stop because of it (an error every rank agreed on) exit 0
// quietly, so that mpirun does not abort the job, and kill the reporting
// rank, before that rank has printed its line. mpirun, seeing the non-zero
// exit, then prints two banners saying so ("Primary job terminated
// normally, but 1 process returned a non-zero exit code..." and "mpirun
// detected that one or more processes exited with non-zero status..."),
// which repeat the error line in OpenMPI's words: MpirunErrFilter, through
// which RunUnderMpirun passes mpirun's standard error, holds such banners
// (a block between two lines of dashes) until mpirun ends and drops them
// if a "mingpt: error: " line came through. Everything else passes as it
// arrives, partial lines too (a progress bar's), and so does every banner
// of a job that printed no error line, or of a rank killed by a signal.
class MpirunErrFilter {
 public:
  explicit MpirunErrFilter(std::function<void(std::string_view)> out) : out_(std::move(out)) {}
  void Feed(std::string_view data);
  // At mpirun's end: what is held goes out, less the exit banners if an
  // error line came through.
  void Finish();

 private:
  void Line(std::string_view line);  // a whole line, with its '\n'

  std::function<void(std::string_view)> out_;
  std::string line_;           // the current line's start, held (it may be a ruler)
  bool line_passed_ = false;   // the current line's start went out already
  std::string line_start_;     // its first bytes, to recognise an error line
  std::string block_;          // a banner being read, from its first ruler
  std::vector<std::string> exit_banners_;  // held to the end
  bool error_line_ = false;    // a "mingpt: error: " line came through
};

// Whether a rank stopped only because another rank failed (that rank
// reports) exits quietly with 0 (in a job RunUnderMpirun started: see
// MpirunErrFilter) or 1 (under any other launcher, whose exit status is the
// job's).
int PeerFailureExitCode();

// Whether process `pid` has a handler installed for `signal` (SigCgt in
// /proc/<pid>/status): a launched rank's, once it can take a Ctrl-C.
bool CatchesSignal(pid_t pid, int signal);

// Cores for one rank's threads: the CPUs this process may run on
// (sched_getaffinity) divided by env.local_size, at least 1. (Under a
// launcher that binds ranks, the affinity is already this rank's share and
// the result errs low, never oversubscribing.)
int LocalCoresPerRank(const MpiEnvironment& env);

// The most ranks MpirunCommand starts on this machine: 8 per core (more is
// a typo, not a job; jobs over several machines start under mpirun or srun).
int MaxLocalRanks();

// Pinning ranks that share a machine. RunUnderMpirun starts its ranks with
// --bind-to none (so that a rank's OpenMP threads are not squeezed onto one
// core) and marks them with the environment variable MINGPT_LAUNCHED_RANKS.
// Such a rank then pins itself, and every thread it starts later (OpenMP's,
// the communication thread), to its own slice of the CPUs: RankCpus. Ranks
// started by another launcher are left as that launcher bound them.

// CPUs for rank `local_rank` of `local_size` on this machine with `threads`
// threads each: `threads` consecutive entries of `allowed` (sorted), the
// rank's own; empty (do not pin) with one rank, or when the ranks' threads
// do not fit in `allowed` (oversubscribed: sharing is unavoidable).
std::vector<int> RankCpus(std::vector<int> allowed, int local_rank, int local_size, int threads);

// In a rank of a job RunUnderMpirun started: pins this thread (and the ones
// it starts from now on) to RankCpus of its allowed CPUs. Returns the CPUs
// pinned to, empty when it did not pin. Call before the first OpenMP region.
std::vector<int> PinLaunchedRank(const MpiEnvironment& env, int threads);

}  // namespace mingpt
