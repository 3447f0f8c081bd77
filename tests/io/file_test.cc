// Tests of io/file.h: whole-file reads with one-line errors, durable writes,
// temp directories beside a path, path helpers.
#include "common/scoped_temp_dir.h"
#include "io/file.h"

#include <gtest/gtest.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>

namespace mingpt {
namespace {

namespace fs = std::filesystem;


size_t CountEntries(const std::string& dir) {
  size_t n = 0;
  for ([[maybe_unused]] const auto& e : fs::directory_iterator(dir)) ++n;
  return n;
}

TEST(ReadFileTest, ReadsBinaryContent) {
  ScopedTempDir tmp;
  const std::string content("a\0b\nc\xff", 6);
  std::ofstream(tmp.Join("f"), std::ios::binary) << content;
  StatusOr<std::string> r = ReadFile(tmp.Join("f"));
  ASSERT_TRUE(r.ok()) << r.status().message();
  EXPECT_EQ(*r, content);
}

TEST(ReadFileTest, ReadsEmptyFile) {
  ScopedTempDir tmp;
  std::ofstream(tmp.Join("empty")).close();
  StatusOr<std::string> r = ReadFile(tmp.Join("empty"));
  ASSERT_TRUE(r.ok()) << r.status().message();
  EXPECT_EQ(*r, "");
}

TEST(ReadFileTest, MissingFileNamesPath) {
  ScopedTempDir tmp;
  StatusOr<std::string> r = ReadFile(tmp.Join("nope.txt"));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().message(), "file '" + tmp.Join("nope.txt") + "' does not exist");
}

TEST(ReadFileTest, DirectoryIsAnError) {
  ScopedTempDir tmp;
  StatusOr<std::string> r = ReadFile(tmp.path());
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find(tmp.path()), std::string::npos);
  EXPECT_NE(r.status().message().find("is a directory"), std::string::npos);
  EXPECT_EQ(r.status().message().find('\n'), std::string::npos);
}

TEST(ReadFileTest, UnreadableFileNamesPath) {
  if (::geteuid() == 0) GTEST_SKIP() << "root can read mode 000 files";
  ScopedTempDir tmp;
  std::ofstream(tmp.Join("secret")) << "x";
  ASSERT_EQ(::chmod(tmp.Join("secret").c_str(), 0), 0);
  StatusOr<std::string> r = ReadFile(tmp.Join("secret"));
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find(tmp.Join("secret")), std::string::npos);
  EXPECT_NE(r.status().message().find("ermission denied"), std::string::npos);
}

TEST(WriteFileDurablyTest, CreatesAndReplacesWithoutLeftovers) {
  ScopedTempDir tmp;
  const std::string path = tmp.Join("out.bin");
  ASSERT_TRUE(WriteFileDurably(path, "first version").ok());
  EXPECT_EQ(ReadFile(path).value(), "first version");
  ASSERT_TRUE(WriteFileDurably(path, std::string("x\0y", 3)).ok());
  EXPECT_EQ(ReadFile(path).value(), std::string("x\0y", 3));
  EXPECT_EQ(CountEntries(tmp.path()), 1u);  // no temp file left behind
  struct stat st;
  ASSERT_EQ(::stat(path.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0644u);
}

TEST(WriteFileDurablyTest, MissingDirectoryIsAnError) {
  ScopedTempDir tmp;
  const std::string path = tmp.Join("no/such/dir/out.bin");
  Status s = WriteFileDurably(path, "x");
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find(path), std::string::npos) << s.message();
}

TEST(DurableFileWriterTest, AbandonedWriterLeavesOldFileUntouched) {
  ScopedTempDir tmp;
  const std::string path = tmp.Join("f");
  ASSERT_TRUE(WriteFileDurably(path, "old").ok());
  {
    StatusOr<DurableFileWriter> w = DurableFileWriter::Create(path);
    ASSERT_TRUE(w.ok()) << w.status().message();
    ASSERT_TRUE(w->Append("new data that is never committed").ok());
    EXPECT_EQ(CountEntries(tmp.path()), 2u);  // f and its temp file
  }
  EXPECT_EQ(ReadFile(path).value(), "old");
  EXPECT_EQ(CountEntries(tmp.path()), 1u);
}

TEST(DurableFileWriterTest, StreamsSeveralAppends) {
  ScopedTempDir tmp;
  const std::string path = tmp.Join("f");
  StatusOr<DurableFileWriter> w = DurableFileWriter::Create(path);
  ASSERT_TRUE(w.ok());
  DurableFileWriter moved = std::move(w).value();
  ASSERT_TRUE(moved.Append("abc").ok());
  ASSERT_TRUE(moved.Append("def", 2).ok());
  ASSERT_TRUE(moved.Commit().ok());
  EXPECT_EQ(ReadFile(path).value(), "abcde");
  EXPECT_FALSE(moved.Append("x").ok());  // closed after Commit
}

// WriteAt patches bytes already appended (a header written with placeholders
// before the data it describes); appends continue at the end.
TEST(DurableFileWriterTest, WriteAtOverwritesInPlace) {
  ScopedTempDir tmp;
  const std::string path = tmp.Join("f");
  StatusOr<DurableFileWriter> w = DurableFileWriter::Create(path);
  ASSERT_TRUE(w.ok());
  ASSERT_TRUE(w->Append("head????tail").ok());
  ASSERT_TRUE(w->WriteAt(4, "1234", 4).ok());
  ASSERT_TRUE(w->Append("!").ok());  // still at the end, not after the patch
  ASSERT_TRUE(w->WriteAt(0, "H", 1).ok());
  ASSERT_TRUE(w->WriteAt(13, "", 0).ok());  // an empty write at the very end
  // Past the end: refused, nothing written, the writer still usable.
  Status s = w->WriteAt(10, "xyzw", 4);
  EXPECT_EQ(s.message(), "write at bytes [10, +4) past the end (13 bytes) of '" + path + "'");
  EXPECT_FALSE(w->WriteAt(14, "", 0).ok());
  EXPECT_FALSE(fs::exists(path));  // nothing at the path before Commit
  ASSERT_TRUE(w->Commit().ok());
  EXPECT_EQ(ReadFile(path).value(), "Head1234tail!");
  EXPECT_FALSE(w->WriteAt(0, "x", 1).ok());  // closed after Commit
}

TEST(FsyncTest, DirectoryAndParent) {
  ScopedTempDir tmp;
  EXPECT_TRUE(FsyncDirectory(tmp.path()).ok());
  EXPECT_TRUE(FsyncParentDirectory(tmp.Join("anything")).ok());
  Status s = FsyncDirectory(tmp.Join("missing"));
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find(tmp.Join("missing")), std::string::npos);
}

TEST(MakeTempDirBesideTest, CreatesFreshSiblings) {
  ScopedTempDir tmp;
  const std::string base = tmp.Join("ckpt");
  StatusOr<std::string> a = MakeTempDirBeside(base + "/");
  StatusOr<std::string> b = MakeTempDirBeside(base, "v");
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_NE(*a, *b);
  EXPECT_EQ(a->substr(0, base.size() + 5), base + ".tmp-");
  EXPECT_EQ(a->size(), base.size() + 5 + 6);
  EXPECT_EQ(b->substr(0, base.size() + 3), base + ".v-");
  EXPECT_TRUE(fs::is_directory(*a));
  EXPECT_TRUE(fs::is_empty(*a));
  EXPECT_FALSE(MakeTempDirBeside(tmp.Join("missing/x")).ok());
}

TEST(PathTest, Helpers) {
  EXPECT_EQ(StripTrailingSlashes("a/b//"), "a/b");
  EXPECT_EQ(StripTrailingSlashes("/"), "/");
  EXPECT_EQ(Dirname("a/b"), "a");
  EXPECT_EQ(Dirname("a/b/"), "a");
  EXPECT_EQ(Dirname("b"), ".");
  EXPECT_EQ(Dirname("/b"), "/");
  EXPECT_EQ(Basename("a/b/"), "b");
  EXPECT_EQ(Basename("b"), "b");
  EXPECT_EQ(JoinPath("a", "b"), "a/b");
  EXPECT_EQ(JoinPath("a/", "b"), "a/b");
}

}  // namespace
}  // namespace mingpt
