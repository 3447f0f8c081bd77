// mingpt: train, evaluate and sample GPT models. Expected failures print one
// line "mingpt: error: ..." and exit 1 (2 for bad command lines).
#include <cstdio>

#include <CLI/CLI.hpp>

#include "cli/commands.h"

int main(int argc, char** argv) {
  CLI::App app{"mingpt: train, evaluate and sample GPT models on the CPU", "mingpt"};
  app.require_subcommand(1);
  app.set_help_all_flag("--help-all", "Show help for every subcommand");
  mingpt::cli::Command commands[] = {
      mingpt::cli::AddTrain(app.add_subcommand("train", "Train a GPT on a text file")),
      mingpt::cli::AddEvaluate(app.add_subcommand("evaluate", "Loss, perplexity and bits per character of a checkpoint")),
      mingpt::cli::AddSample(app.add_subcommand("sample", "Generate text from a checkpoint")),
      mingpt::cli::AddInfo(app.add_subcommand("info", "Describe a checkpoint")),
  };
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    std::string what = e.what();
    if (what.empty() || what == "A subcommand is required") {
      what = argc > 1 && argv[1][0] != '-'
                 ? "unknown command '" + std::string(argv[1]) + "' (known: train, evaluate, sample, info)"
                 : "a command is required (train, evaluate, sample, info); see mingpt --help";
    }
    std::fprintf(stderr, "mingpt: error: %s\n", what.c_str());
    return 2;
  }
  for (size_t i = 0; i < app.get_subcommands().size(); ++i) {
    const auto* sub = app.get_subcommands()[i];
    const char* names[] = {"train", "evaluate", "sample", "info"};
    for (int c = 0; c < 4; ++c) {
      if (sub->get_name() != names[c]) continue;
      mingpt::Status status = commands[c]();
      if (!status.ok()) {
        std::fprintf(stderr, "mingpt: error: %s\n", status.message().c_str());
        return 1;
      }
      return 0;
    }
  }
  return 0;
}
