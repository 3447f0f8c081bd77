// A rank's backend and communicators (train/accelerator.h), as far as a
// machine without a GPU can check them.
#include <gtest/gtest.h>

#include <memory>
#include <string>

#include "train/accelerator.h"

namespace mingpt {
namespace {

// On the CPU the device communicator is the host one: CPU runs communicate
// exactly as before the split.
TEST(RankDevice, CpuUsesTheHostCommunicatorForBoth) {
  std::unique_ptr<Communicator> host = MakeLocalCommunicator();
  StatusOr<RankDevice> d = MakeRankDevice("cpu", host.get(), 1);
  ASSERT_TRUE(d.ok()) << d.status().message();
  ASSERT_NE(d->backend, nullptr);
  EXPECT_EQ(d->host_backend, nullptr);
  EXPECT_EQ(d->device_comm, nullptr);
  const Communicators comms = d->comms(host.get());
  EXPECT_EQ(comms.host, host.get());
  EXPECT_EQ(comms.device, host.get());
}

// NCCL runs one rank per GPU: one more rank than this machine's devices is
// refused with one line naming both counts.
TEST(RankDevice, MoreRanksThanGpusRefused) {
  const int devices = CudaDevices();
  EXPECT_TRUE(CheckOneRankPerGpu(devices).ok());
  const Status s = CheckOneRankPerGpu(devices + 1);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("one rank per GPU"), std::string::npos) << s.message();
  EXPECT_NE(s.message().find(std::to_string(devices + 1) + " ranks"), std::string::npos)
      << s.message();
  EXPECT_NE(s.message().find(std::to_string(devices) + " CUDA device"), std::string::npos)
      << s.message();
  EXPECT_EQ(s.message().find('\n'), std::string::npos);
}

}  // namespace
}  // namespace mingpt
