// Linear layer, reference loops (the oneDNN path in cpu_backend is checked
// against these; they also serve double precision).
//
// forward:  out[n,o] = bias[o] + sum_i inp[n,i] * W[o,i]                    (=)
// backward: dinp[n,i] (= or +=) sum_o dout[n,o] * W[o,i]
//           dW[o,i]  += sum_n dout[n,o] * inp[n,i]                         (+=)
//           dbias[o] += sum_n dout[n,o]                                    (+=)
// shapes: inp, dinp [N,IC]; W, dW [OC,IC] (PyTorch layout); bias, dbias [OC];
// out, dout [N,OC]. bias, dinp and dbias may be null (skipped).
#pragma once

namespace mingpt::cpu {

template <typename Real>
void MatmulForwardRef(Real* out, const Real* inp, const Real* W,
                      const Real* bias, int N, int IC, int OC);

template <typename Real>
void MatmulBackwardRef(Real* dinp, Real* dW, Real* dbias, const Real* dout,
                       const Real* inp, const Real* W, int N, int IC, int OC,
                       bool accumulate_dinp);

// dbias[o] += sum_n dout[n,o]: column sums, deterministic, OpenMP over
// column slices. Shared by the reference and the oneDNN path.
template <typename Real>
void BiasBackward(Real* dbias, const Real* dout, int N, int OC);

}  // namespace mingpt::cpu
