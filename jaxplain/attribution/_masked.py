"""One batched, jitted evaluation of masked copies of many images: the inner loop of every
perturbation method over superpixels or masks (feature ablation, Shapley value sampling,
KernelSHAP, RISE), as LIME's ``_lime_core`` does it (``jaxplain.lime``): every (image, sample)
row is one forward pass of one masked copy, rows run ``batch_size`` at a time with
:func:`jaxplain.batching.chunked_map`, so the compiled program holds one chunk.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxplain import batching
from jaxplain.attribution._common import check_call, select

__all__ = ["check_feature_mask", "check_masked_call", "feature_rows", "fill_like", "masked_scores",
           "require_key", "superpixel_copy"]


def masked_scores(forward, target, make_input, n: int, samples: int, *, batch_size):
  """``forward``'s target logit on ``make_input(i, j)`` for every image ``i`` and sample ``j``.

  Args:
    forward: ``(B, H, W, C) -> (B, K)``.
    target: ``(n,)`` int classes.
    make_input: ``(i, j) -> (H, W, C)`` the ``j``-th masked copy of image ``i`` (traced ints).
    n, samples: the grid of rows.
    batch_size: rows per forward pass (``None``: all at once).

  Returns:
    ``(n, samples)`` target logits.
  """
  index = jnp.arange(n * samples)

  def one(ij):
    i, j = ij
    return select(forward(make_input(i, j)[None]), target[i][None])[0]

  out = batching.chunked_map(one, (index // samples, index % samples), batch_size=batch_size)
  return out.reshape(n, samples)


def superpixel_copy(image, fill, segments, keep):
  """``image`` where ``keep[segments]`` (one 0/1 or [0, 1] value per superpixel), else ``fill``.

  ``image``, ``fill`` ``(H, W, C)``; ``segments`` ``(H, W)`` ints ``0..M-1``; ``keep`` ``(M,)``.
  Binary ``keep`` selects exactly (Captum's ``input·mask + baseline·(1 − mask)`` is the same
  value for 0/1 masks).
  """
  k = keep[segments][..., None].astype(image.dtype)
  return image * k + fill * (1 - k)


def fill_like(baselines, inputs, *, name: str = "baselines"):
  """``baselines`` (a number or an array broadcastable to ``inputs``) as an ``inputs`` array."""
  b = jnp.asarray(baselines, inputs.dtype)
  try:
    return jnp.broadcast_to(b, inputs.shape)
  except ValueError:
    raise ValueError(f"`{name}` shape {tuple(b.shape)} does not broadcast to `inputs` shape "
                     f"{tuple(inputs.shape)}") from None


def check_feature_mask(feature_mask, inputs, *, name: str = "feature_mask"):
  """``feature_mask`` as int32 ``(N, H, W)`` labels ``0..M-1`` and ``M`` (a Python int).

  Accepts ``(H, W)`` (shared by all images) or ``(N, H, W)`` (e.g.
  :func:`jaxplain.lime.segment_faces`); the labels must be concrete (``M`` fixes shapes).
  ``None`` segments concrete ``inputs`` with LIME's :func:`jaxplain.lime.segment_faces`.
  """
  n, h, w = inputs.shape[:3]
  if feature_mask is None:
    if isinstance(inputs, jax.core.Tracer):
      raise ValueError(f"`{name}` is required when `inputs` are traced (segmenting needs "
                       "concrete images): pass jaxplain.lime.segment_faces(images)")
    from jaxplain.lime import segment_faces
    feature_mask = segment_faces(np.asarray(inputs))
  m = np.asarray(feature_mask)
  if m.ndim == 2:
    m = np.broadcast_to(m, (n, h, w))
  if m.shape != (n, h, w):
    raise ValueError(f"`{name}` shape {tuple(np.shape(feature_mask))} must be (H, W) = "
                     f"{(h, w)} or (N, H, W) = {(n, h, w)}")
  if not np.issubdtype(m.dtype, np.integer):
    raise ValueError(f"`{name}` must hold integer feature labels, got dtype {m.dtype}")
  if m.size and m.min() < 0:
    raise ValueError(f"`{name}` labels must be >= 0, got {m.min()}")
  return jnp.asarray(m, jnp.int32), int(m.max()) + 1 if m.size else 1


def check_masked_call(forward, inputs, target, *, feature_mask, baselines, batch_size):
  """The checks every superpixel method starts with, in one place.

  Returns:
    ``(forward, inputs, target, segments, M, fill, batch_size)``: the checked call
    (:func:`~jaxplain.attribution._common.check_call`), the labels and their count
    (:func:`check_feature_mask`), the absent-pixel values (:func:`fill_like`) and the checked
    batch size.
  """
  forward, inputs, target = check_call(forward, inputs, target)
  segments, m = check_feature_mask(feature_mask, inputs)
  fill = fill_like(baselines, inputs)
  return forward, inputs, target, segments, m, fill, batching.check_batch_size(batch_size)


def require_key(key, given: str):
  """Raises unless ``key`` is set: random draws need one unless the exact ``given`` is passed."""
  if key is None:
    raise ValueError(f"`key` is required (a jax.random key) unless `{given}` is given")


def feature_rows(rows, n: int, m: int, *, name: str, extra: str = ""):
  """Per-image rows over ``m`` features: ``(S, M)`` (shared) or ``(N, S, M)`` as int32 ``(N, S, M)``.

  Used for exact permutations, coalitions and masks passed instead of a key; ``extra`` ends the
  error message.
  """
  r = jnp.asarray(rows, jnp.int32)
  if r.ndim == 2:
    r = jnp.broadcast_to(r, (n,) + r.shape)
  if r.ndim != 3 or r.shape[0] != n or r.shape[2] != m:
    raise ValueError(f"`{name}` shape {tuple(np.shape(rows))} must be (S, {m}) or "
                     f"({n}, S, {m}){extra}")
  return r
