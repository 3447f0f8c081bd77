// attention_mma.cu compiled as C++ for the CPU emulator (emulator.h, and
// mma.h for its mma.sync).
#include "backend/cuda/attention_mma.cu"
