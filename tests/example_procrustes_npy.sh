#!/usr/bin/env bash
# procrustes_npy on files NumPy writes: a planted rotation (float32 A, big-endian Fortran-order
# float64 B) is recovered and the written R.npy loads in NumPy; bad input fails cleanly.
# usage: example_procrustes_npy.sh PROCRUSTES_NPY WORK_DIR
set -euo pipefail
exe=$1 work=$2
rm -rf "$work" && mkdir -p "$work"
/usr/bin/python3 - "$work" <<'PY'
import sys
import numpy as np
w = sys.argv[1]
rng = np.random.default_rng(5)
a = rng.standard_normal((400, 12))
q, _ = np.linalg.qr(rng.standard_normal((12, 12)))
b = a @ q + 0.01 * rng.standard_normal((400, 12))
np.save(w + "/a.npy", a.astype("<f4"))
np.save(w + "/b.npy", np.asfortranarray(b.astype(">f8")))
np.save(w + "/q.npy", q)
np.save(w + "/c.npy", a[:, :5])
PY
"$exe" "$work/a.npy" "$work/b.npy" --save-rotation "$work/r.npy" | tee "$work/out.txt"
grep -q "mean row cosine: before" "$work/out.txt"
/usr/bin/python3 - "$work" <<'PY'
import sys
import numpy as np
w = sys.argv[1]
r, q = np.load(w + "/r.npy"), np.load(w + "/q.npy")
assert r.shape == (12, 12) and r.dtype == np.float64
assert np.abs(r.T @ r - np.eye(12)).max() < 1e-12, "R is not orthogonal"
assert np.abs(r - q).max() < 1e-2, "planted rotation not recovered: %g" % np.abs(r - q).max()
print("R recovered: max |R - Q| = %.2e" % np.abs(r - q).max())
PY
# Bad input: a truncated file, shapes that differ, a flag it does not know.
head -c 150 "$work/a.npy" > "$work/trunc.npy"
if "$exe" "$work/trunc.npy" "$work/b.npy" 2> "$work/err.txt"; then exit 1; fi
grep -q "truncated" "$work/err.txt"
if "$exe" "$work/a.npy" "$work/c.npy" 2> "$work/err.txt"; then exit 1; fi
grep -q "but B is" "$work/err.txt"
set +e
"$exe" "$work/a.npy" "$work/b.npy" --frobnicate 2> /dev/null
[ $? -eq 2 ] || exit 1
set -e
test ! -e "$work/r.npy.tmp.$$"
echo "procrustes_npy: OK"
