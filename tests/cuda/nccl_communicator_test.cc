// The NCCL communicator in a world of one (bootstrapped over the local
// communicator): every collective's result, Work completion, in-place
// all-gather, and the error, not a crash, when there is no device. Runs of
// several ranks need several GPUs under mpirun and are not here.
#include "dist/nccl_communicator.h"

#include <gtest/gtest.h>

#include <chrono>
#include <cstdlib>
#include <thread>
#include <vector>

#include "cuda/cuda_test_util.h"

namespace mingpt::testing {
namespace {

TEST(NcclCommunicator, NoDeviceIsAnError) {
  if (CudaDeviceCount() > 0) GTEST_SKIP() << "a CUDA device is present: nothing to refuse";
  auto local = MakeLocalCommunicator();
  auto comm = MakeNcclCommunicator(local.get());
  ASSERT_FALSE(comm.ok());
  EXPECT_NE(comm.status().message().find("no CUDA device"), std::string::npos)
      << comm.status().message();
}

class NcclWorldOfOneTest : public CudaVsCpuTest {
 protected:
  void SetUp() override {
    CudaVsCpuTest::SetUp();
    if (IsSkipped()) return;
    local_ = MakeLocalCommunicator();
    NcclOptions options;
    options.device = 0;
    options.compute_stream = CudaStreamOf(gpu_.get());
    auto comm = MakeNcclCommunicator(local_.get(), options);
    ASSERT_TRUE(comm.ok()) << comm.status().message();
    comm_ = std::move(*comm);
  }
  void TearDown() override {
    comm_.reset();
    local_.reset();
  }
  std::unique_ptr<Communicator> local_, comm_;
};

TEST_F(NcclWorldOfOneTest, Collectives) {
  EXPECT_EQ(comm_->rank(), 0);
  EXPECT_EQ(comm_->world(), 1);
  EXPECT_STREQ(comm_->name(), "nccl");
  const int n = 1000;
  FVec x = Rand(n);
  // AllReduce right after the data is written on the compute stream: the
  // collective must wait for it.
  Buffer a(gpu_.get(), n * 4);
  gpu_->CopyToDevice(a.as<void>(), x.data(), n * 4);
  gpu_->Scale(a.f32(), n, 2.0f);
  Work w = comm_->AllReduce(a.f32(), n);
  w.Wait();
  EXPECT_TRUE(w.completed());
  FVec want = x;
  for (float& v : want) v *= 2.0f;
  EXPECT_EQ(Down(a, n), want);

  std::vector<double> xd(17, 1.25);
  Buffer d(gpu_.get(), 17 * 8);
  gpu_->CopyToDevice(d.as<void>(), xd.data(), 17 * 8);
  comm_->AllReduce(d.as<double>(), 17).Wait();
  EXPECT_EQ(Down<double>(d, 17), xd);

  Buffer send = Up(x), recv(gpu_.get(), n * 4);
  comm_->ReduceScatter(send.f32(), recv.f32(), n).Wait();
  EXPECT_EQ(Down(recv, n), x);
  gpu_->Memset0(recv.as<void>(), n * 4);
  comm_->AllGather(send.f32(), recv.f32(), n).Wait();
  EXPECT_EQ(Down(recv, n), x);
  comm_->AllGather(recv.f32(), recv.f32(), n).Wait();  // in place: send = recv + rank*n
  EXPECT_EQ(Down(recv, n), x);
  comm_->Broadcast(recv.as<void>(), n * 4, 0).Wait();
  EXPECT_EQ(Down(recv, n), x);
  comm_->Barrier();
  EXPECT_TRUE(comm_->AllReduce(a.f32(), 0).completed());  // empty: complete at once
}

TEST_F(NcclWorldOfOneTest, ManyWorksInFlight) {
  const int n = 4096, k = 64;
  FVec x = Rand(n);
  Buffer a = Up(x);
  std::vector<Work> works;
  for (int i = 0; i < k; ++i) works.push_back(comm_->AllReduce(a.f32(), n));
  for (Work& w : works) w.Wait();
  EXPECT_EQ(Down(a, n), x);
}

#ifdef MINGPT_CUDA_EMULATED_PLUGIN
// A failure NCCL meets inside a running collective (a peer or the network
// gone) is reported only asynchronously, while the collective spins: the
// communicator's watchdog ends the rank with one line, not a hang. On the
// emulator only, which reports MINGPT_NCCL_EMULATOR_ASYNC_ERROR's result as
// such an error (6: ncclRemoteError).
TEST_F(NcclWorldOfOneTest, AnAsynchronousErrorEndsTheRankWithOneLine) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");  // the child runs SetUp: a watchdog of its own
  EXPECT_EXIT(
      {
        ::setenv("MINGPT_NCCL_EMULATOR_ASYNC_ERROR", "6", 1);
        comm_->AllReduce(Up(Rand(8)).f32(), 8).Wait();
        std::this_thread::sleep_for(std::chrono::seconds(10));  // the watchdog ends it first
        std::exit(0);
      },
      ::testing::ExitedWithCode(1), "^mingpt: error: rank 0: NCCL failed inside a collective: ");
  ::unsetenv("MINGPT_NCCL_EMULATOR_ASYNC_ERROR");
  // Without the error the watchdog stays quiet while collectives run.
  Buffer a = Up(Rand(8));
  std::this_thread::sleep_for(std::chrono::milliseconds(250));
  comm_->AllReduce(a.f32(), 8).Wait();
}
#endif

}  // namespace
}  // namespace mingpt::testing
