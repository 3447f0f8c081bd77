#!/usr/bin/python3
"""Training throughput: the PyTorch reference (the seed's GPT) vs the mingpt binary.

Both sides train the same model with the same recipe (AdamW, clip 1.0, the
seed's LR schedule, char-level data) for --warmup + --steps optimizer steps on
--threads CPU threads; the warm-up steps are excluded from the timing.

  torch:  tests/reference/model.py, torch.set_num_threads(threads);
          tokens/s = B * T * steps / (time of the timed steps)
  mingpt: <binary> train --data FILE --n_layer .. --n_head .. --n_embd ..
            --block_size .. --batch_size .. --dropout .. --num_threads ..
            --max_steps warmup+steps --limit_val_batches 0
            --default_root_dir DIR --log_every_n_steps 1
          tokens/s from DIR/metrics.csv (step,tokens,...,elapsed): the
          difference in `tokens` over the difference in `elapsed` between the
          row of step `warmup` (or the start) and the last row.

--precision bf16 runs torch's forward under torch.autocast("cpu", torch.bfloat16)
(PyTorch's bf16 mixed precision) and mingpt with --precision bf16.

Run with Debian's PyTorch: /usr/bin/python3 bench/bench_vs_torch.py --help
"""

import argparse
import csv
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from statistics import median as _median

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tests", "reference"))

# name: (n_layer, n_head, n_embd, block_size, batch_size, dropout)
PRESETS = {
    "bench-6x384": (6, 6, 384, 128, 16, 0.0),  # the comparison config
    "gpt-micro": (4, 4, 128, 64, 32, 0.1),     # the learning-test config
    "gpt-nano": (3, 3, 48, 64, 32, 0.1),
    "gpt1-12x768": (12, 12, 768, 128, 8, 0.0),
}


def median(values):
    return _median(values) if values else None


def default_data():
    for p in (os.path.join(REPO, "data", "tinyshakespeare.txt"),
              os.path.join(os.path.dirname(REPO), "shared", "data", "tinyshakespeare.txt")):
        if os.path.exists(p):
            return p
    return None


def default_binary():
    for d in ("build", "build-main", "build-release"):
        p = os.path.join(REPO, d, "mingpt")
        if os.path.exists(p):
            return p
    return shutil.which("mingpt")


def torch_blas():
    """The BLAS library torch resolved (Debian's python3-torch uses libblas.so.3)."""
    try:
        with open("/proc/self/maps") as f:
            libs = {line.split()[-1] for line in f if "blas" in line.lower()}
        return ", ".join(sorted(os.path.realpath(l) for l in libs)) or "none loaded"
    except OSError:
        return "unknown"


def set_blas_threads(n):
    """Sets OpenBLAS's own thread pool (torch.set_num_threads does not)."""
    import ctypes
    for lib in torch_blas().split(", "):
        if "openblas" in lib:
            try:
                ctypes.CDLL(lib).openblas_set_num_threads(n)
                return True
            except (OSError, AttributeError):
                pass
    return False


def bench_torch(a, intra_op):
    """torch tokens/s with `a.threads` BLAS threads and `intra_op` torch threads."""
    import numpy as np
    import torch
    from model import GPT, configure_optimizer, lr_at, set_lr
    from train_ref import load_splits

    torch.set_num_threads(intra_op)
    set_blas_threads(a.threads)
    torch.manual_seed(0)
    rng = np.random.RandomState(0)
    vocab, train, _, _ = load_splits(a.data)
    bs, B = a.block_size, a.batch_size
    final_tokens = 2 * math.ceil(len(train) / (bs + 1)) * bs
    model = GPT(len(vocab), bs, a.n_layer, a.n_head, a.n_embd, a.dropout)
    opt = configure_optimizer(model, 6e-4, 0.1, (0.9, 0.95), 1e-8)
    train_t = torch.from_numpy(train)
    model.train()
    t_start = None
    for s in range(a.warmup + a.steps):
        if s == a.warmup:
            t_start = time.perf_counter()
        starts = rng.randint(0, len(train) - (bs + 1), size=B)
        w = torch.stack([train_t[i:i + bs + 1] for i in starts])
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=a.precision == "bf16"):
            _, loss = model(w[:, :-1].contiguous(), w[:, 1:].contiguous())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        set_lr(opt, lr_at((s + 1) * B * bs, 6e-4, 512 * 20, final_tokens))
        opt.step()
        if a.verbose:
            print(f"  torch step {s + 1}: loss {loss.item():.4f} "
                  f"{time.perf_counter() - (t_start or time.perf_counter()):.1f}s", flush=True)
    dt = time.perf_counter() - t_start
    return B * bs * a.steps / dt, torch_blas()


def bench_mingpt(a):
    root = tempfile.mkdtemp(prefix="mingpt_bench_")
    try:
        cmd = [a.binary, "train", "--data", a.data,
               "--n_layer", str(a.n_layer), "--n_head", str(a.n_head), "--n_embd", str(a.n_embd),
               "--block_size", str(a.block_size), "--batch_size", str(a.batch_size),
               "--dropout", str(a.dropout), "--num_threads", str(a.threads),
               "--max_steps", str(a.warmup + a.steps), "--limit_val_batches", "0",
               "--precision", a.precision,
               "--default_root_dir", root, "--log_every_n_steps", "1"]
        cmd += getattr(a, "extra_args", [])  # e.g. --accelerator cuda (gpu_vs_torch.py)
        if a.verbose:
            print("  " + " ".join(cmd), flush=True)
        r = subprocess.run(cmd, stdout=None if a.verbose else subprocess.DEVNULL,
                           stderr=subprocess.PIPE, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"mingpt exited {r.returncode}: {r.stderr.strip()[-2000:]}")
        with open(os.path.join(root, "metrics.csv")) as f:
            rows = [row for row in csv.DictReader(f) if row.get("step")]
        rows = [(int(row["step"]), float(row["tokens"]), float(row["elapsed"])) for row in rows]
        base = [r_ for r_ in rows if r_[0] == a.warmup]
        step0, tok0, el0 = base[-1] if base else (0, 0.0, 0.0)
        timed = [r_ for r_ in rows if r_[0] > step0]
        if not timed:
            raise RuntimeError(f"metrics.csv has no rows after step {step0}")
        _, tok1, el1 = timed[-1]
        return (tok1 - tok0) / (el1 - el0)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", choices=sorted(PRESETS), default="bench-6x384",
                   help="model and batch flags; explicit flags below override it")
    p.add_argument("--binary", default=default_binary(), help="the mingpt executable")
    p.add_argument("--data", default=default_data(), help="text file (tinyshakespeare)")
    p.add_argument("--threads", type=int, nargs="+", default=[2],
                   help="thread counts to measure (each a row)")
    p.add_argument("--steps", type=int, default=5, help="timed optimizer steps")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps before them")
    p.add_argument("--rounds", type=int, default=1,
                   help="measure both sides this many times, alternating, and report medians "
                        "(shared machines drift by 10-20%% within minutes)")
    for flag in ("n_layer", "n_head", "n_embd", "block_size", "batch_size"):
        p.add_argument("--" + flag, type=int)
    p.add_argument("--dropout", type=float)
    p.add_argument("--precision", choices=("32", "bf16"), default="32",
                   help="bf16: torch CPU autocast bf16 vs mingpt --precision bf16")
    p.add_argument("--skip_torch", action="store_true")
    p.add_argument("--skip_mingpt", action="store_true")
    p.add_argument("-v", "--verbose", action="store_true")
    a = p.parse_args()
    for k, v in zip(("n_layer", "n_head", "n_embd", "block_size", "batch_size", "dropout"),
                    PRESETS[a.preset]):
        if getattr(a, k) is None:
            setattr(a, k, v)
    if a.rounds < 1 or a.steps < 1 or a.warmup < 0:
        p.error("--rounds and --steps must be at least 1, --warmup at least 0")
    if not a.data or not os.path.exists(a.data):
        p.error("--data: no such file (tinyshakespeare.txt)")
    if not a.skip_mingpt and (not a.binary or not os.path.exists(a.binary)):
        p.error("--binary: mingpt executable not found (build it, or pass --skip_mingpt)")

    config = (f"L{a.n_layer} H{a.n_head} C{a.n_embd} T{a.block_size} B{a.batch_size} "
              f"drop{a.dropout:g} {'bf16' if a.precision == 'bf16' else 'fp32'}")
    print(f"{a.warmup} warm-up + {a.steps} timed steps; data {a.data}")
    several = a.rounds > 1
    rows = []
    for threads in a.threads:
        a.threads = threads
        torch_runs, mingpt_runs, ratios = [], [], []
        for r in range(a.rounds):
            if several:
                print(f"  round {r + 1} of {a.rounds}")
            torch_tps = mingpt_tps = None
            if not a.skip_torch:
                # torch as configured by set_num_threads(threads), and its faster
                # set-up on small core counts: one intra-op thread with the BLAS
                # using all `threads` (no oversubscription). The ratio uses the best.
                for intra_op in sorted({threads, 1}, reverse=True):
                    tps, blas = bench_torch(a, intra_op)
                    print(f"  torch, BLAS threads {threads}, intra-op threads {intra_op}: "
                          f"{tps:,.0f} tok/s")
                    torch_tps = max(torch_tps or 0, tps)
                if r == 0:
                    print(f"  torch BLAS: {blas}")
                torch_runs.append(torch_tps)
            if not a.skip_mingpt:
                mingpt_tps = bench_mingpt(a)
                if several:
                    print(f"  mingpt: {mingpt_tps:,.0f} tok/s")
                mingpt_runs.append(mingpt_tps)
            if torch_tps and mingpt_tps:
                ratios.append(mingpt_tps / torch_tps)
        rows.append((config, threads, median(torch_runs), median(mingpt_runs), ratios))

    fmt = lambda v: "-" if v is None else f"{v:,.0f}"  # noqa: E731
    header = ("config", "threads", "torch tok/s (best)", "mingpt tok/s", "mingpt/torch")
    if several:
        header += ("ratio range",)
    table = [header]
    for c, t, tt, mt, ratios in rows:
        row = (c, str(t), fmt(tt), fmt(mt), f"{median(ratios):.2f}x" if ratios else "-")
        if several:
            row += (f"{min(ratios):.2f}-{max(ratios):.2f}x" if ratios else "-",)
        table.append(row)
    if several:
        print(f"medians over {a.rounds} rounds (each round: torch, then mingpt; the ratio is "
              "the median of the rounds' ratios)")
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    for i, r in enumerate(table):
        print("  ".join(s.ljust(w) if j == 0 else s.rjust(w) for j, (s, w) in
                        enumerate(zip(r, widths))))
        if i == 0:
            print("  ".join("-" * w for w in widths))


if __name__ == "__main__":
    main()
