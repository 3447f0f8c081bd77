#!/usr/bin/env bash
# The main job: build, train a small GPT on tinyshakespeare for a few minutes
# on the CPU, then print a sample from the best checkpoint.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/build.sh
run=runs/demo
rm -rf "$run"
./build/mingpt train --model_type gpt-micro --block_size 128 --batch_size 32 \
  --max_steps 1500 --val_check_interval 250 --limit_val_batches 20 --dropout 0.1 \
  --learning_rate 2e-3 --default_root_dir "$run"
./build/mingpt evaluate --checkpoint "$run/checkpoints/best"
./build/mingpt sample --checkpoint "$run/checkpoints/best" --prompt "O God, O God!" --steps 500 --temperature 0.8
