#!/usr/bin/env bash
# Downloads into .whl/ (git-ignored) the wheels scripts/device_check.sh installs on a GPU machine
# without network: python 3.12, manylinux x86_64. That machine already has jax (CUDA), flax,
# optax, orbax, torch, torchvision, scikit-image, matplotlib and pytest.
# Usage: bash scripts/fetch_device_wheels.sh   (then carry .whl/ with the working tree)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
mkdir -p .whl
# Binary wheels (pure-python ones fit any platform).
WHEELS=(
  captum==0.9.0 scikit-learn==1.9.1 joblib==1.6.0 threadpoolctl==3.8.0 tqdm==4.70.1
  safetensors==0.8.0 hypothesis==6.170.17 attrs sortedcontainers
)
for w in "${WHEELS[@]}"; do
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d .whl "$w"
done
# lime 0.2.0.1 is published as a source archive only: build its (pure-python) wheel here.
"$PY" -m pip wheel -q --no-deps --no-binary lime -w .whl lime==0.2.0.1
ls -1 .whl
