#!/usr/bin/env bash
# The GPU check of jaxplain, in one run of at most 8 minutes, on a machine with one NVIDIA GPU
# and no network (jax with CUDA, flax, optax, orbax, torch, torchvision, scikit-image,
# matplotlib and pytest installed; the other wheels carried in .whl/, see
# scripts/fetch_device_wheels.sh):
#   1. installs the carried wheels and jaxplain itself without dependencies (under /tmp),
#   2. runs the tests that exercise devices (models, batching, sharding, attributions),
#   3. runs scripts/bench.py on the GPU, jaxplain against Captum/PyTorch on the same GPU.
# Writes OUTDIR/env.txt, OUTDIR/tests.log, OUTDIR/bench*.json and OUTDIR/bench*.log.
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
else
  BENCH_ARGS=(--rounds 3)
  FULL_ROWS="forward*,input gradient*,saliency*,integrated_gradients*,smoothgrad*,guided*,training*"
  QUICK_ROWS="filter*,lime 64*,chunk saliency*"
fi
# -P: do not put the repository on sys.path, so the installed jaxplain (with its checkpoint) runs.
RUN=("$PY" -P)

{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 || echo "no nvidia-smi"
  "${RUN[@]}" -c "import jax, jaxplain, sys; print(sys.version); print('jax', jax.__version__, jax.devices()); print('jaxplain', jaxplain.__file__)"
  "${RUN[@]}" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
  "${RUN[@]}" -c "import captum, lime; print('captum', captum.__version__, 'lime ok')"
} > "$OUT/env.txt" 2>&1
log "environment: $(tr '\n' ' ' < "$OUT/env.txt" | cut -c1-400)"

log "tests that exercise devices"
timeout $(( $(left) * 2 / 5 )) "${RUN[@]}" -m pytest -x -q -p no:cacheprovider --rootdir "$ROOT" \
  tests/test_perf.py tests/test_sharding.py tests/test_batching.py > "$OUT/tests.log" 2>&1
log "tests exit $? ($(tail -1 "$OUT/tests.log"))"

log "benchmark: gradient methods, forward, training (jaxplain vs PyTorch/Captum, same device)"
timeout $(( $(left) * 2 / 3 )) "${RUN[@]}" scripts/bench.py "${BENCH_ARGS[@]}" --rows "$FULL_ROWS" \
  --json "$OUT/bench.json" > "$OUT/bench.log" 2>&1
log "bench exit $?"
log "benchmark: chunk-size sweeps, filter ascent and LIME (quick sizes)"
timeout $(( $(left) - 10 )) "${RUN[@]}" scripts/bench.py --quick --rows "$QUICK_ROWS" \
  --json "$OUT/bench_quick.json" > "$OUT/bench_quick.log" 2>&1
log "quick bench exit $?"
grep -v "^WARNING\|^I0000\|^W0000" "$OUT/bench.log" "$OUT/bench_quick.log" | tee -a "$OUT/device_check.log"
log "done in $(( $(date +%s) - START ))s"
