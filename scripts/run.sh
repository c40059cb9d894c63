#!/usr/bin/env bash
# The main job: installs what is missing, builds, fetches all-MiniLM-L6-v2 (BERT, 12 heads per
# layer), calibrates it on real English text, converts it from MHA to GQA at 6, 4, 3, 2 and 1
# KV heads with plain mean-pooling, the paper's aligned merging and this library's extras, and
# prints how much of the model each conversion keeps. Then writes one converted checkpoint with
# headalign-convert at its default settings (4 KV heads) and scores it from disk.
# Output: ${HEADALIGN_DEMO_OUT:-demo-output}/ (report.json, layer0_value_similarity.png, grams.safetensors,
# all-minilm-l6-v2-gqa4/).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
model="$(./scripts/fetch-model.sh)"
out="${HEADALIGN_DEMO_OUT:-demo-output}"
cmake -S . -B build/run -DCMAKE_BUILD_TYPE=Release -DHEADALIGN_BUILD_TESTS=OFF -DHEADALIGN_BUILD_BENCHMARKS=OFF
cmake --build build/run -j "$(nproc)" --target main_job
export OPENBLAS_NUM_THREADS=1
./build/run/examples/minilm_demo --model "$model" --out "$out" "$@"
rm -rf "$out/all-minilm-l6-v2-gqa4"
./build/run/tools/headalign-convert --model "$model" --calibration "$out/grams.safetensors" --kv-heads 4 \
  --output "$out/all-minilm-l6-v2-gqa4"
./build/run/examples/minilm_demo --model "$model" --evaluate "$out/all-minilm-l6-v2-gqa4"
