"""The seed's minGPT (SeanNaren/minGPT mingpt/model.py) as a plain torch.nn.Module.

This is the PyTorch reference the C++ mingpt is checked against. Module names
are the seed's, so state_dict names match the C++ layout (src/model/layout.h):
tok_emb.weight, pos_emb, blocks.{l}.ln1.weight, blocks.{l}.attn.key.weight,
blocks.{l}.mlp.0.weight, blocks.{l}.mlp.2.weight, ln_f.weight, head.weight.

Differences from the seed, none of which changes the math:
  - no PyTorch Lightning (hparams are plain constructor arguments);
  - one `dropout` p for embd/attn/resid (the seed's defaults are all 0.1);
  - configure_optimizer decays exactly the Linear and Embedding weights (the
    C++ ParamEntry::decay). The seed's name filter ("bias", "LayerNorm.weight")
    never matches "ln1.weight" and so decays LayerNorm weights and pos_emb too,
    which is not what the C++ (nor karpathy's minGPT) does.
  - lr_at mirrors LrSchedule::LearningRate (src/optim/adamw.cc), the seed's
    LearningRateDecayCallback counted in tokens.
"""

import math

import torch
import torch.nn as nn
from torch.nn import functional as F


class CausalSelfAttention(nn.Module):
    def __init__(self, n_embd, n_head, block_size, dropout):
        super().__init__()
        assert n_embd % n_head == 0
        self.key = nn.Linear(n_embd, n_embd)
        self.query = nn.Linear(n_embd, n_embd)
        self.value = nn.Linear(n_embd, n_embd)
        self.attn_drop = nn.Dropout(dropout)
        self.resid_drop = nn.Dropout(dropout)
        self.proj = nn.Linear(n_embd, n_embd)
        # A buffer, as in the seed, but not persistent: the C++ layout (and the
        # safetensors files) hold parameters only.
        self.register_buffer(
            "mask",
            torch.tril(torch.ones(block_size, block_size)).view(1, 1, block_size, block_size),
            persistent=False)
        self.n_head = n_head

    def forward(self, x):
        B, T, C = x.size()
        hs = C // self.n_head
        k = self.key(x).view(B, T, self.n_head, hs).transpose(1, 2)    # (B, nh, T, hs)
        q = self.query(x).view(B, T, self.n_head, hs).transpose(1, 2)  # (B, nh, T, hs)
        v = self.value(x).view(B, T, self.n_head, hs).transpose(1, 2)  # (B, nh, T, hs)
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))
        att = att.masked_fill(self.mask[:, :, :T, :T] == 0, float('-inf'))
        att = F.softmax(att, dim=-1)
        att = self.attn_drop(att)
        y = att @ v  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_drop(self.proj(y))


class Block(nn.Module):
    def __init__(self, n_embd, n_head, block_size, dropout):
        super().__init__()
        self.ln1 = nn.LayerNorm(n_embd)
        self.ln2 = nn.LayerNorm(n_embd)
        self.attn = CausalSelfAttention(n_embd, n_head, block_size, dropout)
        self.mlp = nn.Sequential(
            nn.Linear(n_embd, 4 * n_embd),
            nn.GELU(),
            nn.Linear(4 * n_embd, n_embd),
            nn.Dropout(dropout),
        )

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        x = x + self.mlp(self.ln2(x))
        return x


class GPT(nn.Module):
    """The full GPT language model, with a context size of block_size."""

    def __init__(self, vocab_size, block_size, n_layer, n_head, n_embd, dropout=0.1):
        super().__init__()
        self.block_size = block_size
        self.tok_emb = nn.Embedding(vocab_size, n_embd)
        self.pos_emb = nn.Parameter(torch.zeros(1, block_size, n_embd))
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.Sequential(
            *[Block(n_embd, n_head, block_size, dropout) for _ in range(n_layer)])
        self.ln_f = nn.LayerNorm(n_embd)
        self.head = nn.Linear(n_embd, vocab_size, bias=False)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            module.weight.data.normal_(mean=0.0, std=0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                module.bias.data.zero_()
        elif isinstance(module, nn.LayerNorm):
            module.bias.data.zero_()
            module.weight.data.fill_(1.0)

    def forward(self, idx, targets=None):
        b, t = idx.size()
        assert t <= self.block_size, "Cannot forward, model block size is exhausted."
        x = self.drop(self.tok_emb(idx) + self.pos_emb[:, :t, :])
        x = self.blocks(x)
        logits = self.head(self.ln_f(x))
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1))
        return logits, loss


def decay_names(model):
    """Names of the parameters that take weight decay: Linear and Embedding weights."""
    names = set()
    for mn, m in model.named_modules():
        if isinstance(m, (nn.Linear, nn.Embedding)):
            names.add(f"{mn}.weight" if mn else "weight")
    return names


def configure_optimizer(model, lr, weight_decay, betas=(0.9, 0.95), eps=1e-8):
    """AdamW with weight decay on Linear/Embedding weights only."""
    decay = decay_names(model)
    params = dict(model.named_parameters())
    groups = [
        {"params": [p for n, p in params.items() if n in decay], "weight_decay": weight_decay},
        {"params": [p for n, p in params.items() if n not in decay], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps)


def lr_at(tokens, base_lr, warmup_tokens, final_tokens):
    """LrSchedule::LearningRate: linear warmup, then cosine to a 10% floor.

    Optimizer step s (0-based) of batch B x T runs at lr_at((s + 1) * B * T, ...).
    """
    if tokens < warmup_tokens:
        mult = tokens / max(1.0, warmup_tokens)
    else:
        progress = (tokens - warmup_tokens) / max(1.0, final_tokens - warmup_tokens)
        mult = max(0.1, 0.5 * (1.0 + math.cos(math.pi * progress)))
    return base_lr * mult


def set_lr(optimizer, lr):
    for g in optimizer.param_groups:
        g["lr"] = lr
