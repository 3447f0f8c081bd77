// Running a command as several ranks: relaunching it under mpirun, and
// joining the world a launcher made.
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>

#include "cli/commands.h"
#include "dist/mpi_communicator.h"

namespace mingpt::cli {
namespace {

// This process's own arguments after the program name, from /proc/self/cmdline.
std::vector<std::string> OwnArguments() {
  std::ifstream in("/proc/self/cmdline", std::ios::binary);
  std::vector<std::string> args;
  for (std::string a; std::getline(in, a, '\0');) args.push_back(a);
  if (!args.empty()) args.erase(args.begin());
  return args;
}

}  // namespace

Status RelaunchUnderMpirun(int devices, const std::map<std::string, std::string>& replace) {
  std::vector<std::string> args;
  const std::vector<std::string> own = OwnArguments();
  for (size_t i = 0; i < own.size(); ++i) {
    const std::string& a = own[i];
    const std::string flag = a.substr(0, a.find('='));
    if (replace.count(flag) == 0) {
      args.push_back(a);
    } else if (flag == a) {
      ++i;  // "--flag value": skip the value too
    }
  }
  for (const auto& [flag, value] : replace) {
    args.push_back(flag);
    args.push_back(value);
  }
  MINGPT_ASSIGN_OR_RETURN(int code, RunUnderMpirun(devices, args));
  std::fflush(nullptr);
  std::exit(code);
}

StatusOr<std::unique_ptr<Communicator>> JoinWorld(const MpiEnvironment& env) {
  if (env.launched) return MakeMpiCommunicator();
  return MakeLocalCommunicator();
}

}  // namespace mingpt::cli
