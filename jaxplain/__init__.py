"""jaxplain: train a FER2013 facial-expression CNN in JAX and explain it.

Every classifier takes float images ``(N, H, W, C)`` in [0, 1] (NHWC) and returns logits
``(N, K)``; its ``forward`` is a pure function that passes through ``jax.jit`` as an argument.
Every attribution method is ``method(forward, inputs, target, **options)``, registered by name
(:mod:`jaxplain.attribution.registry`) for :func:`attribute`, the CLI and the report; every
registered method is also exported here (``jaxplain.saliency``, ``jaxplain.lrp``, ...).
"""

from __future__ import annotations

import pathlib

from jaxplain import xla_flags

xla_flags.apply_cpu_defaults()  # before any JAX computation: XLA reads its flags once

from jaxplain import attribution, batching, convert, evaluation, lime, metrics
from jaxplain.attribution import (
    attribute,
    attribute_many,
    completeness_gap,
    integrated_gradients_adaptive,
    registry,
)
from jaxplain.checkpoint import load_classifier, save_classifier
from jaxplain.convert import from_torch
from jaxplain.data import CLASS_NAMES
from jaxplain.feature_vis import activations, maximize_activation
from jaxplain.models import CNN, Classifier, classifier

__version__ = "0.1.0"


def shipped_checkpoint() -> pathlib.Path:
  """The directory of the FER2013 CNN shipped with jaxplain."""
  from importlib import resources
  return pathlib.Path(str(resources.files("jaxplain.checkpoints").joinpath("fer2013_cnn")))


# Every registered attribution method, under its own name (one table: the registry).
_METHODS = {registry.get(name).fn.__name__: registry.get(name).fn for name in registry.names()}
globals().update(_METHODS)

__all__ = sorted([
    "CLASS_NAMES",
    "CNN",
    "Classifier",
    "activations",
    "attribute",
    "attribute_many",
    "attribution",
    "batching",
    "classifier",
    "completeness_gap",
    "convert",
    "evaluation",
    "from_torch",
    "integrated_gradients_adaptive",
    "lime",
    "load_classifier",
    "maximize_activation",
    "metrics",
    "save_classifier",
    "shipped_checkpoint",
] + list(_METHODS))
