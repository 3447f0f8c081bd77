// The CPU emulator of CUDA (backend/cuda/emulation/emulator.h) itself: that
// barriers and shuffles have CUDA's results, and that the mistakes it is
// there to catch (a missing barrier, a shuffle or barrier in divergent code,
// a bad launch, a copy outside an allocation, a wrong cuBLASLt layout) show
// as errors rather than as plausible numbers.
#include <cublasLt.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <string>
#include <vector>

#include "backend/cuda/device.cuh"

namespace {

constexpr unsigned kFull = 0xFFFFFFFFu;

// out[t] = in[t] staged through shared memory and read back by neighbour
// t + 1, with or without the barrier between.
__global__ void RotateKernel(float* out, const float* in, bool barrier) {
  MINGPT_DYNAMIC_SHARED(float, smem);
  const int t = threadIdx.x, n = blockDim.x;
  smem[t] = in[blockIdx.x * n + t];
  if (barrier) __syncthreads();
  out[blockIdx.x * n + t] = smem[(t + 1) % n];
}

__global__ void WarpKernel(float* sums, float* broadcast, int* lanes) {
  const int t = threadIdx.x;
  float v = static_cast<float>(t);
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(kFull, v, o);
  sums[t] = v;
  broadcast[t] = __shfl_sync(kFull, static_cast<float>(t * t), 5);  // lane 5 of each warp
  lanes[t] = __shfl_sync(kFull, t, (t + 1) % 32);
}

__global__ void DivergentShuffleKernel(float* out) {
  float v = 1.0f;
  if (threadIdx.x % 2 == 0) v = __shfl_xor_sync(kFull, v, 1);
  v = __shfl_xor_sync(kFull, v, 2);
  out[threadIdx.x] = v;
}

__global__ void DivergentBarrierKernel(float* out) {
  if (threadIdx.x < 16) {
    __syncthreads();
  } else {
    __syncthreads();
  }
  out[threadIdx.x] = 1.0f;
}

// Half a warp at a barrier, the other half at a shuffle that needs them.
__global__ void DeadlockKernel(float* out) {
  float v = 1.0f;
  if (threadIdx.x % 32 < 16) {
    __syncthreads();
  } else {
    v = __shfl_xor_sync(kFull, v, 1);
  }
  out[threadIdx.x] = v;
}

__global__ void ShuffleAfterExitKernel(float* out) {
  if (threadIdx.x == 3) return;
  out[threadIdx.x] = __shfl_xor_sync(kFull, 1.0f, 1);
}

__global__ void EarlyExitBarrierKernel(int* out) {
  __shared__ int seen[64];
  if (threadIdx.x >= 40) return;  // exited threads count as arrived
  seen[threadIdx.x] = static_cast<int>(threadIdx.x) + 1;
  __syncthreads();
  out[threadIdx.x] = seen[39 - threadIdx.x];
}

__global__ void BigSharedKernel(float* out) {
  MINGPT_DYNAMIC_SHARED(float, smem);
  smem[threadIdx.x] = 1.0f;
  out[threadIdx.x] = smem[threadIdx.x];
}

__global__ void TrapKernel() { __trap(); }

// Thread t copies a float4 from in + 4t + shift to out + 4t + shift.
__global__ void VectorCopyKernel(float* out, const float* in, int shift) {
  const int at = 4 * threadIdx.x + shift;
  mingpt::cuda::StoreVector(out + at, mingpt::cuda::LoadVector<float4>(in + at));
}

template <typename T>
T* DeviceCopy(const std::vector<T>& host) {
  void* p = nullptr;
  EXPECT_EQ(cudaMalloc(&p, host.size() * sizeof(T)), cudaSuccess);
  EXPECT_EQ(
      cudaMemcpyAsync(p, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice, nullptr),
      cudaSuccess);
  return static_cast<T*>(p);
}

template <typename T>
std::vector<T> HostCopy(const T* device, size_t n) {
  std::vector<T> host(n);
  EXPECT_EQ(cudaMemcpyAsync(host.data(), device, n * sizeof(T), cudaMemcpyDeviceToHost, nullptr),
            cudaSuccess);
  return host;
}

std::vector<float> Rotate(bool barrier) {
  const int blocks = 3, threads = 64;
  std::vector<float> in(blocks * threads);
  for (size_t i = 0; i < in.size(); ++i) in[i] = static_cast<float>(i);
  float* d_in = DeviceCopy(in);
  float* d_out = DeviceCopy(std::vector<float>(in.size(), 0.0f));
  MINGPT_LAUNCH(RotateKernel, blocks, threads, threads * sizeof(float), nullptr, d_out, d_in,
                barrier);
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);
  std::vector<float> out = HostCopy(d_out, in.size());
  cudaFree(d_in);
  cudaFree(d_out);
  return out;
}

TEST(CudaEmulator, BarrierPublishesSharedMemory) {
  const std::vector<float> out = Rotate(true);
  for (int b = 0; b < 3; ++b) {
    for (int t = 0; t < 64; ++t) EXPECT_EQ(out[b * 64 + t], b * 64 + (t + 1) % 64);
  }
}

// Without the barrier, threads run (last first) until they block, so a
// thread reads its neighbour's slot before the neighbour wrote it: NaN.
TEST(CudaEmulator, MissingBarrierReadsUnwrittenSharedMemory) {
  const std::vector<float> out = Rotate(false);
  int unwritten = 0;
  for (float v : out) unwritten += std::isnan(v);
  EXPECT_GT(unwritten, 0);
}

TEST(CudaEmulator, WarpShufflesHaveCudaResults) {
  const int threads = 64;  // two warps
  float* sums = DeviceCopy(std::vector<float>(threads));
  float* bcast = DeviceCopy(std::vector<float>(threads));
  int* lanes = DeviceCopy(std::vector<int>(threads));
  MINGPT_LAUNCH(WarpKernel, 1, threads, 0, nullptr, sums, bcast, lanes);
  ASSERT_EQ(cudaGetLastError(), cudaSuccess);
  const std::vector<float> s = HostCopy(sums, threads), b = HostCopy(bcast, threads);
  const std::vector<int> l = HostCopy(lanes, threads);
  for (int t = 0; t < threads; ++t) {
    const int w = t / 32;
    EXPECT_EQ(s[t], 32 * 31 / 2 + 32 * 32 * w) << t;  // sum of the warp's thread indices
    EXPECT_EQ(b[t], (32 * w + 5) * (32 * w + 5)) << t;
    EXPECT_EQ(l[t], 32 * w + (t + 1) % 32) << t;
  }
}

TEST(CudaEmulator, ExitedThreadsCountAsArrivedAtBarriers) {
  int* out = DeviceCopy(std::vector<int>(64, 0));
  MINGPT_LAUNCH(EarlyExitBarrierKernel, 1, 64, 0, nullptr, out);
  const std::vector<int> o = HostCopy(out, 64);
  for (int t = 0; t < 40; ++t) EXPECT_EQ(o[t], 40 - t);
  for (int t = 40; t < 64; ++t) EXPECT_EQ(o[t], 0);
}

TEST(CudaEmulatorDeathTest, DivergenceIsFatalAndNamed) {
  float* out = DeviceCopy(std::vector<float>(64));
  EXPECT_DEATH(MINGPT_LAUNCH(DivergentShuffleKernel, 1, 32, 0, nullptr, out),
               "DivergentShuffleKernel.*different shuffles");
  EXPECT_DEATH(MINGPT_LAUNCH(DivergentBarrierKernel, 1, 64, 0, nullptr, out),
               "DivergentBarrierKernel.*barrier inside divergent code");
  EXPECT_DEATH(MINGPT_LAUNCH(DeadlockKernel, 1, 64, 0, nullptr, out), "DeadlockKernel.*deadlock");
  EXPECT_DEATH(MINGPT_LAUNCH(ShuffleAfterExitKernel, 1, 32, 0, nullptr, out),
               "ShuffleAfterExitKernel.*(31 live lanes|exited while)");
  EXPECT_DEATH(MINGPT_LAUNCH(TrapKernel, 2, 32, 0, nullptr), "TrapKernel.*__trap");
}

// A GPU faults on a vector access not aligned to its size; the emulator's
// CPU would not, so LoadVector and StoreVector check.
TEST(CudaEmulatorDeathTest, MisalignedVectorAccessIsFatalAndNamed) {
  std::vector<float> host(72);
  for (size_t i = 0; i < host.size(); ++i) host[i] = static_cast<float>(i);
  const float* in = DeviceCopy(host);
  float* out = DeviceCopy(std::vector<float>(72));
  MINGPT_LAUNCH(VectorCopyKernel, 1, 16, 0, nullptr, out, in, 4);
  const std::vector<float> copied = HostCopy(out, 72);
  for (int i = 4; i < 68; ++i) EXPECT_EQ(copied[i], host[i]) << i;
  EXPECT_DEATH(MINGPT_LAUNCH(VectorCopyKernel, 1, 16, 0, nullptr, out, in, 1),
               "VectorCopyKernel.*misaligned vector load");
  EXPECT_DEATH(MINGPT_LAUNCH(VectorCopyKernel, 1, 16, 0, nullptr, out + 2, in, 4),
               "VectorCopyKernel.*misaligned vector store");
}

TEST(CudaEmulator, LaunchConfigurationErrorsAsOnAGpu) {
  float* out = DeviceCopy(std::vector<float>(1024));
  MINGPT_LAUNCH(BigSharedKernel, 1, 2048, 0, nullptr, out);
  EXPECT_EQ(cudaGetLastError(), cudaErrorInvalidConfiguration);
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);  // read and cleared
  MINGPT_LAUNCH(BigSharedKernel, dim3(1, 70000), 32, 0, nullptr, out);
  EXPECT_EQ(cudaGetLastError(), cudaErrorInvalidConfiguration);
  // Above 48 KiB of dynamic shared memory only once the kernel's limit is raised.
  const size_t big = 64 << 10;
  MINGPT_LAUNCH(BigSharedKernel, 1, 32, big, nullptr, out);
  EXPECT_EQ(cudaGetLastError(), cudaErrorInvalidValue);
  ASSERT_EQ(
      cudaFuncSetAttribute(reinterpret_cast<const void*>(BigSharedKernel),
                           cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(big)),
      cudaSuccess);
  MINGPT_LAUNCH(BigSharedKernel, 1, 32, big, nullptr, out);
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);
  EXPECT_EQ(HostCopy(out, 32), std::vector<float>(32, 1.0f));
  EXPECT_EQ(cudaFuncSetAttribute(reinterpret_cast<const void*>(BigSharedKernel),
                                 cudaFuncAttributeMaxDynamicSharedMemorySize, 300 << 10),
            cudaErrorInvalidValue);  // above any GPU's
  cudaGetLastError();
  // A destroyed stream.
  cudaStream_t s = nullptr;
  ASSERT_EQ(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), cudaSuccess);
  ASSERT_EQ(cudaStreamDestroy(s), cudaSuccess);
  MINGPT_LAUNCH(BigSharedKernel, 1, 32, 0, s, out);
  EXPECT_EQ(cudaGetLastError(), cudaErrorInvalidResourceHandle);
  cudaFree(out);
}

TEST(CudaEmulatorDeathTest, CopiesOutsideAllocationsAreFatal) {
  float* d = DeviceCopy(std::vector<float>(16));
  std::vector<float> host(32);
  EXPECT_DEATH(cudaMemcpyAsync(host.data(), d, 32 * sizeof(float), cudaMemcpyDeviceToHost, nullptr),
               "past the end of its device allocation");
  EXPECT_DEATH(cudaMemcpyAsync(d, host.data(), 4, cudaMemcpyDeviceToHost, nullptr),
               "not inside any device allocation");
  EXPECT_DEATH(cudaMemsetAsync(host.data(), 0, 4, nullptr), "not inside any device allocation");
  EXPECT_DEATH(cudaMemcpyAsync(d, d + 2, 8 * sizeof(float), cudaMemcpyDeviceToDevice, nullptr),
               "overlapping");
  EXPECT_EQ(cudaFree(host.data()), cudaErrorInvalidDevicePointer);
  cudaGetLastError();
  cudaFree(d);
}

__global__ void FillKernel(float* x, float v) { x[threadIdx.x] = v; }

// Work on a stream runs when something waits for it: a copy on another
// stream that does not wait for an event after the work reads the old values
// (as it may on a GPU); one that waits reads the new ones. Under the
// compute_first schedule a stream that runs kernels runs them at once: the
// copy that does not wait reads the new values, and a kernel that does not
// wait for a copy before it overwrites what the copy was to read.
TEST(CudaEmulator, StreamsOrderWorkOnlyThroughEvents) {
  const char* schedule = std::getenv("MINGPT_CUDA_EMULATOR_SCHEDULE");
  const bool compute_first = schedule != nullptr && std::string(schedule) == "compute_first";
  float* d = DeviceCopy(std::vector<float>(32, 0.0f));
  void* pinned = nullptr;
  ASSERT_EQ(cudaMallocHost(&pinned, 32 * sizeof(float)), cudaSuccess);
  float* h = static_cast<float*>(pinned);
  cudaStream_t compute, copy;
  ASSERT_EQ(cudaStreamCreateWithFlags(&compute, cudaStreamNonBlocking), cudaSuccess);
  ASSERT_EQ(cudaStreamCreateWithFlags(&copy, cudaStreamNonBlocking), cudaSuccess);
  cudaEvent_t filled;
  ASSERT_EQ(cudaEventCreateWithFlags(&filled, cudaEventDisableTiming), cudaSuccess);

  MINGPT_LAUNCH(FillKernel, 1, 32, 0, compute, d, 7.0f);
  cudaMemcpyAsync(h, d, 32 * sizeof(float), cudaMemcpyDeviceToHost, copy);  // no wait
  cudaStreamSynchronize(copy);
  EXPECT_EQ(h[5], compute_first ? 7.0f : 0.0f);  // lazily, the fill has not run
  cudaStreamSynchronize(compute);

  MINGPT_LAUNCH(FillKernel, 1, 32, 0, compute, d, 9.0f);
  cudaEventRecord(filled, compute);
  cudaStreamWaitEvent(copy, filled, 0);
  cudaMemcpyAsync(h, d, 32 * sizeof(float), cudaMemcpyDeviceToHost, copy);
  cudaStreamSynchronize(copy);
  EXPECT_EQ(h[5], 9.0f);

  // A copy, then a fill on the compute stream that does not wait for it.
  cudaMemcpyAsync(h, d, 32 * sizeof(float), cudaMemcpyDeviceToHost, copy);
  MINGPT_LAUNCH(FillKernel, 1, 32, 0, compute, d, 13.0f);
  cudaStreamSynchronize(copy);
  EXPECT_EQ(h[5], compute_first ? 13.0f : 9.0f);  // compute first: overwritten before read
  cudaStreamSynchronize(compute);

  // Into pageable memory too a copy is done only once waited for (CUDA
  // says it "might be synchronous"), after its stream's earlier work.
  MINGPT_LAUNCH(FillKernel, 1, 32, 0, compute, d, 11.0f);
  std::vector<float> pageable(32, 0.0f);
  cudaMemcpyAsync(pageable.data(), d, 32 * sizeof(float), cudaMemcpyDeviceToHost, compute);
  if (!compute_first) {
    EXPECT_EQ(pageable[5], 0.0f);
  }
  cudaStreamSynchronize(compute);
  EXPECT_EQ(pageable[5], 11.0f);
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);
  cudaEventDestroy(filled);
  cudaStreamDestroy(compute);
  cudaStreamDestroy(copy);
  cudaFreeHost(pinned);
  cudaFree(d);
}

// The emulated cuBLASLt: a correct transposed product, and a leading
// dimension below the rows refused as cuBLASLt refuses it.
TEST(CudaEmulator, CublasLtProductsAndLayoutChecks) {
  // D[2,3] = A^T B with A stored [3,2] (k=3, m=2), B stored [3,3], column-major.
  const std::vector<float> a = {1, 2, 3, 4, 5, 6}, b = {1, 0, 0, 0, 1, 0, 1, 1, 1};
  float* da = DeviceCopy(a);
  float* db = DeviceCopy(b);
  float* dd = DeviceCopy(std::vector<float>(6, NAN));  // beta 0: D's old values unread
  cublasLtHandle_t h;
  ASSERT_EQ(cublasLtCreate(&h), CUBLAS_STATUS_SUCCESS);
  cublasLtMatmulDesc_t desc;
  ASSERT_EQ(cublasLtMatmulDescCreate(&desc, CUBLAS_COMPUTE_32F, CUDA_R_32F), CUBLAS_STATUS_SUCCESS);
  const int32_t trans = CUBLAS_OP_T;
  ASSERT_EQ(
      cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSA, &trans, sizeof(trans)),
      CUBLAS_STATUS_SUCCESS);
  cublasLtMatrixLayout_t la, lb, ld, bad;
  cublasLtMatrixLayoutCreate(&la, CUDA_R_32F, 3, 2, 3);
  cublasLtMatrixLayoutCreate(&lb, CUDA_R_32F, 3, 3, 3);
  cublasLtMatrixLayoutCreate(&ld, CUDA_R_32F, 2, 3, 2);
  cublasLtMatrixLayoutCreate(&bad, CUDA_R_32F, 2, 3, 1);  // ld < rows
  cublasLtMatmulPreference_t pref;
  cublasLtMatmulPreferenceCreate(&pref);
  cublasLtMatmulHeuristicResult_t result;
  int found = 0;
  ASSERT_EQ(cublasLtMatmulAlgoGetHeuristic(h, desc, la, lb, ld, ld, pref, 1, &result, &found),
            CUBLAS_STATUS_SUCCESS);
  EXPECT_EQ(found, 1);
  EXPECT_EQ(cublasLtMatmulAlgoGetHeuristic(h, desc, la, lb, bad, bad, pref, 1, &result, &found),
            CUBLAS_STATUS_INVALID_VALUE);
  EXPECT_EQ(cublasLtMatmulAlgoGetHeuristic(h, desc, lb, lb, ld, ld, pref, 1, &result, &found),
            CUBLAS_STATUS_INVALID_VALUE);  // op(A) 3x3 does not make D 2x3
  const float alpha = 1, beta = 0;
  ASSERT_EQ(cublasLtMatmul(h, desc, &alpha, da, la, db, lb, &beta, dd, ld, dd, ld, &result.algo,
                           nullptr, 0, nullptr),
            CUBLAS_STATUS_SUCCESS);
  // Columns of D: A^T b_j with b_0 = e0, b_1 = e1, b_2 = (1,1,1).
  EXPECT_EQ(HostCopy(dd, 6), (std::vector<float>{1, 4, 2, 5, 6, 15}));
  for (auto l : {la, lb, ld, bad}) cublasLtMatrixLayoutDestroy(l);
  cublasLtMatmulPreferenceDestroy(pref);
  cublasLtMatmulDescDestroy(desc);
  cublasLtDestroy(h);
  for (float* p : {da, db, dd}) cudaFree(p);
}

}  // namespace
