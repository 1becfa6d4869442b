#!/usr/bin/env bash
# Installs jaxplain with its test extras into ./.venv and runs the test suite.
# Usage: bash scripts/test.sh [--full] [pytest args...]
#   default: the whole suite, slow tests included (what CI runs, about 12 minutes on 2 cores)
#   --full:  also the long sweeps (every torchvision model, every layer's filters, high-step
#            reference integrals): JAXPLAIN_FULL=1
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = "--full" ]; then
  export JAXPLAIN_FULL=1
  shift
fi
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# torch is only a test reference: take the CPU build where one is provided locally, so pip does
# not pull a multi-GB CUDA build; elsewhere fall back to the default build.
.venv/bin/python -m pip install -q "torch==2.13.0" "torchvision==0.28.0" \
  || .venv/bin/python -m pip install -q torch torchvision
.venv/bin/python -m pip install -q -e ".[dev]"
# Real pretrained PyTorch FER CNN for the conversion and Captum tests (skipped if unavailable).
.venv/bin/python scripts/fetch_reference_models.py || echo "reference models unavailable: their tests will skip"
[ $# -gt 0 ] || set -- -m "slow or not slow" --durations=25
exec .venv/bin/python -m pytest "$@"
