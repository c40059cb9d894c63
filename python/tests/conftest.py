import numpy as np
import pytest


@pytest.fixture
def rng():
    return np.random.default_rng(20241229)


def polar_reference(m):
    """U Vᵀ from NumPy's SVD: an independent reference for the orthogonal Procrustes solution."""
    u, s, vt = np.linalg.svd(m)
    return u @ vt, s


def random_rotation(rng, d, dtype=np.float64):
    q, r = np.linalg.qr(rng.standard_normal((d, d)))
    q = q * np.sign(np.diag(r))
    return q.astype(dtype)
