"""A NumPy reference of one attention layer (RoPE, half-split pairing, causal softmax), for tests."""
import numpy as np


def rope(x, base=10000.0):
    """x [n, H, d] rotated by position, LLaMA's half-split pairing (i, i + d/2)."""
    n, _, d = x.shape
    half = d // 2
    freq = base ** (-2.0 * np.arange(half) / d)
    ang = np.arange(n)[:, None] * freq[None, :]
    c, s = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
    a, b = x[..., :half], x[..., half:]
    return np.concatenate([c * a - s * b, s * a + c * b], axis=-1)


def attention(x, q, k, v, o, num_heads, num_kv_heads):
    """y = softmax(RoPE(Q) RoPE(K)ᵀ/√d, causal) V Oᵀ with Hugging Face weight layouts."""
    n = x.shape[0]
    d = q.shape[0] // num_heads
    qs = rope((x @ q.T).reshape(n, num_heads, d))
    ks = rope((x @ k.T).reshape(n, num_kv_heads, d))
    vs = (x @ v.T).reshape(n, num_kv_heads, d)
    per = num_heads // num_kv_heads
    out = np.empty((n, num_heads, d))
    mask = np.triu(np.ones((n, n), bool), 1)
    for h in range(num_heads):
        logits = qs[:, h] @ ks[:, h // per].T / np.sqrt(d)
        logits[mask] = -np.inf
        p = np.exp(logits - logits.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        out[:, h] = p @ vs[:, h // per]
    return out.reshape(n, num_heads * d) @ o.T
