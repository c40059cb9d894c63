"""Convert a PyTorch LLaMA-style model from MHA to GQA with headalign.

1. Forward hooks on every layer's k_proj and v_proj stream the pre-RoPE keys and values of a few
   calibration batches into headalign.HeadGram accumulators, and q_proj's queries into
   headalign.HeadMoments (read in place, no copies).
2. headalign.convert_layer plans each layer from its Grams (similarity, grouping, GPA) and returns
   the merged GQA weights, which are loaded into a GQA copy of the model: with the mean merge of
   the paper, and with the query- and output-aware merge (MergeWeighting.FULL).
3. The GQA model's logits are compared with the original's, against the plain mean-pool GQA
   baseline (adjacent heads, no alignment).

The model is a small LLaMA-style decoder written in plain PyTorch and randomly initialised, so
nothing is downloaded. Its key and value heads are made redundant up to rotations — the structure
the paper (arXiv 2412.20677) finds in trained models — so that alignment has something to find.

    python3 convert_torch_model.py [--layers 2] [--heads 8] [--groups 2] [--seed 0]
"""
from __future__ import annotations

import argparse
import copy
import math

import numpy as np
import torch
from torch import nn

import headalign


def rope(x: torch.Tensor, base: float = 10000.0) -> torch.Tensor:
    """x [batch, heads, tokens, d] rotated by position (LLaMA's half-split pairing)."""
    d = x.shape[-1]
    half = d // 2
    freq = base ** (-2.0 * torch.arange(half, dtype=torch.float64) / d)
    angle = torch.arange(x.shape[-2], dtype=torch.float64)[:, None] * freq[None, :]
    c, s = angle.cos().to(x.dtype), angle.sin().to(x.dtype)
    a, b = x[..., :half], x[..., half:]
    return torch.cat([c * a - s * b, s * a + c * b], dim=-1)


class Attention(nn.Module):
    def __init__(self, hidden: int, heads: int, kv_heads: int):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, hidden // heads
        d = self.head_dim
        self.q_proj = nn.Linear(hidden, heads * d, bias=False)
        self.k_proj = nn.Linear(hidden, kv_heads * d, bias=False)
        self.v_proj = nn.Linear(hidden, kv_heads * d, bias=False)
        self.o_proj = nn.Linear(heads * d, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        d = self.head_dim
        q = rope(self.q_proj(x).view(b, n, self.heads, d).transpose(1, 2))
        k = rope(self.k_proj(x).view(b, n, self.kv_heads, d).transpose(1, 2))  # RoPE after k_proj: k_proj's output is pre-RoPE
        v = self.v_proj(x).view(b, n, self.kv_heads, d).transpose(1, 2)
        rep = self.heads // self.kv_heads
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        logits = q @ k.transpose(-1, -2) / math.sqrt(d)
        logits = logits.masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), float("-inf"))
        out = logits.softmax(dim=-1) @ v
        return self.o_proj(out.transpose(1, 2).reshape(b, n, self.heads * d))


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.weight, self.eps = nn.Parameter(torch.ones(dim)), eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class Block(nn.Module):
    def __init__(self, hidden: int, heads: int, kv_heads: int):
        super().__init__()
        self.attn_norm, self.attn = RMSNorm(hidden), Attention(hidden, heads, kv_heads)
        self.mlp_norm = RMSNorm(hidden)
        self.gate, self.up, self.down = nn.Linear(hidden, 2 * hidden, bias=False), nn.Linear(hidden, 2 * hidden, bias=False), nn.Linear(2 * hidden, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x))
        h = self.mlp_norm(x)
        return x + self.down(nn.functional.silu(self.gate(h)) * self.up(h))


class TinyLlama(nn.Module):
    def __init__(self, vocab: int = 256, hidden: int = 128, layers: int = 2, heads: int = 8, kv_heads: int | None = None):
        super().__init__()
        self.embed = nn.Embedding(vocab, hidden)
        self.blocks = nn.ModuleList(Block(hidden, heads, kv_heads or heads) for _ in range(layers))
        self.norm, self.lm_head = RMSNorm(hidden), nn.Linear(hidden, vocab, bias=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens)
        for block in self.blocks:
            x = block(x)
        return self.lm_head(self.norm(x))


@torch.no_grad()
def plant_redundant_heads(model: TinyLlama, groups: int, noise: float, seed: int) -> None:
    """Makes each layer's key heads RoPE-plane-rotated copies of `groups` sources and its value heads
    orthogonally rotated copies (plus noise), in shuffled order."""
    gen = np.random.default_rng(seed)
    for block in model.blocks:
        a = block.attn
        h, d = a.heads, a.head_dim
        k, v = a.k_proj.weight.view(h, d, -1), a.v_proj.weight.view(h, d, -1)
        src_k, src_v = k[:groups].clone(), v[:groups].clone()
        for slot, head in enumerate(gen.permutation(h)):
            c = slot % groups
            rk = np.zeros((d, d))
            for p in range(d // 2):
                t = gen.uniform(-np.pi, np.pi)
                rk[[p, p, p + d // 2, p + d // 2], [p, p + d // 2, p, p + d // 2]] = [np.cos(t), -np.sin(t), np.sin(t), np.cos(t)]
            rv, _ = np.linalg.qr(gen.standard_normal((d, d)))
            k[head] = torch.from_numpy(rk.T).float() @ src_k[c] + noise * torch.randn(d, k.shape[-1])
            v[head] = torch.from_numpy(rv.T).float() @ src_v[c] + noise * torch.randn(d, v.shape[-1])


@torch.no_grad()
def collect_grams(model: TinyLlama, batches) -> list[tuple[headalign.HeadGram, headalign.HeadGram, headalign.HeadMoments]]:
    """Streams every layer's pre-RoPE keys and values into HeadGrams, and its pre-RoPE queries into
    HeadMoments (for the query-aware merge), with forward hooks."""
    grams, hooks = [], []
    for block in model.blocks:
        a = block.attn
        keys = headalign.HeadGram(a.heads, a.head_dim, normalize_rows=True)
        values = headalign.HeadGram(a.heads, a.head_dim, normalize_rows=True)
        queries = headalign.HeadMoments(a.heads, a.head_dim)
        # out is [batch, tokens, heads·d], contiguous: add() reads it in place.
        hooks.append(a.k_proj.register_forward_hook(lambda mod, inp, out, g=keys: g.add(out)))
        hooks.append(a.v_proj.register_forward_hook(lambda mod, inp, out, g=values: g.add(out)))
        hooks.append(a.q_proj.register_forward_hook(lambda mod, inp, out, g=queries: g.add(out)))
        grams.append((keys, values, queries))
    try:
        for batch in batches:
            model(batch)
    finally:
        for h in hooks:
            h.remove()
    return grams


@torch.no_grad()
def convert_model(model: TinyLlama, grams, groups: int, **options) -> TinyLlama:
    """A GQA copy of `model` with `groups` KV heads per layer, converted by headalign."""
    gqa = copy.deepcopy(model)
    for block, (keys, values, queries) in zip(gqa.blocks, grams):
        a = block.attn
        conv = headalign.convert_layer(a.q_proj.weight.detach(), a.k_proj.weight.detach(), a.v_proj.weight.detach(),
                                       a.o_proj.weight.detach(), num_heads=a.heads, num_groups=groups,
                                       keys=keys, values=values, queries=queries, **options)
        w = conv.weights
        new = Attention(a.q_proj.in_features, a.heads, groups)
        for name in ("q", "k", "v", "o"):
            getattr(new, f"{name}_proj").weight.copy_(torch.from_numpy(getattr(w, name)))
        block.attn = new
    return gqa


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def run(layers: int = 2, heads: int = 8, groups: int = 2, hidden: int = 128, noise: float = 0.02, seed: int = 0,
        calibration_batches: int = 4, verbose: bool = True) -> dict:
    torch.manual_seed(seed)
    model = TinyLlama(hidden=hidden, layers=layers, heads=heads).eval()
    plant_redundant_heads(model, groups, noise, seed)
    calib = [torch.randint(0, 256, (4, 64)) for _ in range(calibration_batches)]
    held_out = torch.randint(0, 256, (2, 64))  # drawn before the conversions, which draw initial weights
    grams = collect_grams(model, calib)
    aligned = convert_model(model, grams, groups)
    aligned_full = convert_model(model, grams, groups, merge=headalign.MergeWeighting.FULL)  # headalign-convert's default
    mean_pool = convert_model(model, grams, groups, group_by=headalign.GroupBy.NONE,
                              key_alignment=headalign.Alignment.NONE, value_alignment=headalign.Alignment.NONE)
    with torch.no_grad():
        ref = model(held_out)
        result = {
            "tokens": grams[0][0].tokens,
            "aligned": relative_error(aligned(held_out), ref),
            "aligned_full": relative_error(aligned_full(held_out), ref),
            "mean_pool": relative_error(mean_pool(held_out), ref),
            "kv_cache_reduction": heads // groups,
        }
    if verbose:
        print(f"calibration: {result['tokens']} tokens per layer; {layers} layers, {heads} → {groups} KV heads "
              f"({result['kv_cache_reduction']}× smaller KV cache)")
        print(f"relative logit error vs the MHA model: aligned {result['aligned']:.4f}, "
              f"aligned + full merge {result['aligned_full']:.4f}, mean-pool {result['mean_pool']:.4f}")
    return result


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--groups", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    run(args.layers, args.heads, args.groups, seed=args.seed)
