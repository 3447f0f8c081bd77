#!/usr/bin/env bash
# The whole test suite: installs dependencies, builds, runs every ctest test,
# then rebuilds the checkpoint reader, bad-input and emulated CUDA tests with
# AddressSanitizer and UBSan and runs them again.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/build.sh
(cd build && ctest --output-on-failure --timeout 900 -j"$(nproc)")

# Sanitizer pass: safetensors/checkpoint reading and the CLI's bad-input
# paths; and, where the CUDA toolkit is (as in the Release build above), the
# CUDA backend on the CPU emulator, where ASan sees every kernel's reads and
# writes (the emulator's device buffers are exactly their size). nvcc builds
# for one architecture only: nothing here runs the GPU code it makes.
cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=RelWithDebInfo -DMINGPT_SANITIZE=ON \
  -DCMAKE_CUDA_ARCHITECTURES=90 >/dev/null
targets=(mingpt test_io test_cli)
labels='io|cli'
if grep -q '^MINGPT_CUDA:BOOL=ON' build-asan/CMakeCache.txt; then
  targets+=(test_cuda_emulated)
  labels+='|cuda_emulated'
fi
cmake --build build-asan -j"$(nproc)" --target "${targets[@]}"
export ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1
(cd build-asan && ctest --output-on-failure --timeout 900 -j"$(nproc)" -L "$labels")
echo "all tests passed"
