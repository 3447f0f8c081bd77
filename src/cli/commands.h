// The subcommands of the `mingpt` binary. Each registers its flags on a
// CLI11 app and returns the function that runs it; flags and --help come
// from these definitions.
#pragma once

#include <functional>

#include <CLI/CLI.hpp>

#include <map>
#include <memory>
#include <string>

#include "core/status.h"
#include "dist/communicator.h"
#include "dist/launch.h"

namespace mingpt::cli {

using Command = std::function<Status()>;

Command AddTrain(CLI::App* app);
Command AddEvaluate(CLI::App* app);
Command AddSample(CLI::App* app);
Command AddInfo(CLI::App* app);
Command AddConvert(CLI::App* app);
Command AddPlan(CLI::App* app);
Command AddBench(CLI::App* app);
Command AddServe(CLI::App* app);

// Several ranks (cli/ranks.cc). RelaunchUnderMpirun runs this same command
// line as `devices` ranks under mpirun, each flag of `replace` given the
// value here instead of the one on the command line, waits, and ends this
// process with mpirun's exit code (it returns only on an error). JoinWorld
// gives a process its world: MPI's when a launcher started it, else its own.
Status RelaunchUnderMpirun(int devices, const std::map<std::string, std::string>& replace);
StatusOr<std::unique_ptr<Communicator>> JoinWorld(const MpiEnvironment& env);

// Flag validators; CLI11 prints "<flag>: <message>". NotEmpty refuses an
// empty value, which for a path would otherwise read as the flag not given
// (`--data ''` training on the default corpus); NotNegative refuses a
// minus sign (CLI's own range check prints its range's bounds as doubles).
inline CLI::Validator NotEmpty() {
  return CLI::Validator(
      [](std::string& v) { return v.empty() ? std::string("must not be empty") : std::string(); },
      "", "NotEmpty");
}
inline CLI::Validator NotNegative() {
  return CLI::Validator(
      [](std::string& v) {
        return !v.empty() && v[0] == '-' ? "must be >= 0, got " + v : std::string();
      },
      "", "NotNegative");
}

// --accelerator for train, evaluate and sample: cpu, cuda (gpu) or auto
// (ResolveAccelerator resolves it).
CLI::Option* AddAcceleratorFlag(CLI::App* app, std::string* accelerator);

// Parses "8GiB", "512M", "1.5G", "1000000" (bytes) into bytes; errors name `flag`.
StatusOr<size_t> ParseBytes(const std::string& text, const std::string& flag);

// --data resolution: the flag if given, else $MINGPT_DATA, else
// data/tinyshakespeare.txt, downloaded from its public URL when missing.
StatusOr<std::string> ResolveDataPath(const std::string& flag);

}  // namespace mingpt::cli
