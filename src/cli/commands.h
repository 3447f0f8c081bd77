// The subcommands of the `mingpt` binary. Each registers its flags on a
// CLI11 app and returns the function that runs it; flags and --help come
// from these definitions.
#pragma once

#include <functional>

#include <CLI/CLI.hpp>

#include "core/status.h"

namespace mingpt::cli {

using Command = std::function<Status()>;

Command AddTrain(CLI::App* app);
Command AddEvaluate(CLI::App* app);
Command AddSample(CLI::App* app);
Command AddInfo(CLI::App* app);
Command AddConvert(CLI::App* app);
Command AddPlan(CLI::App* app);

// --data resolution: the flag if given, else $MINGPT_DATA, else
// data/tinyshakespeare.txt, downloaded from its public URL when missing.
StatusOr<std::string> ResolveDataPath(const std::string& flag);

}  // namespace mingpt::cli
