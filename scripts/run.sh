#!/usr/bin/env bash
# The main job (for now): installs what is missing, builds, and aligns two attention heads —
# a planted rotated, noisy copy — first with any orthogonal transform, then RoPE-constrained.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
cmake -S . -B build/run -DCMAKE_BUILD_TYPE=Release -DHEADALIGN_BUILD_TESTS=OFF -DHEADALIGN_BUILD_BENCHMARKS=OFF
cmake --build build/run -j "$(nproc)" --target align_heads
./build/run/examples/align_heads --alignment orthogonal --dim 128 --tokens 4096 "$@"
./build/run/examples/align_heads --alignment rope --dim 128 --tokens 4096 "$@"
