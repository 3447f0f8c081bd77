// Attention on the CUDA backend against the CPU backend's, forward then
// backward from the same inputs: the fixtures of cuda_backend_test.cc's
// attention tests and cuda_mma_attention_test.cc's.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "backend/dropout.h"
#include "cuda/cuda_test_util.h"

namespace mingpt::testing {

struct AttentionCase {
  int B, T, C, NH;
};

// Attention forward then backward on each backend, from the same inputs.
class AttentionVsCpuTest : public CudaVsCpuTest {
 protected:
  struct Inputs {
    FVec q, k, v, dout;
  };
  struct Outputs {
    FVec out, lse, dq, dk, dv;
  };

  // On the GPU backend, at its current matmul precision; the inputs `skew`
  // floats past the start of their buffers (1: rows not 16-byte aligned).
  Outputs RunGpu(const AttentionCase& c, const Inputs& in, const DropoutSpec& dropout,
                 int skew = 0) {
    const size_t n = size_t(c.B) * c.T * c.C, nl = size_t(c.B) * c.NH * c.T;
    auto up = [&](const FVec& x) {
      FVec padded(static_cast<size_t>(skew), 0.0f);
      padded.insert(padded.end(), x.begin(), x.end());
      return Up(padded);
    };
    Buffer gq = up(in.q), gk = up(in.k), gv = up(in.v), gdout = up(in.dout);
    Buffer gout(gpu_.get(), n * 4), glse(gpu_.get(), nl * 4);
    Buffer gdq(gpu_.get(), n * 4), gdk(gpu_.get(), n * 4), gdv(gpu_.get(), n * 4);
    const float *q = gq.f32() + skew, *k = gk.f32() + skew, *v = gv.f32() + skew;
    gpu_->AttentionForward(gout.f32(), glse.f32(), q, k, v, c.B, c.T, c.C, c.NH, dropout);
    gpu_->AttentionBackward(gdq.f32(), gdk.f32(), gdv.f32(), gdout.f32() + skew, q, k, v,
                            gout.f32(), glse.f32(), c.B, c.T, c.C, c.NH, dropout);
    return {Down(gout, n), Down(glse, nl), Down(gdq, n), Down(gdk, n), Down(gdv, n)};
  }

  Outputs RunCpu(const AttentionCase& c, const Inputs& in, const DropoutSpec& dropout) {
    const size_t n = size_t(c.B) * c.T * c.C, nl = size_t(c.B) * c.NH * c.T;
    Outputs o{FVec(n), FVec(nl), FVec(n), FVec(n), FVec(n)};
    cpu_->AttentionForward(o.out.data(), o.lse.data(), in.q.data(), in.k.data(), in.v.data(), c.B,
                           c.T, c.C, c.NH, dropout);
    cpu_->AttentionBackward(o.dq.data(), o.dk.data(), o.dv.data(), in.dout.data(), in.q.data(),
                            in.k.data(), in.v.data(), o.out.data(), o.lse.data(), c.B, c.T, c.C,
                            c.NH, dropout);
    return o;
  }
};

// Attention at bf16 / fp16 matrix precision (the tensor-core and mma.sync
// kernels) against the CPU backend's fp32 attention on the same inputs. q and k are
// drawn on the grid of multiples of 2^-6 in [-2, 2], v and dout of 2^-7 in
// [-1, 1]: at most 8 significant bits, so bf16 and fp16 hold them exactly,
// the operands' rounding to the operand type is exact, and the products of
// two of them are exact in fp32 (S and dP are the CPU's up to fp32
// summation order). What the tensor-core path rounds is then its two
// intermediates, once each, to the operand type (relative error at most
// u = 2^-8 for bf16, 2^-11 for fp16): P_ij mult_ij (the forward's P v and the
// key-major kernel's P^T dout) and dS_ij (dS k and dS^T q). Summed over the
// terms of each output element, in exact arithmetic:
//   |d out_id| <= u sum_j P_ij mult_ij |v_jd|        <= u max|v|    sum_j P_ij mult_ij
//   |d dq_id|  <= u sum_j |dS_ij| |k_jd| / sqrt(hs)   <= u max|k|    sum_j |dS_ij| / sqrt(hs)
//   |d dk_jd|  <= u sum_i |dS_ij| |q_id| / sqrt(hs)   <= u max|q|    sum_i |dS_ij| / sqrt(hs)
//   |d dv_jd|  <= u sum_i P_ij mult_ij |dout_id|      <= u max|dout| sum_i P_ij mult_ij
// with the sums formed here in double, row by row, from the same inputs and
// Philox masks. The backward takes D_i = dout_i . out_i from the forward's
// output, which carries the rounding of P above: |d D_i| <= u max|v|
// sum_j P_ij mult_ij sum_d |dout_id|, entering dS_ij = P_ij (dP_ij - D_i) as
// P_ij d D_i, so (sum_j P_ij = 1)
//   |d dq_id| gains max|k| |d D_i| / sqrt(hs)
//   |d dk_jd| gains max|q| sum_i P_ij |d D_i| / sqrt(hs).
// To that the fp32 test's 1e-5 (of the tensor's largest
// magnitude; of the largest gradient for dq and dk) is added for the order of
// the fp32 sums. lse involves no rounding to the operand type: 1e-5 as fp32.
// A wrong mask, scale or dropout multiplier moves elements by far more than
// u times their terms.
class LowPrecisionAttentionTest : public AttentionVsCpuTest {
 protected:
  FVec Grid(size_t n, double step, double bound) {
    FVec x = Rand(n, -bound, bound);
    for (float& f : x) f = static_cast<float>(std::round(f / step) * step);
    return x;
  }
  Inputs MakeInputs(const AttentionCase& c) {
    const size_t n = size_t(c.B) * c.T * c.C;
    return {Grid(n, 1.0 / 64, 2), Grid(n, 1.0 / 64, 2), Grid(n, 1.0 / 128, 1),
            Grid(n, 1.0 / 128, 1)};
  }

  // Forward then backward on the GPU backend at `precision`, under
  // MINGPT_CUDA_ATTENTION=`mode` (null: unset), the inputs `skew` floats
  // past the start of their buffers.
  Outputs RunGpu(const AttentionCase& c, const Inputs& in, const DropoutSpec& dropout,
                 MatmulPrecision precision, const char* mode = nullptr, int skew = 0) {
    gpu_->SetMatmulPrecision(precision);
    if (mode) {
      EXPECT_EQ(setenv("MINGPT_CUDA_ATTENTION", mode, 1), 0);
    }
    Outputs o = AttentionVsCpuTest::RunGpu(c, in, dropout, skew);
    if (mode) {
      EXPECT_EQ(unsetenv("MINGPT_CUDA_ATTENTION"), 0);
    }
    gpu_->SetMatmulPrecision(MatmulPrecision::kFp32);
    return o;
  }

  // Per row (b, i or j, h): sum_j P_ij mult_ij, sum_j |dS_ij|, and dd_i =
  // sum_j P_ij mult_ij sum_d |dout_id| (|d D_i| / (u max|v|)) (query rows);
  // sum_i P_ij mult_ij, sum_i |dS_ij|, sum_i P_ij dd_i (key rows); in double.
  struct Sums {
    std::vector<double> p_row, ds_row, dd_row, p_col, ds_col, pdd_col;  // [B][T][NH]
  };
  static Sums RowSums(const AttentionCase& c, const Inputs& in, const DropoutSpec& dropout) {
    const int hs = c.C / c.NH, T = c.T;
    const size_t rows = size_t(c.B) * T * c.NH;
    Sums s{std::vector<double>(rows), std::vector<double>(rows), std::vector<double>(rows),
           std::vector<double>(rows), std::vector<double>(rows), std::vector<double>(rows)};
    std::vector<double> p(T), dp(T);
    for (int b = 0; b < c.B; ++b) {
      for (int h = 0; h < c.NH; ++h) {
        auto at = [&](const FVec& x, int row) { return &x[(size_t(b) * T + row) * c.C + h * hs]; };
        auto slot = [&](int row) { return (size_t(b) * T + row) * c.NH + h; };
        for (int i = 0; i < T; ++i) {
          double m = -INFINITY, l = 0, D = 0;
          for (int j = 0; j <= i; ++j) {
            double dot = 0;
            for (int d = 0; d < hs; ++d) dot += double(at(in.q, i)[d]) * at(in.k, j)[d];
            p[j] = dot / std::sqrt(double(hs));
            m = std::max(m, p[j]);
          }
          for (int j = 0; j <= i; ++j) l += (p[j] = std::exp(p[j] - m));
          for (int j = 0; j <= i; ++j) {
            p[j] /= l;
            const double mult =
                !dropout.enabled() ? 1.0
                : DropoutKeep(dropout, b, (int64_t{h} * T + i) * T + j) ? 1.0 / (1.0 - dropout.p)
                                                                        : 0.0;
            double dot = 0;
            for (int d = 0; d < hs; ++d) dot += double(at(in.dout, i)[d]) * at(in.v, j)[d];
            dp[j] = dot * mult;
            D += p[j] * dp[j];
            s.p_row[slot(i)] += p[j] * mult;
            s.p_col[slot(j)] += p[j] * mult;
          }
          double dout_abs = 0;
          for (int d = 0; d < hs; ++d) dout_abs += std::abs(double(at(in.dout, i)[d]));
          const double dd = s.p_row[slot(i)] * dout_abs;
          s.dd_row[slot(i)] = dd;
          for (int j = 0; j <= i; ++j) {
            const double ds = std::abs(p[j] * (dp[j] - D));
            s.ds_row[slot(i)] += ds;
            s.ds_col[slot(j)] += ds;
            s.pdd_col[slot(j)] += p[j] * dd;
          }
        }
      }
    }
    return s;
  }

  // |got - want| <= per_sum * sums[row, head] + slack, element by element
  // of a [B,T,C] tensor (per_sum: u times the operand's largest magnitude).
  static void ExpectWithin(const FVec& got, const FVec& want, const std::vector<double>& sums,
                           double per_sum, double slack, const AttentionCase& c,
                           const std::string& what) {
    ASSERT_EQ(got.size(), want.size()) << what;
    const int hs = c.C / c.NH;
    int reported = 0;
    for (size_t e = 0; e < got.size(); ++e) {
      const size_t row = e / c.C;  // b * T + t
      const int h = static_cast<int>(e % c.C) / hs;
      const double tol = per_sum * sums[row * c.NH + h] + slack;
      const double diff = std::abs(double(got[e]) - want[e]);
      if (!(diff <= tol)) {
        ADD_FAILURE() << what << "[" << e << "]: got " << got[e] << ", want " << want[e]
                      << ", tolerance " << tol;
        if (++reported == 5) return;
      }
    }
  }

  static double MaxAbs(const FVec& x) {
    double m = 0;
    for (float f : x) m = std::max(m, std::abs(double(f)));
    return m;
  }

  // The bounds above, under MINGPT_CUDA_ATTENTION=`mode` (null: unset).
  void Check(const AttentionCase& c, const DropoutSpec& dropout, MatmulPrecision precision,
             const char* mode = nullptr) {
    const Inputs in = MakeInputs(c);
    const Outputs gpu = RunGpu(c, in, dropout, precision, mode);
    const Outputs cpu = RunCpu(c, in, dropout);
    const Sums sums = RowSums(c, in, dropout);
    const bool bf16 = precision == MatmulPrecision::kBf16;
    const double u = bf16 ? std::ldexp(1.0, -8) : std::ldexp(1.0, -11);
    const double inv_sqrt = 1.0 / std::sqrt(double(c.C / c.NH));
    const std::string what = std::string(bf16 ? "bf16" : "fp16") + " B=" + std::to_string(c.B) +
                             " T=" + std::to_string(c.T) + " C=" + std::to_string(c.C) +
                             " NH=" + std::to_string(c.NH) + " p=" + std::to_string(dropout.p) +
                             " ";
    double g = 1e-30;
    for (const FVec* t : {&cpu.dq, &cpu.dk, &cpu.dv}) g = std::max(g, MaxAbs(*t));
    ExpectWithin(gpu.out, cpu.out, sums.p_row, u * MaxAbs(in.v), 1e-5 * MaxAbs(cpu.out), c,
                 what + "out");
    ExpectClose(gpu.lse, cpu.lse, 1e-5, what + "lse");
    // The rounding of dS, and that of D through out (above).
    std::vector<double> dq_terms = sums.ds_row, dk_terms = sums.ds_col;
    for (size_t r = 0; r < dq_terms.size(); ++r) {
      dq_terms[r] += MaxAbs(in.v) * sums.dd_row[r];
      dk_terms[r] += MaxAbs(in.v) * sums.pdd_col[r];
    }
    ExpectWithin(gpu.dq, cpu.dq, dq_terms, u * MaxAbs(in.k) * inv_sqrt, 1e-5 * g, c, what + "dq");
    ExpectWithin(gpu.dk, cpu.dk, dk_terms, u * MaxAbs(in.q) * inv_sqrt, 1e-5 * g, c, what + "dk");
    ExpectWithin(gpu.dv, cpu.dv, sums.p_col, u * MaxAbs(in.dout), 1e-5 * MaxAbs(cpu.dv), c,
                 what + "dv");
  }

  static bool SameBits(const FVec& a, const FVec& b) {
    return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * 4) == 0;
  }
  static bool SameBits(const Outputs& a, const Outputs& b) {
    return SameBits(a.out, b.out) && SameBits(a.lse, b.lse) && SameBits(a.dq, b.dq) &&
           SameBits(a.dk, b.dk) && SameBits(a.dv, b.dv);
  }
};

}  // namespace mingpt::testing
