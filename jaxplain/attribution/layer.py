"""Layer attributions: gradient × activation, integrated gradients and conductance at a layer.

Each takes the :class:`~jaxplain.models.Classifier` and a ``layer`` (one of its
``layer_names``) and returns attributions of the layer's activation shape (``(N, h, w, C)``
NHWC for spatial layers, as ``classifier.tapped`` gives them), as Captum's layer methods do; with
``interpolate_mode`` they are summed over channels and resized to the input
(``(N, H, W, 1)``, as ``LayerAttribution.interpolate`` of the channel sum).

References:
  Sundararajan et al., "Axiomatic Attribution for Deep Networks", ICML 2017.
  Dhamdhere et al., "How Important Is a Neuron?", ICLR 2019 (conductance).
  https://arxiv.org/abs/1805.12233
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jaxplain import batching
from jaxplain.attribution._common import check_call, select
from jaxplain.attribution.baselines import make_baselines
from jaxplain.attribution.cam import INTERPOLATE_MODES, upsample
from jaxplain.attribution.integrated_gradients import (
    _check_options,
    _path_integral,
    approximation,
)
from jaxplain.attribution.registry import register
from jaxplain.models import Classifier

__all__ = ["layer_gradient_x_activation", "layer_integrated_gradients", "layer_conductance"]


def _check(classifier, inputs, target, layer, interpolate_mode):
  if not isinstance(classifier, Classifier):
    raise ValueError(f"`classifier` must be a jaxplain Classifier (layer methods need its "
                     f"layers), got {type(classifier).__name__}")
  if not isinstance(layer, str) or layer not in classifier.layer_names:
    raise ValueError(f"`layer` {layer!r} is not a layer of the classifier; valid layers: "
                     f"{list(classifier.layer_names)}")
  if interpolate_mode is not None and interpolate_mode not in INTERPOLATE_MODES:
    raise ValueError(f"`interpolate_mode` must be None or one of {INTERPOLATE_MODES}, "
                     f"got {interpolate_mode!r}")
  _, inputs, target = check_call(classifier.forward, inputs, target)
  _, act = batching.eval_shape(classifier.tapped(layer), inputs, None)
  if interpolate_mode is not None and len(act.shape) != 4:
    raise ValueError(f"`interpolate_mode` needs a spatial (N, h, w, C) layer; {layer!r} has "
                     f"activations of shape {tuple(act.shape)} (pass interpolate_mode=None)")
  return inputs, target


def _finish(attrs, inputs, interpolate_mode):
  if interpolate_mode is None:
    return attrs.astype(inputs.dtype)
  maps = jnp.sum(attrs, axis=3, keepdims=True)
  return upsample(maps, inputs.shape[1:3], mode=interpolate_mode).astype(inputs.dtype)


def _layer_grad(tapped, x, target):
  """Gradient of the target logits at the layer and the layer's activation, at inputs ``x``."""
  _, act = jax.eval_shape(tapped, x, None)
  delta = jnp.zeros(act.shape, act.dtype)

  def total(d):
    logits, a = tapped(x, d)
    return jnp.sum(select(logits, target)), a

  return jax.grad(total, has_aux=True)(delta)


@functools.partial(jax.jit, static_argnames=("layer", "interpolate_mode"))
def _gxa(clf, inputs, target, *, layer, interpolate_mode):
  grads, acts = _layer_grad(clf.tapped(layer), inputs, target)
  return _finish(grads * acts, inputs, interpolate_mode)


_LAYER_DEFAULTS = {"interpolate_mode": "bilinear"}


@register("layer_gradient_x_activation", kind="layer", signed=True,
          label="layer gradient × activation", classifier=True, layer=True,
          defaults=_LAYER_DEFAULTS)
def layer_gradient_x_activation(classifier: Classifier, inputs, target, *, layer: str,
                                interpolate_mode: str | None = None):
  """The layer's activations times the target logit's gradient there (Captum
  ``LayerGradientXActivation``).

  Args:
    classifier: a :class:`~jaxplain.models.Classifier` (its own CNN or a converted model).
    inputs: float images ``(N, H, W, C)``.
    target: int or ``(N,)`` ints.
    layer: a name of ``classifier.layer_names``. Static.
    interpolate_mode: ``None`` (default: the layer's shape, as Captum), or ``"nearest"`` /
      ``"bilinear"``: summed over channels and resized to ``(N, H, W, 1)``. Static.

  Returns:
    Attributions of the layer's activation shape (or ``(N, H, W, 1)``), in the dtype of
    ``inputs``.
  """
  inputs, target = _check(classifier, inputs, target, layer, interpolate_mode)
  return _gxa(classifier, inputs, target, layer=layer, interpolate_mode=interpolate_mode)


@functools.partial(jax.jit, static_argnames=("layer", "steps", "method", "batch_size",
                                             "interpolate_mode"))
def _lig(clf, inputs, target, baselines, *, layer, steps, method, batch_size, interpolate_mode):
  tapped = clf.tapped(layer)
  act_x = tapped(inputs, None)[1]
  act_b = tapped(baselines, None)[1]

  def at_layer(a):  # the network above the layer, fed activations a
    return tapped(inputs, a - act_x)[0]

  total = _path_integral(at_layer, act_x, target, act_b, steps=steps, rule=method,
                         batch_size=batch_size)
  return _finish(total * (act_x - act_b), inputs, interpolate_mode)


@register("layer_integrated_gradients", kind="layer", signed=True,
          label="layer integrated gradients", classifier=True, layer=True,
          defaults={**_LAYER_DEFAULTS, "steps": 50})
def layer_integrated_gradients(classifier: Classifier, inputs, target, *, layer: str,
                               baselines=None, steps: int = 50, method: str = "gausslegendre",
                               batch_size: int | None = None, key=None,
                               interpolate_mode: str | None = None):
  """Integrated gradients in the space of a layer's activations (Captum
  ``LayerIntegratedGradients``).

  With ``a(x)`` the layer's activations: ``(a(x) − a(b)) · sum_s w_s ∇_a f_t(a(b) + α_s (a(x) −
  a(b)))``, the network above the layer fed the path's activations (the classifier's ``delta``
  hook), Captum's points ``α_s`` and weights ``w_s``.

  Args:
    classifier, inputs, target, layer, interpolate_mode: as for
      :func:`layer_gradient_x_activation`.
    baselines: input baselines, as for :func:`~jaxplain.attribution.integrated_gradients`
      (``None``: zeros).
    steps: path points (Captum ``n_steps``). Static.
    method: quadrature rule (:data:`~jaxplain.attribution.METHODS`). Static.
    batch_size: path points evaluated at once; ``None``: all. Static.
    key: a ``jax.random`` key for ``baselines="uniform"``.

  Returns:
    Attributions of the layer's activation shape (or ``(N, H, W, 1)``).
  """
  return _along_path(_lig, classifier, inputs, target, layer=layer, baselines=baselines,
                     steps=steps, method=method, batch_size=batch_size, key=key,
                     interpolate_mode=interpolate_mode)


def _along_path(run, classifier, inputs, target, *, layer, baselines, steps, method, batch_size,
                key, interpolate_mode):
  """The checks of a layer method along the input path, then ``run`` (jitted) on the baselines."""
  inputs, target = _check(classifier, inputs, target, layer, interpolate_mode)
  _check_options(steps, method, batch_size)
  b = make_baselines(inputs, baselines, key=key)
  return run(classifier, inputs, target, b, layer=layer, steps=int(steps), method=method,
             batch_size=batching.check_batch_size(batch_size), interpolate_mode=interpolate_mode)


@functools.partial(jax.jit, static_argnames=("layer", "steps", "method", "batch_size",
                                             "interpolate_mode"))
def _conductance(clf, inputs, target, baselines, *, layer, steps, method, batch_size,
                 interpolate_mode):
  tapped = clf.tapped(layer)
  alphas, _ = approximation(method, steps + 1)
  diff = inputs - baselines

  def at(alpha):
    return _layer_grad(tapped, baselines + alpha * diff, target)

  grads, acts = batching.chunked_map(at, jnp.asarray(alphas, inputs.dtype),
                                     batch_size=batch_size)
  total = jnp.sum(grads[:-1] * (acts[1:] - acts[:-1]), axis=0)
  return _finish(total, inputs, interpolate_mode)


@register("layer_conductance", kind="layer", signed=True, label="layer conductance",
          classifier=True, layer=True, defaults={**_LAYER_DEFAULTS, "steps": 50})
def layer_conductance(classifier: Classifier, inputs, target, *, layer: str, baselines=None,
                      steps: int = 50, method: str = "gausslegendre",
                      batch_size: int | None = None, key=None,
                      interpolate_mode: str | None = None):
  """Conductance of a layer's units (Captum ``LayerConductance``).

  Along the straight input path ``x_s = b + α_s (x − b)`` at Captum's ``steps + 1`` points of
  ``method``: ``sum_s ∇_a f_t(x_s) ⊙ (a(x_{s+1}) − a(x_s))``, the flow of the target logit
  through each unit of the layer. Summed over the layer's units, it approximates
  ``f_t(x) − f_t(b)``.

  Args:
    classifier, inputs, target, layer, interpolate_mode, baselines, batch_size, key: as for
      :func:`layer_integrated_gradients`.
    steps: path intervals (Captum ``n_steps``; ``steps + 1`` points are evaluated). Static.
    method: quadrature rule whose points are used (Captum's default ``"gausslegendre"``). Static.

  Returns:
    Attributions of the layer's activation shape (or ``(N, H, W, 1)``).
  """
  return _along_path(_conductance, classifier, inputs, target, layer=layer, baselines=baselines,
                     steps=steps, method=method, batch_size=batch_size, key=key,
                     interpolate_mode=interpolate_mode)
