#!/usr/bin/python3
"""Loads a mingpt checkpoint into the seed's PyTorch GPT and evaluates it.

The check that checkpoints are PyTorch's: model.safetensors (or the weights
file given with --weights, e.g. from `mingpt convert` of a sharded checkpoint)
goes into the reference model (tests/reference/model.py, the seed's module
names) with load_state_dict(strict=True), and the loss over a split's
non-overlapping (block_size+1)-character windows is printed as JSON, computed
as `mingpt evaluate --json` computes it, for the C++ test to compare, with
whether the checkpoint's vocabulary is the one the seed's CharDataset makes
of the text (its characters, sorted). The config and vocabulary come from
CHECKPOINT_DIR/meta.json.

  evaluate_checkpoint.py CHECKPOINT_DIR DATA_FILE [--split test|val] [--weights FILE]
"""

import argparse
import json
import math
import os
import sys

import numpy as np
import torch
from torch.nn import functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from model import GPT  # noqa: E402
from safetensors_np import load_file  # noqa: E402


def main():
    p = argparse.ArgumentParser()
    p.add_argument("checkpoint")
    p.add_argument("data")
    p.add_argument("--split", default="test", choices=["test", "val"])
    p.add_argument("--weights", help="safetensors weights (default: CHECKPOINT_DIR/model.safetensors)")
    a = p.parse_args()

    meta = json.load(open(os.path.join(a.checkpoint, "meta.json")))
    c = meta["config"]
    model = GPT(c["vocab_size"], c["block_size"], c["n_layer"], c["n_head"], c["n_embd"], dropout=0.0)
    weights = load_file(a.weights or os.path.join(a.checkpoint, "model.safetensors"))
    model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in weights.items()}, strict=True)
    model.eval()
    model.double()  # the exact value the fp32 C++ result is compared with

    text = open(a.data, encoding="utf-8").read()  # as the seed reads it
    stoi = {ch: i for i, ch in enumerate(meta["vocab"])}
    ids = np.array([stoi[ch] for ch in text], dtype=np.int64)
    n = len(ids)
    split = ids[n * 95 // 100:] if a.split == "test" else ids[n * 90 // 100:n * 95 // 100]
    T = c["block_size"] if len(split) >= c["block_size"] + 1 else len(split) - 1
    windows = len(split) // (T + 1)
    x = torch.from_numpy(np.stack([split[w * (T + 1):w * (T + 1) + T] for w in range(windows)]))
    y = torch.from_numpy(np.stack([split[w * (T + 1) + 1:w * (T + 1) + T + 1] for w in range(windows)]))
    with torch.no_grad():
        logits, _ = model(x)
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1)).item()
    # The seed's CharDataset vocabulary of the same text, for the test to
    # compare with the checkpoint's.
    seed_vocab = "".join(sorted(set(text)))
    print(json.dumps({"split": a.split, "loss": loss, "perplexity": math.exp(loss),
                      "windows": windows, "tokens": windows * T,
                      "vocab_is_the_seeds": meta["vocab"] == seed_vocab}))


if __name__ == "__main__":
    main()
