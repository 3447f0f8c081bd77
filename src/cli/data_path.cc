#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <string>

#include "cli/commands.h"

namespace mingpt::cli {

namespace {
constexpr const char* kDefaultData = "data/tinyshakespeare.txt";
constexpr const char* kDataUrl =
    "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt";
}  // namespace

StatusOr<std::string> ResolveDataPath(const std::string& flag) {
  if (!flag.empty()) return flag;
  if (const char* env = std::getenv("MINGPT_DATA"); env && *env) return std::string(env);
  if (std::filesystem::exists(kDefaultData)) return std::string(kDefaultData);
  std::error_code ec;
  const bool made_dir = std::filesystem::create_directories("data", ec);
  std::fprintf(stderr, "mingpt: downloading tinyshakespeare from %s\n", kDataUrl);
  // Download beside the target and rename, so a failed download leaves
  // nothing (the directory too, if it made it); the tools' own messages give
  // way to the one line below. The partial file is this process's own: the
  // ranks of a user's mpirun job all download, each renaming the same text
  // into place.
  const std::string tmp = std::string(kDefaultData) + ".part-" + std::to_string(::getpid());
  const std::string cmd = "{ curl -fsSL --retry 2 -o '" + tmp + "' '" + kDataUrl + "' || wget -q -O '" +
                          tmp + "' '" + kDataUrl + "'; } 2>/dev/null";
  if (std::system(cmd.c_str()) != 0 || std::filesystem::file_size(tmp, ec) == 0) {
    std::filesystem::remove(tmp, ec);
    if (made_dir) std::filesystem::remove("data", ec);
    return Status::Error(std::string("could not download ") + kDataUrl +
                         "; pass --data PATH or set MINGPT_DATA");
  }
  std::filesystem::rename(tmp, kDefaultData, ec);
  if (ec) return Status::Error(std::string("cannot write ") + kDefaultData + ": " + ec.message());
  return std::string(kDefaultData);
}

}  // namespace mingpt::cli
