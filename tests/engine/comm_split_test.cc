// Host and device collectives kept apart: the checking wrappers
// (memory_checks.h) catch each kind of mix-up, and every strategy trains at
// 2 ranks through them with no violation and the plain run's losses
// (comm_split_worker.cc says how), under the system's mpirun.
#include <gtest/gtest.h>

#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include "engine/memory_checks.h"
#include "engine/mpi_worker.h"

namespace mingpt {
namespace {

using test::CheckingCommunicator;

// The wrappers themselves, in a world of one: each rule holds and breaks.
TEST(CommSplitCheck, DeviceCommunicatorRefusesHostMemory) {
  test::DeviceMemory memory;
  test::RecordingBackend backend(MakeCpuBackend(1), &memory);
  std::unique_ptr<Communicator> local = MakeLocalCommunicator();
  test::CheckLog log;
  CheckingCommunicator device(local.get(), &memory, CheckingCommunicator::kDevice, &log);
  Buffer on_device(&backend, 64 * sizeof(float));
  device.AllReduce(on_device.f32(), 64).Wait();
  device.AllGather(on_device.f32() + 8, on_device.f32() + 8, 56).Wait();
  EXPECT_TRUE(log.violations().empty());
  std::vector<float> on_host(64);
  double norm = 0;
  device.AllReduce(on_host.data(), 64).Wait();
  device.AllReduce(&norm, 1).Wait();
  device.AllGather(on_device.f32(), on_device.f32(), 65).Wait();  // one float past the end
  Buffer pinned(&backend, 64 * sizeof(float), Buffer::kHost);       // MallocHost: host memory
  device.ReduceScatter(on_device.f32(), pinned.f32(), 64).Wait();
  EXPECT_EQ(log.violations().size(), 5u);  // the 65-float gather: send and recv
  EXPECT_EQ(log.calls(), 6);
}

TEST(CommSplitCheck, HostCommunicatorRefusesDeviceMemory) {
  test::DeviceMemory memory;
  test::RecordingBackend backend(MakeCpuBackend(1), &memory);
  std::unique_ptr<Communicator> local = MakeLocalCommunicator();
  test::CheckLog log;
  CheckingCommunicator host(local.get(), &memory, CheckingCommunicator::kHost, &log);
  std::vector<double> sums(4);
  Buffer pinned(&backend, 64 * sizeof(float), Buffer::kHost);
  host.AllReduce(sums.data(), 4).Wait();
  host.AllReduce(pinned.f32(), 64).Wait();
  EXPECT_TRUE(log.violations().empty());
  Buffer on_device(&backend, 64 * sizeof(float));
  host.AllReduce(on_device.f32() + 63, 1).Wait();  // the last float
  host.Broadcast(on_device.f32(), 4, 0).Wait();
  EXPECT_EQ(log.violations().size(), 2u);
  // Freed device memory is no longer device memory.
  const float* gone = on_device.f32();
  on_device.Reset();
  EXPECT_FALSE(memory.Overlaps(gone, 4));
}

TEST(CommSplit, EveryStrategyKeepsHostAndDeviceCollectivesApart) {
  const int world = 2;
  const std::string dir =
      ::testing::TempDir() + "mingpt_comm_split_" + std::to_string(getpid());
  std::filesystem::remove_all(dir);
  auto run = test::RunWorker(COMM_SPLIT_WORKER, world, dir);
  ASSERT_TRUE(run.ok()) << run.status().message();
  const std::string& out = run->out;
  std::printf("%s", out.c_str());
  EXPECT_EQ(run->status, 0) << out;
  EXPECT_EQ(out.find("FAIL"), std::string::npos);
  // One line per strategy, so a worker that skipped some cannot pass.
  size_t lines = 0;
  for (size_t at = out.find("no violation"); at != std::string::npos;
       at = out.find("no violation", at + 1)) {
    ++lines;
  }
  EXPECT_EQ(lines, 7u) << out;
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace mingpt
