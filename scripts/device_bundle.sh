#!/usr/bin/env bash
# Packs what a GPU machine lent through the device tool needs to run mingpt's
# GPU checks (scripts/device_check.sh) into build-device/: that machine has
# CUDA, PyTorch and Lightning but none of mingpt's Debian libraries and no
# package registry, so the binaries built here travel with the libraries they
# load (oneDNN, OpenMPI, cpp-httplib and theirs), and everything else (the C
# and C++ runtimes, the CUDA runtime, cuBLASLt, NCCL) is taken from that
# machine, whose versions are newer or the same (CUDA 13).
#
#   scripts/device_bundle.sh            build (Release, CUDA on) and pack,
#                                       and copy the corpus into data/
#   then, through the device tool:      run scripts/device_check.sh with
#                                       carry ["build-device", "data"]
#
# The binaries are built in their own directory (build-gpu/) for any x86-64
# with AVX2 (x86-64-v3), not for this machine's CPU: the GPU machine's CPU
# is unknown, and one AVX-512 instruction it lacks would end every stage
# with "Illegal instruction". oneDNN picks its kernels at run time anyway.
# The pack is about 24 MiB, its files over 8 MB xz-compressed (unpacked it
# is about 80: oneDNN 40, the CUDA module and test_cuda 19 each); the tool
# carries 64 MiB with the working tree.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v nvcc >/dev/null && [[ ! -x /usr/local/cuda/bin/nvcc ]]; then
  echo "device_bundle: no nvcc: the CUDA module cannot be built here" >&2
  exit 1
fi
scripts/install-deps.sh
corpus=${MINGPT_DATA:-../shared/data/tinyshakespeare.txt}
if [[ ! -s data/tinyshakespeare.txt ]]; then
  if [[ ! -s $corpus ]]; then
    echo "device_bundle: no corpus at $corpus (set MINGPT_DATA)" >&2
    exit 1
  fi
  mkdir -p data && cp "$corpus" data/tinyshakespeare.txt
fi
portable="-march=x86-64-v3"
cmake -S . -B build-gpu -DCMAKE_BUILD_TYPE=Release -DMINGPT_CUDA=ON -DMINGPT_NATIVE=OFF \
  -DMINGPT_SANITIZE=OFF -DCMAKE_C_FLAGS="$portable" -DCMAKE_CXX_FLAGS="$portable" >/dev/null
cmake --build build-gpu -j"$(nproc)" --target mingpt mingpt_cuda test_cuda kernels_bench

out=build-device
rm -rf "$out"
mkdir -p "$out/lib" "$out/tests"
cp build-gpu/mingpt build-gpu/libmingpt_cuda.so build-gpu/kernels_bench "$out/"
cp build-gpu/tests/test_cuda "$out/tests/"
for bin in "$out/mingpt" "$out/libmingpt_cuda.so" "$out/kernels_bench" "$out"/tests/*; do
  if objdump -d --no-show-raw-insn "$bin" | grep -q '%zmm'; then
    echo "device_bundle: $bin has AVX-512 instructions: not portable" >&2
    exit 1
  fi
done
# mingpt finds the libraries packed beside it through this wrapper, so that
# nothing else on that machine (PyTorch's Python) loads them.
cat > "$out/mingpt.sh" <<'WRAPPER'
#!/bin/sh
here=$(cd "$(dirname "$0")" && pwd)
LD_LIBRARY_PATH="$here/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" exec "$here/mingpt" "$@"
WRAPPER
chmod +x "$out/mingpt.sh"

# The shared libraries the binaries load, less those the GPU machine has:
# glibc's, the GCC runtime's and CUDA's.
provided='^(linux-vdso|ld-linux|libc\.|libm\.|libdl\.|libpthread\.|librt\.|libstdc\+\+|libgcc_s|libcuda\.|libcudart|libcublas|libnccl)'
for bin in "$out/mingpt" "$out/libmingpt_cuda.so" "$out/kernels_bench" "$out"/tests/*; do
  ldd "$bin" | awk '$3 ~ /^\// {print $1, $3}'
done | sort -u | while read -r name path; do
  if [[ ! "$name" =~ $provided ]]; then cp -L "$path" "$out/lib/$name"; fi
done

# The device tool carries at most 64 MiB with the working tree; oneDNN alone
# is ~40 MB, and the CUDA module and test_cuda ~19 MB each (their kernels'
# machine code for two architectures, mostly zeros and repeats): every file
# over 8 MB travels xz-compressed (oneDNN to a sixth, the CUDA binaries to a
# tenth), and device_check.sh unpacks them there (Python's lzma, in seconds),
# modes kept.
find "$out" -type f -size +8M -exec xz -T0 -6 {} +

size=$(du -sm "$out" | cut -f1)
echo "device_bundle: $out holds $(ls "$out/lib" | wc -l) libraries, ${size} MiB"
if (( size > 62 )); then
  echo "device_bundle: over what the device tool carries with the working tree (64 MiB)" >&2
  exit 1
fi
