#!/usr/bin/python3
"""Trains the reference GPT (model.py) on a text file with the seed's recipe.

The recipe is the one mingpt's Trainer follows (src/data/char_dataset.h,
src/optim/adamw.h), so the final validation loss calibrates the C++ learning
tests:
  - vocabulary: the sorted distinct characters of the text;
  - splits: contiguous 90% train / 5% val / 5% test (n*90//100, n*95//100);
  - a training sample: a random (block_size+1)-character window of train,
    start uniform in [0, len(train) - block_size - 1) (np.random.randint);
  - AdamW betas (0.9, 0.95), eps 1e-8, weight decay 0.1 on Linear/Embedding
    weights only; gradient clipping 1.0 (clip_grad_norm_);
  - lr of step s (0-based) = lr_at((s+1)*B*T): linear warmup over 512*20
    tokens, cosine to a 10% floor at 2*ceil(len(train)/(block_size+1))*block_size;
  - validation: mean loss over the consecutive non-overlapping
    (block_size+1)-character windows of the val split (dropout off).

Example (gpt-micro):
  /usr/bin/python3 tests/reference/train_ref.py --data data/tinyshakespeare.txt \
      --n_layer 4 --n_head 4 --n_embd 128 --block_size 64 --batch_size 32 \
      --dropout 0.1 --max_steps 300 --threads 2
"""

import argparse
import math
import os
import sys
import time

import numpy as np
import torch
from torch.nn import functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from model import GPT, configure_optimizer, lr_at, set_lr  # noqa: E402


def load_splits(path):
    text = open(path, encoding="utf-8").read()  # characters, as the seed and mingpt read it
    vocab = sorted(set(text))
    stoi = {ch: i for i, ch in enumerate(vocab)}
    data = np.array([stoi[c] for c in text], dtype=np.int64)
    n = len(data)
    train_end, val_end = n * 90 // 100, n * 95 // 100
    return vocab, data[:train_end], data[train_end:val_end], data[val_end:]


def eval_windows(split, block_size):
    """The (x, y) windows [i*(T+1), i*(T+1)+T+1) of a split, as LongTensors."""
    T = block_size if len(split) >= block_size + 1 else len(split) - 1
    n = len(split) // (T + 1) if T > 0 else 0
    w = torch.from_numpy(split[:n * (T + 1)].reshape(n, T + 1))
    return w[:, :-1], w[:, 1:]


@torch.no_grad()
def evaluate(model, split, block_size, batch_size, limit_batches=-1):
    x, y = eval_windows(split, block_size)
    model.eval()
    total, count = 0.0, 0
    for bi, i in enumerate(range(0, len(x), batch_size)):
        if 0 <= limit_batches <= bi:
            break
        logits, _ = model(x[i:i + batch_size])
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)),
                               y[i:i + batch_size].reshape(-1), reduction="sum")
        total += float(loss)
        count += y[i:i + batch_size].numel()
    model.train()
    return total / max(count, 1)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True)
    p.add_argument("--n_layer", type=int, default=4)
    p.add_argument("--n_head", type=int, default=4)
    p.add_argument("--n_embd", type=int, default=128)
    p.add_argument("--block_size", type=int, default=64)
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--dropout", type=float, default=0.1)
    p.add_argument("--learning_rate", type=float, default=6e-4)
    p.add_argument("--weight_decay", type=float, default=0.1)
    p.add_argument("--gradient_clip_val", type=float, default=1.0)
    p.add_argument("--max_steps", type=int, default=300)
    p.add_argument("--limit_val_batches", type=int, default=-1,
                   help="evaluate at most this many val batches (-1: all, 0: none)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--log_every_n_steps", type=int, default=50)
    a = p.parse_args()

    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    rng = np.random.RandomState(a.seed)

    vocab, train, val, _ = load_splits(a.data)
    bs = a.block_size
    epoch_samples = math.ceil(len(train) / (bs + 1))
    warmup_tokens = 512 * 20
    final_tokens = 2 * epoch_samples * bs
    model = GPT(len(vocab), bs, a.n_layer, a.n_head, a.n_embd, a.dropout)
    nparams = sum(p.numel() for p in model.parameters())
    print(f"vocab {len(vocab)}, train/val {len(train)}/{len(val)} chars, "
          f"{nparams} parameters, final_tokens {final_tokens}", flush=True)
    opt = configure_optimizer(model, a.learning_rate, a.weight_decay, (0.9, 0.95), 1e-8)
    train_t = torch.from_numpy(train)

    model.train()
    t0 = time.time()
    for s in range(a.max_steps):
        starts = rng.randint(0, len(train) - (bs + 1), size=a.batch_size)
        w = torch.stack([train_t[i:i + bs + 1] for i in starts])
        x, y = w[:, :-1].contiguous(), w[:, 1:].contiguous()
        _, loss = model(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), a.gradient_clip_val)
        lr = lr_at((s + 1) * a.batch_size * bs, a.learning_rate, warmup_tokens, final_tokens)
        set_lr(opt, lr)
        opt.step()
        if a.log_every_n_steps > 0 and ((s + 1) % a.log_every_n_steps == 0 or s == 0):
            print(f"step {s + 1} loss {loss.item():.4f} lr {lr:.3e} grad_norm {float(norm):.3f} "
                  f"elapsed {time.time() - t0:.1f}s", flush=True)
    train_time = time.time() - t0

    t1 = time.time()
    val_loss = evaluate(model, val, bs, a.batch_size, a.limit_val_batches)
    print(f"val_loss {val_loss:.4f}  (train {train_time:.1f}s, "
          f"{a.max_steps * a.batch_size * bs / train_time:.0f} tokens/s; eval {time.time() - t1:.1f}s)",
          flush=True)


if __name__ == "__main__":
    main()
