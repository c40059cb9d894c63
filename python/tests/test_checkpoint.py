"""headalign.convert_checkpoint: a whole (tiny, generated) LLaMA checkpoint converted from Python.

The checkpoint and calibration files are written and read here with a few lines of NumPy (the
safetensors layout), independently of the library. The aligned-only output must compute the same
attention as the original (NumPy reference, RoPE and causal softmax), the merged output must have
the requested KV heads and every other tensor bit-exact, the files must be byte-identical to what
headalign-convert writes with the same settings, and bad input must raise and leave nothing.
"""
import json
import os
import struct
import subprocess

import numpy as np
import pytest

import headalign as ha
from model import attention

H, D, HIDDEN, LAYERS, TOKENS = 4, 8, 32, 2, 64


def write_safetensors(path, tensors, metadata=None):
    header, offset, blobs = {}, 0, []
    if metadata:
        header["__metadata__"] = metadata
    for name, a in tensors.items():
        a = np.ascontiguousarray(a, dtype=np.float32)
        header[name] = {"dtype": "F32", "shape": list(a.shape), "data_offsets": [offset, offset + a.nbytes]}
        offset += a.nbytes
        blobs.append(a.tobytes())
    text = json.dumps(header).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(blobs))


def read_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    header.pop("__metadata__", None)
    out = {}
    for name, t in header.items():
        assert t["dtype"] == "F32"
        b, e = t["data_offsets"]
        out[name] = np.frombuffer(data[b:e], dtype=np.float32).reshape(t["shape"])
    return out


def names(layer):
    p = f"model.layers.{layer}.self_attn."
    return [p + "q_proj.weight", p + "k_proj.weight", p + "v_proj.weight", p + "o_proj.weight"]


@pytest.fixture
def model(tmp_path, rng):
    """A LLaMA-shaped MHA checkpoint whose heads come in pairs of rotated copies, and calibration
    activations of its keys and values."""
    d = tmp_path / "model"
    d.mkdir()
    cfg = {"model_type": "llama", "hidden_size": HIDDEN, "num_attention_heads": H, "num_key_value_heads": H,
           "num_hidden_layers": LAYERS, "vocab_size": 10, "rope_theta": 10000.0, "torch_dtype": "float32"}
    (d / "config.json").write_text(json.dumps(cfg))
    (d / "tokenizer.json").write_text('{"version": "1.0"}')
    tensors = {"model.embed_tokens.weight": rng.standard_normal((10, HIDDEN)), "model.norm.weight": np.ones(HIDDEN)}
    x = rng.standard_normal((TOKENS, HIDDEN))
    calib = {}
    for layer in range(LAYERS):
        q, k, v, o = (rng.standard_normal(s) / np.sqrt(HIDDEN) for s in
                      [(H * D, HIDDEN), (H * D, HIDDEN), (H * D, HIDDEN), (HIDDEN, H * D)])
        for j in (1, 3):  # head j is a RoPE-plane rotation of head j - 1 (keys) and orthogonal (values)
            ang = rng.uniform(0, 2 * np.pi, D // 2)
            r = np.zeros((D, D))
            for p, a in enumerate(ang):
                r[[p, p + D // 2], [p, p + D // 2]] = np.cos(a)
                r[p, p + D // 2], r[p + D // 2, p] = -np.sin(a), np.sin(a)
            s = np.linalg.qr(rng.standard_normal((D, D)))[0]
            k[j * D:(j + 1) * D] = r.T @ k[(j - 1) * D:j * D] + 0.01 * rng.standard_normal((D, HIDDEN))
            v[j * D:(j + 1) * D] = s.T @ v[(j - 1) * D:j * D] + 0.01 * rng.standard_normal((D, HIDDEN))
        for n, w in zip(names(layer), (q, k, v, o)):
            tensors[n] = w
        calib[f"layers.{layer}.key"] = x @ k.T
        calib[f"layers.{layer}.value"] = x @ v.T
    write_safetensors(d / "model.safetensors", tensors, {"format": "pt"})
    write_safetensors(tmp_path / "calib.safetensors", calib)
    return d, tmp_path / "calib.safetensors", read_safetensors(d / "model.safetensors")


def test_aligned_only_keeps_the_function_and_merged_has_fewer_kv_heads(model, tmp_path, rng):
    mdir, calib, original = model
    aligned = tmp_path / "aligned"
    report = ha.convert_checkpoint(mdir, aligned, kv_heads=2, calibration=calib, aligned_only=True)
    assert report["kv_heads"] == H and report["aligned_only"] is True
    assert report["settings"]["keys"] == "rope" and report["settings"]["merge_used"] == "output"
    out = read_safetensors(aligned / "model.safetensors")
    x = rng.standard_normal((12, HIDDEN))
    for layer in range(LAYERS):
        ref = attention(x, *(original[n].astype(np.float64) for n in names(layer)), H, H)
        got = attention(x, *(out[n].astype(np.float64) for n in names(layer)), H, H)
        assert np.abs(got - ref).max() < 1e-5 * np.abs(ref).max()

    merged = tmp_path / "merged"
    report = ha.convert_checkpoint(mdir, merged, kv_heads=2, calibration=calib)
    assert json.loads((merged / "config.json").read_text())["num_key_value_heads"] == 2
    assert json.loads((merged / "report.json").read_text()) == report
    out = read_safetensors(merged / "model.safetensors")
    assert out[names(0)[1]].shape == (2 * D, HIDDEN) and out[names(0)[2]].shape == (2 * D, HIDDEN)
    for n in ("model.embed_tokens.weight", "model.norm.weight"):
        assert out[n].tobytes() == original[n].tobytes()
    assert (merged / "tokenizer.json").read_text() == '{"version": "1.0"}'
    # The planted pairs are found and merge with little loss; mean-pooling adjacent heads loses far more.
    for entry in report["layers"]:
        assert sorted(map(sorted, entry["groups"])) == [[0, 1], [2, 3]]
        assert entry["keys"]["predicted_error"]["relative"] < 0.01 < entry["keys"]["mean_pool_predicted_error"]["relative"]


def test_progress_and_data_free(model, tmp_path):
    mdir, _, _ = model
    calls = []
    report = ha.convert_checkpoint(mdir, tmp_path / "free", kv_heads=1, calibration=None, threads=2,
                                   progress=lambda done, total: calls.append((done, total)))
    assert sorted(calls) == [(1, LAYERS), (2, LAYERS)]
    assert report["calibration"]["kind"] == "data-free" and report["settings"]["merge_used"] == "full"
    assert report["settings"]["threads"] == 2


def test_errors_leave_nothing(model, tmp_path):
    mdir, calib, _ = model
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=r"kv_heads = 3 does not divide num_attention_heads \(4\)"):
        ha.convert_checkpoint(mdir, out, kv_heads=3, calibration=calib)
    with pytest.raises(ValueError, match="does not commute with RoPE"):
        ha.convert_checkpoint(mdir, out, kv_heads=2, calibration=calib, keys=ha.Alignment.ORTHOGONAL)
    with pytest.raises(ValueError, match="needs query statistics"):
        ha.convert_checkpoint(mdir, out, kv_heads=2, calibration=calib, merge=ha.MergeWeighting.QUERY_AWARE)
    with pytest.raises(OSError, match="config.json"):
        ha.convert_checkpoint(tmp_path / "nowhere", out, kv_heads=2, calibration=calib)
    with pytest.raises(OSError, match="calibration"):
        ha.convert_checkpoint(mdir, out, kv_heads=2, calibration=mdir / "model.safetensors")

    def fail(done, total):
        raise KeyError("stop")

    with pytest.raises(RuntimeError, match="progress callback raised"):
        ha.convert_checkpoint(mdir, out, kv_heads=2, calibration=calib, progress=fail)
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("out")] == []
    out.mkdir()
    with pytest.raises(OSError, match="already exists"):
        ha.convert_checkpoint(mdir, out, kv_heads=2, calibration=calib)
    assert list(out.iterdir()) == []


@pytest.mark.skipif(not os.environ.get("HEADALIGN_CONVERT"), reason="headalign-convert not built (set HEADALIGN_CONVERT)")
@pytest.mark.parametrize("extra", [[], ["--merge", "mean", "--grouping", "hill", "--criterion", "dist", "--aligned-only"]])
def test_same_bytes_as_the_cli(model, tmp_path, extra):
    mdir, calib, _ = model
    kwargs = {}
    if extra:
        kwargs = dict(merge=ha.MergeWeighting.MEAN, grouping=ha.GroupingMethod.HILL_CLIMB, criterion=ha.Metric.DISTANCE,
                      aligned_only=True)
    ha.convert_checkpoint(mdir, tmp_path / "py", kv_heads=2, calibration=calib, **kwargs)
    subprocess.run([os.environ["HEADALIGN_CONVERT"], "--model", str(mdir), "--calibration", str(calib), "--kv-heads", "2",
                    "--output", str(tmp_path / "cli"), "--quiet", *extra], check=True)
    for name in ("model.safetensors", "config.json", "tokenizer.json"):
        assert (tmp_path / "py" / name).read_bytes() == (tmp_path / "cli" / name).read_bytes(), name

    def timeless(r):
        r.pop("seconds")
        for entry in r["layers"]:
            entry.pop("seconds")
        return r

    assert timeless(json.loads((tmp_path / "py" / "report.json").read_text())) == \
        timeless(json.loads((tmp_path / "cli" / "report.json").read_text()))
