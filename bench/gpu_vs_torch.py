#!/usr/bin/env python3
"""GPU training throughput: mingpt --accelerator cuda vs the seed's GPT in PyTorch and Lightning.

The same model (tests/reference/model.py, the seed's minGPT; GPT-2-small-sized
by default: 12 layers, 12 heads, n_embd 768, block 1024, the character
vocabulary of the data), the same optimizer (AdamW, betas (0.9, 0.95), weight
decay 0.1 on Linear/Embedding weights, clip 1.0) and bf16 mixed precision on
one GPU, three ways:

  torch      the model under torch.autocast("cuda", torch.bfloat16), a plain
             training loop; timed with CUDA events around the timed steps
  torch+sdpa the same, with the seed's attention (scores, mask, softmax and
             the product written out, a T x T matrix per head) replaced by
             torch's fused scaled_dot_product_attention (FlashAttention on
             the GPU): the same math, PyTorch at its fastest without compiling
  lightning  the model in a LightningModule, Trainer(precision="bf16-mixed",
             gradient_clip_val=1.0), timed by a callback that synchronises
  mingpt     <binary> train --accelerator cuda --precision bf16 ...; tokens/s
             from its metrics.csv (bench_vs_torch.bench_mingpt)

For each: tokens/s over the timed steps, the peak GPU memory (PyTorch's
max_memory_allocated for torch and Lightning; for mingpt the most
nvidia-smi saw in use, which includes the CUDA context), and MFU: FLOPs per
token 6*params + 12*n_layer*n_embd*block_size, times tokens/s, over a bf16
matrix-product ceiling this script measures first (8192^3 on random data,
the median of 10), and over the datasheet's dense bf16 rate (--peak_tflops,
989 for an H100/H200 SXM).

Runs where PyTorch has CUDA (the device tool's machine). Without a GPU,
--device cpu runs the torch side on a tiny model, to check the script.
"""

import argparse
import gc
import math
import os
import statistics
import subprocess
import sys
import threading
import time
import traceback

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tests", "reference"))
sys.path.insert(0, os.path.join(REPO, "bench"))


def flops_per_token(params, a):
    return 6 * params + 12 * a.n_layer * a.n_embd * a.block_size


def matmul_ceiling_tflops(torch, device):
    """bf16 8192^3 products on random data: the median TFLOP/s of 10."""
    n = 8192 if device == "cuda" else 512
    x = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    y = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    times = []
    for i in range(13):
        if device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            x @ y
            end.record()
            torch.cuda.synchronize()
            t = start.elapsed_time(end) / 1e3
        else:
            t0 = time.perf_counter()
            x @ y
            t = time.perf_counter() - t0
        if i >= 3:
            times.append(t)
    return 2 * n ** 3 / statistics.median(times) / 1e12


def make_batches(a, train, torch):
    """(warmup + steps) random (block_size + 1)-windows per batch, on the host."""
    import numpy as np
    rng = np.random.RandomState(0)
    T, B, n = a.block_size, a.batch_size, a.warmup + a.steps
    starts = rng.randint(0, len(train) - (T + 1), size=(n, B))
    w = np.stack([[train[s:s + T + 1] for s in row] for row in starts])
    w = torch.from_numpy(w)
    return w[:, :, :-1].contiguous(), w[:, :, 1:].contiguous()


def sync(torch, device):
    if device == "cuda":
        torch.cuda.synchronize()


def use_sdpa(model, torch):
    """The seed's attention modules forward through scaled_dot_product_attention."""
    import types
    F = torch.nn.functional

    def forward(self, x):
        B, T, C = x.size()
        hs = C // self.n_head
        k = self.key(x).view(B, T, self.n_head, hs).transpose(1, 2)
        q = self.query(x).view(B, T, self.n_head, hs).transpose(1, 2)
        v = self.value(x).view(B, T, self.n_head, hs).transpose(1, 2)
        y = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.attn_drop.p if self.training else 0.0, is_causal=True)
        return self.resid_drop(self.proj(y.transpose(1, 2).contiguous().view(B, T, C)))

    for m in model.modules():
        if type(m).__name__ == "CausalSelfAttention":
            m.forward = types.MethodType(forward, m)


def bench_torch(a, vocab, xs, ys, sdpa=False):
    import torch
    from model import GPT, configure_optimizer
    torch.manual_seed(0)
    dev = a.device
    model = GPT(len(vocab), a.block_size, a.n_layer, a.n_head, a.n_embd, a.dropout).to(dev)
    if sdpa:
        use_sdpa(model, torch)
    opt = configure_optimizer(model, 6e-4, 0.1, (0.9, 0.95), 1e-8)
    if dev == "cuda":
        torch.cuda.reset_peak_memory_stats()
    model.train()
    t0 = None
    for s in range(a.warmup + a.steps):
        if s == a.warmup:
            sync(torch, dev)
            t0 = time.perf_counter()
        x, y = xs[s].to(dev, non_blocking=True), ys[s].to(dev, non_blocking=True)
        with torch.autocast(dev, dtype=torch.bfloat16):
            _, loss = model(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    sync(torch, dev)
    dt = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() if dev == "cuda" else 0
    params = sum(p.numel() for p in model.parameters())
    return a.batch_size * a.block_size * a.steps / dt, peak, params


def bench_lightning(a, vocab, xs, ys):
    import torch
    try:
        import lightning as L
    except ImportError:
        import pytorch_lightning as L
    from model import GPT, configure_optimizer

    class Module(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.model = GPT(len(vocab), a.block_size, a.n_layer, a.n_head, a.n_embd, a.dropout)

        def training_step(self, batch, batch_idx):
            _, loss = self.model(*batch)
            return loss

        def configure_optimizers(self):
            return configure_optimizer(self.model, 6e-4, 0.1, (0.9, 0.95), 1e-8)

    class Timer(L.Callback):
        t0 = t1 = None

        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            if batch_idx == a.warmup:
                sync(torch, a.device)
                Timer.t0 = time.perf_counter()

        def on_train_end(self, trainer, module):
            sync(torch, a.device)
            Timer.t1 = time.perf_counter()

    torch.manual_seed(0)
    if a.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    data = torch.utils.data.TensorDataset(xs.reshape(-1, a.block_size),
                                          ys.reshape(-1, a.block_size))
    loader = torch.utils.data.DataLoader(data, batch_size=a.batch_size, shuffle=False)
    trainer = L.Trainer(accelerator="gpu" if a.device == "cuda" else "cpu", devices=1,
                        precision="bf16-mixed", max_steps=a.warmup + a.steps,
                        gradient_clip_val=1.0, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[Timer()])
    trainer.fit(Module(), loader)
    peak = torch.cuda.max_memory_allocated() if a.device == "cuda" else 0
    return a.batch_size * a.block_size * a.steps / (Timer.t1 - Timer.t0), peak


class GpuMemoryPoll:
    """The most GPU memory the other processes (mingpt) hold while the block
    runs, in MiB: nvidia-smi's per-process figures, without this process's
    (PyTorch's context and cached blocks). Where nvidia-smi lists no
    processes (a container hiding them), the whole GPU's use above what it
    was when the block began."""

    def __init__(self):
        self.peak_mib, self._stop = 0, threading.Event()
        self._by_process, self._baseline = False, None

    @staticmethod
    def _query(what):
        return subprocess.run(["nvidia-smi", f"--query-{what}", "--format=csv,noheader,nounits"],
                              capture_output=True, text=True, timeout=5).stdout

    def _sample(self):
        others = [line.split(",") for line in self._query("compute-apps=pid,used_memory").splitlines()
                  if line.strip() and line.split(",")[0].strip() != str(os.getpid())]
        if others:
            self._by_process = True
            return sum(int(used) for _, used in others)
        if self._by_process:
            return 0
        used = sum(int(v) for v in self._query("gpu=memory.used").split())
        if self._baseline is None:
            self._baseline = used
        return used - self._baseline

    def _run(self):
        while not self._stop.is_set():
            try:
                self.peak_mib = max(self.peak_mib, self._sample())
            except (OSError, ValueError, subprocess.TimeoutExpired):
                pass
            self._stop.wait(0.2)

    def __enter__(self):
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--binary", default=os.path.join(REPO, "build", "mingpt"))
    p.add_argument("--data", default=os.path.join(REPO, "data", "tinyshakespeare.txt"))
    p.add_argument("--n_layer", type=int, default=12)
    p.add_argument("--n_head", type=int, default=12)
    p.add_argument("--n_embd", type=int, default=768)
    p.add_argument("--block_size", type=int, default=1024)
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--dropout", type=float, default=0.0)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--threads", type=int, default=8, help="mingpt's host threads")
    p.add_argument("--peak_tflops", type=float, default=989.0,
                   help="the GPU's datasheet dense bf16 rate")
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    p.add_argument("--skip", nargs="*", default=[],
                   choices=("torch", "torch+sdpa", "lightning", "mingpt", "mingpt+mma"))
    a = p.parse_args()
    import torch
    from train_ref import load_splits
    if a.device == "cuda" and not torch.cuda.is_available():
        p.error("PyTorch sees no CUDA device (--device cpu checks the script on a tiny model)")
    if not os.path.exists(a.data):
        p.error(f"--data: no such file {a.data}")
    vocab, train, _, _ = load_splits(a.data)
    xs, ys = make_batches(a, train, torch)
    ceiling = matmul_ceiling_tflops(torch, a.device)
    name = torch.cuda.get_device_name() if a.device == "cuda" else "cpu"
    print(f"{name}; bf16 product ceiling {ceiling:.0f} TFLOP/s (measured), "
          f"{a.peak_tflops:.0f} (datasheet)")
    print(f"model L{a.n_layer} H{a.n_head} C{a.n_embd} T{a.block_size} B{a.batch_size} "
          f"dropout {a.dropout:g}; {a.warmup} warm-up + {a.steps} timed steps", flush=True)

    rows, params = [], None
    if "torch" not in a.skip:
        tps, peak, params = bench_torch(a, vocab, xs, ys)
        rows.append(("torch (autocast bf16)", tps, peak / 2 ** 30))
        print(f"  torch: {tps:,.0f} tok/s", flush=True)
    if "torch+sdpa" not in a.skip and not hasattr(torch.nn.functional,
                                                  "scaled_dot_product_attention"):
        print(f"  torch+sdpa: PyTorch {torch.__version__} has no scaled_dot_product_attention")
    elif "torch+sdpa" not in a.skip:
        if a.device == "cuda":
            gc.collect()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        tps, peak, params = bench_torch(a, vocab, xs, ys, sdpa=True)
        rows.append(("torch+sdpa (autocast bf16)", tps, peak / 2 ** 30))
        print(f"  torch+sdpa: {tps:,.0f} tok/s", flush=True)
    if "lightning" not in a.skip:
        try:
            tps, peak = bench_lightning(a, vocab, xs, ys)
            rows.append(("lightning (bf16-mixed)", tps, peak / 2 ** 30))
            print(f"  lightning: {tps:,.0f} tok/s", flush=True)
        except ImportError as e:
            print(f"  lightning: not installed ({e})")
        except Exception as e:  # noqa: BLE001 -- one side failing must not cost the others' rows
            traceback.print_exc()
            print(f"  lightning: failed ({type(e).__name__}: {e})", flush=True)
    # mingpt's attention as it ships (auto: the WMMA kernels), then on the
    # opt-in mma.sync kernels (MINGPT_CUDA_ATTENTION=mma), the two compared.
    for run, attention in (("mingpt", None), ("mingpt+mma", "mma")):
        if run in a.skip:
            continue
        from bench_vs_torch import bench_mingpt
        a.precision, a.verbose = "bf16", False
        a.extra_args = ["--accelerator", a.device, "--enable_checkpointing", "false"]
        if a.device == "cuda":  # what torch still caches is not mingpt's
            gc.collect()
            torch.cuda.empty_cache()
        before = os.environ.get("MINGPT_CUDA_ATTENTION")
        if attention:
            os.environ["MINGPT_CUDA_ATTENTION"] = attention
        try:
            with GpuMemoryPoll() as poll:
                tps = bench_mingpt(a)
        finally:
            os.environ.pop("MINGPT_CUDA_ATTENTION", None)
            if before is not None:
                os.environ["MINGPT_CUDA_ATTENTION"] = before
        rows.append((f"{run} (--precision bf16)", tps, poll.peak_mib / 1024))
        print(f"  {run}: {tps:,.0f} tok/s", flush=True)
    if params is None:
        from model import GPT
        params = sum(q.numel() for q in GPT(len(vocab), a.block_size, a.n_layer, a.n_head,
                                             a.n_embd).parameters())
    fpt = flops_per_token(params, a)
    print(f"\n{params / 1e6:.1f} M parameters, {fpt / 1e9:.3f} GFLOP per token")
    print(f"{'run':<31}{'tok/s':>12}{'peak GiB':>10}{'TFLOP/s':>9}{'MFU meas.':>10}{'MFU sheet':>10}")
    for run, tps, peak in rows:
        tf = tps * fpt / 1e12
        print(f"{run:<31}{tps:>12,.0f}{peak:>10.2f}{tf:>9.1f}{tf / ceiling:>10.1%}"
              f"{tf / a.peak_tflops:>10.1%}")
    by = {r[0].split()[0]: r[1] for r in rows}
    for ours in ("mingpt", "mingpt+mma"):
        for base in ("torch", "torch+sdpa", "lightning"):
            if base in by and ours in by:
                print(f"{ours} / {base}: {by[ours] / by[base]:.2f}x")


if __name__ == "__main__":
    main()
