#!/usr/bin/env bash
# The GPU check of jaxplain, in one run of at most 8 minutes, on a machine with one NVIDIA GPU
# and no network (jax with CUDA, flax, optax, orbax, torch, torchvision, scikit-image,
# matplotlib and pytest installed; the other wheels carried in .whl/, see
# scripts/fetch_device_wheels.sh):
#   1. installs the carried wheels and jaxplain itself without dependencies (under /tmp),
#   2. runs the tests that exercise devices (models, batching, sharding, attributions),
#   3. runs scripts/bench.py on the GPU, jaxplain against Captum/PyTorch on the same GPU.
# Writes OUTDIR/device_check.log (environment, every step's output and time) and
# OUTDIR/bench*.json. Optional, carried in the git-ignored .devdata/: refmodels/ (a copy of the
# reference model cache of scripts/fetch_reference_models.py, for the metric rows against
# Quantus) and fer_publictest.csv.gz (FER2013 rows, for the timed `jaxplain report --data`).
#
# Usage: bash scripts/device_check.sh OUTDIR [--dry-run]
#   --dry-run: the same steps on this machine's CPU (JAX_PLATFORMS=cpu, --quick benchmark,
#   the current Python environment when .whl/ is absent): proves the script end to end.
set -uo pipefail
OUT=${1:?usage: device_check.sh OUTDIR [--dry-run]}
DRY=${2:-}
cd "$(dirname "$0")/.."
ROOT=$PWD
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
PY=${PYTHON:-python3}
START=$(date +%s)
log() { echo "[$(( $(date +%s) - START ))s] $*" | tee -a "$OUT/device_check.log"; }
# Seconds left of the 8 minutes (with a margin); DEVICE_CHECK_BUDGET=S changes it (a dry run on
# a loaded CPU needs more).
BUDGET=${DEVICE_CHECK_BUDGET:-470}
left() { echo $(( BUDGET - ($(date +%s) - START) )); }

SITE=/tmp/jaxplain_device_site
rm -rf "$SITE" && mkdir -p "$SITE"
if compgen -G ".whl/*.whl" > /dev/null; then
  log "installing $(ls .whl/*.whl | wc -l) carried wheels into $SITE"
  "$PY" -m pip install -q --no-index --no-deps --target "$SITE" .whl/*.whl 2>&1 | tail -3
fi
# jaxplain without dependencies; a plain copy (with its checkpoints) where pip cannot build it.
if ! "$PY" -m pip install -q --no-index --no-deps --no-build-isolation --target "$SITE" . \
    >> "$OUT/device_check.log" 2>&1; then
  log "pip could not build jaxplain offline: copying the package"
  cp -r jaxplain "$SITE/jaxplain" && cp -r checkpoints "$SITE/jaxplain/checkpoints"
fi
export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
if [ "$DRY" = "--dry-run" ]; then
  export JAX_PLATFORMS=cpu
  BENCH_ARGS=(--quick)
  FULL_ROWS="saliency N=32,forward CNN*"
  QUICK_ROWS="filter*,lime 64*"
  METRIC_ROWS="road"
  SLOW=3  # the CPU is slower: stretch every step's time limit
else
  BENCH_ARGS=(--rounds 3)
  FULL_ROWS="forward*,input gradient*,saliency*,integrated_gradients*,smoothgrad*,guided*,training*"
  QUICK_ROWS="filter*,lime 64*"
  METRIC_ROWS="pixel_flipping,max_sensitivity,mprt,faithfulness_correlation,road"
  SLOW=1
fi
# Optional carried data (git-ignored .devdata/, see the header): the converted reference model for
# the metric rows and a FER2013 CSV for the timed report.
[ -d .devdata/refmodels ] && export JAXPLAIN_REFERENCE_MODELS="$ROOT/.devdata/refmodels"
DATA=${DEVICE_CHECK_DATA:-.devdata/fer_publictest.csv.gz}
# -P: do not put the repository on sys.path, so the installed jaxplain (with its checkpoint) runs.
RUN=("$PY" -P)
# step SECONDS NAME CMD...: runs one step under its own time limit, its output into the log.
step() {
  local limit=$(( $1 * SLOW )) name=$2; shift 2
  [ "$(left)" -lt 20 ] && { log "$name: skipped, out of time"; return; }
  [ "$limit" -gt "$(left)" ] && limit=$(left)
  log "$name (limit ${limit}s)"
  local t0=$(date +%s)
  timeout "$limit" "$@" >> "$OUT/device_check.log" 2>&1
  log "$name: exit $? in $(( $(date +%s) - t0 ))s"
}

{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 || echo "no nvidia-smi"
  "${RUN[@]}" -c "import jax, flax, optax, jaxplain, sys; print(sys.version); print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, jax.devices()); print('jaxplain', jaxplain.__file__)"
  "${RUN[@]}" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
  "${RUN[@]}" -c "import captum, lime, quantus; print('captum', captum.__version__, 'quantus', quantus.__version__, 'lime ok')"
} >> "$OUT/device_check.log" 2>&1
log "environment written"

step 70 "tests that exercise devices" "${RUN[@]}" -m pytest -x -q -p no:cacheprovider \
  --rootdir "$ROOT" tests/test_sharding.py tests/test_batching.py tests/test_perf.py
step 170 "benchmark: forward, gradient methods, training (jaxplain vs PyTorch/Captum, same device)" \
  "${RUN[@]}" scripts/bench.py "${BENCH_ARGS[@]}" --rows "$FULL_ROWS" --json "$OUT/bench.json"
step 70 "benchmark: metrics against Quantus (same device)" \
  "${RUN[@]}" scripts/bench_metrics.py --rounds 3 --only "$METRIC_ROWS"
if [ -f "$DATA" ]; then
  step 70 "jaxplain report --data $DATA --per-class 30 (wall time includes start-up and compiles)" \
    "${RUN[@]}" -m jaxplain.cli report --data "$DATA" --split PublicTest --per-class 30 \
    --out /tmp/jaxplain_device_report --overwrite
else
  log "no $DATA: the timed report is skipped"
fi
step 60 "benchmark: filter ascent and LIME (quick sizes)" \
  "${RUN[@]}" scripts/bench.py --quick --rows "$QUICK_ROWS" --json "$OUT/bench_quick.json"
log "done in $(( $(date +%s) - START ))s"
