// The subcommands of the `mingpt` binary. Each registers its flags on a
// CLI11 app and returns the function that runs it; flags and --help come
// from these definitions.
#pragma once

#include <cerrno>
#include <cstdlib>
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

// Flag validators; CLI11 prints "<flag>: <message>" (its own range check
// would print the range's bounds as doubles). NotEmpty refuses an empty
// value, which for a path would otherwise read as the flag not given
// (`--data ''` training on the default corpus). CLI11 reads integers with
// strtoull/strtoll, which clamp a value past 64 bits to the type's limit,
// and strtoull wraps a minus sign (after blanks) around: NotNegative, for
// unsigned 64-bit flags, refuses a minus sign and a value past 2^64-1;
// FitsInt64 a value outside the signed 64-bit range.
inline CLI::Validator NotEmpty() {
  return CLI::Validator(
      [](std::string& v) { return v.empty() ? std::string("must not be empty") : std::string(); },
      "", "NotEmpty");
}
inline CLI::Validator NotNegative() {
  return CLI::Validator(
      [](std::string& v) {
        const size_t first = v.find_first_not_of(" \t\n\v\f\r");
        if (first != std::string::npos && v[first] == '-') return "must be >= 0, got " + v;
        errno = 0;
        std::strtoull(v.c_str(), nullptr, 0);
        if (errno == ERANGE) return "must be at most 18446744073709551615, got " + v;
        return std::string();
      },
      "", "NotNegative");
}
inline CLI::Validator FitsInt64() {
  return CLI::Validator(
      [](std::string& v) {
        errno = 0;
        std::strtoll(v.c_str(), nullptr, 0);
        return errno == ERANGE ? "must be a 64-bit integer, got " + v : std::string();
      },
      "", "FitsInt64");
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
