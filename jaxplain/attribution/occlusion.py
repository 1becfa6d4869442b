"""Occlusion: the drop of the target logit when a sliding window is replaced by a baseline.

References:
  Zeiler and Fergus, "Visualizing and Understanding Convolutional Networks", ECCV 2014.
  https://arxiv.org/abs/1311.2901
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxplain import batching
from jaxplain.attribution._common import check_call, select
from jaxplain.attribution.registry import register

__all__ = ["occlusion", "occlusion_masks"]


def _pair(value, name: str) -> tuple[int, int]:
  v = (value, value) if isinstance(value, (int, np.integer)) else tuple(value)
  if len(v) != 2 or any(isinstance(i, bool) or not isinstance(i, (int, np.integer)) or i < 1
                        for i in v):
    raise ValueError(f"`{name}` must be a positive int or (height, width), got {value!r}")
  return int(v[0]), int(v[1])


@functools.lru_cache(maxsize=None)
def occlusion_masks(size: tuple[int, int], window: tuple[int, int],
                    stride: tuple[int, int]) -> np.ndarray:
  """The windows Captum ``Occlusion`` slides, as boolean masks ``(P, H, W)``.

  Along each axis the window starts at ``0, stride, ...``: ``ceil((size − window) / stride) + 1``
  positions, the last one cropped at the border (as Captum's negative padding does). Windows
  are ordered with the last axis counting slowest, as in Captum.
  """
  counts = [int(np.ceil((s - w) / st)) + 1 for s, w, st in zip(size, window, stride)]
  masks = np.zeros((counts[0] * counts[1],) + tuple(size), bool)
  p = 0
  for j in range(counts[1]):
    for i in range(counts[0]):
      r, c = i * stride[0], j * stride[1]
      masks[p, r:r + window[0], c:c + window[1]] = True
      p += 1
  return masks


@functools.partial(jax.jit, static_argnames=("window", "stride", "batch_size"))
def _occlusion(forward, inputs, target, baseline, *, window, stride, batch_size):
  masks = occlusion_masks(tuple(inputs.shape[1:3]), window, stride)
  base = select(forward(inputs), target)

  def drop(mask):  # (H, W) -> (N,)
    m = mask[None, :, :, None]
    return base - select(forward(jnp.where(m, baseline, inputs)), target)

  drops = batching.chunked_map(drop, jnp.asarray(masks), batch_size=batch_size)  # (P, N)
  m = jnp.asarray(masks, inputs.dtype)
  total = jnp.einsum("pn,phw->nhw", drops, m)
  count = jnp.sum(m, axis=0)
  return (total / count[None])[..., None] * jnp.ones_like(inputs)


@register("occlusion", kind="perturbation", signed=True, defaults={"window": 8, "stride": 4})
def occlusion(forward, inputs, target, *, window, stride, baseline=0.0,
              batch_size: int | None = None):
  """Occlusion (Captum ``Occlusion`` with a window over all channels).

  Each window position ``p`` replaces the pixels under it with ``baseline`` and records the drop
  ``f_t(x) − f_t(x_p)``; a pixel's attribution is the mean drop over the windows covering it
  (Captum divides by the same counts).

  Args:
    forward: ``(N, H, W, C) -> (N, K)`` logits.
    inputs: float images ``(N, H, W, C)``.
    target: int or ``(N,)`` ints.
    window: window ``(height, width)`` or one int (Captum ``sliding_window_shapes=(C, h, w)``).
      Static.
    stride: ``(height, width)`` or one int, at most the window (Captum ``strides``). Static.
    baseline: the value occluded pixels take: a number, or an array broadcastable to
      ``inputs``.
    batch_size: window positions evaluated at once (default: all). Static.

  Returns:
    Attributions of the shape and dtype of ``inputs`` (equal across channels).
  """
  forward, inputs, target = check_call(forward, inputs, target)
  window, stride = _pair(window, "window"), _pair(stride, "stride")
  size = inputs.shape[1:3]
  if any(w > s for w, s in zip(window, size)):
    raise ValueError(f"`window` {window} exceeds the image size {tuple(size)}")
  if any(st > w and s > w for st, w, s in zip(stride, window, size)):
    raise ValueError(f"`stride` {stride} must not exceed `window` {window}")
  baseline = jnp.asarray(baseline, inputs.dtype) if not hasattr(baseline, "shape") else baseline
  try:
    jnp.broadcast_shapes(baseline.shape, inputs.shape)
  except ValueError:
    raise ValueError(f"`baseline` shape {tuple(baseline.shape)} does not broadcast to `inputs` "
                     f"shape {tuple(inputs.shape)}") from None
  if baseline.ndim not in (0, inputs.ndim):
    raise ValueError(f"`baseline` must be a number or have rank {inputs.ndim}, got shape "
                     f"{tuple(baseline.shape)}")
  return _occlusion(forward, inputs, target, jnp.asarray(baseline, inputs.dtype),
                    window=window, stride=stride, batch_size=batching.check_batch_size(batch_size))
