// The mma.sync attention (backend/cuda/attention_mma.cu), which the CUDA
// backend runs under bf16 / fp16 matrix precision when the environment has
// MINGPT_CUDA_ATTENTION=mma, against the CPU backend's fp32 attention:
// forward and backward, bf16 and fp16, with and without dropout, T not a
// multiple of the 64-row blocks or of the 32 / 64-row tiles, head sizes 32,
// 64 and 128, rows not 16-byte aligned, the same bits twice, and which
// kernels the variable selects.
//
// Tolerances: attention_test_util.h's LowPrecisionAttentionTest, whose
// bounds hold for these kernels as for the WMMA ones: they round the same
// two intermediates, P mult and dS, once each to the operand type (P as
// exp(S - m) against the running maximum m, the normalisation 1/l and the
// rescaling exp(m_old - m_new) applied in fp32 afterwards). A wrong mask
// element, scale, rescaling, quad reduction or fragment position moves
// elements by far more than those bounds.
#include <cuda_runtime_api.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "cuda/attention_test_util.h"
#include "cuda/cuda_test_util.h"

namespace mingpt::testing {
namespace {

// The tensor-core tests' fixture, every run under MINGPT_CUDA_ATTENTION=mma
// unless a test names another mode.
class CudaMmaAttentionTest : public LowPrecisionAttentionTest {
 protected:
  Outputs RunMma(const AttentionCase& c, const Inputs& in, const DropoutSpec& dropout,
                 MatmulPrecision precision, int skew = 0) {
    return RunGpu(c, in, dropout, precision, "mma", skew);
  }
};

// Head sizes 32, 64 and 128; T = 37 and 70 (ragged in the 64-row blocks and
// tiles), 150 (three blocks; at head size 128 the 32-row tiles, the last
// ragged), 1; B and NH above 1.
const AttentionCase kMmaCases[] = {{2, 37, 128, 2}, {1, 150, 128, 1}, {2, 70, 64, 2},
                                   {1, 1, 64, 1},   {1, 100, 256, 2}, {1, 129, 128, 4}};

TEST_F(CudaMmaAttentionTest, MatchesCpuWithoutDropout) {
  for (MatmulPrecision p : {MatmulPrecision::kBf16, MatmulPrecision::kFp16}) {
    for (const AttentionCase& c : kMmaCases) Check(c, DropoutSpec{}, p, "mma");
  }
}

TEST_F(CudaMmaAttentionTest, MatchesCpuWithDropout) {
  for (MatmulPrecision p : {MatmulPrecision::kBf16, MatmulPrecision::kFp16}) {
    for (const AttentionCase& c : kMmaCases) {
      Check(c, FixedDropout(0.2f, 99, 3, 4, 17), p, "mma");
    }
  }
}

// Tiles are staged four floats at a time from 16-byte aligned rows, one at
// a time otherwise (and the fragments of q and dout one at a time): the
// same values, so the same bits.
TEST_F(CudaMmaAttentionTest, UnalignedRowsGiveTheSameBits) {
  const DropoutSpec drop = FixedDropout(0.1f, 5, 6, 7, 8);
  for (const AttentionCase& c : {AttentionCase{2, 70, 128, 2}, AttentionCase{1, 45, 128, 1}}) {
    const Inputs in = MakeInputs(c);
    for (MatmulPrecision p : {MatmulPrecision::kBf16, MatmulPrecision::kFp16}) {
      const Outputs aligned = RunMma(c, in, drop, p), skewed = RunMma(c, in, drop, p, 1);
      EXPECT_TRUE(SameBits(aligned, skewed)) << "C=" << c.C << " NH=" << c.NH;
    }
  }
}

// No atomics: the same bits twice.
TEST_F(CudaMmaAttentionTest, Deterministic) {
  const DropoutSpec drop = FixedDropout(0.1f, 5, 6, 7, 8);
  for (const AttentionCase& c : {AttentionCase{2, 70, 128, 2}, AttentionCase{1, 100, 128, 1}}) {
    const Inputs in = MakeInputs(c);
    for (MatmulPrecision p : {MatmulPrecision::kBf16, MatmulPrecision::kFp16}) {
      EXPECT_TRUE(SameBits(RunMma(c, in, drop, p), RunMma(c, in, drop, p)))
          << "C=" << c.C << " NH=" << c.NH << ": two runs differ";
    }
  }
}

// Which kernels run. At head size 128 the mma kernels walk 32-key tiles and
// the WMMA ones 64-key tiles, so the running maxima, and with them the
// rounding of P, differ: different bits from auto (and from fp32), while
// unset and auto give the same bits (the WMMA kernels). Head size 96 (no
// mma kernels) under mma gives auto's bits, fp32 precision under mma the fp32
// kernels' bits. A value that is not a mode stops the process naming them.
TEST_F(CudaMmaAttentionTest, EnvironmentSelectsTheKernels) {
  const DropoutSpec drop = FixedDropout(0.1f, 5, 6, 7, 8);
  {
    const AttentionCase c{1, 100, 128, 1};
    const Inputs in = MakeInputs(c);
    for (MatmulPrecision p : {MatmulPrecision::kBf16, MatmulPrecision::kFp16}) {
      const Outputs mma = RunGpu(c, in, drop, p, "mma");
      const Outputs autos = RunGpu(c, in, drop, p, "auto");
      const Outputs unset = RunGpu(c, in, drop, p, nullptr);
      const Outputs fp32 = RunGpu(c, in, drop, MatmulPrecision::kFp32, nullptr);
      EXPECT_TRUE(SameBits(autos, unset));
      EXPECT_FALSE(SameBits(mma.out, autos.out)) << "mma ran the WMMA forward";
      EXPECT_FALSE(SameBits(mma.dq, autos.dq) && SameBits(mma.dk, autos.dk))
          << "mma ran the WMMA backward";
      EXPECT_FALSE(SameBits(mma.out, fp32.out));
      EXPECT_TRUE(SameBits(RunGpu(c, in, drop, MatmulPrecision::kFp32, "mma"), fp32))
          << "fp32 precision under mma runs the fp32 kernels";
    }
  }
  {
    const AttentionCase c{2, 70, 96, 2};  // head size 48
    const Inputs in = MakeInputs(c);
    EXPECT_TRUE(SameBits(RunGpu(c, in, drop, MatmulPrecision::kBf16, "mma"),
                         RunGpu(c, in, drop, MatmulPrecision::kBf16, "auto")))
        << "head size 48 under mma runs the WMMA kernels";
  }
}

// The check comes before any launch (the buffers are made beforehand: a
// forked child must not use the parent's CUDA context).
TEST_F(CudaMmaAttentionTest, UnknownModeIsRefusedListingTheChoices) {
  const AttentionCase c{1, 4, 64, 1};
  const size_t n = size_t(c.T) * c.C;
  Buffer x = Up(Rand(n)), out(gpu_.get(), n * 4), lse(gpu_.get(), size_t(c.T) * 4);
  gpu_->SetMatmulPrecision(MatmulPrecision::kBf16);
  EXPECT_DEATH(
      {
        setenv("MINGPT_CUDA_ATTENTION", "flash", 1);
        gpu_->AttentionForward(out.f32(), lse.f32(), x.f32(), x.f32(), x.f32(), c.B, c.T, c.C,
                               c.NH, DropoutSpec{});
      },
      "MINGPT_CUDA_ATTENTION=flash: expected auto, fp32 or mma");
  gpu_->SetMatmulPrecision(MatmulPrecision::kFp32);
}

}  // namespace
}  // namespace mingpt::testing
