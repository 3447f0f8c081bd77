// LocalCommunicator: the world of one process; collectives are copies or
// nothing and complete at once; Abort flushes stdio and exits with the code.
#include <gtest/gtest.h>

#include <cstdio>
#include <fstream>
#include <sstream>
#include <vector>

#include "common/scoped_temp_dir.h"
#include "dist/communicator.h"

namespace mingpt {
namespace {

TEST(LocalCommunicator, IsAWorldOfOne) {
  auto comm = MakeLocalCommunicator();
  EXPECT_EQ(comm->rank(), 0);
  EXPECT_EQ(comm->world(), 1);
  EXPECT_STREQ(comm->name(), "local");
  comm->Barrier();
}

TEST(LocalCommunicator, AllReduceAndBroadcastLeaveTheData) {
  auto comm = MakeLocalCommunicator();
  std::vector<float> f = {1.5f, -2.0f, 3.0f};
  std::vector<double> d = {1e300, -4.25};
  Work a = comm->AllReduce(f.data(), 3);
  Work b = comm->AllReduce(d.data(), 2);
  Work c = comm->Broadcast(f.data(), 3 * sizeof(float), 0);
  EXPECT_TRUE(a.completed() && b.completed() && c.completed());
  a.Wait();
  EXPECT_EQ(f, (std::vector<float>{1.5f, -2.0f, 3.0f}));
  EXPECT_EQ(d, (std::vector<double>{1e300, -4.25}));
}

TEST(LocalCommunicator, ReduceScatterAndAllGatherCopy) {
  auto comm = MakeLocalCommunicator();
  const std::vector<float> send = {1, 2, 3, 4};
  std::vector<float> recv(4, 0.0f);
  EXPECT_TRUE(comm->ReduceScatter(send.data(), recv.data(), 4).completed());
  EXPECT_EQ(recv, send);
  std::vector<float> gathered(4, 0.0f);
  EXPECT_TRUE(comm->AllGather(send.data(), gathered.data(), 4).completed());
  EXPECT_EQ(gathered, send);
  // In place: send is recv + rank * n.
  EXPECT_TRUE(comm->AllGather(gathered.data(), gathered.data(), 4).completed());
  EXPECT_EQ(gathered, send);
  // Nothing to move.
  comm->ReduceScatter(nullptr, nullptr, 0).Wait();
  comm->AllGather(nullptr, nullptr, 0).Wait();
}

TEST(LocalCommunicator, DefaultWorkIsComplete) {
  Work work;
  EXPECT_TRUE(work.completed());
  work.Wait();
}

TEST(LocalCommunicatorDeathTest, AbortFlushesAndExitsWithTheCode) {
  ScopedTempDir dir("dist_abort");
  const std::string path = dir.Join("out.txt");
  EXPECT_EXIT(
      {
        std::FILE* f = std::fopen(path.c_str(), "w");
        std::fputs("buffered line\n", f);  // no fclose: Abort must flush it
        MakeLocalCommunicator()->Abort(3);
      },
      ::testing::ExitedWithCode(3), "");
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  EXPECT_EQ(text.str(), "buffered line\n");
}

}  // namespace
}  // namespace mingpt
