// The CUDA backend against the CPU backend (the reference), op by op,
// forward and backward, on identical inputs:
//   - fp32 (TF32 off): 1e-5, relative to the element with the tensor's
//     largest magnitude as the floor (cuda_test_util.h: the two backends sum
//     the same terms in different orders);
//   - bf16 / fp16 matrix products: against the CPU backend at the same
//     precision, which rounds the operands the same way (round to nearest
//     even), so the products are the same exact values and only the fp32
//     accumulation differs: 1e-4 (tensor cores add several products before
//     rounding, and the sums here have up to 192 terms of magnitude <= 1,
//     K * 2^-24 * max|term| / max|out| < 1e-4); and against fp32, the
//     rounding of the operands itself: 2^-8 relative per bf16 operand (2^-11
//     for fp16), so 2e-2 (2e-3) of the output's scale;
//   - dropout masks: bit for bit (the same Philox, backend/dropout.h);
//   - determinism: every op with a reduction, run twice, gives the same bits.
// Without a CUDA device every test is skipped with "no CUDA device: ...".
#include <cuda_runtime_api.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <string>
#include <utility>

#include "cuda/attention_test_util.h"
#include "cuda/cuda_test_util.h"

namespace mingpt::testing {
namespace {

using CudaBackendTest = CudaVsCpuTest;

TEST(CudaDevice, CountIsZeroOrTheDevicesPresent) {
  const int count = CudaDeviceCount();
  EXPECT_GE(count, 0);
  MINGPT_SKIP_WITHOUT_CUDA();
  auto backend = MakeCudaBackend(0);
  EXPECT_STREQ(backend->name(), "cuda");
  EXPECT_NE(CudaStreamOf(backend.get()), nullptr);
  auto cpu = MakeCpuBackend(0);  // 0: leaves the OpenMP thread count alone
  EXPECT_EQ(CudaStreamOf(cpu.get()), nullptr);
}

TEST_F(CudaBackendTest, MemoryCopiesAndPinnedHost) {
  for (size_t bytes : {size_t(1), size_t(63), size_t(64), size_t(1000), size_t(1) << 20}) {
    void* p = gpu_->Malloc(bytes);
    ASSERT_NE(p, nullptr);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(p) % 64, 0u);
    std::vector<unsigned char> src(bytes), dst(bytes, 1);
    for (size_t i = 0; i < bytes; ++i) src[i] = static_cast<unsigned char>(i * 7 + 3);
    gpu_->CopyToDevice(p, src.data(), bytes);
    void* q = gpu_->Malloc(bytes);
    gpu_->Copy(q, p, bytes);
    gpu_->CopyToHost(dst.data(), q, bytes);
    EXPECT_EQ(dst, src);
    gpu_->Memset0(q, bytes);
    gpu_->CopyToHost(dst.data(), q, bytes);
    EXPECT_EQ(dst, std::vector<unsigned char>(bytes, 0));
    gpu_->Free(p);
    gpu_->Free(q);
  }
  void* h = gpu_->MallocHost(4096);
  ASSERT_NE(h, nullptr);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(h) % 64, 0u);
  cudaPointerAttributes attr{};
  ASSERT_EQ(cudaPointerGetAttributes(&attr, h), cudaSuccess);
  EXPECT_EQ(attr.type, cudaMemoryTypeHost);  // page-locked, registered with CUDA
  std::memset(h, 5, 4096);
  Buffer d(gpu_.get(), 4096);
  gpu_->CopyToDevice(d.as<void>(), h, 4096);
  gpu_->Synchronize();
  gpu_->FreeHost(h);
  Buffer pinned(gpu_.get(), 100, Buffer::kHost);
  EXPECT_NE(pinned.as<void>(), nullptr);
}

// dwte is summed by token buckets (a counting sort of the rows, long buckets
// in chunks of 32 rows); the cases reach each path: a few tokens with
// buckets of hundreds of rows (many chunks, a partial last one), one token
// for every row, a vocabulary far above the rows (most buckets empty, the
// sort's groups capped by V), and buckets just either side of a chunk.
TEST_F(CudaBackendTest, Encoder) {
  struct Case {
    int B, T, C, V;
  };
  for (const Case& k : {Case{3, 37, 72, 5}, Case{4, 300, 40, 3}, Case{2, 96, 130, 1},
                        Case{1, 1, 8, 1}, Case{2, 50, 33, 50304}, Case{4, 2000, 8, 50304},
                        Case{1, 64, 20, 2}, Case{1, 66, 20, 2}}) {
    const int B = k.B, T = k.T, C = k.C, V = k.V;
    IVec idx = RandInts(B * T, V);
    FVec wte = Rand(int64_t{V} * C), wpe = Rand(T * C), dout = Rand(B * T * C);
    FVec dwte0 = Rand(int64_t{V} * C), dwpe0 = Rand(T * C);
    Buffer g_idx = Up(idx), g_wte = Up(wte), g_wpe = Up(wpe), g_dout = Up(dout);
    Buffer g_out(gpu_.get(), B * T * C * 4), g_dwte = Up(dwte0), g_dwpe = Up(dwpe0);
    gpu_->EncoderForward(g_out.f32(), g_idx.as<int32_t>(), g_wte.f32(), g_wpe.f32(), B, T, C);
    gpu_->EncoderBackward(g_dwte.f32(), g_dwpe.f32(), g_dout.f32(), g_idx.as<int32_t>(), B, T, C,
                          V);
    FVec out(B * T * C), dwte = dwte0, dwpe = dwpe0;
    cpu_->EncoderForward(out.data(), idx.data(), wte.data(), wpe.data(), B, T, C);
    cpu_->EncoderBackward(dwte.data(), dwpe.data(), dout.data(), idx.data(), B, T, C, V);
    const std::string at = " B=" + std::to_string(B) + " T=" + std::to_string(T) +
                           " C=" + std::to_string(C) + " V=" + std::to_string(V);
    EXPECT_EQ(Down(g_out, out.size()), out) << at;  // one addition per element
    // Sums of up to ~400 rows in another order: compared with the CPU's at
    // the scale of the largest value.
    ExpectClose(Down(g_dwte, dwte.size()), dwte, 1e-5, "dwte" + at);
    ExpectClose(Down(g_dwpe, dwpe.size()), dwpe, 1e-5, "dwpe" + at);
  }
}

TEST_F(CudaBackendTest, LayerNormForwardBackward) {
  // N = 67: two chunks of rows in LayerNormBackward, one ragged; N = 700:
  // eleven, and more rows than a block has warps.
  for (auto [N, C] : {std::pair{67, 20}, {67, 48}, {67, 385}, {67, 768}, {700, 20}, {700, 768}}) {
    FVec x = Rand(N * C, -3, 5), w = Rand(C), b = Rand(C), dout = Rand(N * C);
    FVec dx0 = Rand(N * C), dw0 = Rand(C), db0 = Rand(C);  // all three accumulate
    Buffer g_x = Up(x), g_w = Up(w), g_b = Up(b), g_dout = Up(dout);
    Buffer g_out(gpu_.get(), N * C * 4), g_mean(gpu_.get(), N * 4), g_rstd(gpu_.get(), N * 4);
    Buffer g_dx = Up(dx0), g_dw = Up(dw0), g_db = Up(db0);
    gpu_->LayerNormForward(g_out.f32(), g_mean.f32(), g_rstd.f32(), g_x.f32(), g_w.f32(),
                           g_b.f32(), N, C);
    gpu_->LayerNormBackward(g_dx.f32(), g_dw.f32(), g_db.f32(), g_dout.f32(), g_x.f32(),
                            g_w.f32(), g_mean.f32(), g_rstd.f32(), N, C);
    FVec out(N * C), mean(N), rstd(N), dx = dx0, dw = dw0, db = db0;
    cpu_->LayerNormForward(out.data(), mean.data(), rstd.data(), x.data(), w.data(), b.data(), N,
                           C);
    cpu_->LayerNormBackward(dx.data(), dw.data(), db.data(), dout.data(), x.data(), w.data(),
                            mean.data(), rstd.data(), N, C);
    const std::string at = " N=" + std::to_string(N) + " C=" + std::to_string(C);
    ExpectClose(Down(g_out, out.size()), out, 1e-5, "out" + at);
    ExpectClose(Down(g_mean, N), mean, 1e-5, "mean" + at);
    ExpectClose(Down(g_rstd, N), rstd, 1e-5, "rstd" + at);
    ExpectClose(Down(g_dx, dx.size()), dx, 1e-5, "dx" + at);
    ExpectClose(Down(g_dw, C), dw, 1e-5, "dw" + at);
    ExpectClose(Down(g_db, C), db, 1e-5, "db" + at);
  }
}

// Against the CPU, and bit for bit the GPU's own Add then LayerNormForward.
TEST_F(CudaBackendTest, ResidualLayerNorm) {
  const int N = 45, C = 200;
  FVec x = Rand(N * C, -3, 5), br = Rand(N * C), w = Rand(C), b = Rand(C);
  Buffer g_x = Up(x), g_br = Up(br), g_w = Up(w), g_b = Up(b);
  Buffer sum(gpu_.get(), N * C * 4), out(gpu_.get(), N * C * 4), mean(gpu_.get(), N * 4),
      rstd(gpu_.get(), N * 4);
  Buffer sum2(gpu_.get(), N * C * 4), out2(gpu_.get(), N * C * 4), mean2(gpu_.get(), N * 4),
      rstd2(gpu_.get(), N * 4);
  gpu_->ResidualLayerNormForward(sum.f32(), out.f32(), mean.f32(), rstd.f32(), g_x.f32(),
                                 g_br.f32(), g_w.f32(), g_b.f32(), N, C);
  gpu_->Add(sum2.f32(), g_x.f32(), g_br.f32(), int64_t{N} * C);
  gpu_->LayerNormForward(out2.f32(), mean2.f32(), rstd2.f32(), sum2.f32(), g_w.f32(), g_b.f32(),
                         N, C);
  EXPECT_EQ(Down(sum, N * C), Down(sum2, N * C));
  EXPECT_EQ(Down(out, N * C), Down(out2, N * C));
  EXPECT_EQ(Down(mean, N), Down(mean2, N));
  EXPECT_EQ(Down(rstd, N), Down(rstd2, N));
  FVec c_sum(N * C), c_out(N * C), c_mean(N), c_rstd(N);
  cpu_->ResidualLayerNormForward(c_sum.data(), c_out.data(), c_mean.data(), c_rstd.data(),
                                 x.data(), br.data(), w.data(), b.data(), N, C);
  EXPECT_EQ(Down(sum, N * C), c_sum);
  ExpectClose(Down(out, N * C), c_out, 1e-5, "out");
}

struct MatmulCase {
  int N, IC, OC;
  bool bias;
};

// Forward and backward (accumulating dinp, dW, dbias) of one shape at the
// current precision of both backends, against the CPU's results.
class CudaMatmulTest : public CudaVsCpuTest {
 public:
  struct Results {
    FVec out, dinp, dW, dbias;
  };

 protected:
  Results RunGpu(const MatmulCase& c, bool accumulate) {
    Buffer inp = Up(inp_), W = Up(W_), bias = Up(bias_), dout = Up(dout_);
    Buffer out(gpu_.get(), c.N * c.OC * 4), dinp = Up(dinp0_), dW = Up(dW0_), dbias = Up(dbias0_);
    gpu_->MatmulForward(out.f32(), inp.f32(), W.f32(), c.bias ? bias.f32() : nullptr, c.N, c.IC,
                        c.OC);
    gpu_->MatmulBackward(dinp.f32(), dW.f32(), c.bias ? dbias.f32() : nullptr, dout.f32(),
                         inp.f32(), W.f32(), c.N, c.IC, c.OC, accumulate);
    return {Down(out, out_size()), Down(dinp, dinp0_.size()), Down(dW, dW0_.size()),
            Down(dbias, dbias0_.size())};
  }
  Results RunCpu(const MatmulCase& c, bool accumulate) {
    Results r{FVec(out_size()), dinp0_, dW0_, dbias0_};
    cpu_->MatmulForward(r.out.data(), inp_.data(), W_.data(), c.bias ? bias_.data() : nullptr,
                        c.N, c.IC, c.OC);
    cpu_->MatmulBackward(r.dinp.data(), r.dW.data(), c.bias ? r.dbias.data() : nullptr,
                         dout_.data(), inp_.data(), W_.data(), c.N, c.IC, c.OC, accumulate);
    return r;
  }
  void MakeData(const MatmulCase& c) {
    n_out_ = size_t(c.N) * c.OC;
    inp_ = Rand(c.N * c.IC), W_ = Rand(c.OC * c.IC), bias_ = Rand(c.OC), dout_ = Rand(n_out_);
    dinp0_ = Rand(c.N * c.IC), dW0_ = Rand(c.OC * c.IC), dbias0_ = Rand(c.OC);
  }
  void SetPrecision(MatmulPrecision p) {
    gpu_->SetMatmulPrecision(p);
    cpu_->SetMatmulPrecision(p);
  }
  size_t out_size() const { return n_out_; }

  FVec inp_, W_, bias_, dout_, dinp0_, dW0_, dbias0_;
  size_t n_out_ = 0;
};

void ExpectResultsClose(const CudaMatmulTest::Results& got,
                        const CudaMatmulTest::Results& want, double rtol,
                        const std::string& what) {
  ExpectClose(got.out, want.out, rtol, what + " out");
  ExpectClose(got.dinp, want.dinp, rtol, what + " dinp");
  ExpectClose(got.dW, want.dW, rtol, what + " dW");
  ExpectClose(got.dbias, want.dbias, rtol, what + " dbias");
}

const MatmulCase kMatmulCases[] = {
    {64, 48, 192, true}, {130, 65, 33, false}, {1, 16, 8, true}, {96, 192, 64, true}};

TEST_F(CudaMatmulTest, Fp32MatchesCpu) {
  SetPrecision(MatmulPrecision::kFp32);
  for (const MatmulCase& c : kMatmulCases) {
    for (bool accumulate : {false, true}) {
      MakeData(c);
      const std::string what = "N=" + std::to_string(c.N) + " IC=" + std::to_string(c.IC) +
                               " OC=" + std::to_string(c.OC) + (accumulate ? " +=" : " =");
      ExpectResultsClose(RunGpu(c, accumulate), RunCpu(c, accumulate), 1e-5, what);
    }
  }
}

TEST_F(CudaMatmulTest, LowPrecisionMatchesCpuAtTheSamePrecision) {
  for (MatmulPrecision p : {MatmulPrecision::kBf16, MatmulPrecision::kFp16}) {
    const bool bf16 = p == MatmulPrecision::kBf16;
    for (const MatmulCase& c : kMatmulCases) {
      MakeData(c);
      const std::string what = std::string(bf16 ? "bf16" : "fp16") + " N=" + std::to_string(c.N);
      SetPrecision(p);
      const Results gpu = RunGpu(c, true);
      ExpectResultsClose(gpu, RunCpu(c, true), 1e-4, what + " vs cpu");
      // With a bias gradient dout is converted in the same pass as it is
      // summed, rounded as the product would round it: the same bits.
      const Results other = RunGpu({c.N, c.IC, c.OC, !c.bias}, true);
      EXPECT_TRUE(gpu.dinp == other.dinp && gpu.dW == other.dW) << what;
      SetPrecision(MatmulPrecision::kFp32);
      ExpectResultsClose(gpu, RunCpu(c, true), bf16 ? 2e-2 : 2e-3, what + " vs fp32");
    }
  }
  SetPrecision(MatmulPrecision::kFp32);
}

// dinp may alias inp (MatmulBackward's contract): dW must see the input.
TEST_F(CudaMatmulTest, BackwardDinpAliasesInp) {
  const int N = 40, IC = 24, OC = 56;
  MakeData({N, IC, OC, false});
  Buffer inp = Up(inp_), W = Up(W_), dout = Up(dout_), dW = Up(dW0_);
  gpu_->MatmulBackward(inp.f32(), dW.f32(), nullptr, dout.f32(), inp.f32(), W.f32(), N, IC, OC,
                       false);
  FVec dinp(N * IC), dW_ref = dW0_;
  cpu_->MatmulBackward(dinp.data(), dW_ref.data(), nullptr, dout_.data(), inp_.data(), W_.data(),
                       N, IC, OC, false);
  ExpectClose(Down(inp, N * IC), dinp, 1e-5, "dinp in place of inp");
  ExpectClose(Down(dW, OC * IC), dW_ref, 1e-5, "dW");
  // dinp null: dW only.
  Buffer dW2 = Up(dW0_), inp2 = Up(inp_);
  gpu_->MatmulBackward(nullptr, dW2.f32(), nullptr, dout.f32(), inp2.f32(), W.f32(), N, IC, OC,
                       false);
  ExpectClose(Down(dW2, OC * IC), dW_ref, 1e-5, "dW without dinp");
}

class CudaAttentionTest : public AttentionVsCpuTest {
 protected:
  void Check(const AttentionCase& c, const DropoutSpec& dropout) {
    const size_t n = size_t(c.B) * c.T * c.C;
    const Inputs in{Rand(n, -2, 2), Rand(n, -2, 2), Rand(n), Rand(n)};
    const Outputs gpu = RunGpu(c, in, dropout);
    const Outputs cpu = RunCpu(c, in, dropout);
    const FVec &out = cpu.out, &lse = cpu.lse, &dq = cpu.dq, &dk = cpu.dk, &dv = cpu.dv;
    const std::string what = "B=" + std::to_string(c.B) + " T=" + std::to_string(c.T) +
                             " C=" + std::to_string(c.C) + " NH=" + std::to_string(c.NH) +
                             " p=" + std::to_string(dropout.p) + " ";
    ExpectClose(gpu.out, out, 1e-5, what + "out");
    ExpectClose(gpu.lse, lse, 1e-5, what + "lse");
    // dq and dk against the largest of the three gradients: at T = 1 they are
    // zero in exact arithmetic, and the CPU's delta_i = dout_i . out_i
    // cancels P dP only to rounding.
    double g = 1e-30;
    for (const FVec* t : {&dq, &dk, &dv}) {
      for (float x : *t) g = std::max(g, std::abs(static_cast<double>(x)));
    }
    ExpectNear(gpu.dq, ToDouble(dq), 1e-5, 1e-5 * g, what + "dq");
    ExpectNear(gpu.dk, ToDouble(dk), 1e-5, 1e-5 * g, what + "dk");
    ExpectClose(gpu.dv, dv, 1e-5, what + "dv");
  }
};

// Head sizes 8 .. 512 (odd ones too), T from 1 past several tiles and
// blocks, with and without attention dropout (a mask that differed from the
// CPU's in one element would show in out and in every gradient). Above 256
// the kernels take 16 channels a lane and tiles of 16 rows: head sizes 300
// and 512 (the seed's 20B and 45B models), T across several such tiles.
const AttentionCase kAttentionCases[] = {
    {2, 1, 16, 2},    {2, 7, 40, 2},    {1, 33, 64, 1}, {2, 100, 128, 2},
    {1, 70, 256, 2},  {1, 45, 256, 1},  {3, 64, 36, 4}, {1, 129, 192, 3},
    {2, 37, 600, 2},  {1, 50, 1024, 2}, {1, 1, 512, 1}};

TEST_F(CudaAttentionTest, MatchesCpuWithoutDropout) {
  for (const AttentionCase& c : kAttentionCases) Check(c, DropoutSpec{});
}

TEST_F(CudaAttentionTest, MatchesCpuWithDropout) {
  for (const AttentionCase& c : kAttentionCases) Check(c, FixedDropout(0.2f, 99, 3, 4, 17));
}

// Head sizes the kernels cannot run are refused when a model is built on
// the backend, naming the limit, not met mid-step.
TEST_F(CudaBackendTest, HeadSizesAboveTheKernelsAreRefusedUpFront) {
  for (int hs : {1, 64, 256, 300, 512}) EXPECT_TRUE(gpu_->CheckHeadSize(hs).ok()) << hs;
  const Status big = gpu_->CheckHeadSize(513);
  ASSERT_FALSE(big.ok());
  EXPECT_NE(big.message().find("head size 513 (n_embd / n_head) is above the CUDA backend's 512"),
            std::string::npos)
      << big.message();
  EXPECT_TRUE(cpu_->CheckHeadSize(4096).ok());
}

TEST_F(CudaAttentionTest, DecodeMatchesCpu) {
  for (const auto& [T, C, NH] : {std::tuple{1, 16, 2}, std::tuple{37, 64, 4},
                                 std::tuple{100, 256, 1}, std::tuple{300, 96, 3},
                                 std::tuple{40, 1024, 2}}) {
    FVec q = Rand(C, -2, 2), kc = Rand(size_t(T) * C, -2, 2), vc = Rand(size_t(T) * C);
    Buffer gq = Up(q), gk = Up(kc), gv = Up(vc), gout(gpu_.get(), C * 4);
    gpu_->AttentionDecode(gout.f32(), gq.f32(), gk.f32(), gv.f32(), T, C, NH);
    FVec out(C);
    cpu_->AttentionDecode(out.data(), q.data(), kc.data(), vc.data(), T, C, NH);
    ExpectClose(Down(gout, C), out, 1e-5, "decode T=" + std::to_string(T));
  }
}

// ---- the tensor-core attention (bf16 / fp16 matrix precision) ---------------------------
//
// Against the CPU backend's fp32 attention, to the bounds that
// attention_test_util.h derives for kernels that round P mult and dS once
// each to the operand type.
using CudaTensorCoreAttentionTest = LowPrecisionAttentionTest;

// T = 37 and 70 (not multiples of the 64-row blocks and tiles) and 150 (three
// blocks and tiles), T = 1, head sizes 16 .. 128, B and NH above 1; head size
// 40 is not a multiple of 16 and takes the fp32 kernels.
const AttentionCase kTcAttentionCases[] = {
    {2, 37, 64, 2}, {1, 150, 128, 1}, {2, 70, 96, 2},
    {1, 20, 16, 1}, {2, 1, 32, 2},    {1, 45, 80, 2}};

TEST_F(CudaTensorCoreAttentionTest, MatchesCpuWithoutDropout) {
  for (MatmulPrecision p : {MatmulPrecision::kBf16, MatmulPrecision::kFp16}) {
    for (const AttentionCase& c : kTcAttentionCases) Check(c, DropoutSpec{}, p);
  }
}

TEST_F(CudaTensorCoreAttentionTest, MatchesCpuWithDropout) {
  for (MatmulPrecision p : {MatmulPrecision::kBf16, MatmulPrecision::kFp16}) {
    for (const AttentionCase& c : kTcAttentionCases) {
      Check(c, FixedDropout(0.2f, 99, 3, 4, 17), p);
    }
  }
}

// Which kernels run: the tensor-core ones (results that differ from the
// fp32 kernels' in the rounding of P) for head sizes that are multiples of
// 16 up to 128, the fp32 ones (the same bits) for head size 40 and 256, and
// under MINGPT_CUDA_ATTENTION=fp32; the same bits twice (determinism).
TEST_F(CudaTensorCoreAttentionTest, DispatchFallbackAndDeterminism) {
  const DropoutSpec drop = FixedDropout(0.1f, 5, 6, 7, 8);
  for (const AttentionCase& c : {AttentionCase{2, 70, 96, 2}, AttentionCase{1, 45, 80, 2},
                                AttentionCase{1, 9, 256, 1}}) {
    const Inputs in = MakeInputs(c);
    const bool tensor_cores = (c.C / c.NH) % 16 == 0 && c.C / c.NH <= 128;
    const std::string what = "C=" + std::to_string(c.C) + " NH=" + std::to_string(c.NH);
    const Outputs fp32 = RunGpu(c, in, drop, MatmulPrecision::kFp32);
    for (MatmulPrecision p : {MatmulPrecision::kBf16, MatmulPrecision::kFp16}) {
      const Outputs first = RunGpu(c, in, drop, p), second = RunGpu(c, in, drop, p);
      for (const auto& [a, b] : {std::pair{&first.out, &second.out}, {&first.lse, &second.lse},
                                 {&first.dq, &second.dq}, {&first.dk, &second.dk},
                                 {&first.dv, &second.dv}}) {
        EXPECT_EQ(0, std::memcmp(a->data(), b->data(), a->size() * 4))
            << what << ": two runs differ";
      }
      EXPECT_EQ(first.out == fp32.out && first.dq == fp32.dq && first.dk == fp32.dk &&
                    first.dv == fp32.dv,
                !tensor_cores)
          << what;
      ASSERT_EQ(setenv("MINGPT_CUDA_ATTENTION", "fp32", 1), 0);
      const Outputs forced = RunGpu(c, in, drop, p);
      ASSERT_EQ(unsetenv("MINGPT_CUDA_ATTENTION"), 0);
      EXPECT_TRUE(forced.out == fp32.out && forced.lse == fp32.lse && forced.dq == fp32.dq &&
                  forced.dk == fp32.dk && forced.dv == fp32.dv)
          << what << ": MINGPT_CUDA_ATTENTION=fp32 runs the fp32 kernels";
    }
  }
}

// The tiles are staged four floats at a time from 16-byte aligned rows, one
// float at a time otherwise: the same values, so the same bits.
TEST_F(CudaTensorCoreAttentionTest, UnalignedRowsGiveTheSameBits) {
  const DropoutSpec drop = FixedDropout(0.1f, 5, 6, 7, 8);
  const AttentionCase c{2, 70, 96, 2};
  const Inputs in = MakeInputs(c);
  for (MatmulPrecision p : {MatmulPrecision::kBf16, MatmulPrecision::kFp16}) {
    const Outputs aligned = RunGpu(c, in, drop, p), skewed = RunGpu(c, in, drop, p, nullptr, 1);
    EXPECT_TRUE(aligned.out == skewed.out && aligned.lse == skewed.lse &&
                aligned.dq == skewed.dq && aligned.dk == skewed.dk && aligned.dv == skewed.dv);
  }
}

TEST_F(CudaBackendTest, GeluForwardBackwardInPlace) {
  const int64_t n = 100003;
  FVec x = Rand(n, -6, 6), dout = Rand(n);
  Buffer gx = Up(x), gout(gpu_.get(), n * 4), gd = Up(dout);
  gpu_->GeluForward(gout.f32(), gx.f32(), n);
  gpu_->GeluBackward(gd.f32(), gx.f32(), gd.f32(), n);  // dx aliases dout
  FVec out(n), dx = dout;
  cpu_->GeluForward(out.data(), x.data(), n);
  cpu_->GeluBackward(dx.data(), x.data(), dx.data(), n);
  ExpectClose(Down(gout, n), out, 1e-5, "gelu");
  ExpectClose(Down(gd, n), dx, 1e-5, "gelu'");
  gpu_->GeluForward(gx.f32(), gx.f32(), n);  // in place
  EXPECT_EQ(Down(gx, n), Down(gout, n));
}

// The ops writing the operand format (GELU forward and backward, the
// layernorms) against the CPU's fp32 values: under fp32 to 1e-5; under bf16 the stored
// values decoded (the high 16 bits of a float) to bf16's rounding, 2^-8 of
// each value (plus the fp32 difference, which may move a value across a
// rounding boundary); the bias gradient is fp32 in both.
TEST_F(CudaBackendTest, OperandFormatOpsMatchCpu) {
  const int N = 97, C = 130;
  const int64_t n = int64_t{N} * C;
  FVec x = Rand(n, -6, 6), dout = Rand(n), db0 = Rand(C);
  FVec out(n), dx(n), db = db0;
  cpu_->GeluForward(out.data(), x.data(), n);
  cpu_->GeluBackward(dx.data(), x.data(), dout.data(), n);
  for (int64_t i = 0; i < n; ++i) db[i % C] += dx[i];
  FVec w = Rand(C), b = Rand(C), ln(n), rln(n), sum(n), mean(N), rstd(N);
  cpu_->LayerNormForward(ln.data(), mean.data(), rstd.data(), x.data(), w.data(), b.data(), N, C);
  cpu_->ResidualLayerNormForward(sum.data(), rln.data(), mean.data(), rstd.data(), x.data(),
                                 dout.data(), w.data(), b.data(), N, C);
  for (MatmulPrecision p : {MatmulPrecision::kFp32, MatmulPrecision::kBf16}) {
    gpu_->SetMatmulPrecision(p);
    const bool bf16 = p == MatmulPrecision::kBf16;
    ASSERT_EQ(gpu_->OperandBytes(), bf16 ? 2u : 4u);
    Buffer gx = Up(x), gd = Up(dout), gdb = Up(db0);
    Buffer gout(gpu_.get(), n * 4), gdx(gpu_.get(), n * 4);
    gpu_->GeluForwardOperand(gout.as<void>(), gx.f32(), n);
    gpu_->GeluBackwardOperand(gdx.as<void>(), gdb.f32(), gx.f32(), gd.f32(), N, C);
    auto decode = [&](const Buffer& b) {
      if (!bf16) return Down(b, n);
      std::vector<uint16_t> h = Down<uint16_t>(b, n);
      FVec f(n);
      for (int64_t i = 0; i < n; ++i) {
        const uint32_t bits = static_cast<uint32_t>(h[i]) << 16;
        std::memcpy(&f[i], &bits, sizeof(float));
      }
      return f;
    };
    const double rtol = bf16 ? 1.0 / 128 : 1e-5;
    ExpectClose(decode(gout), out, rtol, bf16 ? "gelu bf16" : "gelu fp32");
    ExpectClose(decode(gdx), dx, rtol, bf16 ? "gelu' bf16" : "gelu' fp32");
    ExpectClose(Down(gdb, C), db, 1e-5, "gelu' bias gradient");
    // Layernorms writing the operand format (x as the residual, dout as the branch).
    Buffer gw = Up(w), gb = Up(b), gln(gpu_.get(), n * 4), gsum(gpu_.get(), n * 4);
    Buffer gmean(gpu_.get(), N * 4), grstd(gpu_.get(), N * 4);
    gpu_->LayerNormForwardOperand(gln.as<void>(), gmean.f32(), grstd.f32(), gx.f32(), gw.f32(),
                                  gb.f32(), N, C);
    ExpectClose(decode(gln), ln, rtol, "layernorm operand");
    // Each value rounded once, as ToOperand rounds the fp32 op's: the same bits.
    Buffer g32(gpu_.get(), n * 4), gop(gpu_.get(), n * 4);
    auto same_bits = [&](const Buffer& got, const char* what) {
      gpu_->ToOperand(gop.as<void>(), g32.f32(), n);
      const size_t bytes = n * gpu_->OperandBytes();
      EXPECT_EQ(Down<uint8_t>(got, bytes), Down<uint8_t>(gop, bytes)) << what;
    };
    gpu_->LayerNormForward(g32.f32(), gmean.f32(), grstd.f32(), gx.f32(), gw.f32(), gb.f32(), N,
                           C);
    same_bits(gln, "layernorm operand");
    gpu_->GeluBackward(g32.f32(), gx.f32(), gd.f32(), n);
    same_bits(gdx, "gelu' operand");
    gpu_->ResidualLayerNormForwardOperand(gsum.f32(), gln.as<void>(), gmean.f32(), grstd.f32(),
                                          gx.f32(), gd.f32(), gw.f32(), gb.f32(), N, C);
    ExpectClose(decode(gln), rln, rtol, "residual layernorm operand");
    ExpectClose(Down(gsum, n), sum, 1e-5, "residual sum");
    // Without a bias gradient; under fp32 also written over dout.
    Buffer gdx2(gpu_.get(), n * 4), galias = Up(dout);
    gpu_->GeluBackwardOperand(gdx2.as<void>(), nullptr, gx.f32(), gd.f32(), N, C);
    same_bits(gdx2, "gelu' operand without the bias gradient");
    if (!bf16) {
      gpu_->GeluBackwardOperand(galias.as<void>(), gdb.f32(), gx.f32(), galias.f32(), N, C);
      ExpectClose(Down(galias, n), dx, 1e-5, "gelu' over dout");
    }
  }
  gpu_->SetMatmulPrecision(MatmulPrecision::kFp32);
}

// The offload strategies' asynchronous transfers: each starts after the work
// issued before it, later work waits for it on the device after OrderAfter,
// the host after WaitTransfer (which waits for every earlier one too), and
// more transfers than the backend's ring of 64 events may be issued.
TEST_F(CudaBackendTest, AsyncTransfersFollowEarlierWorkAndWaitsOrderThem) {
  const int64_t n = 1001;
  const int rounds = 150;
  Buffer host(gpu_.get(), rounds * n * sizeof(float), Buffer::kHost);
  Buffer dev(gpu_.get(), n * sizeof(float));
  FVec x = Rand(n);
  Buffer gx = Up(x);
  std::vector<Backend::Transfer> downs;
  for (int r = 0; r < rounds; ++r) {  // scale, then copy down what the scaling wrote
    gpu_->Scale(gx.f32(), n, 0.5f);
    downs.push_back(gpu_->CopyToHostAsync(host.f32() + r * n, gx.f32(), n * sizeof(float)));
    gpu_->OrderAfter(downs.back());  // the next scaling overwrites what the copy reads
  }
  gpu_->WaitTransfer(downs.back());  // and every earlier one
  FVec want = x;
  for (int r = 0; r < rounds; ++r) {
    cpu_->Scale(want.data(), n, 0.5f);
    ASSERT_EQ(FVec(host.f32() + r * n, host.f32() + (r + 1) * n), want) << "round " << r;
  }
  // Up: the host source, then the device reads it after OrderAfter.
  for (int64_t i = 0; i < n; ++i) host.f32()[i] = x[i] + 1;
  const Backend::Transfer up = gpu_->CopyToDeviceAsync(dev.f32(), host.f32(), n * sizeof(float));
  gpu_->OrderAfter(up);
  gpu_->Add(dev.f32(), dev.f32(), gx.f32(), n);
  FVec sum(n);
  for (int64_t i = 0; i < n; ++i) sum[i] = (x[i] + 1) + want[i];  // one rounding each, as Add
  EXPECT_EQ(Down(dev, n), sum);  // waits for the compute stream only
  gpu_->WaitTransfer(up);
  EXPECT_EQ(gpu_->CopyToHostAsync(host.f32(), dev.f32(), 0), 0u);  // nothing to copy: done
  gpu_->WaitTransfer(0);
  gpu_->OrderAfter(0);
}

TEST_F(CudaBackendTest, AddAndScale) {
  const int64_t n = 5001;
  FVec a = Rand(n), b = Rand(n);
  Buffer ga = Up(a), gb = Up(b);
  gpu_->Add(ga.f32(), ga.f32(), gb.f32(), n);  // out aliases a
  gpu_->Scale(ga.f32(), n, 0.37f);
  FVec want = a;
  cpu_->Add(want.data(), want.data(), b.data(), n);
  cpu_->Scale(want.data(), n, 0.37f);
  EXPECT_EQ(Down(ga, n), want);  // one rounding each: the same floats
}

// The masks are the CPU's bit for bit: dropout of x gives the same floats.
TEST_F(CudaBackendTest, DropoutMasksIdenticalToCpu) {
  for (const auto& [B, row, p] : {std::tuple{3, int64_t{1001}, 0.1f}, std::tuple{5, int64_t{4}, 0.5f},
                                  std::tuple{2, int64_t{77777}, 0.25f}, std::tuple{1, int64_t{3}, 0.9f}}) {
    const DropoutSpec d = FixedDropout(p, 0xC0FFEE, 11, 7, 123);
    FVec x = Rand(size_t(B) * row);
    Buffer gx = Up(x), gy(gpu_.get(), x.size() * 4);
    gpu_->Dropout(gy.f32(), gx.f32(), B, row, d);
    gpu_->Dropout(gx.f32(), gx.f32(), B, row, d);  // in place
    FVec y(x.size());
    cpu_->Dropout(y.data(), x.data(), B, row, d);
    EXPECT_EQ(Down(gy, y.size()), y) << "B=" << B << " row=" << row << " p=" << p;
    EXPECT_EQ(Down(gx, y.size()), y) << "in place";
  }
  // p = 0: a copy.
  FVec x = Rand(100);
  Buffer gx = Up(x), gy(gpu_.get(), 400);
  gpu_->Dropout(gy.f32(), gx.f32(), 4, 25, DropoutSpec{});
  EXPECT_EQ(Down(gy, 100), x);
}

TEST_F(CudaBackendTest, CrossEntropy) {
  for (int V : {5, 65, 1000, 50257}) {
    const int N = 37;
    FVec logits = Rand(size_t(N) * V, -4, 4);
    IVec targets = RandInts(N, V);
    Buffer gl = Up(logits), gt = Up(targets), glosses(gpu_.get(), N * 4),
           glosses2(gpu_.get(), N * 4);
    gpu_->CrossEntropyForward(glosses.f32(), gl.f32(), gt.as<int32_t>(), N, V);
    gpu_->CrossEntropyForwardBackward(glosses2.f32(), gl.f32(), gl.f32(), gt.as<int32_t>(), N, V,
                                      1.0f / N);  // dlogits in place of logits
    FVec losses(N), losses2(N), dlogits = logits;
    cpu_->CrossEntropyForward(losses.data(), logits.data(), targets.data(), N, V);
    cpu_->CrossEntropyForwardBackward(losses2.data(), dlogits.data(), dlogits.data(),
                                      targets.data(), N, V, 1.0f / N);
    const std::string at = " V=" + std::to_string(V);
    ExpectClose(Down(glosses, N), losses, 1e-5, "losses" + at);
    ExpectClose(Down(glosses2, N), losses2, 1e-5, "losses (fwd-bwd)" + at);
    ExpectClose(Down(gl, dlogits.size()), dlogits, 1e-5, "dlogits" + at);
  }
  // losses may be null in the forward-backward.
  const int N = 4, V = 9;
  FVec logits = Rand(N * V);
  IVec targets = RandInts(N, V);
  Buffer gl = Up(logits), gt = Up(targets), gd(gpu_.get(), N * V * 4);
  gpu_->CrossEntropyForwardBackward(nullptr, gd.f32(), gl.f32(), gt.as<int32_t>(), N, V, 0.5f);
  FVec d(N * V);
  cpu_->CrossEntropyForwardBackward(nullptr, d.data(), logits.data(), targets.data(), N, V, 0.5f);
  ExpectClose(Down(gd, N * V), d, 1e-5, "dlogits without losses");
}

TEST_F(CudaBackendTest, AdamWMatchesCpu) {
  const int64_t n = 10007;
  for (float wd : {0.0f, 0.1f}) {
    FVec p = Rand(n), m(n, 0.0f), v(n, 0.0f);
    Buffer gp = Up(p), gm = Up(m), gv = Up(v);
    for (int t = 1; t <= 3; ++t) {
      FVec g = Rand(n, -0.1, 0.1);
      Buffer gg = Up(g);
      gpu_->AdamW(gp.f32(), gg.f32(), gm.f32(), gv.f32(), n, 6e-4f, 0.9f, 0.95f, 1e-8f, wd, t);
      cpu_->AdamW(p.data(), g.data(), m.data(), v.data(), n, 6e-4f, 0.9f, 0.95f, 1e-8f, wd, t);
    }
    const std::string at = " wd=" + std::to_string(wd);
    ExpectClose(Down(gp, n), p, 1e-6, "p" + at);
    ExpectClose(Down(gm, n), m, 1e-5, "m" + at);
    ExpectClose(Down(gv, n), v, 1e-5, "v" + at);
  }
}

// Many tensors in one call (three launches of at most 32), with gaps
// between them left untouched: bit for bit AdamW on each tensor alone.
TEST_F(CudaBackendTest, AdamWTensorsIsAdamWOnEachTensor) {
  std::vector<Backend::AdamWTensor> tensors;
  const int64_t sizes[] = {1, 1023, 1024, 1025, 0, 5000, 37, 2048};
  int64_t at = 3;
  for (int k = 0; k < 70; ++k) {
    const int64_t n = sizes[k % 8];
    tensors.push_back({at, n, k % 3 == 0 ? 0.0f : 0.1f * (1 + k % 2)});
    at += n + k % 5;  // gaps of 0 to 4 elements
  }
  const int64_t n = at + 2;
  FVec p = Rand(n), m = Rand(n, 0, 0.1), v = Rand(n, 0, 0.01);
  Buffer p1 = Up(p), m1 = Up(m), v1 = Up(v), p2 = Up(p), m2 = Up(m), v2 = Up(v);
  for (int t = 1; t <= 2; ++t) {
    Buffer g = Up(Rand(n, -0.1, 0.1));
    gpu_->AdamWTensors(p1.f32(), g.f32(), m1.f32(), v1.f32(), tensors.data(), tensors.size(), 6e-4f,
                       0.9f, 0.95f, 1e-8f, t, 1.0f);
    for (const Backend::AdamWTensor& x : tensors) {
      gpu_->AdamW(p2.f32() + x.begin, g.f32() + x.begin, m2.f32() + x.begin, v2.f32() + x.begin,
                  x.n, 6e-4f, 0.9f, 0.95f, 1e-8f, x.wd, t);
    }
  }
  EXPECT_EQ(Down(p1, n), Down(p2, n));
  EXPECT_EQ(Down(m1, n), Down(m2, n));
  EXPECT_EQ(Down(v1, n), Down(v2, n));
  const FVec after = Down(p1, n);
  EXPECT_EQ(after[0], p[0]);  // before the first tensor, and in a gap
  const Backend::AdamWTensor& last = tensors.back();
  EXPECT_EQ(after[last.begin - 1], p[last.begin - 1]) << "gap before the last tensor";
  EXPECT_NE(after[last.begin], p[last.begin]);
}

// Gradients read scaled (the clipping factor, 1/loss scale): as the CPU
// backend does it, to float rounding.
TEST_F(CudaBackendTest, AdamWTensorsScalesTheGradients) {
  const std::vector<Backend::AdamWTensor> tensors = {{0, 1000, 0.0f}, {1000, 3333, 0.1f}};
  const int64_t n = 4333;
  FVec p = Rand(n), m = Rand(n, 0, 0.1), v = Rand(n, 0, 0.01), g = Rand(n, -0.1, 0.1);
  Buffer gp = Up(p), gm = Up(m), gv = Up(v), gg = Up(g);
  gpu_->AdamWTensors(gp.f32(), gg.f32(), gm.f32(), gv.f32(), tensors.data(), tensors.size(), 6e-4f,
                     0.9f, 0.95f, 1e-8f, 2, 0.3125f);
  cpu_->AdamWTensors(p.data(), g.data(), m.data(), v.data(), tensors.data(), tensors.size(), 6e-4f,
                     0.9f, 0.95f, 1e-8f, 2, 0.3125f);
  ExpectClose(Down(gp, n), p, 1e-6, "p");
  ExpectClose(Down(gm, n), m, 1e-6, "m");
  ExpectClose(Down(gv, n), v, 1e-6, "v");
}

TEST_F(CudaBackendTest, SumSquaresInDouble) {
  for (int64_t n : {int64_t{1}, int64_t{1000}, int64_t{3000017}}) {
    FVec x = Rand(n, -3, 3);
    Buffer gx = Up(x);
    const double gpu = gpu_->SumSquares(gx.f32(), n);
    const double cpu = cpu_->SumSquares(x.data(), n);
    // Each square of a float is exact in double; only the order of the
    // double additions differs.
    EXPECT_NEAR(gpu, cpu, 1e-12 * cpu) << "n=" << n;
  }
}

// The same op on the same inputs twice gives the same bits: no atomics in
// any reduction, and cuBLASLt kept from in-place split-K.
TEST_F(CudaBackendTest, Deterministic) {
  // V = 3: buckets of ~43 rows, so dwte goes through chunk partials.
  const int B = 2, T = 65, C = 128, NH = 2, V = 3, OC = 384;
  const int N = B * T;
  const DropoutSpec drop = FixedDropout(0.1f, 5, 6, 7, 8);
  FVec x = Rand(N * C), w = Rand(C), b = Rand(C), W = Rand(OC * C), dout = Rand(N * OC);
  IVec idx = RandInts(N, V);
  Buffer gx = Up(x), gw = Up(w), gb = Up(b), gW = Up(W), gdo = Up(dout), gidx = Up(idx);
  Buffer mean(gpu_.get(), N * 4), rstd(gpu_.get(), N * 4), lse(gpu_.get(), B * NH * T * 4),
      tmp(gpu_.get(), N * C * 4);
  auto run = [&]() {
    std::vector<FVec> r;
    Buffer dx(gpu_.get(), N * C * 4), dw(gpu_.get(), C * 4), db(gpu_.get(), C * 4),
        dW(gpu_.get(), OC * C * 4), dbias(gpu_.get(), OC * 4), dq(gpu_.get(), N * C * 4),
        dk(gpu_.get(), N * C * 4), dv(gpu_.get(), N * C * 4), dwte(gpu_.get(), V * C * 4),
        dwpe(gpu_.get(), T * C * 4);
    for (Buffer* z : {&dx, &dw, &db, &dW, &dbias, &dwte, &dwpe}) gpu_->Memset0(z->as<void>(), z->bytes());
    gpu_->LayerNormForward(tmp.f32(), mean.f32(), rstd.f32(), gx.f32(), gw.f32(), gb.f32(), N, C);
    gpu_->LayerNormBackward(dx.f32(), dw.f32(), db.f32(), gx.f32(), gx.f32(), gw.f32(),
                            mean.f32(), rstd.f32(), N, C);
    gpu_->MatmulBackward(nullptr, dW.f32(), dbias.f32(), gdo.f32(), gx.f32(), gW.f32(), N, C, OC,
                         false);
    gpu_->AttentionForward(tmp.f32(), lse.f32(), gx.f32(), gx.f32(), gx.f32(), B, T, C, NH, drop);
    gpu_->AttentionBackward(dq.f32(), dk.f32(), dv.f32(), gx.f32(), gx.f32(), gx.f32(), gx.f32(),
                            tmp.f32(), lse.f32(), B, T, C, NH, drop);
    gpu_->EncoderBackward(dwte.f32(), dwpe.f32(), gx.f32(), gidx.as<int32_t>(), B, T, C, V);
    for (Buffer* z : {&dx, &dw, &db, &dW, &dbias, &dq, &dk, &dv, &dwte, &dwpe, &tmp, &lse}) {
      r.push_back(Down(*z, z->bytes() / 4));
    }
    r.push_back({static_cast<float>(gpu_->SumSquares(gdo.f32(), N * OC))});
    return r;
  };
  const auto first = run(), second = run();
  ASSERT_EQ(first.size(), second.size());
  for (size_t i = 0; i < first.size(); ++i) {
    EXPECT_EQ(0, std::memcmp(first[i].data(), second[i].data(), first[i].size() * 4))
        << "result " << i << " differs between two identical runs";
  }
}

}  // namespace
}  // namespace mingpt::testing
