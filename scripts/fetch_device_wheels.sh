#!/usr/bin/env bash
# Prepares what scripts/device_check.sh carries to a GPU machine without network (python 3.12,
# manylinux x86_64), both folders git-ignored (.git/info/exclude):
#   .whl/     the wheels that machine lacks: captum, quantus (+ cachetools), lime. It already has
#             jax (CUDA), flax, optax, orbax, torch, torchvision, scikit-image, scikit-learn,
#             opencv, pandas, matplotlib, tqdm and pytest; a second version of one of those
#             would stop the install, so only the missing ones are fetched.
#   .devdata/ optional: the reference NetworkV2 (for the metric rows against Quantus; fetched
#             with scripts/fetch_reference_models.py first) and FER2013's PublicTest rows (for
#             the timed report) from the CSV given as the first argument.
# Usage: bash scripts/fetch_device_wheels.sh [FER2013_CSV]   (then run with carry .whl .devdata)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
mkdir -p .whl
for w in captum==0.9.0 quantus==0.6.0 cachetools; do
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d .whl "$w"
done
# lime 0.2.0.1 is published as a source archive only: build its (pure-python) wheel here.
"$PY" -m pip wheel -q --no-deps --no-binary lime -w .whl lime==0.2.0.1
ls -1 .whl

ref=$("$PY" -c "import sys; sys.path.insert(0, 'scripts'); import fetch_reference_models as f; print(f.cache_dir() / f.FER_DIR / 'facial_emotion_recognition')")
if [ -f "$ref/model/model.pkl" ]; then
  dest=.devdata/refmodels/$(basename "$(dirname "$ref")")/facial_emotion_recognition
  mkdir -p "$dest/model" && cp "$ref"/*.py "$dest/" && cp "$ref/model/model.pkl" "$dest/model/"
  echo "copied the reference model to $dest"
fi
if [ -n "${1:-}" ]; then
  mkdir -p .devdata
  "$PY" - "$1" <<'PY'
import gzip, sys
opener = gzip.open if sys.argv[1].endswith(".gz") else open
with opener(sys.argv[1], "rt") as f, gzip.open(".devdata/fer_publictest.csv.gz", "wt") as g:
  g.write(f.readline())
  n = sum(g.write(line) > 0 for line in f if line.rstrip().endswith("PublicTest"))
print(f"wrote {n} PublicTest rows to .devdata/fer_publictest.csv.gz")
PY
fi
