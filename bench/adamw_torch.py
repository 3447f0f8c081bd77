#!/usr/bin/python3
"""torch.optim.AdamW's step time on one flat tensor, beside bench/kernels/adamw_bench.cc.

  /usr/bin/python3 bench/adamw_torch.py [threads] [millions of elements]
Same update (lr 6e-4, betas (0.9, 0.95), eps 1e-8, weight decay 0.1), best of 11 steps.
"""
import sys
import time

import torch

threads = int(sys.argv[1]) if len(sys.argv) > 1 else 2
n = int(float(sys.argv[2]) * 1e6) if len(sys.argv) > 2 else 16_000_000
torch.set_num_threads(threads)
p = torch.nn.Parameter(torch.randn(n) * 0.02)
p.grad = torch.randn(n) * 0.02
for foreach in (False, True):
    opt = torch.optim.AdamW([p], lr=6e-4, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1,
                            foreach=foreach)
    best = 1e9
    for _ in range(11):
        t = time.perf_counter()
        opt.step()
        best = min(best, time.perf_counter() - t)
    print(f"torch AdamW, {threads} threads, foreach={foreach}: {best * 1e3:.2f} ms, "
          f"{n / best / 1e6:.1f} Melem/s")
