#!/usr/bin/env bash
# Sampling speed with and without the key/value cache, on this machine.
#
#   bench/bench_sampling.sh [STEPS] [THREADS]     (defaults: 500 characters, 2 threads)
#
# A 6-layer, 6-head, n_embd 384 model with block_size 1024 (so that 500
# characters after the prompt stay inside one window, where the cache
# holds) is trained for one step on $MINGPT_DATA, then `mingpt sample`
# generates STEPS characters from the same prompt and seed twice: decoding
# from cached keys and values, and recomputing the context for every
# character (--no_kv_cache). Prints both times, the ratio, and whether the
# two texts are identical.
set -euo pipefail
cd "$(dirname "$0")/.."
steps=${1:-500}
threads=${2:-2}
bin=build/mingpt
data=${MINGPT_DATA:-data/tinyshakespeare.txt}
[[ -x $bin ]] || scripts/build.sh >/dev/null
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$bin" train --data "$data" --n_layer 6 --n_head 6 --n_embd 384 --block_size 1024 --batch_size 1 \
  --max_steps 1 --limit_val_batches 0 --default_root_dir "$tmp/run" >/dev/null 2>&1
sample=("$bin" sample --checkpoint "$tmp/run/checkpoints/last" --prompt "O God, O God!"
        --steps "$steps" --seed 7 --num_threads "$threads")
t0=$(date +%s.%N); "${sample[@]}" > "$tmp/cached.txt"
t1=$(date +%s.%N); "${sample[@]}" --no_kv_cache > "$tmp/recomputed.txt"
t2=$(date +%s.%N)
awk -v a="$t0" -v b="$t1" -v c="$t2" -v n="$steps" 'BEGIN {
  printf "cached:     %6.2f s  (%.0f characters/s)\n", b - a, n / (b - a)
  printf "recomputed: %6.2f s  (%.0f characters/s)\n", c - b, n / (c - b)
  printf "speed-up:   %.1fx\n", (c - b) / (b - a) }'
if cmp -s "$tmp/cached.txt" "$tmp/recomputed.txt"; then echo "texts: identical"; else echo "texts: DIFFER"; fi
