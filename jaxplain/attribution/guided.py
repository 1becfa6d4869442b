"""Guided backpropagation: gradients through ReLUs that pass only positive signals.

References:
  Springenberg et al., "Striving for Simplicity: The All Convolutional Net", ICLR 2015.
  https://arxiv.org/abs/1412.6806
"""

from __future__ import annotations

import dataclasses
import inspect

import jax
from flax import linen as nn

from jaxplain.attribution import rules
from jaxplain.attribution._common import check_call, target_grad
from jaxplain.attribution.cam import INTERPOLATE_MODES, grad_cam
from jaxplain.attribution.registry import register
from jaxplain.models import Classifier, _Bound

__all__ = ["guided_backprop", "guided", "guided_grad_cam"]


@dataclasses.dataclass(frozen=True)
class _Rewritten:
  """``func`` with the guided ReLU rule at every ``max(x, 0)`` of its jaxpr
  (:func:`jaxplain.attribution.rules.modified` with :data:`~jaxplain.attribution.rules.GUIDED`).
  """

  func: object

  def __call__(self, *args):
    *bound, x = args
    forward = jax.tree_util.Partial(self.func, *bound)
    if not rules.has_activation(forward, x):
      raise ValueError("`forward` has no ReLU (max(x, 0)) to make guided; pass a jaxplain "
                       "Classifier, its guided_forward, or a function that uses jax.nn.relu")
    return rules.modified(forward, x, rules.GUIDED)


def _accepts_guided(func) -> bool:
  """Whether ``func`` follows the classifier protocol ``apply_fn(variables, x, *, guided)``."""
  module = getattr(func, "__self__", None)
  target = type(module).__call__ if isinstance(module, nn.Module) else func
  try:
    return "guided" in inspect.signature(target).parameters
  except (TypeError, ValueError):
    return False


def guided(forward):
  """The guided-backprop version of ``forward`` (same outputs, guided ReLU gradients).

  A :class:`~jaxplain.models.Classifier` gives its ``guided_forward``; a ``Partial`` of a
  classifier's ``apply_fn`` (``classifier.forward``) is rebound with ``guided=True``; any other
  function is traced and every ``max(x, 0)`` in it (``jax.nn.relu``, ``flax.linen.relu``,
  ``jnp.maximum(x, 0)``) gets the guided backward rule of :mod:`jaxplain.attribution.rules`
  (the same rule as :func:`jaxplain.models.guided_relu`).
  """
  if isinstance(forward, Classifier):
    return forward.guided_forward
  if isinstance(forward, jax.tree_util.Partial):
    func = forward.func
    if isinstance(func, _Bound):
      return jax.tree_util.Partial(dataclasses.replace(func, guided=True), *forward.args,
                                   **forward.keywords)
    if isinstance(func, _Rewritten):
      return forward
    if _accepts_guided(func):
      return jax.tree_util.Partial(_Bound(func, guided=True), *forward.args, **forward.keywords)
    return jax.tree_util.Partial(_Rewritten(func), *forward.args, **forward.keywords)
  if not callable(forward):
    raise ValueError(f"`forward` must be a function or a Classifier, got "
                     f"{type(forward).__name__}")
  return jax.tree_util.Partial(_Rewritten(forward))


@jax.jit
def _guided_backprop(forward, inputs, target):
  return target_grad(forward, inputs, target)


@register("guided_backprop", kind="modified-backward", signed=False,
          label="guided backprop", aliases=("guided",))
def guided_backprop(forward, inputs, target):
  """Gradient of the target logit through guided ReLUs (Captum ``GuidedBackprop``).

  At every ReLU the backward pass keeps a gradient only where both the ReLU's input and the
  incoming gradient are positive (:func:`jaxplain.models.guided_relu`, a ``jax.custom_vjp``).

  Args:
    forward: a ``Classifier``, ``classifier.forward`` (a converted PyTorch model's too), or any
      ``(N, H, W, C) -> (N, K)`` function whose ReLUs are ``max(x, 0)`` (see :func:`guided`).
    inputs: float images ``(N, H, W, C)``.
    target: int or ``(N,)`` ints.

  Returns:
    Attributions of the shape and dtype of ``inputs``.

  Raises:
    ValueError: bad inputs or target, or a ``forward`` without any ReLU.
  """
  forward = guided(forward)
  forward, inputs, target = check_call(forward, inputs, target)
  return _guided_backprop(forward, inputs, target)


@register("guided_grad_cam", kind="modified-backward", signed=False, label="guided Grad-CAM",
          classifier=True, layer=True)
def guided_grad_cam(classifier: Classifier, inputs, target, *, layer: str,
                    interpolate_mode: str = "nearest"):
  """Guided Grad-CAM: guided backprop times the upsampled Grad-CAM (Captum ``GuidedGradCam``).

  :func:`guided_backprop` of the classifier times :func:`~jaxplain.attribution.grad_cam` at
  ``layer`` (with its ReLU, as Captum's ``relu_attributions=True``), upsampled to the input size
  and broadcast over the input's channels.

  Args:
    classifier: a :class:`~jaxplain.models.Classifier` (its own CNN or a converted model).
    inputs: float images ``(N, H, W, C)``.
    target: int or ``(N,)`` ints.
    layer: a spatial layer of ``classifier.layer_names``. Static.
    interpolate_mode: ``"nearest"`` (Captum's default) or ``"bilinear"``. Static.

  Returns:
    Attributions of the shape and dtype of ``inputs``.

  References:
    Selvaraju et al., "Grad-CAM", ICCV 2017. https://arxiv.org/abs/1610.02391
  """
  if not isinstance(classifier, Classifier):
    raise ValueError(f"`classifier` must be a jaxplain Classifier (Grad-CAM needs its layers), "
                     f"got {type(classifier).__name__}")
  if interpolate_mode not in INTERPOLATE_MODES:
    raise ValueError(f"`interpolate_mode` must be one of {INTERPOLATE_MODES}, "
                     f"got {interpolate_mode!r}")
  cam = grad_cam(classifier, inputs, target, layer=layer, relu=True,
                 interpolate_mode=interpolate_mode)
  return guided_backprop(classifier.forward, inputs, target) * cam
