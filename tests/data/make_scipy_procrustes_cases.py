#!/usr/bin/env python3
"""Writes scipy_procrustes_cases.txt: random A, B and SciPy's orthogonal_procrustes(A, B).

Run with Debian's python3 (python3-numpy, python3-scipy):
    /usr/bin/python3 tests/data/make_scipy_procrustes_cases.py > tests/data/scipy_procrustes_cases.txt
Format: a line "case n d", then n*d values of A (row-major), n*d of B, d*d of R, and the scale.
"""
import numpy as np
import scipy
from scipy.linalg import orthogonal_procrustes

rng = np.random.default_rng(20261130)
print(f"# scipy {scipy.__version__}, numpy {np.__version__}")
for n, d in [(12, 4), (24, 8), (40, 16), (40, 32), (9, 5), (30, 3)]:
    a = rng.standard_normal((n, d))
    # B: a rotated noisy copy of A for half the cases, independent noise for the rest.
    if d % 2 == 0:
        q, _ = np.linalg.qr(rng.standard_normal((d, d)))
        b = a @ q + 0.1 * rng.standard_normal((n, d))
    else:
        b = rng.standard_normal((n, d))
    r, scale = orthogonal_procrustes(a, b)
    print(f"case {n} {d}")
    for m in (a, b, r):
        print(" ".join(repr(float(x)) for x in m.ravel()))
    print(repr(float(scale)))
