"""GradientShap: expected gradients × (input − baseline) at random points between them.

References:
  Lundberg & Lee, "A Unified Approach to Interpreting Model Predictions", NeurIPS 2017.
  https://arxiv.org/abs/1705.07874
  Erion et al., "Improving performance of deep learning models with axiomatic attribution
  priors and expected gradients", Nature Machine Intelligence 2021.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxplain import batching
from jaxplain.attribution._common import check_call, target_grad
from jaxplain.attribution.deeplift import shap_baselines
from jaxplain.attribution.registry import register

__all__ = ["gradient_shap", "gradient_shap_draws"]


def gradient_shap_draws(key, inputs, background, *, samples: int = 5, stdev: float = 0.0):
  """The random draws of :func:`gradient_shap`: ``(index, alphas, noise)``.

  ``index`` int32 ``(samples, N)`` rows of ``background``, ``alphas`` ``(samples, N)`` uniform
  in [0, 1), ``noise`` ``(samples, N, H, W, C)`` Gaussian with standard deviation ``stdev``.
  """
  k_index, k_alpha, k_noise = jax.random.split(key, 3)
  n, dtype = inputs.shape[0], inputs.dtype
  index = jax.random.randint(k_index, (samples, n), 0, background.shape[0], jnp.int32)
  alphas = jax.random.uniform(k_alpha, (samples, n), dtype)
  noise = jnp.asarray(stdev, dtype) * jax.random.normal(k_noise, (samples,) + inputs.shape, dtype)
  return index, alphas, noise


@functools.partial(jax.jit, static_argnames=("batch_size",))
def _gradient_shap(forward, inputs, target, background, index, alphas, noise, *, batch_size):
  shape = (-1,) + (1,) * (inputs.ndim - 1)

  def one(draw):
    i, a, e = draw
    x = inputs + e
    b = background[i]
    a = a.reshape(shape)
    point = a * x + (1 - a) * b  # Captum's _scale_input
    return (x - b) * target_grad(forward, point, target)

  attrs = batching.chunked_map(one, (index, alphas, noise), batch_size=batch_size)
  return jnp.mean(attrs, axis=0)


@register("gradient_shap", kind="path", signed=True, label="GradientShap", random=True)
def gradient_shap(forward, inputs, target, *, key, baselines=None, samples: int = 5,
                  stdev: float = 0.0, draws=None, batch_size: int | None = None):
  """GradientShap (Captum ``GradientShap``): expected gradients over baselines and path points.

  For each input and each of ``samples`` draws: a baseline ``b`` picked uniformly from
  ``baselines``, a point ``α`` uniform in [0, 1), Gaussian noise ``ε`` (``stdev``);
  the attribution is ``(x + ε − b) ⊙ ∇f_t(α (x + ε) + (1 − α) b)``, averaged over the draws
  (Captum's ``NoiseTunnel`` over ``InputBaselineXGradient``).

  Args:
    forward: ``(N, H, W, C) -> (N, K)`` logits.
    inputs: float images ``(N, H, W, C)``.
    target: int or ``(N,)`` ints.
    key: a ``jax.random`` key (may be ``None`` when ``draws`` is given).
    baselines: background images ``(B, H, W, C)`` (``None``: five flat images, black to white;
      see :func:`jaxplain.attribution.deeplift.shap_baselines`).
    samples: draws per input (Captum ``n_samples``, default 5). Static.
    stdev: standard deviation of the input noise (Captum ``stdevs``, default 0).
    draws: optional exact draws ``(index, alphas, noise)`` as :func:`gradient_shap_draws`
      returns them (reproducing another library's random numbers); ``key``, ``samples`` and
      ``stdev`` are then unused.
    batch_size: draws evaluated at once (each over all N inputs); ``None``: all. Static.

  Returns:
    Attributions of the shape and dtype of ``inputs``.
  """
  forward, inputs, target = check_call(forward, inputs, target)
  background = shap_baselines(inputs, baselines)
  batch_size = batching.check_batch_size(batch_size)
  if draws is None:
    if isinstance(samples, bool) or not isinstance(samples, (int, np.integer)) or samples < 1:
      raise ValueError(f"`samples` must be a positive int, got {samples!r}")
    if not np.isscalar(stdev) or not stdev >= 0:
      raise ValueError(f"`stdev` must be a number >= 0, got {stdev!r}")
    if key is None:
      raise ValueError("`key` must be a jax.random key (GradientShap draws baselines, points "
                       "and noise), or pass `draws`")
    draws = gradient_shap_draws(key, inputs, background, samples=int(samples), stdev=stdev)
  index, alphas, noise = draws
  s = np.shape(alphas)[0] if np.ndim(alphas) == 2 else -1
  want = {"index": (s, inputs.shape[0]), "alphas": (s, inputs.shape[0]),
          "noise": (s,) + tuple(inputs.shape)}
  for name, value in zip(want, draws):
    if s < 1 or tuple(np.shape(value)) != want[name]:
      raise ValueError(f"`draws` {name} shape {tuple(np.shape(value))} != {want[name]} "
                       "(samples, N, ...)")
  return _gradient_shap(forward, inputs, target, background, jnp.asarray(index, jnp.int32),
                        jnp.asarray(alphas, inputs.dtype), jnp.asarray(noise, inputs.dtype),
                        batch_size=batch_size)
