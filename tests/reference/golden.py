#!/usr/bin/python3
"""Golden values of the seed's GPT for the C++ parity test (tests/model/parity_test.cc).

Writes two safetensors files into --out:
  weights.safetensors   the initial fp32 state_dict under the seed's names
                        (metadata: the config, as strings)
  golden.safetensors    idx [B,T] I64, targets [B,T] I64 (uniform random tokens),
                        logits [B,T,V] F32, loss [] F32 (mean cross-entropy),
                        grad.<name>  gradient of the mean loss at the initial weights,
                        after.<name> the parameter after --steps AdamW steps on that
                                     same batch, each step: zero_grad, backward,
                                     clip_grad_norm_(clip) (clip <= 0: none),
                                     lr = lr_at((s + 1) * B * T), optimizer.step();
                        metadata: the config, the lr of each step ("lr.<s>") and the
                        pre-clip gradient norm of each step ("grad_norm.<s>").
The golden values are computed in float64 from the same fp32 initial weights and
stored as F32, so the C++ fp32 result is compared against a more exact reference.
Dropout must be 0 for parity (the C++ masks come from its own counter-based RNG).

Usage: /usr/bin/python3 golden.py --out DIR --n_layer 2 --n_head 2 --n_embd 32 \
         --block_size 16 --vocab_size 11 --batch 3 --T 16 --seed 1 --steps 3
--autocast_bf16 adds the same forward and backward of the fp32 model under
torch.autocast("cpu", dtype=torch.bfloat16) (PyTorch's bf16 mixed precision):
  bf16.logits, bf16.loss, bf16.grad.<name>   (no optimizer steps)
--check_fp32 also runs the same computation in float32 and prints the errors the
C++ test measures (the fp32-vs-fp64 floor its tolerances must sit above).
"""

import argparse
import copy
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from model import GPT, configure_optimizer, lr_at, set_lr  # noqa: E402
from safetensors_np import save_file  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--n_layer", type=int, default=2)
    p.add_argument("--n_head", type=int, default=2)
    p.add_argument("--n_embd", type=int, default=32)
    p.add_argument("--block_size", type=int, default=16)
    p.add_argument("--vocab_size", type=int, default=11)
    p.add_argument("--batch", type=int, default=3)
    p.add_argument("--T", type=int, default=16)
    p.add_argument("--dropout", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--lr", type=float, default=6e-4)
    p.add_argument("--weight_decay", type=float, default=0.1)
    p.add_argument("--beta1", type=float, default=0.9)
    p.add_argument("--beta2", type=float, default=0.95)
    p.add_argument("--eps", type=float, default=1e-8)
    p.add_argument("--clip", type=float, default=1.0)
    p.add_argument("--warmup_tokens", type=float, default=512 * 20)
    p.add_argument("--final_tokens", type=float, default=1e9)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--check_fp32", action="store_true")
    p.add_argument("--autocast_bf16", action="store_true")
    a = p.parse_args(argv)
    if not 1 <= a.T <= a.block_size:
        p.error("need 1 <= T <= block_size")
    return a


def run(model, idx, targets, a):
    """Logits, loss and gradients at the current weights, then `steps` AdamW steps.

    Returns (logits, loss, grads{name: tensor}, after{name: tensor}, lrs, norms).
    """
    model.train()
    model.zero_grad(set_to_none=True)
    logits, loss = model(idx, targets)
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
    logits, loss = logits.detach().clone(), loss.detach().clone()

    opt = configure_optimizer(model, a.lr, a.weight_decay, (a.beta1, a.beta2), a.eps)
    B, T = idx.shape
    lrs, norms = [], []
    for s in range(a.steps):
        opt.zero_grad(set_to_none=True)
        _, l = model(idx, targets)
        l.backward()
        if a.clip > 0:
            norm = torch.nn.utils.clip_grad_norm_(model.parameters(), a.clip)
        else:
            norm = torch.norm(torch.stack([p.grad.norm() for p in model.parameters()]))
        lr = lr_at((s + 1) * B * T, a.lr, a.warmup_tokens, a.final_tokens)
        set_lr(opt, lr)
        opt.step()
        lrs.append(lr)
        norms.append(float(norm))
    after = {n: p.detach().clone() for n, p in model.named_parameters()}
    return logits, loss, grads, after, lrs, norms


def autocast_bf16(model, idx, targets):
    """Logits, loss and fp32 gradients of one forward/backward under CPU bf16 autocast."""
    model.train()
    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, loss = model(idx, targets)
    loss.backward()
    grads = {n: p.grad.detach().float().clone() for n, p in model.named_parameters()}
    return logits.detach().float(), loss.detach().float(), grads


def rel(a, b, floor=0.0):
    a, b = a.double(), b.double()
    return float((a - b).norm() / max(float(b.norm()), floor, 1e-300))


def main(argv=None):
    a = parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(a.seed)
    model = GPT(a.vocab_size, a.block_size, a.n_layer, a.n_head, a.n_embd, a.dropout)
    idx = torch.randint(0, a.vocab_size, (a.batch, a.T), dtype=torch.long)
    targets = torch.randint(0, a.vocab_size, (a.batch, a.T), dtype=torch.long)

    os.makedirs(a.out, exist_ok=True)
    meta = {k: str(v) for k, v in vars(a).items()
            if k not in ("out", "check_fp32", "autocast_bf16")}
    weights = {n: t.detach().numpy().astype(np.float32) for n, t in model.state_dict().items()}
    save_file(weights, os.path.join(a.out, "weights.safetensors"), meta)

    model64 = copy.deepcopy(model).double()
    logits, loss, grads, after, lrs, norms = run(model64, idx, targets, a)

    f32 = lambda t: t.numpy().astype(np.float32)  # noqa: E731
    out = {"idx": idx.numpy(), "targets": targets.numpy(),
           "logits": f32(logits), "loss": f32(loss.reshape(()))}
    for n in grads:
        out["grad." + n] = f32(grads[n])
        out["after." + n] = f32(after[n])
    if a.autocast_bf16:
        bl, bs, bg = autocast_bf16(copy.deepcopy(model), idx, targets)
        out["bf16.logits"] = f32(bl)
        out["bf16.loss"] = f32(bs.reshape(()))
        for n in bg:
            out["bf16.grad." + n] = f32(bg[n])
    gmeta = dict(meta)
    for s, (lr, nm) in enumerate(zip(lrs, norms)):
        gmeta[f"lr.{s}"] = repr(lr)
        gmeta[f"grad_norm.{s}"] = repr(nm)
    save_file(out, os.path.join(a.out, "golden.safetensors"), gmeta)

    if a.check_fp32:
        l32, s32, g32, a32, _, n32 = run(copy.deepcopy(model), idx, targets, a)
        print(f"loss64 {float(loss):.8f} loss32 {float(s32):.8f} "
              f"norms64 {norms} norms32 {n32}")
        print(f"logits rel {rel(l32, logits):.3e}  loss rel {rel(s32, loss):.3e}")
        gmax = max(float(g.norm()) for g in grads.values())
        worst = sorted(((rel(g32[n], grads[n], 1e-3 * gmax), n) for n in grads), reverse=True)
        print("grad worst:", ["%s %.2e" % (n, e) for e, n in worst[:4]])
        init = dict(model.named_parameters())
        zero = {n for n in after if not init[n].detach().any()}
        for label, names in (("after (nonzero init)", [n for n in after if n not in zero]),
                             ("after (zero init)", [n for n in zero if "attn.key.bias" not in n])):
            worst = sorted(((rel(a32[n], after[n]), n) for n in names), reverse=True)
            print(label, "worst:", ["%s %.2e" % (n, e) for e, n in worst[:3]])
        kb = max(float(a32[n].abs().max()) for n in after if "attn.key.bias" in n)
        print("max |attn.key.bias| after (fp32): %.2e, bound 2*steps*max_lr %.2e"
              % (kb, 2 * a.steps * max(lrs)))


if __name__ == "__main__":
    main()
