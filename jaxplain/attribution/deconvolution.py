"""Deconvolution: gradients whose ReLUs pass only the positive part of the signal from above.

References:
  Zeiler & Fergus, "Visualizing and Understanding Convolutional Networks", ECCV 2014.
  https://arxiv.org/abs/1311.2901
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxplain.attribution import rules
from jaxplain.attribution._common import check_call, select
from jaxplain.attribution.registry import register

__all__ = ["deconvolution"]


@jax.jit
def _deconvolution(forward, inputs, target):
  if not rules.has_activation(forward, inputs):  # at trace time: once per compilation
    raise ValueError("`forward` has no ReLU (max(x, 0)); deconvolution would equal the gradient")

  def total(x):
    return jnp.sum(select(rules.modified(forward, x, rules.DECONVOLUTION), target))
  return jax.grad(total)(inputs)


@register("deconvolution", kind="modified-backward", signed=False, label="deconvolution",
          aliases=("deconvnet",))
def deconvolution(forward, inputs, target):
  """Deconvolution (Captum ``Deconvolution``, Zennit ``DeconvNet``).

  The gradient of the target logit with every ReLU's backward pass replaced by ``max(g, 0)``
  of the incoming gradient ``g``, whatever the ReLU's input was
  (:data:`jaxplain.attribution.rules.DECONVOLUTION`); every other operation keeps its gradient.

  Arguments, result and errors as :func:`~jaxplain.attribution.guided_backprop`: ``forward``
  may be a ``Classifier``, its forward, a converted PyTorch model's forward or any function
  whose ReLUs are ``max(x, 0)``; a ``forward`` without any ReLU is refused.
  """
  forward, inputs, target = check_call(forward, inputs, target)
  return _deconvolution(forward, inputs, target)
