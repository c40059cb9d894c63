#!/usr/bin/env bash
# Runs one libFuzzer target for a bounded time: run_fuzzer.sh EXE SECONDS WORKDIR INPUT_DIR...
# New inputs go to WORKDIR/corpus and any crashing input to WORKDIR/ (the printed artifact
# path); the committed inputs are only read. Exit status: libFuzzer's (0 = nothing found).
set -euo pipefail
exe=$1 seconds=$2 work=$3
shift 3
rm -rf "$work"
mkdir -p "$work/corpus"
# Findings stop the run (UBSan included); leaks are findings too.
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
export OPENBLAS_NUM_THREADS=1
# A fixed seed by default (HEADALIGN_FUZZ_SEED=0: a new one each run), so a CTest run explores the
# same sequence of inputs each time; only the number of runs depends on the machine's speed.
exec "$exe" -seed="${HEADALIGN_FUZZ_SEED:-1}" -max_total_time="$seconds" -timeout=20 -rss_limit_mb=2048 -max_len=8192 -print_final_stats=1 -print_funcs=0 \
  -artifact_prefix="$work/" "$work/corpus" "$@"
