// `mingpt train` refuses bad --data with one error line, exit 1, and leaves
// no run directory.
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>

#include "cli/cli_fixture.h"

namespace mingpt::cli_test {
namespace {

using DataErrorTest = CliTest;

TEST_F(DataErrorTest, MissingFile) {
  const std::string missing = tmp_ / "no-such-file.txt";
  ExpectTrainRefused({{"--data", missing}}, 1, {missing, "does not exist"});
}

TEST_F(DataErrorTest, EmptyFile) {
  const std::string empty = tmp_ / "empty.txt";
  WriteText(empty, "");
  ExpectTrainRefused({{"--data", empty}}, 1, {"empty.txt", "empty"});
}

TEST_F(DataErrorTest, DirectoryGivenAsData) {
  const std::string dir = tmp_ / "a_directory";
  std::filesystem::create_directory(dir);
  ExpectTrainRefused({{"--data", dir}}, 1, {"a_directory", "directory"});
}

TEST_F(DataErrorTest, UnreadableFile) {
  if (::geteuid() == 0) {
    GTEST_SKIP() << "running as root, which reads a chmod 000 file anyway; the "
                    "unreadable-data assertion needs a non-root user";
  }
  const std::string locked = tmp_ / "locked.txt";
  WriteText(locked, SyntheticText(4000));
  ASSERT_EQ(::chmod(locked.c_str(), 0), 0);
  ExpectTrainRefused({{"--data", locked}}, 1, {"locked.txt", "Permission denied"});
}

// Text is read as the seed reads it, as UTF-8; other bytes are named, with
// their offset.
TEST_F(DataErrorTest, NotUtf8) {
  const std::string latin1 = tmp_ / "latin1.txt";
  WriteText(latin1, SyntheticText(2000) + "Gr\xfc\xdf" + SyntheticText(2000));
  ExpectTrainRefused({{"--data", latin1}}, 1, {"latin1.txt", "not UTF-8", "0xfc", "offset 2002"});
}

// A FIFO would block the read for ever (and /dev/zero never end): only
// regular files are read.
TEST_F(DataErrorTest, NotARegularFile) {
  const std::string fifo = tmp_ / "fifo";
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  ExpectTrainRefused({{"--data", fifo}}, 1, {"fifo", "not a regular file"});
  ExpectTrainRefused({{"--data", "/dev/zero"}}, 1, {"/dev/zero", "not a regular file"});
}

TEST_F(DataErrorTest, ShorterThanBlockSize) {
  const std::string tiny = tmp_ / "tiny.txt";
  WriteText(tiny, "abcde");  // 5 characters, block_size 8
  ExpectTrainRefused({{"--data", tiny}, {"--block_size", "8"}}, 1, {"block_size"});
}

}  // namespace
}  // namespace mingpt::cli_test
