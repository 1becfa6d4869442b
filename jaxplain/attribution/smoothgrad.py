"""SmoothGrad, SmoothGrad² and VarGrad around any attribution method (Captum ``NoiseTunnel``).

References:
  Smilkov et al., "SmoothGrad: removing noise by adding noise", 2017.
  https://arxiv.org/abs/1706.03825
  Adebayo et al., "Local Explanation Methods for Deep Neural Networks Lack Sensitivity to
  Parameter Values", 2018 (VarGrad). https://arxiv.org/abs/1810.03307
"""

from __future__ import annotations

import functools
import math
import warnings

import jax
import jax.numpy as jnp

from jaxplain import batching
from jaxplain.attribution._common import check_call
from jaxplain.attribution.registry import register
from jaxplain.attribution.saliency import saliency

__all__ = ["smoothgrad", "KINDS"]

KINDS = ("smoothgrad", "smoothgrad_sq", "vargrad")


@functools.partial(jax.jit, static_argnames=("kind", "method", "batch_size"))
def _smoothgrad(forward, inputs, target, noise, *, kind, method, batch_size):
  samples = noise.shape[0]
  attrs = batching.chunked_map(lambda z: method(forward, inputs + z, target), noise,
                               batch_size=batch_size)
  if kind == "smoothgrad":
    return jnp.sum(attrs, axis=0) / samples
  mean_sq = jnp.sum(attrs * attrs, axis=0) / samples
  if kind == "smoothgrad_sq":
    return mean_sq
  mean = jnp.sum(attrs, axis=0) / samples
  return mean_sq - mean * mean


@register("smoothgrad", kind="gradient", signed=False, label="SmoothGrad", random=True,
          defaults={"samples": 25, "stdev": 0.15})
def smoothgrad(forward, inputs, target, *, key, samples: int = 5, stdev: float = 1.0,
               kind: str = "smoothgrad", attribution_method=saliency, noise=None,
               batch_size: int | None = None, method=None):
  """Averages ``method`` over noisy copies of the inputs (Captum ``NoiseTunnel``).

  Each image gets ``samples`` copies ``x + ε``, ``ε ~ N(0, stdev²)`` per pixel (``stdev`` in
  input units, as in Captum, not relative to the image's range). With ``a_s`` the attributions
  of copy ``s``: ``"smoothgrad"`` returns ``mean_s a_s``, ``"smoothgrad_sq"`` ``mean_s a_s²``,
  ``"vargrad"`` ``mean_s a_s² − (mean_s a_s)²``.

  Args:
    forward: ``(N, H, W, C) -> (N, K)`` logits.
    inputs: float images ``(N, H, W, C)``.
    target: int or ``(N,)`` ints.
    key: a ``jax.random`` key for the noise (may be ``None`` only when ``noise`` is given).
    samples: noisy copies per image (Captum ``nt_samples``, default 5). Static.
    stdev: standard deviation of the noise (Captum ``stdevs``, default 1.0).
    kind: ``"smoothgrad"``, ``"smoothgrad_sq"`` or ``"vargrad"`` (Captum ``nt_type``). Static.
    attribution_method: the attribution function ``f(forward, inputs, target) ->
      attributions`` to smooth, e.g. ``saliency`` (default; note it takes ``|gradient|``),
      ``functools.partial(saliency, abs=False)`` or ``integrated_gradients``. Static
      (hashable). (``method`` is its deprecated name.)
    noise: optional exact noise ``(samples, N, H, W, C)`` added to the inputs instead of
      drawing it (reproducing another library's draws); ``key`` and ``stdev`` are then unused.
    batch_size: noisy copies evaluated at once (default: all). Static.
    method: deprecated name of ``attribution_method``.

  Returns:
    Attributions of the shape and dtype of ``inputs``.
  """
  if method is not None:
    warnings.warn("smoothgrad(method=...) is deprecated; use attribution_method=...",
                  DeprecationWarning, stacklevel=2)
    attribution_method = method
  forward, inputs, target = check_call(forward, inputs, target)
  if kind not in KINDS:
    raise ValueError(f"`kind` must be one of {KINDS}, got {kind!r}")
  if not callable(attribution_method):
    raise ValueError(f"`attribution_method` must be an attribution function, got "
                     f"{type(attribution_method).__name__}")
  if noise is None:
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
      raise ValueError(f"`samples` must be a positive int, got {samples!r}")
    if isinstance(stdev, bool) or not isinstance(stdev, (int, float)) or \
        not math.isfinite(stdev) or stdev < 0:
      raise ValueError(f"`stdev` must be a finite number >= 0 (noise sd in input units), "
                       f"got {stdev!r}")
    if key is None:
      raise ValueError("`key` is required (a jax.random key) unless `noise` is given")
    noise = stdev * jax.random.normal(key, (samples,) + inputs.shape, inputs.dtype)
  else:
    noise = jnp.asarray(noise, inputs.dtype)
    if noise.ndim != inputs.ndim + 1 or noise.shape[1:] != inputs.shape:
      raise ValueError(f"`noise` shape {tuple(noise.shape)} != (samples,) + `inputs` shape "
                       f"{tuple(inputs.shape)}")
  return _smoothgrad(forward, inputs, target, noise, kind=kind, method=attribution_method,
                     batch_size=batching.check_batch_size(batch_size))
