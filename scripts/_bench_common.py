"""What the bench_<area>.py scripts share: the model they time and the steady-state timer."""

from __future__ import annotations

import pathlib
import statistics
import time

import jax
import numpy as np


def classifier():
  """The trained FER2013 CNN when present, else the same architecture with random weights.

  Returns:
    ``(classifier, label)``; the label says which one it is, for the benchmark rows.
  """
  import jaxplain
  from jaxplain import checkpoint, models
  for path in (pathlib.Path(__file__).resolve().parents[1] / "checkpoints/fer2013_cnn",
               jaxplain.shipped_checkpoint()):
    try:
      return checkpoint.load_classifier(path), f"trained CNN ({path.name})"
    except Exception:  # noqa: BLE001 - absent or unreadable: try the next, then random weights
      continue
  model = models.CNN()
  variables = model.init(jax.random.key(0), np.zeros((1, 48, 48, 1), np.float32))
  return models.classifier(model, variables), "random-weight CNN (default architecture)"


def median_seconds(fn, repeats: int) -> float:
  """Median wall time of ``repeats`` calls of ``fn`` (call it once before, to exclude compiling)."""
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t0)
  return statistics.median(times)
