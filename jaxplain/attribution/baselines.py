"""Baselines for path methods: a scalar, an array, or a named baseline."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["NAMED", "blur", "make_baselines"]

NAMED = ("black", "blur", "uniform")
BLUR_SIGMA = 5.0


def _gauss_matrix(size: int, sigma: float) -> np.ndarray:
  """(size, size) row-normalised Gaussian weights, truncated at the borders."""
  i = np.arange(size)
  w = np.exp(-0.5 * ((i[:, None] - i[None, :]) / sigma) ** 2)
  return w / w.sum(1, keepdims=True)


def blur(inputs, *, sigma: float = BLUR_SIGMA):
  """Gaussian blur of ``(N, H, W, C)`` images (``sigma`` in pixels; renormalised at borders)."""
  if sigma <= 0:
    raise ValueError(f"`sigma` must be > 0, got {sigma}")
  rows = jnp.asarray(_gauss_matrix(inputs.shape[1], sigma), inputs.dtype)
  cols = jnp.asarray(_gauss_matrix(inputs.shape[2], sigma), inputs.dtype)
  return jnp.einsum("ih,nhwc,jw->nijc", rows, inputs, cols)


def make_baselines(inputs, baselines, *, key=None, name: str = "baselines"):
  """The baseline images ``(N, H, W, C)`` (dtype of ``inputs``) that ``baselines`` names.

  Args:
    inputs: float images ``(N, H, W, C)``.
    baselines: ``None`` or ``"black"`` (zeros, Captum's default), a number (a constant image),
      ``"blur"`` (the inputs blurred with a Gaussian of sigma 5 px; pass ``blur(x, sigma=s)``
      for another sigma), ``"uniform"`` (uniform noise in [0, 1], needs ``key``), or an array of
      the shape of ``inputs`` or of one image ``(H, W, C)``.
    key: a ``jax.random`` key, required by ``"uniform"``.
    name: the argument's name in error messages.
  """
  shape, dtype = inputs.shape, inputs.dtype
  if baselines is None or (isinstance(baselines, str) and baselines == "black"):
    return jnp.zeros(shape, dtype)
  if isinstance(baselines, str):
    if baselines == "blur":
      return blur(inputs)
    if baselines == "uniform":
      if key is None:
        raise ValueError(f"`{name}`='uniform' needs a `key` (a jax.random key)")
      return jax.random.uniform(key, shape, dtype)
    raise ValueError(f"`{name}` must be a number, an array or one of {NAMED}, got {baselines!r}")
  if isinstance(baselines, (int, float, np.number)) and not isinstance(baselines, bool):
    return jnp.full(shape, baselines, dtype)
  if not hasattr(baselines, "shape"):
    baselines = np.asarray(baselines)
  if baselines.ndim == 0:
    return jnp.full(shape, baselines, dtype)
  if not jnp.issubdtype(baselines.dtype, jnp.floating):
    raise ValueError(f"`{name}` must be float images, got dtype {baselines.dtype}")
  if tuple(baselines.shape) == tuple(shape[1:]):
    baselines = jnp.broadcast_to(baselines, shape)
  if tuple(baselines.shape) != tuple(shape):
    raise ValueError(f"`{name}` shape {tuple(baselines.shape)} != `inputs` shape {tuple(shape)} "
                     f"(or one image {tuple(shape[1:])})")
  if not isinstance(baselines, jax.core.Tracer) and bool(jnp.isnan(baselines).any()):
    raise ValueError(f"`{name}` contains NaN")
  return jnp.asarray(baselines, dtype)
