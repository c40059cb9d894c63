#!/usr/bin/env bash
# Builds the Python package headalign as a wheel (build/python/wheels) and installs it into a
# virtual environment (build/python/venv) that also sees Debian's NumPy, SciPy, PyTorch and pytest.
# Prints the environment's python. Needs Debian's python3 with python3-venv and python3-dev
# (scripts/install-deps.sh installs them); nanobind and scikit-build-core come from PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."
root="$(pwd)"
py=/usr/bin/python3
venv="$root/build/python/venv"
[ -x "$venv/bin/python" ] || "$py" -m venv --system-site-packages "$venv" >&2
rm -rf "$root/build/python/wheels"
CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" "$venv/bin/pip" wheel -q --no-deps ./python -w "$root/build/python/wheels" \
  --config-settings=build-dir="$root/build/python/cmake" >&2
"$venv/bin/pip" install -q --force-reinstall --no-deps "$root"/build/python/wheels/headalign-*.whl >&2
echo "$venv/bin/python"
