// AsyncFile: direct asynchronous transfers round-trip, overlap (several in
// flight), split into pieces (more pieces than the ring holds included), and
// a file that cannot get its space, or a disk that ends, is one clear error,
// never a crash.
#include "io/async_file.h"

#include <gtest/gtest.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <vector>

#include "common/scoped_temp_dir.h"

namespace mingpt {
namespace {

void Fill(float* p, size_t n, float seed) {
  for (size_t i = 0; i < n; ++i) p[i] = seed + static_cast<float>(i) * 0.5f;
}

TEST(AsyncFile, WritesAndReadsBackManyTransfersInFlight) {
  ScopedTempDir dir;
  constexpr size_t kBlock = 1 << 20, kCount = 8;
  auto file = AsyncFile::Create(dir.Join("state.bin"), kBlock * kCount);
  ASSERT_TRUE(file.ok()) << file.status().message();
  AsyncFile& f = **file;
  std::vector<AlignedBlock> out, in;
  std::vector<AsyncFile::Ticket> tickets;
  for (size_t i = 0; i < kCount; ++i) {
    out.emplace_back(kBlock);
    Fill(out.back().f32(), kBlock / 4, static_cast<float>(i));
    tickets.push_back(f.Write(out.back().data(), kBlock, static_cast<off_t>(i * kBlock)));
  }
  for (size_t i = kCount; i-- > 0;) ASSERT_TRUE(f.Wait(tickets[i]).ok());
  for (size_t i = 0; i < kCount; ++i) {
    in.emplace_back(kBlock);
    tickets[i] = f.Read(in.back().data(), kBlock, static_cast<off_t>(i * kBlock));
  }
  ASSERT_TRUE(f.WaitAll().ok());
  for (size_t i = 0; i < kCount; ++i) {
    ASSERT_EQ(std::memcmp(in[i].data(), out[i].data(), kBlock), 0) << "block " << i;
  }
  EXPECT_EQ(f.bytes_written(), kBlock * kCount);
  EXPECT_EQ(f.bytes_read(), kBlock * kCount);
  std::printf("AsyncFile mode: %s\n", f.mode() == AsyncFile::Mode::kUring        ? "io_uring"
                                      : f.mode() == AsyncFile::Mode::kDirectSync ? "direct, sync"
                                                                                 : "buffered, sync");
}

TEST(AsyncFile, SplitsTransfersLargerThanOnePiece) {
  ScopedTempDir dir;
  const size_t bytes = (150u << 20) + kDirectAlign;  // three pieces of at most 64 MiB
  auto file = AsyncFile::Create(dir.Join("big.bin"), bytes);
  ASSERT_TRUE(file.ok()) << file.status().message();
  AlignedBlock out(bytes), in(bytes);
  Fill(out.f32(), bytes / 4, 3.0f);
  ASSERT_TRUE((*file)->Wait((*file)->Write(out.data(), bytes, 0)).ok());
  ASSERT_TRUE((*file)->Wait((*file)->Read(in.data(), bytes, 0)).ok());
  EXPECT_EQ(std::memcmp(in.data(), out.data(), bytes), 0);
}

// A transfer of more pieces than the ring holds (the offload's 64 MiB
// pieces and depth 64: any transfer over 4 GiB), scaled down: 4 KiB pieces,
// a ring of 4, transfers of 16 and more pieces, several queued at once. In a
// child under an alarm, so that a transfer that never completes fails the
// test instead of hanging it.
TEST(AsyncFile, TransfersOfMorePiecesThanTheRingHoldsComplete) {
  ScopedTempDir dir;
  std::fflush(nullptr);
  const pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    ::alarm(10);
    constexpr size_t kBytes = 64 << 10, kCount = 3;
    auto file = AsyncFile::Create(dir.Join("ring.bin"), kBytes * kCount, {4, kDirectAlign});
    if (!file.ok()) _exit(2);
    AsyncFile& f = **file;
    AlignedBlock out(kBytes * kCount), in(kBytes * kCount);
    Fill(out.f32(), kBytes * kCount / 4, 5.0f);
    std::vector<AsyncFile::Ticket> tickets;
    for (size_t i = 0; i < kCount; ++i) {
      tickets.push_back(f.Write(out.f32() + i * kBytes / 4, kBytes, static_cast<off_t>(i * kBytes)));
    }
    for (AsyncFile::Ticket t : tickets) {
      if (!f.Wait(t).ok()) _exit(3);
    }
    if (!f.Wait(f.Read(in.data(), kBytes * kCount, 0)).ok()) _exit(4);
    if (std::memcmp(in.data(), out.data(), kBytes * kCount) != 0) _exit(5);
    if (f.bytes_written() != kBytes * kCount || f.bytes_read() != kBytes * kCount) _exit(6);
    _exit(0);
  }
  int status = 0;
  ASSERT_EQ(::waitpid(pid, &status, 0), pid);
  ASSERT_FALSE(WIFSIGNALED(status) && WTERMSIG(status) == SIGALRM)
      << "a transfer of more pieces than the ring holds never completed";
  ASSERT_TRUE(WIFEXITED(status)) << "the child died of signal " << WTERMSIG(status);
  EXPECT_EQ(WEXITSTATUS(status), 0);
}

TEST(AsyncFile, BadLimitsAreRefused) {
  ScopedTempDir dir;
  EXPECT_FALSE(AsyncFile::Create(dir.Join("a.bin"), 0, {0, kDirectAlign}).ok());
  EXPECT_FALSE(AsyncFile::Create(dir.Join("a.bin"), 0, {4, kDirectAlign + 1}).ok());
  EXPECT_FALSE(AsyncFile::Create(dir.Join("a.bin"), 0, {4, 0}).ok());
}

TEST(AsyncFile, MissingDirectoryIsOneLine) {
  auto file = AsyncFile::Create("/nonexistent-mingpt-dir/state.bin", 4096);
  ASSERT_FALSE(file.ok());
  EXPECT_NE(file.status().message().find("cannot create /nonexistent-mingpt-dir/state.bin"),
            std::string::npos)
      << file.status().message();
}

// A child process with a file-size limit stands in for a full disk: the
// space cannot be reserved (and the file is removed), and a transfer past
// the end the disk allows fails with the file named.
TEST(AsyncFile, ADiskWithoutRoomIsAnErrorNotACrash) {
  ScopedTempDir dir;
  const pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    ::signal(SIGXFSZ, SIG_IGN);  // as mingpt does: EFBIG instead of a signal
    const rlimit limit{1 << 20, 1 << 20};
    ::setrlimit(RLIMIT_FSIZE, &limit);
    auto big = AsyncFile::Create(dir.Join("big.bin"), 8 << 20);
    if (big.ok() || big.status().message().find("cannot reserve") == std::string::npos) _exit(2);
    if (::access(dir.Join("big.bin").c_str(), F_OK) == 0) _exit(3);
    auto small = AsyncFile::Create(dir.Join("small.bin"), 0);
    if (!small.ok()) _exit(4);
    AlignedBlock block(2 << 20);
    Status s = (*small)->Wait((*small)->Write(block.data(), 2 << 20, 0));
    if (s.ok() || s.message().find("small.bin") == std::string::npos) _exit(5);
    _exit(0);
  }
  int status = 0;
  ASSERT_EQ(::waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status)) << "the child died of signal " << WTERMSIG(status);
  EXPECT_EQ(WEXITSTATUS(status), 0);
}

}  // namespace
}  // namespace mingpt
