// Residual add (the skip connections x + attn(ln(x)), x + mlp(ln(x))).
//
// forward:  out = a + b                                                    (=)
// backward: da = db = dout (the caller passes dout on; no kernel needed).
// shapes: n elements, flat; out may alias a or b.
#pragma once

#include <cstdint>

namespace mingpt::cpu {

template <typename Real>
void Add(Real* out, const Real* a, const Real* b, int64_t n);

}  // namespace mingpt::cpu
