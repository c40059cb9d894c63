"""HeadGram: statistics equal the direct computation for every input layout, zero-copy input."""
import threading

import numpy as np
import pytest
import torch

import headalign as ha


def gram_reference(x):
    x = np.asarray(x, dtype=np.float64).reshape(-1, x.shape[-1])
    return x.T @ x


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("acc", ["float64", "float32"])
def test_add_equals_xtx(rng, dtype, acc):
    x = rng.standard_normal((700, 24)).astype(dtype)
    g = ha.HeadGram(3, 8, dtype=acc)
    g.add(x[:300])
    g.add(x[300:])
    tol = 1e-4 if "32" in acc or dtype == np.float32 else 1e-11
    np.testing.assert_allclose(g.gram(), gram_reference(x), rtol=tol, atol=tol * 700)
    assert g.tokens == 700
    assert g.dtype == np.dtype(acc)
    for i in range(3):
        for j in range(3):
            np.testing.assert_allclose(g.block(i, j), gram_reference(x)[8 * i:8 * i + 8, 8 * j:8 * j + 8], rtol=tol, atol=tol * 700)
        assert g.trace(i) == pytest.approx(np.sum(x[:, 8 * i:8 * i + 8].astype(np.float64) ** 2), rel=tol)


@pytest.mark.parametrize("layout", ["C", "F", "rows_strided", "cols_strided", "reversed", "batched", "batched_noncontiguous", "one_row", "broadcast"])
def test_every_layout_gives_the_same_statistics(rng, layout):
    base = rng.standard_normal((4, 50, 32))
    if layout == "C":
        x = base[0]
    elif layout == "F":
        x = np.asfortranarray(base[0])
    elif layout == "rows_strided":
        x = base[0][::2]
    elif layout == "cols_strided":
        x = rng.standard_normal((50, 64))[:, ::2]
    elif layout == "reversed":
        x = base[0][::-1, ::-1]
    elif layout == "batched":
        x = base
    elif layout == "batched_noncontiguous":
        x = base[:, ::3]
    elif layout == "one_row":
        x = base[0, 7]
    else:
        x = np.broadcast_to(base[0, 0], (10, 32))
    g = ha.HeadGram(4, 8)
    g.add(x)
    np.testing.assert_allclose(g.gram(), gram_reference(np.asarray(x)), rtol=1e-12, atol=1e-12)
    assert g.tokens == np.asarray(x).reshape(-1, 32).shape[0]


def test_torch_tensors_are_read_in_place():
    x = torch.randn(2, 64, 16, dtype=torch.float64)
    assert ha._core._array_address(x) == x.data_ptr()
    n = np.random.default_rng(0).standard_normal((10, 16))
    assert ha._core._array_address(n) == n.ctypes.data
    view = n[2:, :]
    assert ha._core._array_address(view) == view.ctypes.data  # a slice, not a copy
    g = ha.HeadGram(2, 8)
    g.add(x)
    np.testing.assert_allclose(g.gram(), gram_reference(x.numpy()), rtol=1e-12)
    t = x.transpose(0, 1)  # non-contiguous tensor
    g2 = ha.HeadGram(2, 8)
    g2.add(t)
    np.testing.assert_allclose(g2.gram(), g.gram(), rtol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_half_precision_tensors(dtype):
    x = torch.randn(100, 16).to(dtype)
    g = ha.HeadGram(2, 8)
    g.add(x)
    np.testing.assert_allclose(g.gram(), gram_reference(x.to(torch.float64).numpy()), rtol=1e-12, atol=1e-12)


def test_normalize_rows_is_cosine_statistics(rng):
    x = rng.standard_normal((40, 12)) * rng.uniform(0.1, 10, (40, 1))
    x[5, 4:8] = 0  # a zero head vector stays zero
    g = ha.HeadGram(3, 4, normalize_rows=True)
    g.add(x)
    heads = x.reshape(40, 3, 4)
    norms = np.linalg.norm(heads, axis=2, keepdims=True)
    y = np.where(norms > 0, heads / np.where(norms > 0, norms, 1), 0).reshape(40, 12)
    np.testing.assert_allclose(g.gram(), y.T @ y, atol=1e-12)


def test_merge_of_halves_equals_one_pass(rng):
    x = rng.standard_normal((301, 16))
    whole, a, b = ha.HeadGram(2, 8), ha.HeadGram(2, 8), ha.HeadGram(2, 8)
    whole.add(x)
    a.add(x[:150])
    b.add(x[150:])
    a.merge(b)
    assert a.tokens == 301
    np.testing.assert_allclose(a.gram(), whole.gram(), rtol=1e-13)
    with pytest.raises(ValueError):
        a.merge(ha.HeadGram(4, 4))
    with pytest.raises(ValueError):
        a.merge(ha.HeadGram(2, 8, dtype="float32"))
    with pytest.raises(ValueError):
        a.merge(ha.HeadGram(2, 8, normalize_rows=True))


@pytest.mark.parametrize("acc", ["float64", "float32"])
def test_save_load_round_trip_is_bit_exact(rng, tmp_path, acc):
    g = ha.HeadGram(3, 4, normalize_rows=True, dtype=acc)
    g.add(rng.standard_normal((77, 12)))
    path = str(tmp_path / "g.safetensors")
    g.save(path)
    h = ha.HeadGram.load(path)
    assert (h.num_heads, h.head_dim, h.tokens, h.normalize_rows, h.dtype) == (3, 4, 77, True, np.dtype(acc))
    assert np.array_equal(h.gram(), g.gram())
    other = ha.HeadGram.load(path, dtype="float64")
    assert other.dtype == np.float64


def test_malformed_files_raise_oserror(tmp_path):
    with pytest.raises(OSError):
        ha.HeadGram.load(str(tmp_path / "missing.safetensors"))
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    with pytest.raises(OSError):
        ha.HeadGram.load(str(bad))
    g = ha.HeadGram(2, 2)
    g.add(np.ones((3, 4)))
    good = tmp_path / "good.safetensors"
    g.save(str(good))
    (tmp_path / "cut.safetensors").write_bytes(good.read_bytes()[:-5])
    with pytest.raises(OSError):
        ha.HeadGram.load(str(tmp_path / "cut.safetensors"))


def test_bad_input_adds_nothing(rng):
    g = ha.HeadGram(2, 4)
    g.add(rng.standard_normal((5, 8)))
    before = g.gram()
    x = rng.standard_normal((3, 2, 8))
    x[2, 1, 3] = np.nan  # in the last of the token rows
    with pytest.raises(ValueError, match="NaN"):
        g.add(x)
    with pytest.raises(ValueError, match="NaN"):
        g.add(x[:, ::-1])  # the copying path is atomic too
    with pytest.raises(ValueError, match="num_heads · head_dim"):
        g.add(np.ones((3, 7)))
    with pytest.raises(ValueError):
        g.add(np.ones((3, 8), dtype=np.int32))
    with pytest.raises(ValueError):
        g.add(np.float64(1.0))
    assert g.tokens == 5
    assert np.array_equal(g.gram(), before)
    for args in [(0, 4), (2, 0), (-1, 3)]:
        with pytest.raises(ValueError):
            ha.HeadGram(*args)
    with pytest.raises(ValueError, match="dtype"):
        ha.HeadGram(2, 2, dtype="int8")
    with pytest.raises(ValueError):
        g.block(2, 0)


def test_from_activations_and_from_weights(rng):
    acts = rng.standard_normal((3, 40, 4))  # [H, n, d], the reference's layout
    g = ha.HeadGram.from_activations(acts)
    tokens = acts.transpose(1, 0, 2).reshape(40, 12)
    np.testing.assert_allclose(g.gram(), tokens.T @ tokens, rtol=1e-12)
    g_t = ha.HeadGram.from_activations(np.asfortranarray(acts))  # any layout
    np.testing.assert_allclose(g_t.gram(), g.gram(), rtol=1e-12)
    w = rng.standard_normal((12, 20))
    gw = ha.HeadGram.from_weights(w, 3, 4)
    np.testing.assert_allclose(gw.gram(), w @ w.T, rtol=1e-12)
    assert gw.tokens == 1
    with pytest.raises(ValueError):
        ha.HeadGram.from_weights(w, 5, 4)


def test_threads_add_concurrently_without_losing_tokens(rng):
    chunks = [rng.standard_normal((2000, 64)) for _ in range(8)]
    g = ha.HeadGram(8, 8)
    threads = [threading.Thread(target=g.add, args=(c,)) for c in chunks]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert g.tokens == 16000
    np.testing.assert_allclose(g.gram(), gram_reference(np.concatenate(chunks)), rtol=1e-10)
