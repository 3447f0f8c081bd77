// Softmax + cross-entropy, fused (F.cross_entropy on logits), numerically
// stable through max subtraction.
//
// forward, per row n of logits[N,V] with target y = targets[n]:
//   m = max_j x_j;  losses[n] = log(sum_j exp(x_j - m)) - (x_y - m)         (=)
// backward (fused with forward), dloss = dL/dlosses[n] (1/N for the mean):
//   dlogits[n,j] = (softmax(x)_j - [j == y]) * dloss                        (=)
// shapes: logits, dlogits [N,V]; targets, losses [N]. dlogits may alias
// logits; losses may be null in ForwardBackward. Targets must be in [0, V).
#pragma once

#include <cstdint>

namespace mingpt::cpu {

template <typename Real>
void CrossEntropyForward(Real* losses, const Real* logits,
                         const int32_t* targets, int N, int V);

template <typename Real>
void CrossEntropyForwardBackward(Real* losses, Real* dlogits,
                                 const Real* logits, const int32_t* targets,
                                 int N, int V, Real dloss);

}  // namespace mingpt::cpu
