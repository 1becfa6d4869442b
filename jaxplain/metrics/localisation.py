"""Localisation for faces: the share of attribution inside a region (the eye, nose and mouth
bands the report measures, or any mask)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxplain.metrics._common import check_metric_call

__all__ = ["face_bands", "region_share"]


def face_bands(shape: tuple[int, int] = (48, 48)) -> dict[str, np.ndarray]:
  """Boolean ``(H, W)`` masks of the aligned face's bands (``jaxplain.report.BANDS``: eyes,
  nose, mouth rows of a 48×48 FER2013 face), rescaled to ``shape``."""
  from jaxplain.report import BANDS
  h, w = shape
  out = {}
  for name, (r0, r1) in BANDS.items():
    rows = np.arange(h) * 48 / h
    m = (rows >= r0) & (rows < r1)
    out[name] = np.broadcast_to(m[:, None], (h, w)).copy()
  return out


@jax.jit
def _share(a, mask):
  inside = jnp.sum(jnp.where(mask[..., None], a, 0), axis=(1, 2, 3))
  total = jnp.sum(a, axis=(1, 2, 3))
  return inside / total


def region_share(forward, inputs, target, attributions, *, mask, key=None,
                 abs: bool = True):  # noqa: A002
  """Share of the attribution mass inside ``mask``: ``Σ_mask |a| / Σ |a|`` per image.

  Quantus's ``AttributionLocalisation`` ratio without its thresholds; on faces, ``mask`` is a
  band of :func:`face_bands` (what the report's band shares measure). Compare with the region's
  share of the image area: above it, the map concentrates there. Higher is better when the
  model is known to read the region.

  Args:
    forward, inputs, target: the shared signature (checked, not evaluated).
    attributions: ``(N, H, W, C)`` maps.
    mask: boolean ``(H, W)`` (for every image) or ``(N, H, W)``.
    key: unused.
    abs: take ``|a|`` first (else signed mass).

  Returns:
    ``(N,)`` shares in [0, 1] (NaN for an all-zero map).
  """
  del key
  _, inputs, _, a = check_metric_call(forward, inputs, target, attributions)
  mask = jnp.asarray(mask)
  n, h, w = inputs.shape[:3]
  if mask.dtype != jnp.bool_ or mask.shape not in ((h, w), (n, h, w)):
    raise ValueError(f"`mask` must be boolean ({h}, {w}) or ({n}, {h}, {w}), got "
                     f"{mask.dtype} {tuple(mask.shape)}")
  mask = jnp.broadcast_to(mask, (n, h, w))
  return _share(jnp.abs(a) if abs else a, mask)
