#!/usr/bin/env bash
# Packs what a GPU machine lent through the device tool needs to run mingpt's
# GPU checks (scripts/device_check.sh) into build-device/: that machine has
# CUDA, PyTorch and Lightning but none of mingpt's Debian libraries and no
# package registry, so the binaries built here travel with the libraries they
# load (oneDNN, OpenMPI, cpp-httplib and theirs), and everything else (the C
# and C++ runtimes, the CUDA runtime, cuBLASLt, NCCL) is taken from that
# machine, whose versions are newer or the same (CUDA 13).
#
#   scripts/device_bundle.sh            build (Release, CUDA on) and pack
#   then, through the device tool:      run scripts/device_check.sh with
#                                       carry ["build-device"]
#
# The pack is about 60 MiB (oneDNN alone is 40); the tool carries 64 MiB.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v nvcc >/dev/null && [[ ! -x /usr/local/cuda/bin/nvcc ]]; then
  echo "device_bundle: no nvcc: the CUDA module cannot be built here" >&2
  exit 1
fi
scripts/install-deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DMINGPT_CUDA=ON >/dev/null
cmake --build build -j"$(nproc)" --target mingpt mingpt_cuda test_cuda

out=build-device
rm -rf "$out"
mkdir -p "$out/lib" "$out/tests"
cp build/mingpt build/libmingpt_cuda.so "$out/"
cp build/tests/test_cuda "$out/tests/"

# The shared libraries the binaries load, less those the GPU machine has:
# glibc's, the GCC runtime's and CUDA's.
provided='^(linux-vdso|ld-linux|libc\.|libm\.|libdl\.|libpthread\.|librt\.|libstdc\+\+|libgcc_s|libcuda\.|libcudart|libcublas|libnccl)'
for bin in "$out/mingpt" "$out/libmingpt_cuda.so" "$out"/tests/*; do
  ldd "$bin" | awk '$3 ~ /^\// {print $1, $3}'
done | sort -u | while read -r name path; do
  if [[ ! "$name" =~ $provided ]]; then cp -L "$path" "$out/lib/$name"; fi
done

size=$(du -sm "$out" | cut -f1)
echo "device_bundle: $out holds $(ls "$out/lib" | wc -l) libraries, ${size} MiB"
if (( size > 62 )); then
  echo "device_bundle: over what the device tool carries with the working tree (64 MiB)" >&2
  exit 1
fi
