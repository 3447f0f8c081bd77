// Micro-benchmark of the CPU backend's ops at one GPT shape: best and median
// time per call (the best is what the code can do; the median shows how noisy
// the machine was), GFLOP/s from the best for the matrix products (2*N*IC*OC
// flops each way) and attention (causal triangle only), with plain
// dnnl_sgemm on the forward shape as the ceiling to compare against.
//   kernels_bench [threads] [B T C NH V]
// defaults: all threads, B=8 T=256 C=384 NH=6 V=65.
// Built with the project (build/kernels_bench; -DMINGPT_BUILD_BENCH=OFF skips
// it); ctest's bench.kernels_bench runs it at a tiny shape so that it keeps
// building and running.

#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <random>
#include <vector>

#include "backend/backend.h"
#include "dnnl.hpp"

namespace {

using Clock = std::chrono::steady_clock;

struct Timing {
  double best, median;
};

Timing Time(const std::function<void()>& fn, int reps) {
  fn();  // warm: primitives, scratch, caches
  std::vector<double> t(reps);
  for (double& s : t) {
    const auto start = Clock::now();
    fn();
    s = std::chrono::duration<double>(Clock::now() - start).count();
  }
  std::sort(t.begin(), t.end());
  return {t[0], t[reps / 2]};
}

void Report(const char* what, Timing t, double flops = 0) {
  std::printf("%-34s %9.3f ms (median %9.3f)", what, t.best * 1e3,
              t.median * 1e3);
  if (flops > 0) std::printf("  %7.1f GFLOP/s", flops / t.best * 1e-9);
  std::printf("\n");
}

}  // namespace

int main(int argc, char** argv) {
  const int threads = argc > 1 ? std::atoi(argv[1]) : 0;
  int B = 8, T = 256, C = 384, NH = 6, V = 65;
  if (argc > 6) {
    B = std::atoi(argv[2]);
    T = std::atoi(argv[3]);
    C = std::atoi(argv[4]);
    NH = std::atoi(argv[5]);
    V = std::atoi(argv[6]);
  }
  auto backend = mingpt::MakeCpuBackend(threads);
  std::printf("threads %d, B=%d T=%d C=%d NH=%d V=%d\n", omp_get_max_threads(),
              B, T, C, NH, V);
  const int N = B * T;
  std::mt19937 rng(1);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  auto rand = [&](size_t n) {
    std::vector<float> v(n);
    for (float& x : v) x = dist(rng);
    return v;
  };
  const int reps = 21;

  // Matrix products at (N, C, C), (N, C, 4C) and (N, 4C, C).
  for (auto [IC, OC] :
       {std::pair{C, C}, std::pair{C, 4 * C}, std::pair{4 * C, C}}) {
    auto inp = rand(size_t(N) * IC), W = rand(size_t(OC) * IC), bias = rand(OC);
    auto out = rand(size_t(N) * OC), dinp = rand(size_t(N) * IC);
    std::vector<float> dW(size_t(OC) * IC), db(OC);
    const double flops = 2.0 * N * IC * OC;
    char name[96];
    std::snprintf(name, sizeof name, "dnnl_sgemm %dx%dx%d", N, IC, OC);
    Report(name,
           Time(
               [&] {
                 dnnl_sgemm('N', 'T', N, OC, IC, 1.0f, inp.data(), IC, W.data(),
                            IC, 0.0f, out.data(), OC);
               },
               reps),
           flops);
    // fp32, then bf16 operands (--precision bf16: the AMX / AVX512-BF16
    // units where the CPU has them), each product with its conversions.
    for (mingpt::MatmulPrecision p :
         {mingpt::MatmulPrecision::kFp32, mingpt::MatmulPrecision::kBf16}) {
      backend->SetMatmulPrecision(p);
      const char* tag = p == mingpt::MatmulPrecision::kBf16 ? " bf16" : "";
      std::snprintf(name, sizeof name, "matmul fwd%s %dx%dx%d", tag, N, IC, OC);
      Report(name,
             Time(
                 [&] {
                   backend->MatmulForward(out.data(), inp.data(), W.data(),
                                          bias.data(), N, IC, OC);
                 },
                 reps),
             flops);
      std::snprintf(name, sizeof name, "matmul bwd%s %dx%dx%d", tag, N, IC, OC);
      Report(name,
             Time(
                 [&] {
                   backend->MatmulBackward(dinp.data(), dW.data(), db.data(),
                                           out.data(), inp.data(), W.data(), N,
                                           IC, OC, false);
                 },
                 reps),
             2 * flops);
    }
    backend->SetMatmulPrecision(mingpt::MatmulPrecision::kFp32);
  }

  auto x = rand(size_t(N) * C), y = rand(size_t(N) * C), w = rand(C),
       b = rand(C);
  std::vector<float> out(size_t(N) * C), mean(N), rstd(N), dx(size_t(N) * C),
      dw(C), db(C);
  Report("layernorm fwd", Time(
                              [&] {
                                backend->LayerNormForward(
                                    out.data(), mean.data(), rstd.data(),
                                    x.data(), w.data(), b.data(), N, C);
                              },
                              reps));
  Report("layernorm bwd", Time(
                              [&] {
                                backend->LayerNormBackward(
                                    dx.data(), dw.data(), db.data(), y.data(),
                                    x.data(), w.data(), mean.data(),
                                    rstd.data(), N, C);
                              },
                              reps));

  mingpt::DropoutSpec drop;
  drop.p = 0.1f;
  drop.seed = 3;
  auto q = rand(size_t(N) * C), k = rand(size_t(N) * C),
       v = rand(size_t(N) * C);
  std::vector<float> probs(size_t(B) * NH * T * T), dq(size_t(N) * C),
      dk(size_t(N) * C), dv(size_t(N) * C);
  const double attn_flops =
      2.0 * B * NH * (double(T) * (T + 1) / 2) * (C / NH) * 2;
  for (float p : {0.0f, 0.1f}) {
    drop.p = p;
    Report(p > 0 ? "attention fwd (dropout 0.1)" : "attention fwd",
           Time(
               [&] {
                 backend->AttentionForward(out.data(), probs.data(), q.data(),
                                           k.data(), v.data(), B, T, C, NH,
                                           drop);
               },
               reps),
           attn_flops);
    Report(p > 0 ? "attention bwd (dropout 0.1)" : "attention bwd",
           Time(
               [&] {
                 backend->AttentionBackward(
                     dq.data(), dk.data(), dv.data(), y.data(), q.data(),
                     k.data(), v.data(), out.data(), probs.data(), B, T, C, NH, drop);
               },
               reps),
           2 * attn_flops);
  }

  auto h = rand(size_t(N) * 4 * C), dh = rand(size_t(N) * 4 * C);
  std::vector<float> hout(h.size());
  Report("gelu fwd [N,4C]", Time(
                                [&] {
                                  backend->GeluForward(hout.data(), h.data(),
                                                       int64_t(h.size()));
                                },
                                reps));
  Report("gelu bwd [N,4C]", Time(
                                [&] {
                                  backend->GeluBackward(hout.data(), h.data(),
                                                        dh.data(),
                                                        int64_t(h.size()));
                                },
                                reps));
  // The operand-format forms (the MLP's kept GELU; its backward with the
  // first product's bias gradient), under bf16 where they convert as they go.
  {
    std::vector<float> dbias(4 * C, 0.0f);
    std::vector<uint16_t> hop(h.size());
    backend->SetMatmulPrecision(mingpt::MatmulPrecision::kBf16);
    Report("gelu fwd -> bf16 operand [N,4C]",
           Time([&] { backend->GeluForwardOperand(hop.data(), h.data(), int64_t(h.size())); },
                reps));
    Report("gelu bwd -> bf16 operand + bias grad",
           Time([&] {
                  backend->GeluBackwardOperand(hop.data(), dbias.data(), h.data(), dh.data(), N,
                                               4 * C);
                },
                reps));
    backend->SetMatmulPrecision(mingpt::MatmulPrecision::kFp32);
  }
  drop.p = 0.1f;
  Report("dropout [N,C]", Time(
                              [&] {
                                backend->Dropout(out.data(), x.data(), B,
                                                 int64_t(T) * C, drop);
                              },
                              reps));
  Report(
      "add [N,C]",
      Time(
          [&] { backend->Add(out.data(), x.data(), y.data(), int64_t(N) * C); },
          reps));

  auto logits = rand(size_t(N) * V);
  std::vector<float> losses(N), dlogits(logits.size());
  std::vector<int32_t> targets(N);
  for (int i = 0; i < N; ++i) targets[i] = i % V;
  Report("crossentropy fwd+bwd", Time(
                                     [&] {
                                       backend->CrossEntropyForwardBackward(
                                           losses.data(), dlogits.data(),
                                           logits.data(), targets.data(), N, V,
                                           1.0f / N);
                                     },
                                     reps));

  const int64_t params = 12LL * C * C;  // one block's weights
  auto p = rand(params), g = rand(params);
  std::vector<float> m(params), vv(params);
  Report("adamw (12 C^2 params)",
         Time(
             [&] {
               backend->AdamW(p.data(), g.data(), m.data(), vv.data(), params,
                              1e-4f, 0.9f, 0.95f, 1e-8f, 0.1f, 1);
             },
             reps));
  return 0;
}
