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
from jaxplain.attribution.cams import (
    ablation_cam,
    eigen_cam,
    grad_cam_plus_plus,
    hires_cam,
    layer_cam,
    score_cam,
    xgrad_cam,
)
from jaxplain.attribution.explain import attribute, attribute_many
from jaxplain.attribution.deconvolution import deconvolution
from jaxplain.attribution.deeplift import deep_lift, deep_lift_shap
from jaxplain.attribution.guided import guided, guided_backprop, guided_grad_cam
from jaxplain.attribution.integrated_gradients import (
    METHODS,
    RULES,
    approximation,
    completeness_gap,
    integrated_gradients,
    integrated_gradients_adaptive,
)
from jaxplain.attribution.layer import (
    layer_conductance,
    layer_gradient_x_activation,
    layer_integrated_gradients,
)
from jaxplain.attribution.lrp import lrp
from jaxplain.attribution.occlusion import occlusion
from jaxplain.attribution.pair import blur_ig, guided_ig, xrai, xrai_segments
from jaxplain.attribution.perturbation import (
    feature_ablation,
    kernel_shap,
    kernel_shap_coalitions,
    shapley_permutations,
    shapley_value_sampling,
)
from jaxplain.attribution.rise import rise, rise_masks, rise_masks_from
from jaxplain.attribution.saliency import input_x_gradient, saliency
from jaxplain.attribution.shap import gradient_shap
from jaxplain.attribution.smoothgrad import smoothgrad

# Helpers by name; every registered method under its own name (one table: the registry).
__all__ = sorted({
    "METHODS",
    "ablation_cam",
    "RULES",
    "approximation",
    "attribute",
    "attribute_many",
    "blur",
    "blur_ig",
    "completeness_gap",
    "deconvolution",
    "deep_lift",
    "deep_lift_shap",
    "eigen_cam",
    "feature_ablation",
    "grad_cam",
    "grad_cam_plus_plus",
    "gradient_shap",
    "guided",
    "guided_backprop",
    "guided_grad_cam",
    "guided_ig",
    "hires_cam",
    "input_x_gradient",
    "integrated_gradients",
    "integrated_gradients_adaptive",
    "kernel_shap",
    "kernel_shap_coalitions",
    "layer_cam",
    "layer_conductance",
    "layer_gradient_x_activation",
    "layer_integrated_gradients",
    "lrp",
    "make_baselines",
    "occlusion",
    "registry",
    "rise",
    "rise_masks",
    "rise_masks_from",
    "saliency",
    "score_cam",
    "shapley_permutations",
    "shapley_value_sampling",
    "smoothgrad",
    "upsample",
    "xgrad_cam",
    "xrai",
    "xrai_segments",
} | {registry.get(name).fn.__name__ for name in registry.names()})
