#!/usr/bin/env bash
# Installs jaxplain with its test extras into ./.venv and runs the test suite.
# Usage: bash scripts/test.sh [--slow | --full] [pytest args...]
#   default: the default suite (what CI runs): every reference comparison on a fast sample
#   --slow:  also the slow tests (heavier references, real-data checks, more models and layers)
#   --full:  the slow tests and the long sweeps (every torchvision model, every layer's filters,
#            high-step reference integrals): JAXPLAIN_FULL=1
set -euo pipefail
cd "$(dirname "$0")/.."
MARK=()
case "${1:-}" in
  --slow) MARK=(-m "slow or not slow"); shift ;;
  --full) MARK=(-m "slow or not slow"); export JAXPLAIN_FULL=1; shift ;;
esac
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
exec .venv/bin/python -m pytest "${MARK[@]}" --durations=25 "$@"
