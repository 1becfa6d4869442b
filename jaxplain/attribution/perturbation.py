"""Perturbation attributions over superpixels: feature ablation, Shapley value sampling and
KernelSHAP (Captum ``FeatureAblation``, ``ShapleyValueSampling``, ``KernelShap``).

Every method takes a ``feature_mask`` of superpixel labels (e.g.
:func:`jaxplain.lime.segment_faces`, LIME's segmentation), one per image or shared, and evaluates
all of its masked copies of all images in one jitted function, ``batch_size`` rows at a time
(:func:`jaxplain.attribution._masked.masked_scores`). A pixel's attribution is its feature's;
hidden features take ``baselines``. Labels run over ``0..M-1`` with ``M`` the largest label + 1 of
the whole batch (Captum's ``num_interp_features``); a label absent from an image gets nothing.

References:
  Lundberg and Lee, "A Unified Approach to Interpreting Model Predictions" (KernelSHAP), NeurIPS
  2017. https://arxiv.org/abs/1705.07874
  Castro, Gómez and Tejada, "Polynomial calculation of the Shapley value based on sampling",
  Computers & Operations Research 2009 (Shapley value sampling).
  Captum 0.9, ``captum/attr/_core/{feature_ablation,shapley_value,kernel_shap,lime}.py``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxplain.attribution._common import select
from jaxplain.attribution._masked import (check_masked_call, feature_rows, masked_scores,
                                          require_key, superpixel_copy)
from jaxplain.attribution.registry import register

__all__ = ["feature_ablation", "kernel_shap", "kernel_shap_coalitions", "shapley_value_sampling",
           "shapley_permutations"]

_HIGHEST = jax.lax.Precision.HIGHEST
INF_WEIGHT = 1e6  # Captum KernelShap's weight of the empty and the full coalition


def _per_pixel(values, segments, inputs):
  """``values[i, segments[i]]`` as ``(N, H, W, C)`` in the dtype of ``inputs``."""
  n, h, w, c = inputs.shape
  v = jnp.take_along_axis(values, segments.reshape(n, h * w), axis=1).reshape(n, h, w, 1)
  return jnp.broadcast_to(v.astype(inputs.dtype), inputs.shape)


def _check_samples(samples, name="samples", minimum=1):
  if isinstance(samples, (bool, np.bool_)) or not isinstance(samples, (int, np.integer)) or \
      samples < minimum:
    raise ValueError(f"`{name}` must be an int >= {minimum}, got {samples!r}")
  return int(samples)


# --------------------------------------------------------------------------- feature ablation


@functools.partial(jax.jit, static_argnames=("m", "batch_size"))
def _feature_ablation(forward, inputs, target, fill, segments, *, m, batch_size):
  base = select(forward(inputs), target)

  def make(i, j):
    return superpixel_copy(inputs[i], fill[i], segments[i], jnp.arange(m) != j)

  scores = masked_scores(forward, target, make, inputs.shape[0], m, batch_size=batch_size)
  return _per_pixel(base[:, None] - scores, segments, inputs)


@register("feature_ablation", kind="perturbation", signed=True, label="Feature ablation")
def feature_ablation(forward, inputs, target, *, feature_mask=None, baselines=0.0,
                     batch_size: int | None = 256):
  """Feature ablation (Captum ``FeatureAblation`` with a ``feature_mask``).

  Each feature ``f`` (superpixel) in turn takes the ``baselines`` value; its attribution is the
  drop ``f_t(x) − f_t(x with f ablated)``, given to every pixel of ``f``.

  Args:
    forward: ``(N, H, W, C) -> (N, K)`` logits.
    inputs: float images ``(N, H, W, C)``.
    target: int or ``(N,)`` ints.
    feature_mask: int labels ``(N, H, W)`` or ``(H, W)``, ``0..M-1``; concrete, ``M`` fixes
      shapes. Default: LIME's superpixels, ``jaxplain.lime.segment_faces(inputs)``.
    baselines: the value of ablated pixels, a number or an array broadcastable to ``inputs``.
    batch_size: masked copies per forward pass (memory knob; ``None``: all). Static.

  Returns:
    Attributions of the shape and dtype of ``inputs`` (equal across channels).
  """
  forward, inputs, target, segments, m, fill, batch_size = check_masked_call(
      forward, inputs, target, feature_mask=feature_mask, baselines=baselines,
      batch_size=batch_size)
  return _feature_ablation(forward, inputs, target, fill, segments, m=m, batch_size=batch_size)


# ------------------------------------------------------------------- Shapley value sampling


def shapley_permutations(key, num_images: int, samples: int, num_features: int):
  """Uniform random orders of ``num_features`` features: int32 ``(num_images, samples, M)``."""
  u = jax.random.uniform(key, (num_images, samples, num_features))
  return jnp.argsort(u, axis=-1).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("batch_size",))
def _shapley(forward, inputs, target, fill, segments, perms, *, batch_size):
  n, s, m = perms.shape
  # rank[i, s, f]: the position of feature f in permutation s of image i.
  rank = jnp.argsort(perms, axis=-1)
  start = select(forward(fill), target)  # the baseline: no feature added

  def make(i, j):  # row j = (permutation j // m, first j % m + 1 features added)
    return superpixel_copy(inputs[i], fill[i], segments[i], rank[i, j // m] <= j % m)

  out = masked_scores(forward, target, make, n, s * m, batch_size=batch_size).reshape(n, s, m)
  prev = jnp.concatenate([jnp.broadcast_to(start[:, None, None], (n, s, 1)), out[..., :-1]],
                         axis=-1)
  gain = out - prev  # (n, s, position)
  per_feature = jnp.take_along_axis(gain, rank, axis=-1)  # (n, s, feature)
  return _per_pixel(jnp.mean(per_feature, axis=1), segments, inputs)


@register("shapley_value_sampling", kind="perturbation", signed=True,
          label="Shapley value sampling", random=True, defaults={"samples": 25})
def shapley_value_sampling(forward, inputs, target, *, feature_mask=None, key, samples: int = 25,
                           baselines=0.0, permutations=None, batch_size: int | None = 256):
  """Shapley value sampling (Captum ``ShapleyValueSampling`` with a ``feature_mask``).

  For each of ``samples`` random orders of the features, features are added one by one to the
  baseline image; a feature's attribution is its mean marginal gain of the target logit.

  Args:
    forward, inputs, target, feature_mask: as for :func:`feature_ablation`.
    key: PRNG key for the orders (may be ``None`` when ``permutations`` is given).
    samples: random orders per image (Captum ``n_samples``, default 25). Static.
    baselines: the value of absent pixels, a number or an array broadcastable to ``inputs``.
    permutations: exact orders ``(samples, M)`` (shared by all images, as Captum draws them) or
      ``(N, samples, M)``; overrides ``key`` and ``samples``.
    batch_size: masked copies per forward pass (``None``: all). Static.

  Returns:
    Attributions of the shape and dtype of ``inputs`` (equal across channels).
  """
  forward, inputs, target, segments, m, fill, batch_size = check_masked_call(
      forward, inputs, target, feature_mask=feature_mask, baselines=baselines,
      batch_size=batch_size)
  n = inputs.shape[0]
  if permutations is None:
    samples = _check_samples(samples)
    require_key(key, "permutations")
    perms = shapley_permutations(key, n, samples, m)
  else:
    perms = feature_rows(permutations, n, m, name="permutations")
    if not np.array_equal(np.sort(np.asarray(perms), axis=-1),
                          np.broadcast_to(np.arange(m), perms.shape)):
      raise ValueError(f"`permutations` rows must be permutations of 0..{m - 1}")
  return _shapley(forward, inputs, target, fill, segments, perms, batch_size=batch_size)


# ------------------------------------------------------------------------------- KernelSHAP


def kernel_shap_coalitions(key, num_images: int, samples: int, num_features: int):
  """KernelSHAP's samples, as Captum draws them: int32 ``(num_images, samples, M)``.

  Row 0 is all ones, row 1 all zeros; every other row picks ``k`` features with probability
  ``∝ (M − 1) / (k (M − k))``, ``1 ≤ k < M``, then ``k`` of them uniformly (so that with unit
  weights the regression applies the Shapley kernel).
  """
  m = num_features
  k_key, u_key = jax.random.split(key)
  ks = np.arange(1, m, dtype=np.float64)
  logits = jnp.asarray(np.log((m - 1) / (ks * (m - ks))) if m > 1 else np.zeros(1))
  k = jax.random.categorical(k_key, logits, shape=(num_images, samples)) + 1
  rank = jnp.argsort(jnp.argsort(jax.random.normal(u_key, (num_images, samples, m)), -1), -1)
  rows = (rank >= m - k[..., None]).astype(jnp.int32)
  return rows.at[:, 0].set(1).at[:, 1].set(0)


def _weighted_lstsq(x, y, w):
  """sklearn ``LinearRegression().fit(x, y, sample_weight=w)``: coefficients (min-norm)."""
  total = jnp.sum(w)
  x_mean = jnp.einsum("s,sf->f", w, x, precision=_HIGHEST) / total
  y_mean = jnp.sum(w * y) / total
  sw = jnp.sqrt(w)[:, None]
  coef, *_ = jnp.linalg.lstsq((x - x_mean[None, :]) * sw, (y - y_mean) * sw[:, 0])
  return coef


@functools.partial(jax.jit, static_argnames=("batch_size",))
def _kernel_shap(forward, inputs, target, fill, segments, coalitions, *, batch_size):
  n, s, m = coalitions.shape

  def make(i, j):
    return superpixel_copy(inputs[i], fill[i], segments[i], coalitions[i, j])

  dtype = jnp.float64 if jax.config.jax_enable_x64 else jnp.float32
  y = masked_scores(forward, target, make, n, s, batch_size=batch_size).astype(dtype)
  x = coalitions.astype(dtype)
  size = jnp.sum(coalitions, axis=-1)
  w = jnp.where((size == 0) | (size == m), INF_WEIGHT, 1.0).astype(dtype)
  coef = jax.vmap(_weighted_lstsq)(x, y, w)
  return _per_pixel(coef, segments, inputs)


@register("kernel_shap", kind="perturbation", signed=True, label="KernelSHAP", random=True,
          defaults={"samples": 200})
def kernel_shap(forward, inputs, target, *, feature_mask=None, key, samples: int = 25,
                baselines=0.0, coalitions=None, batch_size: int | None = 256):
  """KernelSHAP (Captum ``KernelShap`` with a ``feature_mask``).

  Samples coalitions of features (:func:`kernel_shap_coalitions`), evaluates the target logit
  with the absent features at ``baselines``, and fits a linear model of the logit on the 0/1
  coalitions, weighted 1e6 for the empty and the full coalition and 1 elsewhere, by least
  squares with an intercept (sklearn ``LinearRegression``, minimum-norm when there are fewer
  samples than features). A pixel's attribution is its feature's coefficient. On an additive
  model (a sum of per-feature terms) with enough samples these are exactly the terms' changes.

  Args:
    forward, inputs, target, feature_mask: as for :func:`feature_ablation`.
    key: PRNG key for the coalitions (may be ``None`` when ``coalitions`` is given).
    samples: coalitions per image, the full and the empty one included (Captum ``n_samples``,
      default 25). Static.
    baselines: the value of absent pixels, a number or an array broadcastable to ``inputs``.
    coalitions: exact 0/1 coalitions ``(samples, M)`` or ``(N, samples, M)``; overrides ``key``
      and ``samples``.
    batch_size: masked copies per forward pass (``None``: all). Static.

  Returns:
    Attributions of the shape and dtype of ``inputs`` (equal across channels). The regression
    runs in float64 under ``jax_enable_x64``, else float32.
  """
  forward, inputs, target, segments, m, fill, batch_size = check_masked_call(
      forward, inputs, target, feature_mask=feature_mask, baselines=baselines,
      batch_size=batch_size)
  n = inputs.shape[0]
  if coalitions is None:
    samples = _check_samples(samples, minimum=2)
    require_key(key, "coalitions")
    rows = kernel_shap_coalitions(key, n, samples, m)
  else:
    rows = feature_rows(coalitions, n, m, name="coalitions")
  return _kernel_shap(forward, inputs, target, fill, segments, rows, batch_size=batch_size)
