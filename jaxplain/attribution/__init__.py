"""Gradient and perturbation attributions as pure, jit-able JAX functions.

Every method has the signature ``method(forward, inputs, target, **options) -> attributions``
(Grad-CAM takes the classifier for its layers): ``forward`` maps float images
``(N, H, W, C)`` to logits ``(N, K)`` (``classifier.forward``, a ``Classifier``, or any such
function), ``target`` is an int or ``(N,)`` ints, and the attributions have the shape and dtype
of ``inputs``. Each matches the Captum method named in its docstring, and each is registered
(:mod:`jaxplain.attribution.registry`) under the name the CLI and the report use.
"""

from __future__ import annotations

from jaxplain.attribution import registry
from jaxplain.attribution.baselines import blur, make_baselines
from jaxplain.attribution.cam import grad_cam, upsample
from jaxplain.attribution.explain import attribute, attribute_many
from jaxplain.attribution.guided import guided, guided_backprop
from jaxplain.attribution.integrated_gradients import (
    METHODS,
    RULES,
    approximation,
    completeness_gap,
    integrated_gradients,
    integrated_gradients_adaptive,
)
from jaxplain.attribution.occlusion import occlusion
from jaxplain.attribution.saliency import input_x_gradient, saliency
from jaxplain.attribution.smoothgrad import smoothgrad

__all__ = [
    "METHODS",
    "RULES",
    "approximation",
    "attribute",
    "attribute_many",
    "blur",
    "completeness_gap",
    "grad_cam",
    "guided",
    "guided_backprop",
    "input_x_gradient",
    "integrated_gradients",
    "integrated_gradients_adaptive",
    "make_baselines",
    "registry",
    "occlusion",
    "saliency",
    "smoothgrad",
    "upsample",
]
