"""jaxplain: train a FER2013 facial-expression CNN in JAX and explain it.

Every classifier takes float images ``(N, H, W, C)`` in [0, 1] (NHWC) and returns logits
``(N, K)``; its ``forward`` is a pure function that passes through ``jax.jit`` as an argument.
Every attribution method is ``method(forward, inputs, target, **options)``.
"""

from __future__ import annotations

import pathlib

from jaxplain import convert, lime
from jaxplain.attribution import (
    completeness_gap,
    deconvolution,
    deep_lift,
    deep_lift_shap,
    grad_cam,
    gradient_shap,
    guided_backprop,
    guided_grad_cam,
    input_x_gradient,
    integrated_gradients,
    integrated_gradients_adaptive,
    layer_conductance,
    layer_gradient_x_activation,
    layer_integrated_gradients,
    lrp,
    occlusion,
    saliency,
    smoothgrad,
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


__all__ = [
    "CLASS_NAMES",
    "CNN",
    "Classifier",
    "activations",
    "classifier",
    "completeness_gap",
    "convert",
    "deconvolution",
    "deep_lift",
    "deep_lift_shap",
    "from_torch",
    "grad_cam",
    "gradient_shap",
    "guided_backprop",
    "guided_grad_cam",
    "input_x_gradient",
    "integrated_gradients",
    "integrated_gradients_adaptive",
    "layer_conductance",
    "layer_gradient_x_activation",
    "layer_integrated_gradients",
    "lime",
    "load_classifier",
    "lrp",
    "maximize_activation",
    "occlusion",
    "saliency",
    "shipped_checkpoint",
    "smoothgrad",
]
