#!/usr/bin/env bash
# Installs what is missing, fetches the real test model, checks the source layout (clang-format),
# configures, builds and runs every test (CPU only).
# With clang (installed by install-deps.sh) the whole suite is built with AddressSanitizer +
# UndefinedBehaviorSanitizer (HEADALIGN_SANITIZE), and the libFuzzer targets are built and run
# for HEADALIGN_FUZZ_SECONDS each (default 10); without clang, a plain build of the same suite.
# Then the Python package: a wheel built while the C++ tests run, installed into build/python/venv,
# and its pytest suite.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
model="$(pwd)/$(./scripts/fetch-model.sh)"
# The layout of the library, the tools and the bindings (.clang-format), before anything is built.
git ls-files -z include tools python/src | grep -zE '\.(hpp|cpp|cuh|cu|h)$' | xargs -0 clang-format --dry-run --Werror
build=build/test
options=()
if command -v clang++ >/dev/null 2>&1; then
  build=build/test-sanitize
  options=(-DCMAKE_CXX_COMPILER=clang++ -DHEADALIGN_SANITIZE=ON -DHEADALIGN_BUILD_FUZZERS=ON
           -DHEADALIGN_FUZZ_SECONDS="${HEADALIGN_FUZZ_SECONDS:-10}")
fi
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DHEADALIGN_BUILD_BENCHMARKS=OFF -DHEADALIGN_MINILM_DIR="$model" "${options[@]}"
cmake --build "$build" -j "$(nproc)"
./scripts/python-build.sh >build/python-build.out 2>build/python-build.log &
python_build=$!
OPENBLAS_NUM_THREADS=1 ctest --test-dir "$build" -j "$(nproc)" --output-on-failure
if ! wait "$python_build"; then
  cat build/python-build.log
  echo "the Python package did not build" >&2
  exit 1
fi
HEADALIGN_PROCRUSTES_NPY="$(pwd)/$build/examples/procrustes_npy" HEADALIGN_CONVERT="$(pwd)/$build/tools/headalign-convert" \
  OPENBLAS_NUM_THREADS=1 \
  "$(cat build/python-build.out)" -m pytest -q python/tests
