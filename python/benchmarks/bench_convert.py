"""Per-layer conversion from Python: headalign.convert_layer against the C++ call and against a
straightforward PyTorch implementation of the same steps, on the same data, in one run.

    OPENBLAS_NUM_THREADS=1 python3 bench_convert.py [--heads 32] [--head-dim 128] [--groups 8] [--tokens 4096] [--repeats 5]

Steps after calibration, for a LLaMA-2-7B-shaped layer by default (32 heads × 128, hidden 4096):
value similarity (Procrustes on every head pair), grouping, GPA per group for keys (RoPE planes)
and values, folding the rotations into q/k/v/o and merging. Times are medians; everything runs on
one thread (OpenBLAS and PyTorch). The PyTorch version works on the token activations, as the
reference implementation does: an SVD per head pair, a hill-climbing loop (restarts × swaps, the
reference's 200 × 3000) and GPA over tokens.
"""
from __future__ import annotations

import argparse
import os
import random
import statistics
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

import headalign as ha  # noqa: E402


def torch_polar(m: torch.Tensor) -> torch.Tensor:
    u, _, vt = torch.linalg.svd(m)
    return u @ vt


def torch_rope_polar(m: torch.Tensor) -> torch.Tensor:
    """Closed-form best rotation per half-split RoPE plane."""
    d = m.shape[-1]
    h = d // 2
    c0 = torch.diagonal(m[..., :h, :h], dim1=-2, dim2=-1) + torch.diagonal(m[..., h:, h:], dim1=-2, dim2=-1)
    s0 = torch.diagonal(m[..., h:, :h], dim1=-2, dim2=-1) - torch.diagonal(m[..., :h, h:], dim1=-2, dim2=-1)
    n = torch.sqrt(c0 * c0 + s0 * s0).clamp_min(1e-300)
    c, s = c0 / n, s0 / n
    r = torch.zeros(*m.shape[:-2], d, d, dtype=m.dtype)
    idx = torch.arange(h)
    r[..., idx, idx], r[..., idx, idx + h], r[..., idx + h, idx], r[..., idx + h, idx + h] = c, -s, s, c
    return r


def torch_convert(q, k, v, o, keys, values, heads, groups, restarts=200, iterations=3000, seed=0):
    """The straightforward PyTorch version: keys/values are token activations [n, H, d]."""
    n, h, d = values.shape
    # 1. Similarity: mean cosine after orthogonal alignment, an SVD per head pair (row-normalised tokens).
    vn = values / values.norm(dim=2, keepdim=True)
    sim = torch.zeros(h, h, dtype=torch.float64)
    pairs = [(i, j) for i in range(h) for j in range(i + 1, h)]
    for i, j in pairs:
        s = torch.linalg.svdvals(vn[:, i].T @ vn[:, j]).sum() / n
        sim[i, j] = sim[j, i] = s
    # 2. Grouping: the reference's hill climbing, random swaps, keep improvements.
    simf = sim.tolist()
    k_per = h // groups
    rnd = random.Random(seed)
    best, best_score = None, -float("inf")
    for _ in range(restarts):
        perm = list(range(h))
        rnd.shuffle(perm)
        assign = [0] * h
        for slot, head in enumerate(perm):
            assign[head] = slot // k_per
        members = [[hh for hh in range(h) if assign[hh] == g] for g in range(groups)]
        score = sum(simf[a][b] for g in members for ia, a in enumerate(g) for b in g[ia + 1:])
        for _ in range(iterations):
            a, b = rnd.randrange(h), rnd.randrange(h)
            ga, gb = assign[a], assign[b]
            if ga == gb:
                continue
            delta = sum(simf[b][x] - simf[a][x] for x in members[ga] if x != a) + sum(simf[a][x] - simf[b][x] for x in members[gb] if x != b)
            if delta > 0:
                members[ga][members[ga].index(a)] = b
                members[gb][members[gb].index(b)] = a
                assign[a], assign[b] = gb, ga
                score += delta
        if score > best_score:
            best, best_score = [sorted(g) for g in members], score
    # 3. GPA over tokens per group, keys (RoPE planes) and values (orthogonal).
    order = [hh for g in best for hh in g]
    kn = keys / keys.norm(dim=2, keepdim=True)
    rot = {}
    for name, x, solve in (("k", kn, torch_rope_polar), ("v", vn, torch_polar)):
        rs = [None] * h
        for g in best:
            xs = [x[:, hh] for hh in g]
            r = [torch.eye(d, dtype=torch.float64)] + [solve(xs[t].T @ xs[0]) for t in range(1, len(g))]
            prev = -float("inf")
            for _ in range(100):
                mean = sum(xs[t] @ r[t] for t in range(len(g))) / len(g)
                r = [solve(xs[t].T @ mean) for t in range(len(g))]
                obj = float(sum(((xs[t] @ r[t]) * mean).sum() for t in range(len(g))) / n)
                if obj - prev < 1e-5:
                    break
                prev = obj
            for t, hh in enumerate(g):
                rs[hh] = r[t]
        rot[name] = rs
    # 4. Fold the rotations in and merge.
    qh, kh, vh, oh = q.view(h, d, -1), k.view(h, d, -1), v.view(h, d, -1), o.view(o.shape[0], h, d)
    new_q = torch.stack([rot["k"][hh].T @ qh[hh] for hh in order])
    new_k = torch.stack([rot["k"][hh].T @ kh[hh] for hh in order])
    new_v = torch.stack([rot["v"][hh].T @ vh[hh] for hh in order])
    new_o = torch.stack([oh[:, hh] @ rot["v"][hh] for hh in order], dim=1)
    return (new_q.reshape(h * d, -1), new_k.view(groups, k_per, d, -1).mean(1).reshape(groups * d, -1),
            new_v.view(groups, k_per, d, -1).mean(1).reshape(groups * d, -1), new_o.reshape(o.shape[0], h * d))


def median_time(f, repeats):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        f()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--heads", type=int, default=32)
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--hidden", type=int, default=0, help="default heads × head_dim")
    p.add_argument("--groups", type=int, default=8)
    p.add_argument("--tokens", type=int, default=4096)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--torch-repeats", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(1)
    h, d, g, n = args.heads, args.head_dim, args.groups, args.tokens
    hidden = args.hidden or h * d
    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((h * d, hidden), dtype=np.float32) / np.sqrt(hidden) for _ in range(3))
    o = rng.standard_normal((hidden, h * d), dtype=np.float32) / np.sqrt(h * d)
    x = rng.standard_normal((n, hidden), dtype=np.float32)
    keys_t, values_t = x @ k.T, x @ v.T
    keys, values = ha.HeadGram(h, d, normalize_rows=True), ha.HeadGram(h, d, normalize_rows=True)
    keys.add(keys_t)
    values.add(values_t)
    print(f"layer: {h} heads × {d}, hidden {hidden}, {g} groups; {n} calibration tokens; "
          f"OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS')}, torch threads {torch.get_num_threads()}, "
          f"headalign with BLAS: {ha.with_blas}")

    # Python and C++ runs alternate, so that drifts of a shared machine hit both alike.
    py_all, cpp_all = [], []
    for _ in range(args.repeats):
        py_all += median_time(lambda: ha.convert_layer(q, k, v, o, num_heads=h, num_groups=g, keys=keys, values=values), 1)[1]
        cpp_all += ha._core._time_cpp_convert(q, k, v, o, h, g, keys, values, 1)
    py, cpp = statistics.median(py_all), statistics.median(cpp_all)
    print(f"headalign.convert_layer (Python):  median {py:.3f} s  {['%.3f' % t for t in py_all]}")
    print(f"C++ (weights, plan_layer, convert_layer): median {cpp:.3f} s  {['%.3f' % t for t in cpp_all]}")
    print(f"Python / C++: {py / cpp:.3f}×")
    tq, tk, tv, to = (torch.from_numpy(a).double() for a in (q, k, v, o))
    kt = torch.from_numpy(keys_t).double().view(n, h, d)
    vt = torch.from_numpy(values_t).double().view(n, h, d)
    tt, tt_all = median_time(lambda: torch_convert(tq, tk, tv, to, kt, vt, h, g), args.torch_repeats)
    print(f"PyTorch (SVD per pair, hill climb 200 × 3000, GPA over tokens): median {tt:.3f} s  {['%.3f' % t for t in tt_all]}")
    print(f"PyTorch / headalign (Python): {tt / py:.1f}×")


if __name__ == "__main__":
    main()
