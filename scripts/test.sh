#!/usr/bin/env bash
# The whole test suite: installs dependencies, builds, runs every ctest test,
# then rebuilds the checkpoint reader and bad-input tests with AddressSanitizer
# and UBSan and runs them again.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/build.sh
(cd build && ctest --output-on-failure --timeout 900 -j"$(nproc)")

# Sanitizer pass: safetensors/checkpoint reading and the CLI's bad-input paths.
cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=RelWithDebInfo -DMINGPT_SANITIZE=ON -DMINGPT_CUDA=OFF >/dev/null
cmake --build build-asan -j"$(nproc)" --target mingpt test_io test_cli
export ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1
(cd build-asan && ctest --output-on-failure --timeout 900 -j"$(nproc)" -L 'io|cli')
echo "all tests passed"
