// clang-format off
#include "backend/cpu/fast_math_pragma.h"  // first: see there
// clang-format on
#include "backend/cpu/attention.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "backend/cpu/dropout.h"
#include "backend/cpu/omp_util.h"
#include "backend/cpu/vec_math.h"
#include "core/check.h"

namespace mingpt::cpu {
namespace {

// Vector width of the build, in floats, and the register tile (kMr rows x
// kNr = two vectors of columns) that fits its register file: 16 of 32 zmm
// accumulators under AVX-512, 8 of 16 ymm under AVX2.
#if defined(__AVX512F__)
constexpr int kVec = 16;
constexpr int kMr = 8;
#elif defined(__AVX2__)
constexpr int kVec = 8;
constexpr int kMr = 4;
#else
constexpr int kVec = 4;
constexpr int kMr = 4;
#endif
constexpr int kNr = 2 * kVec;
// Query rows per block = keys per tile. Blocks and tiles are aligned, so the
// only tile of a block that needs the causal mask is the one on the diagonal.
constexpr int kBlock = 32;
static_assert(kBlock % kNr == 0 && kBlock % kMr == 0);

// GCC's tuning for AVX-512 CPUs prefers 256-bit vectors; the element-wise
// loops over tiles (exp above all) run twice as fast on 512-bit ones.
#if defined(__AVX512F__) && defined(__GNUC__) && !defined(__clang__)
#define MINGPT_WIDE_VECTORS __attribute__((target("prefer-vector-width=512")))
#else
#define MINGPT_WIDE_VECTORS
#endif

inline int64_t RoundUp(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

// Per-thread scratch (elements). Tp = RoundUp(T, kBlock) and hsp =
// RoundUp(hs, kVec): padded rows and channels are zero, so tiles never need
// edge cases in their inner loops.
struct Layout {
  int64_t T, hs, Tp, hsp;
  Layout(int T_, int C, int NH)
      : T(T_), hs(C / NH), Tp(RoundUp(T_, kBlock)), hsp(RoundUp(C / NH, kVec)) {}
  int64_t Tile() const { return int64_t{kBlock} * kBlock; }
  int64_t BlockRows() const { return int64_t{kBlock} * hsp; }
  // K, V; the block's q transposed and output accumulator; the score and
  // dropout multiplier tiles.
  int64_t Forward() const { return 2 * Tp * hsp + 2 * BlockRows() + 2 * Tile(); }
  // q, q^T, dout, dout^T, the dq accumulator and each row's delta_i; the key
  // tile's K, V, dK and dV; the P, dP, dropped P and multiplier tiles.
  int64_t Backward() const { return 5 * Tp * hsp + Tp + 4 * BlockRows() + 4 * Tile(); }
  int64_t PerThread() const { return std::max(Forward(), Backward()); }
};

// ---- register tiles --------------------------------------------------------

// c[r][w] (= or +=) sum_{k < K} a[r * ars + k * aks] * b[k * ldb + w] for a
// kMr x NC tile; with row_scale, c[r][w] is first multiplied by
// row_scale[r] (the online softmax's rescaling, for free in the store). a's
// rows may be columns of a matrix (ars = 1): how tiles held transposed
// enter products without being transposed.
template <int NC, typename Real>
inline void MicroTileGeneric(const Real* a, int64_t ars, int64_t aks, const Real* b, int64_t ldb,
                             int64_t K, Real* c, int64_t ldc, bool add, const Real* row_scale) {
  Real acc[kMr][NC] = {};
  for (int64_t k = 0; k < K; ++k) {
    const Real* bk = b + k * ldb;
    const Real* ak = a + k * aks;
#pragma GCC unroll 8
    for (int r = 0; r < kMr; ++r) {
      const Real ar = ak[r * ars];
#pragma omp simd
      for (int w = 0; w < NC; ++w) acc[r][w] += ar * bk[w];
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < kMr; ++r) {
    Real* cr = c + r * ldc;
    if (add) {
      const Real f = row_scale ? row_scale[r] : Real(1);
#pragma omp simd
      for (int w = 0; w < NC; ++w) cr[w] = cr[w] * f + acc[r][w];
    } else {
#pragma omp simd
      for (int w = 0; w < NC; ++w) cr[w] = acc[r][w];
    }
  }
}

#if defined(__AVX512F__)
// The float tile with explicit zmm registers: GCC's tuning for these CPUs
// prefers 256-bit vectors, and as 4-column loops the 8 x 32 tile would need
// 32 ymm accumulators and spill. The loops are unrolled up front so that
// the accumulators stay registers through the store (else they go through
// the stack on every call).
template <int NC>
inline void MicroTileAvx512(const float* a, int64_t ars, int64_t aks, const float* b, int64_t ldb,
                            int64_t K, float* c, int64_t ldc, bool add,
                            const float* row_scale) {
  constexpr int kNv = NC / 16;
  __m512 acc[kMr][kNv];
#pragma GCC unroll 8
  for (int r = 0; r < kMr; ++r) {
#pragma GCC unroll 2
    for (int v = 0; v < kNv; ++v) acc[r][v] = _mm512_setzero_ps();
  }
  for (int64_t k = 0; k < K; ++k) {
    __m512 bv[kNv];
#pragma GCC unroll 2
    for (int v = 0; v < kNv; ++v) bv[v] = _mm512_loadu_ps(b + k * ldb + 16 * v);
    const float* ak = a + k * aks;
#pragma GCC unroll 8
    for (int r = 0; r < kMr; ++r) {
      const __m512 ar = _mm512_set1_ps(ak[r * ars]);
#pragma GCC unroll 2
      for (int v = 0; v < kNv; ++v) acc[r][v] = _mm512_fmadd_ps(ar, bv[v], acc[r][v]);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < kMr; ++r) {
    float* cr = c + r * ldc;
    const __m512 f = _mm512_set1_ps(row_scale ? row_scale[r] : 1.0f);
#pragma GCC unroll 2
    for (int v = 0; v < kNv; ++v) {
      const __m512 x =
          add ? _mm512_fmadd_ps(_mm512_loadu_ps(cr + 16 * v), f, acc[r][v]) : acc[r][v];
      _mm512_storeu_ps(cr + 16 * v, x);
    }
  }
}
#endif

template <int NC, typename Real>
inline void MicroTile(const Real* a, int64_t ars, int64_t aks, const Real* b, int64_t ldb,
                      int64_t K, Real* c, int64_t ldc, bool add, const Real* row_scale) {
#if defined(__AVX512F__)
  if constexpr (std::is_same_v<Real, float>) {
    MicroTileAvx512<NC>(a, ars, aks, b, ldb, K, c, ldc, add, row_scale);
    return;
  }
#endif
  MicroTileGeneric<NC>(a, ars, aks, b, ldb, K, c, ldc, add, row_scale);
}

// Which terms k of a product with a diagonal tile can be nonzero for rows
// r: all, k >= r (a's rows are keys, k queries) or k <= r (a's rows are
// queries, k keys). Skipping the zero terms halves those products.
enum class Terms { kAll, kFromRow, kToRow };

// c[r][w] (= or +=) sum_{k < K} a[r * ars + k * aks] * b[k * ldb + w] for r
// < m (a multiple of kMr) and w < n (a multiple of kVec), in register tiles;
// row_scale as in MicroTileGeneric. With `terms`, each kMr rows sum over the
// k that can contribute to one of them only.
template <typename Real>
void TileProduct(const Real* a, int64_t ars, int64_t aks, int64_t m, const Real* b, int64_t ldb,
                 int64_t K, int64_t n, Real* c, int64_t ldc, bool add,
                 Terms terms = Terms::kAll, const Real* row_scale = nullptr) {
  for (int64_t r0 = 0; r0 < m; r0 += kMr) {
    const int64_t k0 = terms == Terms::kFromRow ? std::min(r0, K) : 0;
    const int64_t k1 = terms == Terms::kToRow ? std::min(r0 + kMr, K) : K;
    const Real* ar = a + r0 * ars + k0 * aks;
    const Real* bk = b + k0 * ldb;
    Real* cr = c + r0 * ldc;
    const Real* sr = row_scale ? row_scale + r0 : nullptr;
    int64_t c0 = 0;
    for (; c0 + kNr <= n; c0 += kNr) {
      MicroTile<kNr>(ar, ars, aks, bk + c0, ldb, k1 - k0, cr + c0, ldc, add, sr);
    }
    for (; c0 < n; c0 += kVec) {
      MicroTile<kVec>(ar, ars, aks, bk + c0, ldb, k1 - k0, cr + c0, ldc, add, sr);
    }
  }
}

// ---- staging ---------------------------------------------------------------

// dst[j * hsp + c] = factor * src[j * C + c] for j < rows, c < hs; zero for
// the other rows j < n and channels c < hsp.
template <typename Real>
MINGPT_WIDE_VECTORS void StageRows(Real* dst, const Real* src, int64_t rows, int64_t n,
                                   const Layout& L, int64_t C, Real factor = Real(1)) {
  for (int64_t j = 0; j < n; ++j) {
    Real* d = dst + j * L.hsp;
    if (j < rows) {
#pragma omp simd
      for (int64_t c = 0; c < L.hs; ++c) d[c] = factor * src[j * C + c];
    }
    std::fill(d + (j < rows ? L.hs : 0), d + L.hsp, Real(0));
  }
}

// dst[c * kBlock + r] = factor * src[r * C + c] for c < hs, r < rows; zero
// for the other r < kBlock: a block of rows transposed, so that its rows run
// along vectors.
template <typename Real>
MINGPT_WIDE_VECTORS void StageTransposed(Real* dst, const Real* src, int64_t rows,
                                         const Layout& L, int64_t C, Real factor = Real(1)) {
  for (int64_t c = 0; c < L.hs; ++c) {  // contiguous stores; the source
    Real* d = dst + c * kBlock;         // lines stay in L1 across c
    for (int64_t r = 0; r < rows; ++r) d[r] = factor * src[r * C + c];
    std::fill(d + rows, d + kBlock, Real(0));
  }
}

// mult[j * kBlock + r] = dropout multiplier of element (i0 + r, j0 + j),
// transposed like the tiles, for the rows r < rows and keys j0 + j <= i0 +
// r; 0 elsewhere (masked).
template <typename Real>
MINGPT_WIDE_VECTORS void TileMultipliers(const DropoutSpec& dropout, int64_t b, int64_t h,
                                         int64_t T, int64_t i0, int64_t j0, int64_t rows,
                                         Real* mult) {
  std::fill(mult, mult + kBlock * kBlock, Real(0));
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t i = i0 + r;
    ForEachMaskChunk<Real>(dropout, b, (h * T + i) * T + j0, std::min<int64_t>(kBlock, i + 1 - j0),
                           [&](int64_t c0, int64_t len, const Real* m) {
                             for (int64_t j = 0; j < len; ++j) mult[(c0 + j) * kBlock + r] = m[j];
                           });
  }
}

// ---- forward ---------------------------------------------------------------
//
// Tiles are held transposed, st[j * kBlock + r] for key j0 + j and query i0
// + r: the softmax's maxima and sums over keys are then sums of vectors
// (queries in the lanes), where row-major tiles would need a horizontal
// reduction per row. The product forming them, K Q^T, reads K's rows as
// they are (staged, zero-padded) and q's block transposed.

// Running statistics of a query block: max and sum over the keys so far,
// and the latest tile's correction exp(old max - new max).
template <typename Real>
struct RowStats {
  Real max[kBlock], sum[kBlock], corr[kBlock];
};

// One key tile's step of the online softmax: st holds the tile's scores,
// which become probabilities relative to the new running max; the running
// sum is rescaled here, the output accumulator by the caller (stats.corr).
template <typename Real>
MINGPT_WIDE_VECTORS void OnlineSoftmaxTile(Real* st, RowStats<Real>& stats, bool diagonal) {
  constexpr Real kMasked = -std::numeric_limits<Real>::infinity();
  Real max[kBlock], total[kBlock];
  Real* corr = stats.corr;
  std::copy(stats.max, stats.max + kBlock, max);
  std::fill(total, total + kBlock, Real(0));
  for (int j = 0; j < kBlock; ++j) {
    Real* s = st + j * kBlock;
    if (diagonal) {  // keys past the query are masked (padded keys among them)
#pragma omp simd
      for (int r = 0; r < kBlock; ++r) s[r] = j <= r ? s[r] : kMasked;
    }
#pragma omp simd
    for (int r = 0; r < kBlock; ++r) max[r] = s[r] > max[r] ? s[r] : max[r];
  }
  // The first tile holds key 0 of every row, so the maxima are finite from
  // there on, and the first correction is exp(-inf) = 0.
#pragma omp simd
  for (int r = 0; r < kBlock; ++r) corr[r] = Exp(stats.max[r] - max[r]);
  for (int j = 0; j < kBlock; ++j) {
    Real* s = st + j * kBlock;
#pragma omp simd
    for (int r = 0; r < kBlock; ++r) {
      s[r] = Exp(s[r] - max[r]);
      total[r] += s[r];
    }
  }
#pragma omp simd
  for (int r = 0; r < kBlock; ++r) {
    stats.max[r] = max[r];
    stats.sum[r] = stats.sum[r] * corr[r] + total[r];
  }
}

template <typename Real>
MINGPT_WIDE_VECTORS void ForwardHead(Real* out, Real* lse, const Real* q, const Real* k,
                                     const Real* v, int64_t C, const Layout& L, int64_t b,
                                     int64_t h, const DropoutSpec& dropout, Real* scratch) {
  const int64_t T = L.T, hs = L.hs, hsp = L.hsp;
  const Real scale = Real(1) / std::sqrt(static_cast<Real>(hs));
  Real* kp = scratch;                // [Tp, hsp]        K
  Real* vp = kp + L.Tp * hsp;        // [Tp, hsp]        V
  Real* qt = vp + L.Tp * hsp;        // [hs, kBlock]     (q / sqrt(hs))^T of the block
  Real* o = qt + L.BlockRows();      // [kBlock, hsp]    unnormalised output
  Real* st = o + L.BlockRows();      // [kBlock, kBlock] scores^T, then P^T
  Real* mult = st + L.Tile();        // [kBlock, kBlock] dropout multipliers^T
  StageRows(kp, k, T, L.Tp, L, C);
  StageRows(vp, v, T, L.Tp, L, C);
  for (int64_t i0 = 0; i0 < T; i0 += kBlock) {
    const int64_t rows = std::min<int64_t>(kBlock, T - i0);
    StageTransposed(qt, q + i0 * C, rows, L, C, scale);
    std::fill(o, o + L.BlockRows(), Real(0));
    RowStats<Real> stats;
    std::fill(stats.max, stats.max + kBlock, -std::numeric_limits<Real>::infinity());
    std::fill(stats.sum, stats.sum + kBlock, Real(0));
    for (int64_t j0 = 0; j0 <= i0; j0 += kBlock) {  // tiles above the diagonal: none
      TileProduct(kp + j0 * hsp, hsp, 1, kBlock, qt, kBlock, hs, kBlock, st, kBlock, false);
      OnlineSoftmaxTile(st, stats, j0 == i0);
      if (dropout.enabled()) {  // the sum is of P; the output of dropped P
        TileMultipliers(dropout, b, h, T, i0, j0, rows, mult);
#pragma omp simd
        for (int64_t e = 0; e < L.Tile(); ++e) st[e] *= mult[e];
      }
      // o = o * corr + P V, P's rows being st's columns.
      TileProduct(st, 1, kBlock, kBlock, vp + j0 * hsp, hsp, kBlock, hsp, o, hsp, true,
                  j0 == i0 ? Terms::kToRow : Terms::kAll, stats.corr);
    }
    for (int64_t r = 0; r < rows; ++r) {
      const Real inv = Real(1) / stats.sum[r];
      Real* orow = out + (i0 + r) * C;
#pragma omp simd
      for (int64_t c = 0; c < hs; ++c) orow[c] = o[r * hsp + c] * inv;
      lse[i0 + r] = stats.max[r] + std::log(stats.sum[r]);
    }
  }
}

// ---- backward --------------------------------------------------------------
//
// Tiles transposed as in the forward: delta_i and dS need per-query values
// in the lanes. S^T = K q^T and dP^T = V dout^T take the key tile's rows and
// the query block's columns (q and dout staged transposed, once per head);
// the products with the tiles read them as rows (dK, dV) or columns (dq).

// Buffers of one head's backward; see BackwardHead.
template <typename Real>
struct BackwardBuffers {
  Real *qs, *qt, *dos, *dot, *dq, *delta;  // whole head
  Real *kj, *vj, *dk, *dv;                 // key tile
  Real *p, *dp, *d, *mult;                 // (query block, key tile), transposed
};

// Per (query block i0, key tile j0): P^T = exp(S^T - lse) (0 where masked
// or past the end) and dP^T = V dout^T times the dropout multipliers; D^T =
// P^T times them (D = P without dropout).
template <typename Real>
MINGPT_WIDE_VECTORS void ProbabilityTiles(const BackwardBuffers<Real>& buf, const Real* lse,
                                          const Layout& L, int64_t b, int64_t h, int64_t i0,
                                          int64_t j0, const DropoutSpec& dropout) {
  const int64_t hs = L.hs, hsp = L.hsp;
  const int64_t rows = std::min<int64_t>(kBlock, L.T - i0);
  TileProduct(buf.kj, hsp, 1, kBlock, buf.qt + i0 * hsp, kBlock, hs, kBlock, buf.p, kBlock,
              false);
  TileProduct(buf.vj, hsp, 1, kBlock, buf.dot + i0 * hsp, kBlock, hs, kBlock, buf.dp, kBlock,
              false);
  Real l[kBlock];
  for (int64_t r = 0; r < kBlock; ++r) l[r] = r < rows ? lse[i0 + r] : Real(0);
  const int64_t shift = i0 - j0;  // key j0 + j is visible to query i0 + r iff j <= r + shift
  for (int64_t j = 0; j < kBlock; ++j) {
    Real* pj = buf.p + j * kBlock;
#pragma omp simd
    for (int64_t r = 0; r < kBlock; ++r) {
      pj[r] = j <= r + shift && r < rows ? Exp(pj[r] - l[r]) : Real(0);
    }
  }
  if (dropout.enabled()) {
    TileMultipliers(dropout, b, h, L.T, i0, j0, rows, buf.mult);
#pragma omp simd
    for (int64_t e = 0; e < L.Tile(); ++e) {
      buf.d[e] = buf.p[e] * buf.mult[e];
      buf.dp[e] *= buf.mult[e];
    }
  }
}

// Stages key tile j0's rows of K and V.
template <typename Real>
void StageKeyTile(const BackwardBuffers<Real>& buf, const Real* k, const Real* v, int64_t C,
                  const Layout& L, int64_t j0) {
  const int64_t cols = std::min<int64_t>(kBlock, L.T - j0);
  StageRows(buf.kj, k + j0 * C, cols, kBlock, L, C);
  StageRows(buf.vj, v + j0 * C, cols, kBlock, L, C);
}

// Backward of one head, flash-attention style with key tiles outermost:
// delta_i = sum_j P_ij dP_ij = dout_i . out_i (dropout included: out_i =
// sum_j dropped P_ij V_j) from the forward's output, then per key tile dK
// and dV of the tile in scratch and dq of every block below it. Tiles above
// the diagonal are skipped; each tile's dropout mask is drawn once.
template <typename Real>
MINGPT_WIDE_VECTORS void BackwardHead(Real* dq, Real* dk, Real* dv, const Real* dout,
                                      const Real* q, const Real* k, const Real* v,
                                      const Real* out, const Real* lse, int64_t C,
                                      const Layout& L, int64_t b, int64_t h,
                                      const DropoutSpec& dropout, Real* scratch) {
  const int64_t T = L.T, hs = L.hs, Tp = L.Tp, hsp = L.hsp;
  const Real scale = Real(1) / std::sqrt(static_cast<Real>(hs));
  BackwardBuffers<Real> buf;
  buf.qs = scratch;                  // [Tp, hsp]        q / sqrt(hs)
  buf.qt = buf.qs + Tp * hsp;        // [Tp/kBlock][hs, kBlock] its blocks transposed
  buf.dos = buf.qt + Tp * hsp;       // [Tp, hsp]        dout
  buf.dot = buf.dos + Tp * hsp;      // [Tp/kBlock][hs, kBlock] its blocks transposed
  buf.dq = buf.dot + Tp * hsp;       // [Tp, hsp]        dq * sqrt(hs)
  buf.delta = buf.dq + Tp * hsp;     // [Tp]             delta_i
  buf.kj = buf.delta + Tp;           // [kBlock, hsp]    K of the tile
  buf.vj = buf.kj + L.BlockRows();   // [kBlock, hsp]    V of the tile
  buf.dk = buf.vj + L.BlockRows();   // [kBlock, hsp]    dK of the tile
  buf.dv = buf.dk + L.BlockRows();   // [kBlock, hsp]    dV of the tile
  buf.p = buf.dv + L.BlockRows();    // [kBlock, kBlock] P^T, then dS^T / scale
  buf.dp = buf.p + L.Tile();         // [kBlock, kBlock] dP^T
  buf.mult = buf.dp + L.Tile();      // [kBlock, kBlock] dropout multipliers^T
  buf.d = buf.mult + L.Tile();       // [kBlock, kBlock] D^T (P^T without dropout)
  if (!dropout.enabled()) buf.d = buf.p;
  StageRows(buf.qs, q, T, Tp, L, C, scale);
  StageRows(buf.dos, dout, T, Tp, L, C);
  for (int64_t i0 = 0; i0 < T; i0 += kBlock) {
    const int64_t rows = std::min<int64_t>(kBlock, T - i0);
    StageTransposed(buf.qt + i0 * hsp, q + i0 * C, rows, L, C, scale);
    StageTransposed(buf.dot + i0 * hsp, dout + i0 * C, rows, L, C);
  }
  std::fill(buf.dq, buf.dq + Tp * hsp + Tp, Real(0));  // dq and delta (padded rows 0)
  for (int64_t i = 0; i < T; ++i) {
    const Real* di = dout + i * C;
    const Real* oi = out + i * C;
    Real sum = 0;
#pragma omp simd reduction(+ : sum)
    for (int64_t c = 0; c < hs; ++c) sum += di[c] * oi[c];
    buf.delta[i] = sum;
  }

  for (int64_t j0 = 0; j0 < T; j0 += kBlock) {
    StageKeyTile(buf, k, v, C, L, j0);
    std::fill(buf.dk, buf.dk + 2 * L.BlockRows(), Real(0));  // dk and dv
    const int64_t cols = std::min<int64_t>(kBlock, T - j0);
    for (int64_t i0 = j0; i0 < T; i0 += kBlock) {
      ProbabilityTiles(buf, lse, L, b, h, i0, j0, dropout);
      const bool diagonal = i0 == j0;
      // dV += D^T dout.
      TileProduct(buf.d, kBlock, 1, kBlock, buf.dos + i0 * hsp, hsp, kBlock, hsp, buf.dv, hsp,
                  true, diagonal ? Terms::kFromRow : Terms::kAll);
      // dS / scale = P (dP - delta_i), in place of P (D, if distinct, is used).
      const Real* delta = buf.delta + i0;
      for (int64_t j = 0; j < kBlock; ++j) {
        Real* pj = buf.p + j * kBlock;
        const Real* dpj = buf.dp + j * kBlock;
#pragma omp simd
        for (int64_t r = 0; r < kBlock; ++r) pj[r] *= dpj[r] - delta[r];
      }
      // dK += dS^T (q / sqrt(hs)): the scale comes with the staged q.
      TileProduct(buf.p, kBlock, 1, kBlock, buf.qs + i0 * hsp, hsp, kBlock, hsp, buf.dk, hsp,
                  true, diagonal ? Terms::kFromRow : Terms::kAll);
      // dq * sqrt(hs) += (dS / scale) K, dS's rows being the tile's columns;
      // scaled once at the end.
      TileProduct(buf.p, 1, kBlock, kBlock, buf.kj, hsp, kBlock, hsp, buf.dq + i0 * hsp, hsp,
                  true, diagonal ? Terms::kToRow : Terms::kAll);
    }
    for (int64_t r = 0; r < cols; ++r) {
      std::copy(buf.dk + r * hsp, buf.dk + r * hsp + hs, dk + (j0 + r) * C);
      std::copy(buf.dv + r * hsp, buf.dv + r * hsp + hs, dv + (j0 + r) * C);
    }
  }
  for (int64_t i = 0; i < T; ++i) {
    Real* d = dq + i * C;
    const Real* a = buf.dq + i * hsp;
#pragma omp simd
    for (int64_t c = 0; c < hs; ++c) d[c] = a[c] * scale;
  }
}

// p[0..n) = softmax(p[0..n)); returns log(sum_j exp(p_j)) of the input.
template <typename Real>
inline Real SoftmaxInPlace(Real* p, int64_t n) {
  Real max_s = -std::numeric_limits<Real>::infinity();
#pragma omp simd reduction(max : max_s)
  for (int64_t j = 0; j < n; ++j) max_s = p[j] > max_s ? p[j] : max_s;
  Real sum = 0;
#pragma omp simd reduction(+ : sum)
  for (int64_t j = 0; j < n; ++j) {
    p[j] = Exp(p[j] - max_s);
    sum += p[j];
  }
  const Real inv_sum = Real(1) / sum;
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) p[j] *= inv_sum;
  return max_s + std::log(sum);
}

}  // namespace

int64_t AttentionScratchSize(int T, int C, int NH, int threads) {
  MINGPT_CHECK(NH > 0 && C % NH == 0, "C=%d not divisible by NH=%d", C, NH);
  return Layout(T, C, NH).PerThread() * threads;
}

namespace {

// Runs fn(at, bh, b, h, scratch) for every (batch row, head) pair in
// parallel: `at` is the head's offset in a [B,T,C] tensor, `bh` its index
// among the B*NH heads, `scratch` the calling thread's slice.
template <typename Real, typename Fn>
void ForEachHead(int B, int T, int C, int NH, Real* scratch, int threads, Fn&& fn) {
  MINGPT_CHECK(NH > 0 && C % NH == 0, "C=%d not divisible by NH=%d", C, NH);
  MINGPT_CHECK(threads > 0, "threads=%d", threads);
  const Layout L(T, C, NH);
  const int64_t hs = L.hs;
#pragma omp parallel for collapse(2) schedule(static) \
    num_threads(threads) if (Parallel(int64_t{B} * NH * T * T * hs))
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t h = 0; h < NH; ++h) {
      fn(b * T * C + h * hs, b * NH + h, b, h, L,
         scratch + omp_get_thread_num() * L.PerThread());
    }
  }
}

}  // namespace

template <typename Real>
void AttentionForward(Real* out, Real* lse, const Real* q, const Real* k,
                      const Real* v, int B, int T, int C, int NH,
                      const DropoutSpec& dropout, Real* scratch, int threads) {
  ForEachHead(B, T, C, NH, scratch, threads,
              [&](int64_t at, int64_t bh, int64_t b, int64_t h, const Layout& L, Real* s) {
                ForwardHead(out + at, lse + bh * T, q + at, k + at, v + at, C, L, b, h,
                            dropout, s);
              });
}

template <typename Real>
void AttentionBackward(Real* dq, Real* dk, Real* dv, const Real* dout,
                       const Real* q, const Real* k, const Real* v, const Real* out,
                       const Real* lse, int B, int T, int C, int NH,
                       const DropoutSpec& dropout, Real* scratch, int threads) {
  ForEachHead(B, T, C, NH, scratch, threads,
              [&](int64_t at, int64_t bh, int64_t b, int64_t h, const Layout& L, Real* s) {
                BackwardHead(dq + at, dk + at, dv + at, dout + at, q + at, k + at, v + at,
                             out + at, lse + bh * T, C, L, b, h, dropout, s);
              });
}

template <typename Real>
void AttentionDecode(Real* out, const Real* q, const Real* k_cache, const Real* v_cache, int T,
                     int C, int NH) {
  const int hs = C / NH;
  const Real scale = Real(1) / std::sqrt(static_cast<Real>(hs));
#pragma omp parallel for if (static_cast<int64_t>(T) * C > 65536)
  for (int h = 0; h < NH; ++h) {
    const Real* qh = q + h * hs;
    std::vector<Real> p(T);
    for (int j = 0; j < T; ++j) {
      const Real* kj = k_cache + static_cast<int64_t>(j) * C + h * hs;
      Real s = 0;
#pragma omp simd reduction(+ : s)
      for (int c = 0; c < hs; ++c) s += qh[c] * kj[c];
      p[j] = s * scale;
    }
    SoftmaxInPlace(p.data(), T);
    Real* oh = out + h * hs;
    for (int c = 0; c < hs; ++c) oh[c] = 0;
    for (int j = 0; j < T; ++j) {
      const Real* vj = v_cache + static_cast<int64_t>(j) * C + h * hs;
      const Real pj = p[j];
#pragma omp simd
      for (int c = 0; c < hs; ++c) oh[c] += pj * vj[c];
    }
  }
}

template void AttentionDecode<float>(float*, const float*, const float*, const float*, int, int,
                                     int);
template void AttentionDecode<double>(double*, const double*, const double*, const double*, int,
                                      int, int);
template void AttentionForward<float>(float*, float*, const float*,
                                      const float*, const float*, int, int, int,
                                      int, const DropoutSpec&, float*, int);
template void AttentionForward<double>(double*, double*, const double*,
                                       const double*, const double*, int, int,
                                       int, int, const DropoutSpec&, double*,
                                       int);
template void AttentionBackward<float>(float*, float*, float*, const float*,
                                       const float*, const float*, const float*,
                                       const float*, const float*, int, int, int, int,
                                       const DropoutSpec&, float*, int);
template void AttentionBackward<double>(double*, double*, double*,
                                        const double*, const double*,
                                        const double*, const double*, const double*,
                                        const double*, int, int, int, int,
                                        const DropoutSpec&, double*, int);

}  // namespace mingpt::cpu
