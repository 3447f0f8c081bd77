// Encoder: token embedding plus position embedding (GPT's input layer).
//
// forward:  out[b,t,:] = wte[idx[b,t],:] + wpe[t,:]                        (=)
// backward: dwte[idx[b,t],:] += dout[b,t,:]                                (+=)
//           dwpe[t,:]        += sum_b dout[b,t,:]                          (+=)
// shapes: idx [B,T]; wte, dwte [V,C]; wpe, dwpe [>=T,C]; out, dout [B,T,C].
// Backward is deterministic: each thread owns a slice of channels and walks
// the rows in order, so repeated tokens accumulate without races.
#pragma once

#include <cstdint>

namespace mingpt::cpu {

template <typename Real>
void EncoderForward(Real* out, const int32_t* idx, const Real* wte,
                    const Real* wpe, int B, int T, int C);

template <typename Real>
void EncoderBackward(Real* dwte, Real* dwpe, const Real* dout,
                     const int32_t* idx, int B, int T, int C);

}  // namespace mingpt::cpu
