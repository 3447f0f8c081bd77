#include "backend/cpu/low_precision.h"

#include <cstring>

#include "backend/cpu/omp_util.h"

namespace mingpt::cpu {

void ToBf16Array(uint16_t* dst, const float* src, int64_t n) {
#pragma omp parallel for simd schedule(static) if (Parallel(n))
  for (int64_t i = 0; i < n; ++i) dst[i] = ToBf16(src[i]);
}

void RoundArray(float* dst, const float* src, int64_t n, MatmulPrecision precision) {
  switch (precision) {
    case MatmulPrecision::kFp32:
      if (dst != src && n > 0) std::memmove(dst, src, sizeof(float) * n);
      return;
    case MatmulPrecision::kBf16:
#pragma omp parallel for simd schedule(static) if (Parallel(n))
      for (int64_t i = 0; i < n; ++i) dst[i] = RoundToBf16(src[i]);
      return;
    case MatmulPrecision::kFp16:
#pragma omp parallel for simd schedule(static) if (Parallel(n))
      for (int64_t i = 0; i < n; ++i) dst[i] = RoundToFp16(src[i]);
      return;
  }
}

}  // namespace mingpt::cpu
