#!/usr/bin/env bash
# Installs what is missing, fetches the real test model, configures, builds and runs every test (CPU only).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
model="$(pwd)/$(./scripts/fetch-model.sh)"
cmake -S . -B build/test -DCMAKE_BUILD_TYPE=Release -DHEADALIGN_BUILD_BENCHMARKS=OFF -DHEADALIGN_MINILM_DIR="$model"
cmake --build build/test -j "$(nproc)"
OPENBLAS_NUM_THREADS=1 ctest --test-dir build/test -j "$(nproc)" --output-on-failure
