#!/usr/bin/env bash
# The GPU checks, in one call on a machine lent through the device tool
# (issue 5). From the repository root, with build-device/ (made here by
# scripts/device_bundle.sh) and data/tinyshakespeare.txt carried:
#
#   run(command="bash scripts/device_check.sh", carry=["build-device", "data"], timeout_s=600)
#
# Stages (each runs whatever the one before it did; logs go to $OUT, at
# most 8 files, as the tool brings back):
#   1. the machine: nvidia-smi, the CPU's vector extensions, and every
#      library the binaries load found
#   2. the cuda tests (tests/cuda: every op against the CPU backend, a
#      training step, determinism), each test suite in its own process so
#      that one abort (a sticky CUDA error) costs that suite only
#   3. every backend op timed alone at GPT-2-small's step shape (B 16, T 1024,
#      C 768, 12 heads; kernels_bench ... cuda), attention in fp32, on
#      tensor cores (WMMA) and on mma.sync (MINGPT_CUDA_ATTENTION=mma):
#      where a step's time goes, in a few seconds
#   4. the seed's 1.7B command (deepspeed_stage_3_offload, --precision 16,
#      batch 1) for a few steps: peak GPU memory beside the seed's 5.1 GiB
#   5. GPT-2-small in bf16: mingpt (with each of its two attentions) vs
#      the seed's model in PyTorch (as written and with SDPA) and in
#      Lightning (bench/gpu_vs_torch.py)
#   6. (only when asked: STAGES="6") compute-sanitizer's memcheck and
#      racecheck over the cuda tests' kernels, where the machine's runtime
#      lets it read the device (not on gVisor)
# and a summary last. STAGES="1 2" runs some of them only. The stages share
# a deadline (BUDGET_S seconds, 480 by default: the session's device time
# is 15 minutes with the machine's start, so one call must leave room for a
# second that reruns a stage), each cut short or skipped so that the summary
# is always printed and $OUT comes back.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/mingpt-device}
mkdir -p "$OUT"
STAGES=${STAGES:-"1 2 3 4 5"}
bundle=$PWD/build-device
mingpt=$bundle/mingpt.sh
data=$PWD/data/tinyshakespeare.txt
summary=()
skip_mma=()  # stage 5 leaves out the mma attention's row when stage 2 saw it fail
note() { summary+=("$1"); echo "== $1"; }
want() { [[ " $STAGES " == *" $1 "* ]]; }
budget=${BUDGET_S:-480}
# An abort with ~30 GB of pinned host memory (stage 4) must not write a core.
ulimit -c 0
# Why cuBLASLt refused a product, and NCCL's warnings, in the logs.
export CUBLASLT_LOG_LEVEL=1 NCCL_DEBUG=WARN
# Seconds a stage may take: at most $1, and what is left of the budget less
# 20 s for the summary; 0 when too little is left to start (a stage is then
# skipped: never handed to timeout, for which 0 means no limit).
allow() {
  local left=$((budget - SECONDS - 20))
  if (( left < 30 )); then echo 0; elif (( left < $1 )); then echo "$left"; else echo "$1"; fi
}

if [[ ! -x $bundle/mingpt || ! -x $mingpt ]]; then
  echo "device_check: no $bundle/mingpt: run scripts/device_bundle.sh here and carry build-device" >&2
  exit 1
fi
# The files device_bundle.sh compressed (the large libraries, the CUDA
# module, test_cuda), unpacked in place with their modes.
python3 - "$bundle" <<'UNPACK' || exit 1
import glob, lzma, os, shutil, sys
for packed in glob.glob(os.path.join(sys.argv[1], "**", "*.xz"), recursive=True):
    if not os.path.exists(packed[:-3]):
        with lzma.open(packed) as src, open(packed[:-3] + ".part", "wb") as dst:
            shutil.copyfileobj(src, dst)
        shutil.copymode(packed, packed[:-3] + ".part")
        os.replace(packed[:-3] + ".part", packed[:-3])
UNPACK
if [[ ! -s $data ]] && { want 4 || want 5; }; then
  echo "device_check: no $data: scripts/device_bundle.sh copies it; carry data" >&2
  exit 1
fi
# CUDA's libraries: the toolkit's, else PyTorch's wheels (CUDA 13 either way).
cuda_dirs=$(python3 - <<'EOF'
import glob, site, sys
dirs = []
roots = ["/usr/local/cuda/lib64", "/usr/local/cuda/targets/x86_64-linux/lib"]
for sp in site.getsitepackages() + [site.getusersitepackages()]:
    roots += glob.glob(sp + "/nvidia/*/lib") + glob.glob(sp + "/nvidia/cu*/lib")
for d in roots:
    if any(glob.glob(d + "/lib" + n) for n in ("cudart.so.13", "cublasLt.so.13", "nccl.so.2")):
        dirs.append(d)
print(":".join(dict.fromkeys(dirs)))
EOF
)
# CUDA's libraries for everything; the pack's own (oneDNN, OpenMPI...) for
# mingpt and the tests only (mingpt.sh, "${pack[@]}"), not for stage 5's Python.
export LD_LIBRARY_PATH="$cuda_dirs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export MINGPT_CUDA_PLUGIN=$bundle/libmingpt_cuda.so
pack=(env "LD_LIBRARY_PATH=$bundle/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}")

if want 1; then
  { nvidia-smi; echo "cpu: $(grep -m1 'model name' /proc/cpuinfo)";
    echo "cpu flags: $(grep -m1 -o -w 'avx2\|avx512f\|avx512_bf16\|amx_tile' /proc/cpuinfo | sort -u | tr '\n' ' ')"
  } > "$OUT/machine.txt" 2>&1
  head -15 "$OUT/machine.txt"; tail -2 "$OUT/machine.txt"
  missing=$("${pack[@]}" ldd "$bundle/mingpt" "$bundle/libmingpt_cuda.so" "$bundle/kernels_bench" \
            "$bundle"/tests/* 2>&1 |
            grep "not found" | sort -u)
  if [[ -n $missing ]]; then
    note "1 libraries: MISSING: $missing"
  else
    note "1 libraries: all found (CUDA from ${cuda_dirs:-the system})"
  fi
fi

if want 2 && (( $(allow 240) == 0 )); then
  note "2 cuda tests: skipped, out of time (BUDGET_S=$budget)"
elif want 2; then
  stage_end=$((SECONDS + $(allow 240)))
  passed=() failed=()
  : > "$OUT/test_cuda.log"
  suites=$("${pack[@]}" "$bundle/tests/test_cuda" --gtest_list_tests | grep -E '^[A-Za-z_/0-9]+\.$' | tr -d '.')
  for suite in $suites; do
    left=$((stage_end - SECONDS))
    if (( left < 10 )); then failed+=("$suite(no time)"); continue; fi
    echo "---- $suite" >> "$OUT/test_cuda.log"
    timeout "$left" "${pack[@]}" "$bundle/tests/test_cuda" --gtest_brief=1 --gtest_filter="$suite.*" \
      >> "$OUT/test_cuda.log" 2>&1
    rc=$?
    if (( rc == 0 )); then passed+=("$suite"); else failed+=("$suite(exit $rc)"); fi
  done
  grep -E '^\[  FAILED|Failure|error|abort' "$OUT/test_cuda.log" | head -25
  # The tensor-core attention (bf16/fp16) has run on the emulator only: if
  # its suite fails here, stages 4 and 5 run on the fp32 attention kernels.
  if [[ " ${failed[*]} " == *" CudaTensorCoreAttentionTest("* ]]; then
    export MINGPT_CUDA_ATTENTION=fp32
    note "2 tensor-core attention failed: stages 4-5 use MINGPT_CUDA_ATTENTION=fp32"
  fi
  # The opt-in mma.sync attention likewise: stage 5 then leaves out its row.
  if [[ " ${failed[*]} " == *" CudaMmaAttentionTest("* ]]; then
    skip_mma=(--skip mingpt+mma)
    note "2 mma attention failed: stage 5 leaves out mingpt+mma"
  fi
  note "2 cuda tests: ${#passed[@]} suites passed, ${#failed[@]} failed: ${failed[*]:-none} ($(grep -c '^\[  SKIPPED' "$OUT/test_cuda.log") skip lines)"
fi

# Runs a mingpt command, the most GPU memory in use while it runs sampled
# every 200 ms (into /tmp: $OUT's files are few).
with_gpu_memory() {
  local name=$1; shift
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 200 > "/tmp/$name.mem" &
  local poll=$!
  "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  kill "$poll" 2>/dev/null; wait "$poll" 2>/dev/null
  local peak; peak=$(sort -n "/tmp/$name.mem" | tail -1)
  echo "$rc ${peak:-?}"
}

if want 3 && (( $(allow 90) == 0 )); then
  note "3 kernels: skipped, out of time (BUDGET_S=$budget)"
elif want 3; then
  timeout "$(allow 90)" "${pack[@]}" "$bundle/kernels_bench" 8 16 1024 768 12 65 cuda \
    > "$OUT/kernels.log" 2>&1
  rc=$?
  grep -E 'attention|gelu bwd|encoder bwd|matmul (fwd|bwd) bf16' "$OUT/kernels.log" | head -24
  note "3 kernels at GPT-2-small's shape: exit $rc ($OUT/kernels.log)"
fi

if want 4 && (( $(allow 300) == 0 )); then
  note "4 seed 1.7B: skipped, out of time (BUDGET_S=$budget)"
elif want 4; then
  read -r rc peak < <(with_gpu_memory seed-1.7b timeout "$(allow 300)" "$mingpt" train \
    --data "$data" --accelerator cuda --gpus 1 --n_layer 15 --n_head 16 --n_embd 3072 \
    --batch_size 1 --precision 16 --strategy deepspeed_stage_3_offload --max_steps 4 \
    --limit_val_batches 0 --log_every_n_steps 1 --enable_checkpointing false \
    --default_root_dir /tmp/run-1.7b --profile --profile_memory)
  tail -20 "$OUT/seed-1.7b.log"
  cp /tmp/run-1.7b/metrics.csv "$OUT/seed-1.7b.metrics.csv" 2>/dev/null
  cp /tmp/run-1.7b/memory.csv "$OUT/seed-1.7b.memory.csv" 2>/dev/null
  held=$(tail -1 /tmp/run-1.7b/memory.csv 2>/dev/null | awk -F, '{printf "%.0f", $NF / 1048576}')
  note "4 seed 1.7B (stage 3 offload, fp16, batch 1): exit $rc; peak GPU memory in use ${peak} MiB (nvidia-smi, with the CUDA context; the seed: 5.1 GiB), of which mingpt's allocations ${held:-?} MiB (memory.csv peak_device_bytes)"
fi

if want 5 && (( $(allow 420) == 0 )); then
  note "5 GPT-2-small: skipped, out of time (BUDGET_S=$budget): run it alone with STAGES=5"
elif want 5; then
  timeout "$(allow 420)" python3 bench/gpu_vs_torch.py --binary "$mingpt" --data "$data" \
    "${skip_mma[@]}" > "$OUT/gpt2-small.log" 2>&1
  rc=$?
  tail -12 "$OUT/gpt2-small.log"
  note "5 GPT-2-small bf16 vs PyTorch and Lightning: exit $rc (table above, $OUT/gpt2-small.log)"
fi

if want 6; then
  if ! command -v compute-sanitizer >/dev/null; then
    note "6 compute-sanitizer: not on this machine"
  else
    for tool in memcheck racecheck; do
      if (( $(allow 240) == 0 )); then
        note "6 compute-sanitizer $tool: skipped, out of time (BUDGET_S=$budget)"
        continue
      fi
      timeout "$(allow 240)" "${pack[@]}" compute-sanitizer --tool "$tool" --error-exitcode 9 \
        "$bundle/tests/test_cuda" --gtest_brief=1 --gtest_filter='CudaBackendTest.*:CudaAttentionTest.*' \
        > "$OUT/sanitizer-$tool.log" 2>&1
      rc=$?
      tail -8 "$OUT/sanitizer-$tool.log"
      note "6 compute-sanitizer $tool: exit $rc ($(grep -m1 -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$OUT/sanitizer-$tool.log"))"
    done
  fi
fi

echo
echo "summary"
printf '  %s\n' "${summary[@]}"
