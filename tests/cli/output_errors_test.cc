// A command whose output cannot be written (stdout on a full disk: here
// /dev/full) fails with one error line and exit 1, instead of leaving an
// empty file behind with exit 0.
#include "cli/trained_checkpoint.h"

namespace mingpt::cli_test {
namespace {

using OutputErrorTest = TrainedCheckpointTest;

// `args` run with stdout on /dev/full.
ProcessResult MingptToFullDisk(const std::vector<std::string>& args, const RunOptions& o) {
  std::vector<std::string> argv = {"/bin/sh", "-c", "exec \"$0\" \"$@\" > /dev/full", MINGPT_BIN};
  argv.insert(argv.end(), args.begin(), args.end());
  return RunProcess(argv, o);
}

TEST_F(OutputErrorTest, AFullDiskFailsTheCommand) {
  if (!Exists("/dev/full")) GTEST_SKIP() << "no /dev/full here";
  for (const std::vector<std::string>& args :
       {InfoArgs(shared_last_), {"info", "--checkpoint", shared_last_, "--json"},
        EvaluateArgs(shared_last_), SampleArgs(shared_last_), {"--help"}}) {
    EXPECT_TRUE(FailsWith(MingptToFullDisk(args, Options()), 1,
                          {"cannot write the output", "No space left on device"}))
        << args[0];
  }
  // The same commands into a file that can be written succeed.
  EXPECT_TRUE(Succeeded(Mingpt(InfoArgs(shared_last_))));
}

}  // namespace
}  // namespace mingpt::cli_test
