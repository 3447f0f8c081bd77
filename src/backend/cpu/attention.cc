// clang-format off
#include "backend/cpu/fast_math_pragma.h"  // first: see there
// clang-format on
#include "backend/cpu/attention.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "backend/cpu/dropout.h"
#include "backend/cpu/omp_util.h"
#include "backend/cpu/vec_math.h"
#include "core/check.h"

namespace mingpt::cpu {
namespace {

constexpr int kRows = 4;    // register tile: rows
constexpr int kCols = 8;    // register tile: columns (one AVX vector of float)
constexpr int kGroup = 16;  // backward: rows per dK/dV accumulation pass

inline int64_t RoundUp(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

// Per-thread scratch layout (elements), padded sizes Tp = RoundUp(T, kCols),
// hsp = RoundUp(hs, kCols).
struct Layout {
  int64_t T, hs, Tp, hsp;
  Layout(int T_, int C, int NH)
      : T(T_),
        hs(C / NH),
        Tp(RoundUp(T_, kCols)),
        hsp(RoundUp(C / NH, kCols)) {}
  int64_t Forward() const { return hs * Tp + T * hsp + 2 * kRows * Tp; }
  int64_t Backward() const {
    return 2 * hs * Tp + T * hsp + 2 * Tp * hsp + 2 * kGroup * Tp +
           2 * kGroup * hsp + kRows * Tp;
  }
  int64_t PerThread() const { return std::max(Forward(), Backward()); }
};

// acc[r][w] = sum_{c < K} a[r][c * lda] * b[c * ldb + w]: a 4 x 8 register
// tile (a's rows may be strided columns of a matrix: lda).
template <typename Real>
inline void TileProduct(const Real* const a[kRows], int64_t lda, const Real* b,
                        int64_t ldb, int64_t K, Real acc[kRows][kCols]) {
  for (int r = 0; r < kRows; ++r) {
    for (int w = 0; w < kCols; ++w) acc[r][w] = 0;
  }
  for (int64_t c = 0; c < K; ++c) {
    const Real* bc = b + c * ldb;
    for (int r = 0; r < kRows; ++r) {
      const Real ar = a[r][c * lda];
#pragma omp simd
      for (int w = 0; w < kCols; ++w) acc[r][w] += ar * bc[w];
    }
  }
}

// dst[c * Tp + j] = src[j * C + c]: a head's [T, hs] slice transposed, the
// columns j in [T, Tp) zero.
template <typename Real>
void StageTransposed(Real* dst, const Real* src, const Layout& L, int64_t C) {
  for (int64_t c = 0; c < L.hs; ++c) {  // contiguous stores; the T source
    Real* d = dst + c * L.Tp;           // lines stay in L1 across c
    for (int64_t j = 0; j < L.T; ++j) d[j] = src[j * C + c];
    for (int64_t j = L.T; j < L.Tp; ++j) d[j] = 0;
  }
}

// dst[j * hsp + c] = src[j * C + c], the columns c in [hs, hsp) zero.
template <typename Real>
void StagePadded(Real* dst, const Real* src, const Layout& L, int64_t C) {
  for (int64_t j = 0; j < L.T; ++j) {
    Real* d = dst + j * L.hsp;
    for (int64_t c = 0; c < L.hs; ++c) d[c] = src[j * C + c];
    for (int64_t c = L.hs; c < L.hsp; ++c) d[c] = 0;
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

template <typename Real>
void ForwardHead(Real* out, Real* lse, const Real* q, const Real* k,
                 const Real* v, int64_t C, const Layout& L, int64_t b,
                 int64_t h, const DropoutSpec& dropout, Real* scratch) {
  const int64_t T = L.T, hs = L.hs;
  const Real scale = Real(1) / std::sqrt(static_cast<Real>(hs));
  Real* kt = scratch;                // [hs, Tp]    K^T
  Real* vp = kt + hs * L.Tp;         // [T, hsp]    V
  Real* dbuf = vp + T * L.hsp;       // [kRows, Tp] dropped probabilities
  Real* pbuf = dbuf + kRows * L.Tp;  // [kRows, Tp] probabilities of the row tile
  StageTransposed(kt, k, L, C);
  StagePadded(vp, v, L, C);
  for (int64_t i0 = 0; i0 < T; i0 += kRows) {
    const int rows = static_cast<int>(std::min<int64_t>(kRows, T - i0));
    const int64_t ncols = i0 + rows;  // the block needs columns [0, ncols)
    Real* prow[kRows];
    const Real* qrow[kRows];
    for (int r = 0; r < kRows; ++r) {  // rows past the end repeat the last
      const int64_t i = i0 + std::min(r, rows - 1);
      prow[r] = pbuf + std::min(r, rows - 1) * L.Tp;
      qrow[r] = q + i * C;
    }
    // Scores, masked to j <= i.
    for (int64_t j0 = 0; j0 < ncols; j0 += kCols) {
      Real acc[kRows][kCols];
      TileProduct(qrow, 1, kt + j0, L.Tp, hs, acc);
      for (int r = 0; r < rows; ++r) {
        const int64_t jend = std::min(j0 + kCols, i0 + r + 1);
        for (int64_t j = j0; j < jend; ++j) prow[r][j] = acc[r][j - j0] * scale;
      }
    }
    // Softmax, zeros above the diagonal, dropout.
    const Real* drow[kRows];
    for (int r = 0; r < rows; ++r) {
      const int64_t i = i0 + r;
      lse[i] = SoftmaxInPlace(prow[r], i + 1);
      for (int64_t j = i + 1; j < ncols; ++j) prow[r][j] = 0;
      if (dropout.enabled()) {
        Real* d = dbuf + r * L.Tp;
        const Real* p = prow[r];
        ForEachMaskChunk<Real>(dropout, b, (h * T + i) * T, ncols,
                               [&](int64_t j0, int64_t n, const Real* mult) {
#pragma omp simd
                                 for (int64_t j = 0; j < n; ++j) {
                                   d[j0 + j] = p[j0 + j] * mult[j];
                                 }
                               });
        drow[r] = d;
      } else {
        drow[r] = prow[r];
      }
    }
    for (int r = rows; r < kRows; ++r) drow[r] = drow[rows - 1];
    // out = D V.
    for (int64_t c0 = 0; c0 < hs; c0 += kCols) {
      Real acc[kRows][kCols];
      TileProduct(drow, 1, vp + c0, L.hsp, ncols, acc);
      const int64_t width = std::min<int64_t>(kCols, hs - c0);
      for (int r = 0; r < rows; ++r) {
        Real* o = out + (i0 + r) * C + c0;
        for (int64_t w = 0; w < width; ++w) o[w] = acc[r][w];
      }
    }
  }
}

// Backward of one head. Rows are taken in groups of kGroup: for each group,
// dD, D and dS rows are formed (4 rows at a time) and dq written; then the
// group's contribution to dK and dV (columns j up to the group's diagonal)
// is added to per-thread accumulators with register tiles, kGroup rows deep.
template <typename Real>
void BackwardHead(Real* dq, Real* dk, Real* dv, const Real* dout, const Real* q,
                  const Real* k, const Real* v, const Real* lse, int64_t C,
                  const Layout& L, int64_t b, int64_t h,
                  const DropoutSpec& dropout, Real* scratch) {
  const int64_t T = L.T, hs = L.hs, Tp = L.Tp, hsp = L.hsp;
  const Real scale = Real(1) / std::sqrt(static_cast<Real>(hs));
  Real* vt = scratch;                // [hs, Tp]       V^T
  Real* kp = vt + hs * Tp;           // [T, hsp]       K
  Real* dv_acc = kp + T * hsp;       // [Tp, hsp]      dV
  Real* dk_acc = dv_acc + Tp * hsp;  // [Tp, hsp]      dK
  Real* dbuf = dk_acc + Tp * hsp;    // [kGroup, Tp]   D rows of the group
  Real* dsbuf = dbuf + kGroup * Tp;  // [kGroup, Tp]   dD, then dS rows
  Real* obuf = dsbuf + kGroup * Tp;  // [kGroup, hsp]  dout rows of the group
  Real* qbuf = obuf + kGroup * hsp;  // [kGroup, hsp]  q rows of the group
  Real* kt = qbuf + kGroup * hsp;    // [hs, Tp]       K^T
  Real* pbuf = kt + hs * Tp;         // [kRows, Tp]    P rows of the tile
  StageTransposed(vt, v, L, C);
  StagePadded(kp, k, L, C);
  StageTransposed(kt, k, L, C);
  std::fill(dv_acc, dv_acc + 2 * Tp * hsp, Real(0));  // dv_acc and dk_acc

  for (int64_t g0 = 0; g0 < T; g0 += kGroup) {
    const int64_t grows = std::min<int64_t>(kGroup, T - g0);
    // Columns the group touches, rounded to whole tiles (D, dS are 0 past
    // each row's diagonal, and the rounding stays within Tp).
    const int64_t gcols = RoundUp(g0 + grows, kRows);
    for (int64_t i0 = g0; i0 < g0 + grows; i0 += kRows) {
      const int rows = static_cast<int>(std::min<int64_t>(kRows, T - i0));
      const int64_t ncols = i0 + rows;
      const Real* dorow[kRows];
      const Real* qrow[kRows];
      Real* drow[kRows];
      Real* dsrow[kRows];
      for (int r = 0; r < kRows; ++r) {
        dorow[r] = dout + (i0 + std::min(r, rows - 1)) * C;
        qrow[r] = q + (i0 + std::min(r, rows - 1)) * C;
        drow[r] = dbuf + (i0 - g0 + r) % kGroup * Tp;
        dsrow[r] = dsbuf + (i0 - g0 + r) % kGroup * Tp;
      }
      // dD = dout V^T over the block's columns.
      for (int64_t j0 = 0; j0 < ncols; j0 += kCols) {
        Real acc[kRows][kCols];
        TileProduct(dorow, 1, vt + j0, Tp, hs, acc);
        for (int r = 0; r < rows; ++r) {
          for (int w = 0; w < kCols; ++w) dsrow[r][j0 + w] = acc[r][w];
        }
      }
      // P recomputed: exp(q_i . k_j / sqrt(hs) - lse_i) for j <= i, else 0.
      for (int64_t j0 = 0; j0 < ncols; j0 += kCols) {
        Real acc[kRows][kCols];
        TileProduct(qrow, 1, kt + j0, Tp, hs, acc);
        for (int r = 0; r < rows; ++r) {
          const int64_t i = i0 + r;
          Real* p = pbuf + r * Tp;
          const int64_t jend = std::min(j0 + kCols, ncols);
          for (int64_t j = j0; j < jend; ++j) {
            p[j] = j <= i ? Exp(acc[r][j - j0] * scale - lse[i]) : Real(0);
          }
        }
      }
      // Through the dropout and the softmax. P is 0 for j > i, so D and dS
      // come out 0 there without special cases.
      for (int r = 0; r < rows; ++r) {
        const int64_t i = i0 + r;
        const Real* p = pbuf + r * Tp;
        Real* d = drow[r];
        Real* ds = dsrow[r];
        if (dropout.enabled()) {
          ForEachMaskChunk<Real>(dropout, b, (h * T + i) * T, ncols,
                                 [&](int64_t j0, int64_t n, const Real* mult) {
#pragma omp simd
                                   for (int64_t j = 0; j < n; ++j) {
                                     d[j0 + j] = p[j0 + j] * mult[j];
                                     ds[j0 + j] *= mult[j];
                                   }
                                 });
        } else {
          std::copy(p, p + ncols, d);
        }
        Real pdp = 0;
#pragma omp simd reduction(+ : pdp)
        for (int64_t j = 0; j < ncols; ++j) pdp += p[j] * ds[j];
#pragma omp simd
        for (int64_t j = 0; j < ncols; ++j)
          ds[j] = p[j] * (ds[j] - pdp) * scale;
        std::fill(d + ncols, d + gcols, Real(0));
        std::fill(ds + ncols, ds + gcols, Real(0));
      }
      // dq = dS K (rows past the end repeat the last, results unused).
      const Real* ds_rows[kRows];
      for (int r = 0; r < kRows; ++r) ds_rows[r] = dsrow[std::min(r, rows - 1)];
      for (int64_t c0 = 0; c0 < hs; c0 += kCols) {
        Real acc[kRows][kCols];
        TileProduct(ds_rows, 1, kp + c0, hsp, ncols, acc);
        const int64_t width = std::min<int64_t>(kCols, hs - c0);
        for (int r = 0; r < rows; ++r) {
          Real* o = dq + (i0 + r) * C + c0;
          for (int64_t w = 0; w < width; ++w) o[w] = acc[r][w];
        }
      }
    }
    // dV += D^T dout and dK += dS^T q over the group's rows: tiles of 4
    // columns j x 8 channels, summed over the group's rows.
    for (int64_t r = 0; r < grows; ++r) {
      const Real* o = dout + (g0 + r) * C;
      const Real* qr = q + (g0 + r) * C;
      std::copy(o, o + hs, obuf + r * hsp);
      std::fill(obuf + r * hsp + hs, obuf + (r + 1) * hsp, Real(0));
      std::copy(qr, qr + hs, qbuf + r * hsp);
      std::fill(qbuf + r * hsp + hs, qbuf + (r + 1) * hsp, Real(0));
    }
    for (int64_t j0 = 0; j0 < gcols; j0 += kRows) {
      const Real* dcol[kRows];
      const Real* scol[kRows];
      for (int r = 0; r < kRows; ++r) {
        dcol[r] = dbuf + j0 + r;
        scol[r] = dsbuf + j0 + r;
      }
      for (int64_t c0 = 0; c0 < hsp; c0 += kCols) {
        Real acc[kRows][kCols];
        TileProduct(dcol, Tp, obuf + c0, hsp, grows, acc);
        for (int r = 0; r < kRows; ++r) {
          Real* a = dv_acc + (j0 + r) * hsp + c0;
#pragma omp simd
          for (int w = 0; w < kCols; ++w) a[w] += acc[r][w];
        }
        TileProduct(scol, Tp, qbuf + c0, hsp, grows, acc);
        for (int r = 0; r < kRows; ++r) {
          Real* a = dk_acc + (j0 + r) * hsp + c0;
#pragma omp simd
          for (int w = 0; w < kCols; ++w) a[w] += acc[r][w];
        }
      }
    }
  }
  for (int64_t j = 0; j < T; ++j) {
    std::copy(dv_acc + j * hsp, dv_acc + j * hsp + hs, dv + j * C);
    std::copy(dk_acc + j * hsp, dk_acc + j * hsp + hs, dk + j * C);
  }
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
                       const Real* q, const Real* k, const Real* v,
                       const Real* lse, int B, int T, int C, int NH,
                       const DropoutSpec& dropout, Real* scratch, int threads) {
  ForEachHead(B, T, C, NH, scratch, threads,
              [&](int64_t at, int64_t bh, int64_t b, int64_t h, const Layout& L, Real* s) {
                BackwardHead(dq + at, dk + at, dv + at, dout + at, q + at, k + at, v + at,
                             lse + bh * T, C, L, b, h, dropout, s);
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
                                       const float*, int, int, int, int,
                                       const DropoutSpec&, float*, int);
template void AttentionBackward<double>(double*, double*, double*,
                                        const double*, const double*,
                                        const double*, const double*,
                                        const double*, int, int, int, int,
                                        const DropoutSpec&, double*, int);

}  // namespace mingpt::cpu
