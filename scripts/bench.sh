#!/usr/bin/env bash
# Builds and runs the benchmarks (medians of 5 repetitions, one BLAS thread).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
cmake -S . -B build/bench -DCMAKE_BUILD_TYPE=Release -DHEADALIGN_BUILD_TESTS=OFF -DHEADALIGN_BUILD_BENCHMARKS=ON
cmake --build build/bench -j "$(nproc)"
for b in build/bench/benchmarks/headalign_benchmarks build/bench/benchmarks/headalign_benchmarks_eigen; do
  [ -x "$b" ] && OPENBLAS_NUM_THREADS=1 "$b" --benchmark_repetitions=5 --benchmark_report_aggregates_only=true "$@"
done
