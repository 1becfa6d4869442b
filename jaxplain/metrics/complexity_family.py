"""Complexity: how concentrated is the explanation? (Fewer, stronger features read easier.)

These read only the maps; ``forward``, ``inputs`` and ``target`` are taken for the shared
signature and checked, not evaluated.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jaxplain.metrics._common import check_metric_call, flat, preprocess

__all__ = ["complexity", "effective_complexity", "sparseness"]


def _maps(forward, inputs, target, attributions, normalise, abs):  # noqa: A002
  _, _, _, a = check_metric_call(forward, inputs, target, attributions)
  return flat(preprocess(a, normalise=bool(normalise), abs=bool(abs)))


@jax.jit
def _gini(a):
  n = a.shape[1]
  a = jnp.sort(a + 1e-7, axis=-1)
  i = jnp.arange(1, n + 1, dtype=a.dtype)[None]
  return jnp.sum((2 * i - n - 1) * a, -1) / (n * jnp.sum(a, -1))


def sparseness(forward, inputs, target, attributions, *, key=None, abs: bool = True,  # noqa: A002
               normalise: bool = True):
  """Sparseness: the Gini index of the (absolute) attributions (Quantus ``Sparseness``: 1e-7 is
  added to every value first). In [0, 1]; higher is better (fewer features carry the mass).

  References:
    Chalasani et al., "Concise Explanations of Neural Networks using Adversarial Training",
    ICML 2020.
  """
  del key
  return _gini(_maps(forward, inputs, target, attributions, normalise, abs))


@jax.jit
def _entropy(a):
  p = a / jnp.sum(jnp.abs(a), -1, keepdims=True)
  return -jnp.sum(p * jnp.log(p + 1e-12), -1)


def complexity(forward, inputs, target, attributions, *, key=None, abs: bool = True,  # noqa: A002
               normalise: bool = True):
  """Complexity: the entropy of the attribution mass distribution ``|a| / Σ|a|`` (Quantus
  ``Complexity``, with its 1e-12 inside the log). Lower is better.

  References:
    Bhatt et al., "Evaluating and Aggregating Feature-based Model Explanations", IJCAI 2020.
  """
  del key
  return _entropy(_maps(forward, inputs, target, attributions, normalise, abs))


@functools.partial(jax.jit, static_argnames=("eps",))
def _count(a, *, eps):
  return jnp.sum(a > eps, -1)


def effective_complexity(forward, inputs, target, attributions, *, key=None, eps: float = 1e-5,
                         abs: bool = True, normalise: bool = True):  # noqa: A002
  """Effective complexity: the number of features whose (normalised, absolute) attribution
  exceeds ``eps`` (Quantus ``EffectiveComplexity``). Lower is better.

  References:
    Nguyen & Martinez, "On quantitative aspects of model interpretability", 2020.
  """
  del key
  return _count(_maps(forward, inputs, target, attributions, normalise, abs), eps=float(eps))
