// kernels.cu compiled as C++ for the CPU emulator (emulator.h).
#include "backend/cuda/kernels.cu"
