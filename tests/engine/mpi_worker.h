// The engine tests that train under mpirun share this: the gtest side starts
// a worker program on N ranks and collects what it printed (RunWorker); the
// worker side joins the world, writes the training text every rank reads,
// trains the strategies in kEveryStrategy and reports each failure once on
// every rank (the rest). zero_worker.cc and comm_split_worker.cc are the
// workers.
#pragma once

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "core/rng.h"
#include "core/status.h"
#include "dist/agree.h"
#include "dist/launch.h"
#include "dist/mpi_communicator.h"
#include "model/layout.h"
#include "train/model_checkpoint.h"

namespace mingpt::test {

// ---- the gtest side --------------------------------------------------------

struct WorkerRun {
  int status = -1;  // pclose's
  std::string out;  // stdout and stderr of every rank
};

// `worker dir` on `world` ranks under mingpt's own mpirun command line (the
// worker in place of the executable, its last word when given no arguments).
inline StatusOr<WorkerRun> RunWorker(const std::string& worker, int world,
                                     const std::string& dir) {
  MINGPT_ASSIGN_OR_RETURN(std::vector<std::string> argv, MpirunCommand(world, {}));
  argv.back() = worker;
  argv.push_back(dir);
  std::string cmd;
  for (const std::string& a : argv) cmd += "'" + a + "' ";
  cmd += "2>&1";
  std::FILE* p = popen(cmd.c_str(), "r");
  if (p == nullptr) return Status::Error("cannot start " + cmd);
  WorkerRun run;
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof(buf), p)) > 0) run.out.append(buf, n);
  run.status = pclose(p);
  return run;
}

// ---- the worker side -------------------------------------------------------

inline constexpr const char* kEveryStrategy[] = {
    "ddp", "deepspeed_stage_1", "deepspeed_stage_2", "deepspeed_stage_3",
    "deepspeed_stage_2_offload", "deepspeed_stage_3_offload", "deepspeed_stage_3_offload_nvme"};

// The MPI world when launched by mpirun, else a world of one; null (with the
// reason on stderr) when MPI fails to start.
inline std::unique_ptr<Communicator> JoinWorld() {
  if (!DetectMpiEnvironment().launched) return MakeLocalCommunicator();
  auto made = MakeMpiCommunicator();
  if (!made.ok()) {
    std::fprintf(stderr, "%s\n", made.status().message().c_str());
    return nullptr;
  }
  return std::move(made).value();
}

// Rank 0 writes DIR/data.txt, phrases in a random order (learnable, so the
// loss falls and the weights move); every rank returns once it is there.
inline void WritePhraseText(Communicator* comm, const std::filesystem::path& dir) {
  if (comm->rank() == 0) {
    std::filesystem::create_directories(dir);
    std::ofstream f(dir / "data.txt");
    const char* kPhrases[] = {"a bad cab, ", "each face. ", "a cafe bed\n", "dead beef, "};
    for (int i = 0; i < 600; ++i) f << kPhrases[Philox4x32(7, i, 0, 0, 0)[0] % 4];
  }
  comm->Barrier();
}

// The consolidated parameters of ROOT/checkpoints/last.
inline StatusOr<std::vector<float>> LastWeights(const std::filesystem::path& root) {
  MINGPT_ASSIGN_OR_RETURN(OpenedCheckpoint ckpt,
                          OpenTrainingCheckpoint((root / "checkpoints/last").string()));
  ModelLayout layout(ckpt.config);
  std::vector<float> w(layout.total_numel());
  MINGPT_RETURN_IF_ERROR(ReadCheckpointTensors(ckpt, layout, w.data(), nullptr, nullptr));
  return w;
}

// Every rank learns `s` as the ranks agree on it; a failure is counted once
// on each and printed by the rank it happened on ("FAIL: ...").
inline void CountFailure(Communicator* comm, const Status& s, int* failures) {
  const Status agreed = AgreeOnStatus(comm, s);
  if (agreed.ok()) return;
  if (!IsPeerFailure(agreed)) std::fprintf(stderr, "FAIL: %s\n", agreed.message().c_str());
  ++*failures;
}

}  // namespace mingpt::test
