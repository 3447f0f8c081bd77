// Shared by the CUDA tests: the skip when there is no device, a fixture with
// a CUDA backend and the CPU reference backend, and host <-> device helpers.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "backend/backend_test_util.h"
#include "backend/cuda/cuda_backend.h"

namespace mingpt::testing {

// Skips the calling test, visibly, when this machine has no CUDA device.
#define MINGPT_SKIP_WITHOUT_CUDA()                                                     \
  do {                                                                                 \
    if (::mingpt::CudaDeviceCount() == 0) {                                            \
      GTEST_SKIP() << "no CUDA device: CudaDeviceCount() == 0 (no driver or no GPU); " \
                      "the CUDA tests need one";                                       \
    }                                                                                  \
  } while (0)

using FVec = std::vector<float>;
using IVec = std::vector<int32_t>;

// |got - want| <= rtol * (|want| + max|want|): relative to the element, with
// the tensor's largest magnitude as the floor. Two fp32 results that sum the
// same terms in another order differ by rounding relative to the terms, not
// to a result that happens to be small, hence the floor.
inline void ExpectClose(const FVec& got, const FVec& want, double rtol, const std::string& what) {
  double scale = 0;
  for (float w : want) scale = std::max(scale, std::abs(static_cast<double>(w)));
  ExpectNear(got, ToDouble(want), rtol, rtol * std::max(scale, 1e-30), what);
}

class CudaVsCpuTest : public ::testing::Test {
 protected:
  void SetUp() override {
    MINGPT_SKIP_WITHOUT_CUDA();
    gpu_ = MakeCudaBackend(0);
    cpu_ = MakeCpuBackend(0);
  }

  FVec Rand(size_t n, double lo = -1, double hi = 1) {
    return ToFloat(RandomVec(rng_, n, lo, hi));
  }
  IVec RandInts(size_t n, int32_t upper) { return RandomInts(rng_, n, upper); }

  template <typename T>
  Buffer Up(const std::vector<T>& v) {
    Buffer b(gpu_.get(), v.size() * sizeof(T));
    gpu_->CopyToDevice(b.as<void>(), v.data(), v.size() * sizeof(T));
    return b;
  }
  template <typename T = float>
  std::vector<T> Down(const Buffer& b, size_t n) {
    std::vector<T> v(n);
    gpu_->CopyToHost(v.data(), b.as<void>(), n * sizeof(T));
    return v;
  }

  std::unique_ptr<Backend> gpu_, cpu_;
  std::mt19937_64 rng_{1234};
};

}  // namespace mingpt::testing
