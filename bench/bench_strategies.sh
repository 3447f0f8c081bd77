#!/usr/bin/env bash
# Step time of every strategy on this machine, relative to ddp, with the
# per-phase timings that show how much communication overlap hid.
#
#   bench/bench_strategies.sh [RANKS] [STEPS]     (defaults: 2 ranks, 12 steps)
#
# The model is the speed issue's: 6 layers, 6 heads, n_embd 384, block 128,
# dropout 0; batch 8 per rank (16 in all with 2 ranks). Each rank gets
# cores/ranks threads. tokens/s is measured over the steps after the first
# two (warm-up). Prints a markdown table; also one single-process row (the
# whole batch in one process with all cores) for comparison.
set -euo pipefail
cd "$(dirname "$0")/.."
ranks=${1:-2}
steps=${2:-12}
bin=build/mingpt
data=${MINGPT_DATA:-data/tinyshakespeare.txt}
[[ -x $bin ]] || scripts/build.sh >/dev/null
[[ -f $data ]] || { echo "no data at $data (set MINGPT_DATA)" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
model=(--n_layer 6 --n_head 6 --n_embd 384 --block_size 128 --dropout 0 --data "$data"
       --max_steps "$steps" --limit_val_batches 0 --log_every_n_steps 1)

# Mean tokens/s over the metrics rows after step 2.
tokens_per_s() { awk -F, 'NR > 1 && $1 > 2 && $7 != "" { s += $7; n++ } END { printf "%.0f", s / n }' "$1"; }

echo "| strategy | ranks | tokens/s | step (ms) | vs ddp | fwd+bwd (ms) | optimizer (ms) | wait params (ms) | wait grads (ms) | peak RSS/rank (MiB) |"
echo "|---|---|---|---|---|---|---|---|---|---|"
ddp_tps=""
for s in ddp deepspeed_stage_1 deepspeed_stage_2 deepspeed_stage_3; do
  out=$("$bin" train "${model[@]}" --batch_size 8 --devices "$ranks" --strategy "$s" \
        --default_root_dir "$tmp/$s" --profile 2>/dev/null)
  tps=$(tokens_per_s "$tmp/$s/metrics.csv")
  [[ -z $ddp_tps ]] && ddp_tps=$tps
  # rank 0's phase line of --profile
  read -r fb opt wp wg _ < <(echo "$out" | awk '$1 == "0" && NF == 6 { print $2, $3, $4, $5, $6 }')
  rss=$(awk -F, 'NR > 1 { if ($8 > m) m = $8 } END { printf "%.0f", m / 1048576 }' "$tmp/$s/memory.csv")
  step_ms=$(awk -v t="$tps" -v r="$ranks" 'BEGIN { printf "%.0f", 8 * r * 128 / t * 1000 }')
  ratio=$(awk -v a="$tps" -v b="$ddp_tps" 'BEGIN { printf "%.2f", b / a }')
  echo "| $s | $ranks | $tps | $step_ms | ${ratio}x | $fb | $opt | $wp | $wg | $rss |"
done
"$bin" train "${model[@]}" --batch_size $((8 * ranks)) --default_root_dir "$tmp/single" >/dev/null 2>&1
tps=$(tokens_per_s "$tmp/single/metrics.csv")
rss=$(awk -F, 'NR > 1 { if ($8 > m) m = $8 } END { printf "%.0f", m / 1048576 }' "$tmp/single/memory.csv")
step_ms=$(awk -v t="$tps" -v r="$ranks" 'BEGIN { printf "%.0f", 8 * r * 128 / t * 1000 }')
echo "| single process, all cores | 1 | $tps | $step_ms | $(awk -v a="$tps" -v b="$ddp_tps" 'BEGIN { printf "%.2f", b / a }')x | | | | | $rss |"
