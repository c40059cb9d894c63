#!/usr/bin/env python3
"""A second, separately written all-MiniLM-L6-v2 sentence encoder (numpy, float64) to check the
C++ runner of examples/minilm_demo.cpp: its own safetensors parser, its own uncased WordPiece
tokenizer, the BERT forward pass, mean pooling and L2 normalisation.

usage: minilm_reference.py MODEL_DIR RUNNER_JSON
RUNNER_JSON is the output of `minilm_demo --model MODEL_DIR --embed SENTENCES`. Exits non-zero
when token ids differ or an embedding differs by more than 1e-5 (max abs), or when paraphrase
pairs (consecutive lines 0/1, 2/3, ...) do not score higher than the unrelated pairs.
"""
import json
import struct
import sys
import unicodedata

import numpy as np


def load_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    dtypes = {"F32": np.float32, "F16": np.float16, "F64": np.float64, "I64": np.int64}
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        a, b = info["data_offsets"]
        out[name] = np.frombuffer(data[a:b], dtype=dtypes[info["dtype"]]).reshape(info["shape"])
    return out


def basic_tokens(text):
    words, cur = [], ""
    for ch in text:
        cp = ord(ch)
        if cp == 0 or cp == 0xFFFD or (unicodedata.category(ch).startswith("C") and ch not in "\t\n\r"):
            continue
        if ch.isspace():
            if cur:
                words.append(cur)
            cur = ""
            continue
        for c in unicodedata.normalize("NFD", ch.lower()):
            if unicodedata.category(c) == "Mn":
                continue
            if (33 <= ord(c) <= 47 or 58 <= ord(c) <= 64 or 91 <= ord(c) <= 96 or 123 <= ord(c) <= 126
                    or unicodedata.category(c).startswith("P")):
                if cur:
                    words.append(cur)
                cur = ""
                words.append(c)
            else:
                cur += c
    if cur:
        words.append(cur)
    return words


def wordpiece(word, vocab):
    if len(word) > 100:
        return [vocab["[UNK]"]]
    pieces, start = [], 0
    while start < len(word):
        for end in range(len(word), start, -1):
            sub = ("##" if start else "") + word[start:end]
            if sub in vocab:
                pieces.append(vocab[sub])
                start = end
                break
        else:
            return [vocab["[UNK]"]]
    return pieces


def encode(text, vocab, max_len=256):
    ids = [vocab["[CLS]"]]
    for w in basic_tokens(text):
        for p in wordpiece(w, vocab):
            if len(ids) + 1 < max_len:
                ids.append(p)
    return ids + [vocab["[SEP]"]]


def layer_norm(x, g, b, eps):
    mu = x.mean(axis=-1, keepdims=True)
    var = ((x - mu) ** 2).mean(axis=-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * g + b


def gelu(x):
    from math import erf, sqrt
    return 0.5 * x * (1.0 + np.vectorize(erf)(x / sqrt(2.0)))


def embed(ids, w, cfg):
    g = lambda n: w[n].astype(np.float64)
    heads = cfg["num_attention_heads"]
    kv_heads = cfg.get("num_key_value_heads", heads)
    hidden = cfg["hidden_size"]
    d = hidden // heads
    eps = cfg.get("layer_norm_eps", 1e-12)
    n = len(ids)
    x = g("embeddings.word_embeddings.weight")[ids] + g("embeddings.position_embeddings.weight")[:n] \
        + g("embeddings.token_type_embeddings.weight")[0]
    x = layer_norm(x, g("embeddings.LayerNorm.weight"), g("embeddings.LayerNorm.bias"), eps)
    for l in range(cfg["num_hidden_layers"]):
        p = "encoder.layer.%d." % l
        q = x @ g(p + "attention.self.query.weight").T + g(p + "attention.self.query.bias")
        k = x @ g(p + "attention.self.key.weight").T + g(p + "attention.self.key.bias")
        v = x @ g(p + "attention.self.value.weight").T + g(p + "attention.self.value.bias")
        ctx = np.zeros((n, heads * d))
        for h in range(heads):
            j = h // (heads // kv_heads)
            s = q[:, h * d:(h + 1) * d] @ k[:, j * d:(j + 1) * d].T / np.sqrt(d)
            s = np.exp(s - s.max(axis=1, keepdims=True))
            s /= s.sum(axis=1, keepdims=True)
            ctx[:, h * d:(h + 1) * d] = s @ v[:, j * d:(j + 1) * d]
        a = ctx @ g(p + "attention.output.dense.weight").T + g(p + "attention.output.dense.bias")
        x = layer_norm(x + a, g(p + "attention.output.LayerNorm.weight"), g(p + "attention.output.LayerNorm.bias"), eps)
        inter = gelu(x @ g(p + "intermediate.dense.weight").T + g(p + "intermediate.dense.bias"))
        o = inter @ g(p + "output.dense.weight").T + g(p + "output.dense.bias")
        x = layer_norm(x + o, g(p + "output.LayerNorm.weight"), g(p + "output.LayerNorm.bias"), eps)
    e = x.mean(axis=0)
    return e / np.linalg.norm(e)


def main():
    model, runner_json = sys.argv[1], sys.argv[2]
    cfg = json.load(open(model + "/config.json"))
    vocab = {}
    for i, line in enumerate(open(model + "/vocab.txt", encoding="utf-8")):
        vocab.setdefault(line.rstrip("\n").rstrip("\r"), i)
    w = load_safetensors(model + "/model.safetensors")
    runner = json.load(open(runner_json))
    ok = True
    embs = []
    for item in runner:
        ids = encode(item["text"], vocab)
        if ids != item["ids"]:
            print("token ids differ for %r:\n  python %s\n  runner %s" % (item["text"], ids, item["ids"]))
            ok = False
            continue
        e = embed(ids, w, cfg)
        diff = np.abs(e - np.array(item["embedding"], dtype=np.float64)).max()
        print("max |difference| %.2e  %s" % (diff, item["text"][:60]))
        if not diff <= 1e-5:
            ok = False
        embs.append(e)
    if ok and len(embs) >= 4:
        pairs = [float(embs[i] @ embs[i + 1]) for i in range(0, len(embs) - 1, 2)]
        unrelated = [float(embs[i] @ embs[j]) for i in range(0, len(embs), 2) for j in range(1, len(embs), 2)
                     if j != i + 1]
        print("paraphrase cosines %s; highest unrelated %.3f" % (["%.3f" % c for c in pairs], max(unrelated)))
        if min(pairs) <= max(unrelated):
            print("a paraphrase pair scores no higher than an unrelated pair")
            ok = False
    print("OK" if ok else "FAILED")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
