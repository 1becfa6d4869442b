"""Vanilla gradients: saliency and input × gradient.

References:
  Simonyan et al., "Deep Inside Convolutional Networks: Visualising Image Classification
  Models and Saliency Maps", 2014. https://arxiv.org/abs/1312.6034
  Shrikumar et al., "Not Just a Black Box: Learning Important Features Through Propagating
  Activation Differences", 2016. https://arxiv.org/abs/1605.01713
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jaxplain.attribution._common import check_call, target_grad
from jaxplain.attribution.registry import register

__all__ = ["saliency", "input_x_gradient"]


@functools.partial(jax.jit, static_argnames=("abs",))
def _saliency(forward, inputs, target, *, abs):  # noqa: A002 (Captum's name)
  grads = target_grad(forward, inputs, target)
  return jnp.abs(grads) if abs else grads


@jax.jit
def _input_x_gradient(forward, inputs, target):
  return inputs * target_grad(forward, inputs, target)


@register("saliency", kind="gradient", signed=False)
def saliency(forward, inputs, target, *, abs: bool = True):  # noqa: A002 (Captum's name)
  """Gradient of the target logit with respect to the input (Captum ``Saliency``).

  Args:
    forward: ``(N, H, W, C) -> (N, K)`` logits, e.g. ``classifier.forward`` (a ``Classifier``
      is accepted too).
    inputs: float images ``(N, H, W, C)``.
    target: the class to explain for each image, int or ``(N,)`` ints.
    abs: return ``|gradient|`` (Captum's default) rather than the signed gradient. Static.

  Returns:
    Attributions of the shape and dtype of ``inputs``.
  """
  forward, inputs, target = check_call(forward, inputs, target)
  return _saliency(forward, inputs, target, abs=bool(abs))


@register("input_x_gradient", kind="gradient", signed=True, label="input × gradient")
def input_x_gradient(forward, inputs, target):
  """Input times the gradient of the target logit (Captum ``InputXGradient``).

  Args:
    forward: ``(N, H, W, C) -> (N, K)`` logits.
    inputs: float images ``(N, H, W, C)``.
    target: int or ``(N,)`` ints.

  Returns:
    Attributions of the shape and dtype of ``inputs``.
  """
  forward, inputs, target = check_call(forward, inputs, target)
  return _input_x_gradient(forward, inputs, target)
