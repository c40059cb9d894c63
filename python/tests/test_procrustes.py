"""Procrustes solvers against NumPy / SciPy references and the C++ program."""
import os
import subprocess

import numpy as np
import pytest
import scipy.linalg

import headalign as ha
from conftest import polar_reference, random_rotation


@pytest.mark.parametrize("shape", [(50, 8), (8, 8), (5, 12), (200, 64), (1, 1)])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_orthogonal_procrustes_matches_scipy(rng, shape, dtype):
    a = rng.standard_normal(shape).astype(dtype)
    b = rng.standard_normal(shape).astype(dtype)
    r, scale = ha.orthogonal_procrustes(a, b)
    r_ref, scale_ref = scipy.linalg.orthogonal_procrustes(a, b)
    assert r.shape == r_ref.shape == (shape[1], shape[1])
    assert r.dtype == dtype
    tol = 1e-4 if dtype == np.float32 else 1e-10
    n = shape[1]
    # R is unique when AᵀB has full rank (always here except the wide 5 × 12 case): compare R itself;
    # otherwise compare what is unique, the score and the residual.
    if shape[0] >= n:
        np.testing.assert_allclose(r, r_ref, atol=tol * 10)
    np.testing.assert_allclose(scale, scale_ref, rtol=tol)
    np.testing.assert_allclose(r.T @ r, np.eye(n), atol=tol)
    np.testing.assert_allclose(np.linalg.norm(a @ r - b), np.linalg.norm(a @ r_ref - b), rtol=tol)


def test_orthogonal_procrustes_accepts_lists_ints_and_tensors(rng):
    import torch

    a = [[1, 0], [0, 1], [1, 1]]
    b = [[0, 1], [1, 0], [1, 1]]
    r, s = ha.orthogonal_procrustes(a, b)
    r_ref, s_ref = scipy.linalg.orthogonal_procrustes(np.array(a, float), np.array(b, float))
    np.testing.assert_allclose(r, r_ref, atol=1e-12)
    assert s == pytest.approx(s_ref)
    ta, tb = torch.randn(20, 4, dtype=torch.float64), torch.randn(20, 4, dtype=torch.float64)
    r2, _ = ha.orthogonal_procrustes(ta, tb)
    np.testing.assert_allclose(r2, scipy.linalg.orthogonal_procrustes(ta.numpy(), tb.numpy())[0], atol=1e-10)


@pytest.mark.parametrize("bad", [
    (np.ones(3), np.ones(3)),                       # 1-D
    (np.ones((3, 2)), np.ones((2, 3))),             # shapes differ
    (np.array([[np.nan, 1.0]]), np.ones((1, 2))),   # NaN
    (np.array([[np.inf, 1.0]]), np.ones((1, 2))),   # Inf
    (np.ones((0, 2)), np.ones((0, 2))),             # empty
])
def test_orthogonal_procrustes_bad_input_is_value_error(bad):
    with pytest.raises(ValueError):
        ha.orthogonal_procrustes(*bad)
    # SciPy agrees that these are ValueErrors (except the empty case, which it accepts).
    if bad[0].size:
        with pytest.raises(ValueError):
            scipy.linalg.orthogonal_procrustes(*bad)


@pytest.mark.parametrize("method", [m for m in ha.PolarMethod if m != ha.PolarMethod.BDC_SVD])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_procrustes_every_method_equals_svd_polar(rng, method, dtype):
    m = rng.standard_normal((16, 16)).astype(dtype)
    r, score = ha.procrustes(m, ha.Alignment.ORTHOGONAL, method=method)
    r_ref, s = polar_reference(m.astype(np.float64))
    tol = 2e-4 if dtype == np.float32 else 1e-9
    np.testing.assert_allclose(r, r_ref, atol=tol)
    assert score == pytest.approx(s.sum(), rel=tol)
    assert ha.procrustes_score(m, ha.Alignment.ORTHOGONAL, method=method) == pytest.approx(s.sum(), rel=tol)


def test_rotation_has_positive_determinant(rng):
    for _ in range(10):
        m = rng.standard_normal((6, 6))
        r, score = ha.procrustes(m, ha.Alignment.ROTATION)
        assert np.linalg.det(r) == pytest.approx(1.0)
        u, s, vt = np.linalg.svd(m)
        d = np.sign(np.linalg.det(u @ vt))
        # Reference: flip the last singular vector when det(U Vᵀ) < 0.
        ref = u @ np.diag([1] * 5 + [d]) @ vt
        np.testing.assert_allclose(r, ref, atol=1e-10)
        assert score == pytest.approx(np.trace(ref.T @ m))


@pytest.mark.parametrize("pairing", [ha.RopePairing.HALF_SPLIT, ha.RopePairing.INTERLEAVED])
def test_rope_alignment_is_the_best_plane_rotation(rng, pairing):
    d = 8
    m = rng.standard_normal((d, d))
    rope = ha.RopeSpec(pairing, 0)
    r, score = ha.procrustes(m, ha.Alignment.ROPE, rope)
    planes = [(p, p + d // 2) for p in range(d // 2)] if pairing == ha.RopePairing.HALF_SPLIT else [(2 * p, 2 * p + 1) for p in range(d // 2)]
    ref = np.zeros((d, d))
    for a, b in planes:  # brute force over angles: the closed form must be the maximiser
        angles = np.linspace(-np.pi, np.pi, 20001)
        vals = np.cos(angles) * (m[a, a] + m[b, b]) + np.sin(angles) * (m[b, a] - m[a, b])
        t = angles[np.argmax(vals)]
        ref[a, a], ref[a, b], ref[b, a], ref[b, b] = np.cos(t), -np.sin(t), np.sin(t), np.cos(t)
    np.testing.assert_allclose(r, ref, atol=1e-3)
    assert score == pytest.approx(np.trace(r.T @ m), rel=1e-12)
    assert score == pytest.approx(ha.procrustes_score(m, ha.Alignment.ROPE, rope), rel=1e-12)


def test_procrustes_recovers_a_planted_rotation(rng):
    x = rng.standard_normal((500, 32))
    q = random_rotation(rng, 32)
    r, _ = ha.procrustes(x.T @ (x @ q))
    np.testing.assert_allclose(r, q, atol=1e-10)


def test_bdcsvd_is_not_compiled_in_and_says_so():
    # The extension leaves Eigen's BDCSVD out (compile time); asking for it is a clear error.
    with pytest.raises(ValueError, match="HEADALIGN_ENABLE_BDCSVD"):
        ha.procrustes(np.eye(3), method=ha.PolarMethod.BDC_SVD)


@pytest.mark.parametrize("m", [np.ones((3, 4)), np.ones(3), np.ones((2, 2, 2)), np.array([[np.nan]]), np.array([[1.0, np.inf], [0, 1]])])
def test_procrustes_bad_input(m):
    with pytest.raises(ValueError):
        ha.procrustes(m)


def test_integer_input_is_a_clear_error():
    with pytest.raises(ValueError, match="float"):
        ha.procrustes(np.eye(3, dtype=np.int64))


@pytest.mark.skipif(not os.environ.get("HEADALIGN_PROCRUSTES_NPY"), reason="C++ example procrustes_npy not built (set HEADALIGN_PROCRUSTES_NPY)")
@pytest.mark.parametrize("alignment", ["orthogonal", "rotation", "rope"])
def test_parity_with_the_cpp_program(rng, tmp_path, alignment):
    """The C++ example procrustes_npy and the binding solve the same problem to round-off."""
    a = rng.standard_normal((300, 16))
    b = a @ random_rotation(rng, 16) + 0.3 * rng.standard_normal((300, 16))
    np.save(tmp_path / "a.npy", a)
    np.save(tmp_path / "b.npy", b)
    subprocess.run([os.environ["HEADALIGN_PROCRUSTES_NPY"], str(tmp_path / "a.npy"), str(tmp_path / "b.npy"),
                    "--alignment", alignment, "--save-rotation", str(tmp_path / "r.npy")], check=True, capture_output=True)
    r_cpp = np.load(tmp_path / "r.npy")
    r_py, _ = ha.procrustes(a.T @ b, getattr(ha.Alignment, alignment.upper()))
    np.testing.assert_allclose(r_py, r_cpp, atol=1e-12)


def test_package_ships_stubs_and_docstrings():
    import importlib.resources
    import inspect

    files = importlib.resources.files("headalign")
    assert files.joinpath("py.typed").is_file()
    stub = files.joinpath("_core.pyi").read_text()
    for name in ("def procrustes(", "class HeadGram", "def convert_layer(", "def group_heads(", "class Alignment(enum.Enum)"):
        assert name in stub
    for name in ha.__all__:
        obj = getattr(ha, name)
        if callable(obj):
            assert inspect.getdoc(obj), name
