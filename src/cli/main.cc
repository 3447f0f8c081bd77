// mingpt: train, evaluate and sample GPT models, and convert checkpoints.
// Expected failures print one line "mingpt: error: ..." and exit 1 (2 for
// bad command lines).
#include <malloc.h>

#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "cli/commands.h"
#include "dist/agree.h"
#include "dist/launch.h"

namespace {

// The subcommands, in --help order.
struct CommandEntry {
  const char* name;
  const char* description;
  mingpt::cli::Command (*add)(CLI::App* app);
};
constexpr CommandEntry kCommands[] = {
    {"train", "Train a GPT on a text file", mingpt::cli::AddTrain},
    {"evaluate", "Loss, perplexity and bits per character of a checkpoint",
     mingpt::cli::AddEvaluate},
    {"sample", "Generate text from a checkpoint", mingpt::cli::AddSample},
    {"info", "Describe a checkpoint", mingpt::cli::AddInfo},
    {"convert", "Consolidate a checkpoint (single or sharded) into one PyTorch weights file",
     mingpt::cli::AddConvert},
    {"plan", "Predict each rank's peak memory for every strategy (train's flags), training nothing",
     mingpt::cli::AddPlan},
    {"bench", "Measure every strategy (time, memory, largest batch, MFU): CSV and HTML report",
     mingpt::cli::AddBench},
    {"serve", "Serve a web page and JSON API: generate text, watch runs' metrics, see benchmarks",
     mingpt::cli::AddServe},
};

// A command's output that could not be written (`mingpt evaluate --json >
// result.json` on a full disk) is a failure like any other, not an empty
// file and exit 0: what stdio still holds is written now, and an earlier
// failed write has left the stream's error flag.
int CheckedOutput(int code) {
  errno = 0;
  if (std::fflush(stdout) == 0 && !std::ferror(stdout)) return code;
  const int err = errno;  // 0 when only the flag tells
  std::fprintf(stderr, "mingpt: error: cannot write the output%s%s\n", err != 0 ? ": " : "",
               err != 0 ? std::strerror(err) : "");
  return code == 0 ? 1 : code;
}

std::string KnownCommands() {
  std::string known;
  for (const CommandEntry& c : kCommands) known += (known.empty() ? "" : ", ") + std::string(c.name);
  return known;
}

}  // namespace

int main(int argc, char** argv) {
  // Blocks of 128 KiB and more come from and go back to the OS at once.
  // glibc would otherwise raise this threshold after the first large free
  // and keep later large blocks on its heap: tens of MiB of freed transient
  // buffers (checkpoint copies) held for the rest of the run, and a peak
  // that no plan can predict.
  mallopt(M_MMAP_THRESHOLD, 128 * 1024);
  // A write past a file-size limit fails with EFBIG (reported with the
  // file's name, as a full disk is) instead of killing the process.
  std::signal(SIGXFSZ, SIG_IGN);
  CLI::App app{"mingpt: train, evaluate and sample GPT models, on CPUs or CUDA GPUs, in one "
               "process or sharded over many",
               "mingpt"};
  app.require_subcommand(1);
  app.set_help_all_flag("--help-all", "Show help for every subcommand");
  std::vector<mingpt::cli::Command> commands;
  for (const CommandEntry& c : kCommands) {
    commands.push_back(c.add(app.add_subcommand(c.name, c.description)));
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return CheckedOutput(app.exit(e));
  } catch (const CLI::CallForAllHelp& e) {
    return CheckedOutput(app.exit(e));
  } catch (const CLI::ParseError& e) {
    std::string what = e.what();
    if (what.empty() || what == "A subcommand is required") {
      what = argc > 1 && argv[1][0] != '-'
                 ? "unknown command '" + std::string(argv[1]) + "' (known: " + KnownCommands() + ")"
                 : "a command is required (" + KnownCommands() + "); see mingpt --help";
    }
    std::fprintf(stderr, "mingpt: error: %s\n", what.c_str());
    return 2;
  }
  for (const CLI::App* sub : app.get_subcommands()) {
    for (size_t c = 0; c < commands.size(); ++c) {
      if (sub->get_name() != kCommands[c].name) continue;
      // Expected failures come back as a Status, and so does an exception.
      const mingpt::Status status = mingpt::CatchExceptions(commands[c]);
      // A rank that stopped because another failed says nothing: that rank
      // reports (dist/launch.h, MpirunErrFilter).
      if (mingpt::IsPeerFailure(status)) return mingpt::PeerFailureExitCode();
      if (!status.ok()) {
        std::fprintf(stderr, "mingpt: error: %s\n", status.message().c_str());
        return 1;
      }
      return CheckedOutput(0);
    }
  }
  return 0;
}
