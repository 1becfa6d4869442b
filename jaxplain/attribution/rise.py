"""RISE: randomised input sampling for explanation.

The saliency of pixel ``λ`` is the expected score of the image masked by random masks that keep
``λ``: ``S(λ) = 1 / (S · p) · Σ_j f_t(x ⊙ M_j) M_j(λ)`` over ``S`` masks, each made by drawing a
``grid × grid`` array of Bernoulli(``p``) cells, upsampling it bilinearly to
``(grid + 1) · ⌈H / grid⌉`` pixels and cropping ``H × W`` at a random shift below one cell (the
authors' ``generate_masks``: ``skimage.transform.resize(order=1, mode="reflect")``). With a
``feature_mask`` the masks are instead Bernoulli(``p``) per superpixel (LIME's segmentation).
All masked copies of all images run in one jitted function, ``batch_size`` at a time.

References:
  Petsiuk, Das and Saenko, "RISE: Randomized Input Sampling for Explanation of Black-box
  Models", BMVC 2018. https://arxiv.org/abs/1806.07421 (code: github.com/eclique/RISE)
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxplain import batching
from jaxplain.attribution._common import check_call
from jaxplain.attribution._masked import (check_feature_mask, feature_rows, fill_like,
                                          masked_scores, require_key, superpixel_copy)
from jaxplain.attribution.registry import register

__all__ = ["rise", "rise_masks", "rise_masks_from"]


def _mirror_linear_matrix(in_size: int, out_size: int) -> np.ndarray:
  """(out, in) weights of ``skimage.transform.resize(order=1, mode="reflect")`` on one axis:
  half-pixel centres, samples beyond the border mirrored about the edge pixel."""
  src = (np.arange(out_size) + 0.5) * (in_size / out_size) - 0.5
  lo = np.floor(src).astype(np.int64)
  frac = src - lo

  def mirror(i):
    if in_size == 1:
      return np.zeros_like(i)
    period = 2 * (in_size - 1)
    i = np.abs(i) % period
    return np.where(i > in_size - 1, period - i, i)

  m = np.zeros((out_size, in_size))
  np.add.at(m, (np.arange(out_size), mirror(lo)), 1 - frac)
  np.add.at(m, (np.arange(out_size), mirror(lo + 1)), frac)
  return m


def rise_masks_from(grids, shifts, size):
  """The authors' masks from given cells and shifts.

  Args:
    grids: ``(S, g, g)`` 0/1 cells.
    shifts: ``(S, 2)`` int crop offsets, each in ``[0, ⌈size / g⌉)``.
    size: ``(H, W)``.

  Returns:
    ``(S, H, W)`` masks in [0, 1], in the dtype of ``grids`` (float).
  """
  grids = jnp.asarray(grids)
  g = grids.shape[1]
  cell = [int(np.ceil(s / g)) for s in size]
  rows = jnp.asarray(_mirror_linear_matrix(g, (g + 1) * cell[0]), grids.dtype)
  cols = jnp.asarray(_mirror_linear_matrix(g, (g + 1) * cell[1]), grids.dtype)
  r = rows[shifts[:, 0:1] + jnp.arange(size[0])[None, :]]  # (S, H, g)
  c = cols[shifts[:, 1:2] + jnp.arange(size[1])[None, :]]  # (S, W, g)
  return jnp.einsum("shi,sij,swj->shw", r, grids, c, precision=jax.lax.Precision.HIGHEST)


def rise_masks(key, samples: int, size, *, grid: int = 8, p: float = 0.5, dtype=jnp.float32):
  """``samples`` random RISE masks ``(samples, H, W)`` (see :func:`rise_masks_from`)."""
  g_key, s_key = jax.random.split(key)
  grids = jax.random.bernoulli(g_key, p, (samples, grid, grid)).astype(dtype)
  cell = jnp.asarray([int(np.ceil(s / grid)) for s in size])
  shifts = jax.random.randint(s_key, (samples, 2), 0, cell[None, :])
  return rise_masks_from(grids, shifts, tuple(size))


@functools.partial(jax.jit, static_argnames=("logits", "batch_size"))
def _rise_pixels(forward, inputs, target, fill, masks, p, *, logits, batch_size):
  def score(x):
    out = forward(x)
    return out if logits else jax.nn.softmax(out, axis=-1)

  def make(i, j):
    m = masks[j][..., None].astype(inputs.dtype)
    return inputs[i] * m + fill[i] * (1 - m)

  s = masks.shape[0]
  y = masked_scores(lambda x: score(x), target, make, inputs.shape[0], s, batch_size=batch_size)
  sal = jnp.einsum("ns,shw->nhw", y, masks.astype(y.dtype)) / (s * p)
  return jnp.broadcast_to(sal[..., None], inputs.shape).astype(inputs.dtype)


@functools.partial(jax.jit, static_argnames=("logits", "batch_size"))
def _rise_superpixels(forward, inputs, target, fill, segments, keep, p, *, logits, batch_size):
  def score(x):
    out = forward(x)
    return out if logits else jax.nn.softmax(out, axis=-1)

  def make(i, j):
    return superpixel_copy(inputs[i], fill[i], segments[i], keep[i, j])

  n, s, _ = keep.shape
  y = masked_scores(score, target, make, n, s, batch_size=batch_size)
  per_feature = jnp.einsum("ns,nsm->nm", y, keep.astype(y.dtype)) / (s * p)
  h, w = inputs.shape[1:3]
  sal = jnp.take_along_axis(per_feature, segments.reshape(n, h * w), axis=1).reshape(n, h, w)
  return jnp.broadcast_to(sal[..., None], inputs.shape).astype(inputs.dtype)


@register("rise", kind="perturbation", signed=False, label="RISE", random=True,
          defaults={"samples": 1000})
def rise(forward, inputs, target, *, key, samples: int = 4000, grid: int = 8, p: float = 0.5,
         masks=None, feature_mask=None, baselines=0.0, logits: bool = False,
         batch_size: int | None = 256):
  """RISE saliency (Petsiuk et al. 2018).

  Args:
    forward: ``(N, H, W, C) -> (N, K)`` logits.
    inputs: float images ``(N, H, W, C)``.
    target: int or ``(N,)`` ints.
    key: PRNG key for the masks (may be ``None`` when ``masks`` is given).
    samples: masks (the paper's ``N``; 4000 in its experiments). Static.
    grid: cells per side of the coarse masks (the paper's ``s``). Static.
    p: probability of keeping a cell (the paper's ``p1``).
    masks: exact masks: ``(S, H, W)`` pixel masks in [0, 1] shared by all images, or, with a
      ``feature_mask``, ``(N, S, M)`` or ``(S, M)`` 0/1 per superpixel; overrides ``key``,
      ``samples`` and ``grid``.
    feature_mask: optional superpixel labels ``(N, H, W)`` or ``(H, W)`` (e.g.
      ``jaxplain.lime.segment_faces``): masks keep or hide whole superpixels.
    baselines: what masked-out pixels become (the paper: 0), a number or an array
      broadcastable to ``inputs``; a mask value ``m`` gives ``m·x + (1 − m)·baseline``.
    logits: score the target logit instead of its softmax probability (the paper's score).
      Static.
    batch_size: masked copies per forward pass (``None``: all). Static.

  Returns:
    Saliency of the shape and dtype of ``inputs`` (equal across channels).
  """
  forward, inputs, target = check_call(forward, inputs, target)
  fill = fill_like(baselines, inputs)
  batch_size = batching.check_batch_size(batch_size)
  if not 0 < float(p) <= 1:
    raise ValueError(f"`p` must be in (0, 1], got {p!r}")
  n, h, w = inputs.shape[:3]
  if masks is None:
    require_key(key, "masks")
    batching.check_batch_size(samples, name="samples", allow_none=False)
    batching.check_batch_size(grid, name="grid", allow_none=False)
  if feature_mask is None:
    if masks is None:
      masks = rise_masks(key, int(samples), (h, w), grid=int(grid), p=p, dtype=inputs.dtype)
    masks = jnp.asarray(masks)
    if masks.ndim != 3 or masks.shape[1:] != (h, w):
      raise ValueError(f"`masks` shape {tuple(masks.shape)} must be (S, {h}, {w})")
    return _rise_pixels(forward, inputs, target, fill, masks, jnp.asarray(p, inputs.dtype),
                        logits=bool(logits), batch_size=batch_size)
  segments, m = check_feature_mask(feature_mask, inputs)
  if masks is None:
    keep = jax.random.bernoulli(key, p, (n, int(samples), m)).astype(jnp.int32)
  else:
    keep = feature_rows(masks, n, m, name="masks",
                        extra=f" with a `feature_mask` of {m} features")
  return _rise_superpixels(forward, inputs, target, fill, segments, keep,
                           jnp.asarray(p, inputs.dtype), logits=bool(logits),
                           batch_size=batch_size)
