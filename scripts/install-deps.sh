#!/usr/bin/env bash
# Installs every Debian package mingpt needs to build, test and benchmark.
# Idempotent: when everything is present it only checks (well under a second).
set -euo pipefail

packages=(
  build-essential cmake pkg-config curl ca-certificates
  libgtest-dev libdnnl-dev nlohmann-json3-dev libcli11-dev
  ocl-icd-opencl-dev            # dnnl-config.cmake looks for OpenCL (a Recommends of libdnnl-dev)
  libopenmpi-dev openmpi-bin    # the multi-process engine (dist/)
  liburing-dev                  # NVMe offload's asynchronous direct I/O (io/async_file)
  python3-torch python3-numpy   # the PyTorch reference (tests/reference, bench/)
  libopenblas0-pthread          # a real BLAS under Debian's torch, so bench/ compares fairly
  libcpp-httplib-dev            # mingpt serve's HTTP server (src/serve)
  python3-selenium chromium chromium-driver  # the browser test of mingpt serve's page
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]} == 0)); then
  exit 0
fi

echo "install-deps: installing ${missing[*]}"
sudo=""
if [[ $(id -u) -ne 0 ]]; then sudo="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
