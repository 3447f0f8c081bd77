// Where a fused CPU kernel puts results that go straight into another format
// (the matrix products' operand format): the kernel computes fp32 values a
// span at a time into a small buffer on the working thread and calls
// sink(ctx, offset, values, count), which stores values[0, count) as elements
// [offset, offset + count) of the result. The values are those of the
// kernel's plain fp32 form.
#pragma once

#include <cstdint>

namespace mingpt::cpu {

using SpanSink = void (*)(void* ctx, int64_t offset, const float* values, int64_t count);

}  // namespace mingpt::cpu
