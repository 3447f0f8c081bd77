// The warm training-step path: once every shape has been seen, no oneDNN
// primitive is created, no scratch grows, and nothing outside oneDNN's own
// execute calls the heap (counted through a replaced global operator new);
// and the non-matmul kernels' results do not depend on the thread count.
#include <omp.h>

#include <atomic>
#include <cstdlib>
#include <new>
#include <random>
#include <vector>

#include "backend/backend_test_util.h"
#include "backend/cpu/cpu_backend.h"

namespace {
std::atomic<long> g_allocations{0};
}  // namespace

// Counting replacements of the global allocation functions (the nothrow and
// array forms forward to these by default).
void* operator new(size_t bytes) {
  g_allocations.fetch_add(1, std::memory_order_relaxed);
  if (void* p = std::malloc(bytes ? bytes : 1)) return p;
  throw std::bad_alloc();
}
void* operator new(size_t bytes, std::align_val_t align) {
  g_allocations.fetch_add(1, std::memory_order_relaxed);
  const size_t a = static_cast<size_t>(align);
  if (void* p = std::aligned_alloc(a, (bytes + a - 1) / a * a)) return p;
  throw std::bad_alloc();
}
void operator delete(void* p) noexcept { std::free(p); }
void operator delete(void* p, size_t) noexcept { std::free(p); }
void operator delete(void* p, std::align_val_t) noexcept { std::free(p); }
void operator delete(void* p, size_t, std::align_val_t) noexcept {
  std::free(p);
}

namespace mingpt::cpu {
namespace {

using FVec = std::vector<float>;

// One GPT-block-like pass over every op, at fixed shapes.
struct Workload {
  static constexpr int B = 2, T = 32, C = 48, NH = 3, V = 65;
  static constexpr int N = B * T;
  std::mt19937_64 rng{3};
  FVec Rand(size_t n) { return testing::ToFloat(testing::RandomVec(rng, n)); }

  FVec wte = Rand(V * C), wpe = Rand(T * C), lnw = Rand(C), lnb = Rand(C),
       W = Rand(3 * C * C), bias = Rand(3 * C), dout = Rand(N * 3 * C);
  std::vector<int32_t> idx = testing::RandomInts(rng, N, V),
                       targets = testing::RandomInts(rng, N, V);
  // Outputs.
  FVec x = FVec(N * C), ln = FVec(N * C), mean = FVec(N), rstd = FVec(N),
       qkv = Rand(N * 3 * C), att = FVec(N * C), probs = FVec(B * NH * T),
       h = FVec(N * C), logits = Rand(N * V), losses = FVec(N),
       dx = Rand(N * C), dln = Rand(N * C), dW = FVec(3 * C * C),
       db = FVec(3 * C), dq = FVec(N * C), dk = FVec(N * C), dv = FVec(N * C),
       dwte = FVec(V * C), dwpe = FVec(T * C), dlnw = FVec(C), dlnb = FVec(C),
       m = FVec(V * C), v = FVec(V * C);
  double sumsq = 0;
  long matmul_calls = 0, matmul_allocations = 0;

  // Without matmuls (with_matmul false) their outputs keep the random values
  // they were created with and everything else runs on those.
  void Run(Backend& be, bool with_matmul = true) {
    // Matmul calls go through here: oneDNN's execute makes a few small
    // bookkeeping allocations of its own (its exec-args map), counted apart.
    auto matmul = [&](auto&& call) {
      if (!with_matmul) return;
      const long a = g_allocations.load();
      call();
      matmul_allocations += g_allocations.load() - a;
      ++matmul_calls;
    };
    DropoutSpec d;
    d.p = 0.1f;
    d.seed = 5;
    be.EncoderForward(x.data(), idx.data(), wte.data(), wpe.data(), B, T, C);
    be.LayerNormForward(ln.data(), mean.data(), rstd.data(), x.data(),
                        lnw.data(), lnb.data(), N, C);
    matmul([&] {
      be.MatmulForward(qkv.data(), ln.data(), W.data(), bias.data(), N, C,
                       3 * C);
    });
    // q, k, v taken as [B,T,C] slices of the product (any [B,T,C] data does).
    const float* q = qkv.data();
    const float* k = qkv.data() + N * C;
    const float* vv = qkv.data() + 2 * N * C;
    be.AttentionForward(att.data(), probs.data(), q, k, vv, B, T, C, NH, d);
    be.GeluForward(h.data(), att.data(), N * C);
    be.Add(h.data(), h.data(), x.data(), N * C);
    be.Dropout(h.data(), h.data(), B, int64_t(T) * C, d);
    matmul([&] {
      be.MatmulForward(logits.data(), h.data(), wte.data(), nullptr, N, C, V);
    });
    be.CrossEntropyForward(losses.data(), logits.data(), targets.data(), N, V);
    be.CrossEntropyForwardBackward(losses.data(), logits.data(), logits.data(),
                                   targets.data(), N, V, 1.0f / N);
    matmul([&] {
      be.MatmulBackward(dx.data(), dwte.data(), nullptr, logits.data(),
                        h.data(), wte.data(), N, C, V, false);
    });
    be.GeluBackward(dx.data(), att.data(), dx.data(), N * C);
    be.AttentionBackward(dq.data(), dk.data(), dv.data(), dx.data(), q, k, vv,
                         att.data(), probs.data(), B, T, C, NH, d);
    matmul([&] {
      be.MatmulBackward(dln.data(), dW.data(), db.data(), dout.data(),
                        ln.data(), W.data(), N, C, 3 * C, true);
    });
    be.LayerNormBackward(dx.data(), dlnw.data(), dlnb.data(), dln.data(),
                         x.data(), lnw.data(), mean.data(), rstd.data(), N, C);
    be.EncoderBackward(dwte.data(), dwpe.data(), dx.data(), idx.data(), B, T,
                       C, V);
    sumsq = be.SumSquares(dwte.data(), V * C);
    be.Scale(dwte.data(), V * C, 0.5f);
    be.AdamW(wte.data(), dwte.data(), m.data(), v.data(), V * C, 1e-3f, 0.9f,
             0.95f, 1e-8f, 0.1f, 1);
  }
};

TEST(WarmPath, NoHeapAllocationOnceWarm) {
  CpuBackend backend(2);
  Workload w;
  w.Run(backend);  // cold: creates primitives, grows scratch buffers
  const size_t primitives = backend.num_matmul_primitives();
  const size_t scratchpad = backend.matmul_scratchpad_bytes();
  w.matmul_calls = w.matmul_allocations = 0;
  const long before = g_allocations.load();
  w.Run(backend);
  w.Run(backend);
  EXPECT_EQ(g_allocations.load() - before - w.matmul_allocations, 0)
      << "operator new calls outside oneDNN once warm";
  EXPECT_EQ(backend.num_matmul_primitives(), primitives);
  EXPECT_EQ(backend.matmul_scratchpad_bytes(), scratchpad);
  // oneDNN's own per-execute bookkeeping stays small (no buffers).
  EXPECT_LE(w.matmul_allocations, 20 * w.matmul_calls);
}

TEST(WarmPath, ResultsDoNotDependOnThreadCount) {
  const int saved = omp_get_max_threads();
  Workload one, three;
  {
    CpuBackend backend(1);
    one.Run(backend, /*with_matmul=*/false);
  }
  {
    CpuBackend backend(3);
    three.Run(backend, /*with_matmul=*/false);
  }
  omp_set_num_threads(saved);
  // Column-slice reductions and per-row kernels fix the summation order;
  // SumSquares is a parallel reduction, so only it may differ (slightly).
  // (oneDNN's products may block differently per thread count: left out.)
  EXPECT_EQ(one.x, three.x);
  EXPECT_EQ(one.ln, three.ln);
  EXPECT_EQ(one.att, three.att);
  EXPECT_EQ(one.probs, three.probs);
  EXPECT_EQ(one.losses, three.losses);
  EXPECT_EQ(one.dq, three.dq);
  EXPECT_EQ(one.dk, three.dk);
  EXPECT_EQ(one.dv, three.dv);
  EXPECT_EQ(one.dlnw, three.dlnw);
  EXPECT_EQ(one.dlnb, three.dlnb);
  EXPECT_EQ(one.dwpe, three.dwpe);
  EXPECT_NEAR(one.sumsq, three.sumsq, 1e-12 * one.sumsq);
}

}  // namespace
}  // namespace mingpt::cpu
