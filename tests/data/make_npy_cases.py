#!/usr/bin/python3
"""Writes the .npy cases of tests/test_npy.cpp with NumPy itself (Debian python3-numpy).

Every array holds v[i] = (i % 7) - 3 + i / 8 for its C-order index i (exact in every float
type used here), so the test checks values by formula, independently of this script.
    /usr/bin/python3 tests/data/make_npy_cases.py
"""
import os
import numpy as np
from numpy.lib import format as fmt

out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "npy")
os.makedirs(out, exist_ok=True)


def values(shape, dtype):
    n = int(np.prod(shape)) if len(shape) else 1
    i = np.arange(n)
    v = (i % 7) - 3 + i / 8
    if np.dtype(dtype).kind in "iu":
        v = (i % 7) + 2 * i  # integers: v[i] = i % 7 + 2 i
    if np.dtype(dtype).kind == "b":
        v = (i % 3) == 0
    return v.astype(dtype).reshape(shape)


def save(name, arr, version=None, fortran=False):
    a = np.asfortranarray(arr) if fortran else np.array(arr, order="C")
    with open(os.path.join(out, name), "wb") as f:
        fmt.write_array(f, a, version=version)


save("f4_2d.npy", values((3, 5), "<f4"))
save("f8_big.npy", values((4, 3), ">f8"))
save("f8_fortran_3d.npy", values((2, 3, 4), "<f8"), fortran=True)
save("f4_v2.npy", values((6,), "<f4"), version=(2, 0))
save("f4_v3.npy", values((2, 2), "<f4"), version=(3, 0))
save("f2.npy", values((5,), "<f2"))
save("i8.npy", values((3,), "<i8"))
save("i2_big.npy", values((4,), ">i2"))
save("u1.npy", values((4,), "|u1"))
save("b1.npy", values((6,), "|b1"))
save("scalar.npy", values((), "<f8"))
save("empty.npy", values((0, 3), "<f4"))
# A 20-dimensional array: a header of 182 bytes, whose length byte (0xb6) is >= 0x80.
save("long_header.npy", values((1,) * 19 + (2,), "<f4"))
