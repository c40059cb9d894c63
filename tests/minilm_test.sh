#!/usr/bin/env bash
# The real model, small and fast: the C++ runner against a separately written numpy encoder, the
# demo at 4 KV heads (aligned must beat mean-pool), and one headalign-convert run evaluated from disk.
# usage: minilm_test.sh MINILM_DEMO HEADALIGN_CONVERT MODEL_DIR SOURCE_DIR WORK_DIR
set -euo pipefail
demo=$1 convert=$2 model=$3 src=$4 work=$5
rm -rf "$work" && mkdir -p "$work"
export OPENBLAS_NUM_THREADS=1

"$demo" --model "$model" --embed "$src/tests/data/minilm_sentences.txt" > "$work/embeddings.json"
/usr/bin/python3 "$src/tests/minilm_reference.py" "$model" "$work/embeddings.json"

"$demo" --model "$model" --out "$work/demo" --kv-heads 4 --calibration-sentences 60 --eval-sentences 40 --checkpoint-kv-heads 4
/usr/bin/python3 - "$work/demo/report.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
by = {(x["kv_heads"], x["method"]): x for x in r["results"]}
aligned, plain = by[(4, "aligned")], by[(4, "mean-pool")]
print("kv 4: aligned cosine %.4f vs mean-pool %.4f" % (aligned["embedding_cosine_mean"], plain["embedding_cosine_mean"]))
assert r["mha"]["embedding_cosine_mean"] > 0.9999
assert aligned["embedding_cosine_mean"] > plain["embedding_cosine_mean"] + 0.05, "aligned does not beat mean-pool"
assert aligned["embedding_cosine_min"] > plain["embedding_cosine_min"]
full = by[(4, "aligned+full")]
print("kv 4: aligned+full cosine %.4f / min %.4f vs aligned %.4f / %.4f" % (
    full["embedding_cosine_mean"], full["embedding_cosine_min"], aligned["embedding_cosine_mean"], aligned["embedding_cosine_min"]))
assert full["embedding_cosine_mean"] > aligned["embedding_cosine_mean"], "query- and output-aware merging does not help"
PY
test -s "$work/demo/layer0_value_similarity.png"

"$convert" --model "$model" --calibration "$work/demo/grams.safetensors" --kv-heads 4 --output "$work/gqa4" --quiet
grep -q '"num_key_value_heads": 4' "$work/gqa4/config.json"
grep -q '"merge_used": "full"' "$work/gqa4/report.json"
# The demo wrote the same conversion through the library call (io::convert_checkpoint): the same
# weights and config bytes. The demo sends Eigen's own products to OpenBLAS (EIGEN_USE_BLAS, for the
# encoder), so the report's predicted errors may differ in the last bits: numbers to 1e-12.
cmp "$work/gqa4/model.safetensors" "$work/demo/checkpoint-gqa4/model.safetensors"
cmp "$work/gqa4/config.json" "$work/demo/checkpoint-gqa4/config.json"
/usr/bin/python3 - "$work/gqa4/report.json" "$work/demo/checkpoint-gqa4/report.json" <<'PY'
import json, math, sys
def same(a, b, path="report"):
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), path
        for k in a:
            if k != "seconds":
                same(a[k], b[k], path + "." + k)
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            same(x, y, "%s[%d]" % (path, i))
    elif isinstance(a, float) or isinstance(b, float):
        assert math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-300), "%s: %r vs %r" % (path, a, b)
    else:
        assert a == b, "%s: %r vs %r" % (path, a, b)
same(json.load(open(sys.argv[1])), json.load(open(sys.argv[2])))
print("minilm: headalign-convert and io::convert_checkpoint wrote the same checkpoint")
PY
"$demo" --model "$model" --evaluate "$work/gqa4" --eval-sentences 40 | tee "$work/evaluate.txt"
grep -q "(4 KV heads)" "$work/evaluate.txt"
echo "minilm: OK"
