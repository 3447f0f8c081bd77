#!/usr/bin/env bash
# NVMe offload on this machine: a minGPT whose training state (16 bytes per
# parameter) is larger than the RAM, trained for 3 steps with
# --strategy deepspeed_stage_3_offload_nvme, bf16 matrix products and
# activation checkpointing.
#
#   bench/bench_nvme_offload.sh [OFFLOAD_DIR] [N_LAYER] [N_EMBD] [N_HEAD]
#
# defaults: /work/offload, 26 layers of n_embd 2560 (20 heads): 2.05 B
# parameters, 32.7 GB of training state. Prints, in order:
#   1. the disk alone: sequential direct (O_DIRECT) writes and reads of 4 GiB
#      with dd, the ceiling for the offload's own throughput;
#   2. `mingpt plan` for the model: no in-memory strategy fits;
#   3. the run: per-step time split into compute and waiting for the disk,
#      bytes moved and GB/s (--profile), each part's memory
#      (--profile_memory), and the peak RSS (/usr/bin/time).
# Needs about 60 GB free in OFFLOAD_DIR's file system (the offload files and
# the final checkpoint, removed at the end) and build/mingpt.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-/work/offload}
L=${2:-26}
C=${3:-2560}
H=${4:-20}
bin=build/mingpt
data=${MINGPT_DATA:-data/tinyshakespeare.txt}
run=$(mktemp -d "${dir%/}/run-XXXXXX")
trap 'rm -rf "$run"' EXIT
mkdir -p "$dir"
model=(--n_layer "$L" --n_head "$H" --n_embd "$C" --block_size 128 --batch_size 1 --data "$data")

echo "== 1. the disk: sequential direct I/O, 4 GiB each way"
dd if=/dev/zero of="$run/dd.bin" bs=64M count=64 oflag=direct 2>&1 | tail -1
dd if="$run/dd.bin" of=/dev/null bs=64M iflag=direct 2>&1 | tail -1
rm -f "$run/dd.bin"

echo "== 2. the planner (memory per rank, one process)"
"$bin" plan "${model[@]}" --activation_checkpointing || true

echo "== 3. NVMe offload, 3 steps"
/usr/bin/time -f "peak RSS %M KiB, wall %e s" \
  "$bin" train "${model[@]}" --precision bf16 --activation_checkpointing \
  --strategy deepspeed_stage_3_offload_nvme --offload_dir "$run" \
  --max_steps 3 --limit_val_batches 0 --log_every_n_steps 1 \
  --profile --profile_memory --default_root_dir "$run/root"
