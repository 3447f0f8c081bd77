// Micro-benchmark of one backend's ops at one GPT shape: best and median
// time per call (the best is what the code can do; the median shows how noisy
// the machine was), GFLOP/s from the best for the matrix products (2*N*IC*OC
// flops each way) and attention (causal triangle only); on the CPU, plain
// dnnl_sgemm on the forward shape as the ceiling to compare against.
//   kernels_bench [threads] [B T C NH V] [cpu|cuda]
// defaults: all threads, B=8 T=256 C=384 NH=6 V=65, cpu. Under cuda every
// buffer is device memory and each call is timed to its completion
// (Backend::Synchronize), so the figures are the kernels' own; attention is
// timed at bf16 too, where the CUDA backend takes its tensor-core kernels
// (and, on CUDA, its mma.sync kernels: the rows tagged "bf16 mma").
// `kernels_bench 8 16 1024 768 12 65 cuda` is GPT-2-small's step shape.
// Built with the project (build/kernels_bench; -DMINGPT_BUILD_BENCH=OFF skips
// it); ctest's bench.kernels_bench runs it at a tiny shape so that it keeps
// building and running (and on the CUDA emulator where the build has CUDA).

#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "dnnl.hpp"
#include "train/accelerator.h"

namespace {

using Clock = std::chrono::steady_clock;
using mingpt::Backend;
using mingpt::MatmulPrecision;

struct Timing {
  double best, median;
};

// Backend memory, filled from the host.
class Buf {
 public:
  Buf(Backend* be, size_t bytes) : be_(be), p_(be->Malloc(bytes)) { be->Memset0(p_, bytes); }
  ~Buf() { be_->Free(p_); }
  Buf(const Buf&) = delete;
  Buf& operator=(const Buf&) = delete;
  template <typename T>
  Buf(Backend* be, const std::vector<T>& host) : Buf(be, host.size() * sizeof(T)) {
    be->CopyToDevice(p_, host.data(), host.size() * sizeof(T));
  }
  float* f() const { return static_cast<float*>(p_); }
  template <typename T>
  T* as() const {
    return static_cast<T*>(p_);
  }

 private:
  Backend* be_;
  void* p_;
};

class Bench {
 public:
  Bench(Backend* be, int reps) : be_(be), reps_(reps) {}

  // Each call runs to its completion: the host waits for the device.
  Timing Time(const std::function<void()>& fn) {
    fn();  // warm: primitives, plans, scratch, caches
    be_->Synchronize();
    std::vector<double> t(reps_);
    for (double& s : t) {
      const auto start = Clock::now();
      fn();
      be_->Synchronize();
      s = std::chrono::duration<double>(Clock::now() - start).count();
    }
    std::sort(t.begin(), t.end());
    return {t[0], t[reps_ / 2]};
  }

  void Report(const std::string& what, const std::function<void()>& fn, double flops = 0) {
    const Timing t = Time(fn);
    std::printf("%-38s %9.3f ms (median %9.3f)", what.c_str(), t.best * 1e3, t.median * 1e3);
    if (flops > 0) std::printf("  %8.1f GFLOP/s", flops / t.best * 1e-9);
    std::printf("\n");
  }

 private:
  Backend* be_;
  int reps_;
};

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
  const std::string wanted = argc > 7 ? argv[7] : "cpu";
  auto accelerator = mingpt::ResolveAccelerator(wanted);
  if (!accelerator.ok()) {
    std::fprintf(stderr, "kernels_bench: %s\n", accelerator.status().message().c_str());
    return 1;
  }
  auto made = mingpt::MakeBackend(*accelerator, 0, threads);
  if (!made.ok()) {
    std::fprintf(stderr, "kernels_bench: %s\n", made.status().message().c_str());
    return 1;
  }
  const std::unique_ptr<Backend> backend = std::move(made).value();
  Backend* be = backend.get();
  const bool cpu = *accelerator == "cpu";
  std::printf("%s, threads %d, B=%d T=%d C=%d NH=%d V=%d\n", accelerator->c_str(),
              omp_get_max_threads(), B, T, C, NH, V);
  const int N = B * T;
  std::mt19937 rng(1);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  auto rand = [&](size_t n) {
    std::vector<float> v(n);
    for (float& x : v) x = dist(rng);
    return v;
  };
  Bench bench(be, 21);
  char name[96];

  // Matrix products at (N, C, C), (N, C, 4C) and (N, 4C, C).
  for (auto [IC, OC] : {std::pair{C, C}, std::pair{C, 4 * C}, std::pair{4 * C, C}}) {
    const Buf inp(be, rand(size_t(N) * IC)), W(be, rand(size_t(OC) * IC)), bias(be, rand(OC));
    const Buf out(be, size_t(N) * OC * 4), dinp(be, size_t(N) * IC * 4);
    const Buf dW(be, size_t(OC) * IC * 4), db(be, size_t(OC) * 4);
    const double flops = 2.0 * N * IC * OC;
    if (cpu) {
      std::snprintf(name, sizeof name, "dnnl_sgemm %dx%dx%d", N, IC, OC);
      bench.Report(
          name,
          [&] {
            dnnl_sgemm('N', 'T', N, OC, IC, 1.0f, inp.f(), IC, W.f(), IC, 0.0f, out.f(), OC);
          },
          flops);
    }
    // fp32, then bf16 operands (--precision bf16), each product with its
    // conversions.
    for (MatmulPrecision p : {MatmulPrecision::kFp32, MatmulPrecision::kBf16}) {
      be->SetMatmulPrecision(p);
      const char* tag = p == MatmulPrecision::kBf16 ? " bf16" : "";
      std::snprintf(name, sizeof name, "matmul fwd%s %dx%dx%d", tag, N, IC, OC);
      bench.Report(
          name, [&] { be->MatmulForward(out.f(), inp.f(), W.f(), bias.f(), N, IC, OC); }, flops);
      std::snprintf(name, sizeof name, "matmul bwd%s %dx%dx%d", tag, N, IC, OC);
      bench.Report(
          name,
          [&] {
            be->MatmulBackward(dinp.f(), dW.f(), db.f(), out.f(), inp.f(), W.f(), N, IC, OC,
                               false);
          },
          2 * flops);
    }
    be->SetMatmulPrecision(MatmulPrecision::kFp32);
  }

  const Buf x(be, rand(size_t(N) * C)), y(be, rand(size_t(N) * C)), w(be, rand(C)),
      b(be, rand(C));
  const Buf out(be, size_t(N) * C * 4), mean(be, size_t(N) * 4), rstd(be, size_t(N) * 4);
  const Buf dx(be, size_t(N) * C * 4), dw(be, size_t(C) * 4), db(be, size_t(C) * 4);
  bench.Report("layernorm fwd", [&] {
    be->LayerNormForward(out.f(), mean.f(), rstd.f(), x.f(), w.f(), b.f(), N, C);
  });
  bench.Report("layernorm bwd", [&] {
    be->LayerNormBackward(dx.f(), dw.f(), db.f(), y.f(), x.f(), w.f(), mean.f(), rstd.f(), N, C);
  });

  // Attention, fp32 and bf16 (the CUDA backend's tensor-core kernels), and
  // on CUDA bf16 again under MINGPT_CUDA_ATTENTION=mma (the mma.sync
  // kernels, attention_mma.cu, for head sizes 32, 64 and 128; the others
  // run the tensor-core kernels again).
  const Buf q(be, rand(size_t(N) * C)), k(be, rand(size_t(N) * C)), v(be, rand(size_t(N) * C));
  const Buf lse(be, size_t(B) * NH * T * 4), dq(be, size_t(N) * C * 4),
      dk(be, size_t(N) * C * 4), dv(be, size_t(N) * C * 4);
  const double attn_flops = 2.0 * B * NH * (double(T) * (T + 1) / 2) * (C / NH) * 2;
  mingpt::DropoutSpec drop;
  drop.seed = 3;
  struct AttentionRun {
    MatmulPrecision precision;
    const char* mode;  // MINGPT_CUDA_ATTENTION, or null to leave it as it is
  };
  std::vector<AttentionRun> attention_runs = {{MatmulPrecision::kFp32, nullptr},
                                              {MatmulPrecision::kBf16, nullptr}};
  if (!cpu) attention_runs.push_back({MatmulPrecision::kBf16, "mma"});
  for (const AttentionRun& run : attention_runs) {
    const MatmulPrecision precision = run.precision;
    be->SetMatmulPrecision(precision);
    const char* saved_env = std::getenv("MINGPT_CUDA_ATTENTION");
    const std::string saved = saved_env ? saved_env : "";
    if (run.mode) setenv("MINGPT_CUDA_ATTENTION", run.mode, 1);
    const std::string tag = std::string(precision == MatmulPrecision::kBf16 ? " bf16" : "") +
                            (run.mode ? std::string(" ") + run.mode : "");
    for (float p : {0.0f, 0.1f}) {
      drop.p = p;
      const std::string dropped = p > 0 ? " (dropout 0.1)" : "";
      bench.Report(
          "attention fwd" + tag + dropped,
          [&] { be->AttentionForward(out.f(), lse.f(), q.f(), k.f(), v.f(), B, T, C, NH, drop); },
          attn_flops);
      bench.Report(
          "attention bwd" + tag + dropped,
          [&] {
            be->AttentionBackward(dq.f(), dk.f(), dv.f(), y.f(), q.f(), k.f(), v.f(), out.f(),
                                  lse.f(), B, T, C, NH, drop);
          },
          2 * attn_flops);
    }
    if (run.mode) {
      if (saved_env) {
        setenv("MINGPT_CUDA_ATTENTION", saved.c_str(), 1);
      } else {
        unsetenv("MINGPT_CUDA_ATTENTION");
      }
    }
  }
  be->SetMatmulPrecision(MatmulPrecision::kFp32);

  const size_t nh = size_t(N) * 4 * C;
  const Buf h(be, rand(nh)), dh(be, rand(nh)), hout(be, nh * 4);
  bench.Report("gelu fwd [N,4C]", [&] { be->GeluForward(hout.f(), h.f(), int64_t(nh)); });
  bench.Report("gelu bwd [N,4C]",
               [&] { be->GeluBackward(hout.f(), h.f(), dh.f(), int64_t(nh)); });
  // The operand-format forms (the MLP's kept GELU; its backward with the
  // first product's bias gradient), under bf16 where they convert as they go.
  {
    const Buf dbias(be, size_t(4) * C * 4), hop(be, nh * 2);
    be->SetMatmulPrecision(MatmulPrecision::kBf16);
    bench.Report("gelu fwd -> bf16 operand [N,4C]",
                 [&] { be->GeluForwardOperand(hop.f(), h.f(), int64_t(nh)); });
    bench.Report("gelu bwd -> bf16 operand + bias grad", [&] {
      be->GeluBackwardOperand(hop.f(), dbias.f(), h.f(), dh.f(), N, 4 * C);
    });
    be->SetMatmulPrecision(MatmulPrecision::kFp32);
  }
  drop.p = 0.1f;
  bench.Report("dropout [N,C]", [&] { be->Dropout(out.f(), x.f(), B, int64_t(T) * C, drop); });
  bench.Report("add [N,C]", [&] { be->Add(out.f(), x.f(), y.f(), int64_t(N) * C); });

  std::vector<int32_t> host_idx(N);
  for (int i = 0; i < N; ++i) host_idx[i] = static_cast<int32_t>(rng() % V);
  const Buf idx(be, host_idx), wte(be, rand(size_t(V) * C)), wpe(be, rand(size_t(T) * C));
  const Buf dwte(be, size_t(V) * C * 4), dwpe(be, size_t(T) * C * 4);
  bench.Report("encoder fwd", [&] { be->EncoderForward(out.f(), idx.as<int32_t>(), wte.f(),
                                                       wpe.f(), B, T, C); });
  bench.Report("encoder bwd", [&] {
    be->EncoderBackward(dwte.f(), dwpe.f(), y.f(), idx.as<int32_t>(), B, T, C, V);
  });

  const Buf logits(be, rand(size_t(N) * V)), losses(be, size_t(N) * 4),
      dlogits(be, size_t(N) * V * 4);
  bench.Report("crossentropy fwd+bwd", [&] {
    be->CrossEntropyForwardBackward(losses.f(), dlogits.f(), logits.f(), idx.as<int32_t>(), N, V,
                                    1.0f / N);
  });

  const int64_t params = 12LL * C * C;  // one block's weights
  const Buf p(be, rand(params)), g(be, rand(params)), m(be, params * 4), vv(be, params * 4);
  bench.Report("adamw (12 C^2 params)", [&] {
    be->AdamW(p.f(), g.f(), m.f(), vv.f(), params, 1e-4f, 0.9f, 0.95f, 1e-8f, 0.1f, 1);
  });
  return 0;
}
