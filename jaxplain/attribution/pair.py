"""PAIR saliency's path and region methods: Blur IG, Guided IG and XRAI (PyPI ``saliency``).

Each follows ``saliency.core`` step for step, batched over images and jit-compiled: Blur IG's
blur path (``scipy.ndimage.gaussian_filter(mode="constant")``, applied here as separable
blurring matrices), Guided IG's per-step selection of the features with the smallest gradients
(a ``while_loop`` per image, vmapped), and XRAI's greedy region growth over Felzenszwalb
segments (segmented on the host, as PAIR does, then grown in a vmapped ``while_loop``).

References:
  Xu, Venugopalan and Sundararajan, "Attribution in Scale and Space" (Blur IG), CVPR 2020.
  https://arxiv.org/abs/2004.03383
  Kapishnikov et al., "Guided Integrated Gradients", NeurIPS 2021.
  https://arxiv.org/abs/2106.09788
  Kapishnikov et al., "XRAI: Better Attributions Through Regions", ICCV 2019.
  https://arxiv.org/abs/1906.02825
  PAIR ``saliency`` 0.2, ``saliency/core/{blur_ig,guided_ig,xrai,integrated_gradients}.py``.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from jaxplain import batching
from jaxplain.attribution._common import check_call, target_grad
from jaxplain.attribution._masked import fill_like
from jaxplain.attribution.registry import register

__all__ = ["blur_ig", "guided_ig", "xrai", "xrai_segments"]

_HIGHEST = jax.lax.Precision.HIGHEST


def _check_int(value, name, minimum=1):
  if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or \
      value < minimum:
    raise ValueError(f"`{name}` must be an int >= {minimum}, got {value!r}")
  return int(value)


# ------------------------------------------------------------------------------------ Blur IG


def _gaussian_matrix(size: int, sigma: float) -> np.ndarray:
  """(size, size) ``scipy.ndimage.gaussian_filter1d(mode="constant", truncate=4)``."""
  if sigma == 0:
    return np.eye(size)
  radius = int(4.0 * sigma + 0.5)
  taps = np.exp(-0.5 / sigma ** 2 * np.arange(-radius, radius + 1) ** 2)
  taps /= taps.sum()
  offset = np.arange(size)[None, :] - np.arange(size)[:, None]  # input − output
  inside = np.abs(offset) <= radius
  return np.where(inside, taps[np.clip(offset + radius, 0, 2 * radius)], 0.0)


@functools.lru_cache(maxsize=16)
def _blur_path(h: int, w: int, max_sigma: float, steps: int, grad_step: float, sqrt: bool):
  """Blurring matrices at each step's sigma, their changes at sigma + grad_step, the steps."""
  if sqrt:
    sigmas = [math.sqrt(float(i) * max_sigma / float(steps)) for i in range(steps + 1)]
  else:
    sigmas = [float(i) * max_sigma / float(steps) for i in range(steps + 1)]
  dsig = np.array([sigmas[i + 1] - sigmas[i] for i in range(steps)])
  rows = np.stack([_gaussian_matrix(h, s) for s in sigmas[:-1]])
  cols = np.stack([_gaussian_matrix(w, s) for s in sigmas[:-1]])
  # The sigma derivative's differences of blurring matrices, taken in float64 here: PAIR's
  # difference of two blurred float32 images loses most digits to cancellation.
  rows_d = np.stack([_gaussian_matrix(h, s + grad_step) for s in sigmas[:-1]]) - rows
  cols_d = np.stack([_gaussian_matrix(w, s + grad_step) for s in sigmas[:-1]]) - cols
  return rows, cols, rows_d, cols_d, dsig


@functools.partial(jax.jit, static_argnames=("max_sigma", "steps", "grad_step", "sqrt",
                                             "batch_size"))
def _blur_ig(forward, inputs, target, *, max_sigma, steps, grad_step, sqrt, batch_size):
  h, w = inputs.shape[1:3]
  mats = _blur_path(h, w, max_sigma, steps, grad_step, sqrt)
  rows, cols, rows_d, cols_d, dsig = (jnp.asarray(m, inputs.dtype) for m in mats)

  def blur(r, c):
    return jnp.einsum("ih,nhwc,jw->nijc", r, inputs, c, precision=_HIGHEST)

  def step(args):
    r, c, rd, cd, ds = args
    x_step = blur(r, c)
    # blur(σ + δ) − blur(σ) = (R + dR) x (C + dC)ᵀ − R x Cᵀ = dR x (C + dC)ᵀ + R x dCᵀ
    gaussian_gradient = (blur(rd, c + cd) + blur(r, cd)) / jnp.asarray(grad_step, inputs.dtype)
    return ds * gaussian_gradient * target_grad(forward, x_step, target)

  terms = batching.chunked_map(step, (rows, cols, rows_d, cols_d, dsig), batch_size=batch_size)
  return -jnp.sum(terms, axis=0)


@register("blur_ig", kind="path", signed=True, label="Blur IG",
          defaults={"steps": 50, "max_sigma": 10.0})
def blur_ig(forward, inputs, target, *, max_sigma: float = 50.0, steps: int = 100,
            grad_step: float = 0.01, sqrt: bool = False, batch_size: int | None = 32):
  """Blur IG: integrated gradients along the path from a blurred image to the image.

  PAIR ``BlurIG.GetMask``: ``−Σ_i (σ_{i+1} − σ_i) · ∂_σ blur(x, σ_i) · ∇f_t(blur(x, σ_i))``
  with ``σ_i = i · max_sigma / steps`` (or its square root), ``∂_σ`` a forward difference of
  ``grad_step``, and the Gaussian blur of ``scipy.ndimage.gaussian_filter(mode="constant")``
  over height and width (truncated at 4σ).

  Args:
    forward: ``(N, H, W, C) -> (N, K)`` logits.
    inputs: float images ``(N, H, W, C)``.
    target: int or ``(N,)`` ints.
    max_sigma: the largest blur (PAIR's default 50, for 224-pixel images). Static.
    steps: blur steps. Static.
    grad_step: the sigma step of the blur's derivative. Static.
    sqrt: space the sigmas by square roots. Static.
    batch_size: path points whose gradients are taken at once (``None``: all). Static.

  Returns:
    Attributions of the shape and dtype of ``inputs``.
  """
  forward, inputs, target = check_call(forward, inputs, target)
  steps = _check_int(steps, "steps")
  if not float(max_sigma) > 0:
    raise ValueError(f"`max_sigma` must be > 0, got {max_sigma!r}")
  if not float(grad_step) > 0:
    raise ValueError(f"`grad_step` must be > 0, got {grad_step!r}")
  batch_size = batching.check_batch_size(batch_size)
  return _blur_ig(forward, inputs, target, max_sigma=float(max_sigma), steps=steps,
                  grad_step=float(grad_step), sqrt=bool(sqrt), batch_size=batch_size)


# ---------------------------------------------------------------------------------- Guided IG

_EPSILON = 1e-9  # PAIR's math.isclose tolerance


def _guided_ig_step(x, grad_actual, x_in, x_base, alpha_min, alpha_max, l1_target, fraction):
  """One step of PAIR's ``guided_ig_impl`` for one image: the new x and its attribution."""
  diff = x_in - x_base
  x_min = x_base + diff * alpha_min
  x_max = x_base + diff * alpha_max
  flat = x.size
  q_index = int(np.floor(fraction * (flat - 1)))  # np.quantile(..., method="lower")
  inf = jnp.asarray(jnp.inf, x.dtype)

  def cond(state):
    _, _, _, gamma, done = state
    return (~done) & (gamma > 1)

  def body(state):
    x, attr, grad, _, _ = state
    x_old = x
    alpha = jnp.where(diff != 0, (x - x_base) / jnp.where(diff != 0, diff, 1), alpha_max)
    x = jnp.where(alpha < alpha_min, x_min, x)
    l1_current = jnp.sum(jnp.abs(x - x_in))
    close = jnp.abs(l1_target - l1_current) <= jnp.maximum(
        _EPSILON * jnp.maximum(jnp.abs(l1_target), jnp.abs(l1_current)), _EPSILON)
    grad = jnp.where(x == x_max, inf, grad)
    threshold = jnp.sort(jnp.abs(grad).reshape(-1))[q_index]
    s = (jnp.abs(grad) <= threshold) & (grad != inf)
    l1_s = jnp.sum(jnp.abs(x - x_max) * s)
    gamma = jnp.where(l1_s > 0, (l1_current - l1_target) / jnp.where(l1_s > 0, l1_s, 1), inf)
    moved = jnp.where(gamma > 1, jnp.where(s, x_max, x), jnp.where(s, x + (x_max - x) * gamma, x))
    x_new = jnp.where(close, x, moved)
    attr = attr + (x_new - x_old) * grad_actual
    # No selectable feature left (every one at x_max, or the rest not finite) while the L1
    # target is not met to PAIR's 1e-9: nothing can move any more, and PAIR's own loop would
    # repeat forever (float32 sums miss that tolerance where float64 ones meet it).
    stuck = l1_s == 0
    return x_new, attr, grad, gamma, close | stuck

  state = (x, jnp.zeros_like(x), grad_actual, inf, jnp.asarray(False))
  x, attr, _, _, _ = jax.lax.while_loop(cond, body, state)
  return x, attr


def _guided_ig_outer(forward, inputs, target, baselines, l1_total, step, x, attr, *, steps,
                     fraction, max_dist):
  """Guided IG's step ``step`` for every image: the new path point and attributions."""
  grad_actual = target_grad(forward, x, target)
  alpha = (step + 1.0) / steps
  alpha_min = jnp.maximum(alpha - max_dist, 0.0).astype(inputs.dtype)
  alpha_max = jnp.minimum(alpha + max_dist, 1.0).astype(inputs.dtype)
  l1_target = l1_total * (1 - (step + 1) / steps)
  step_fn = jax.vmap(functools.partial(_guided_ig_step, fraction=fraction),
                     in_axes=(0, 0, 0, 0, None, None, 0))
  x, a = step_fn(x, grad_actual, inputs, baselines, alpha_min, alpha_max, l1_target)
  return x, attr + a


def _l1(inputs, baselines):
  return jnp.sum(jnp.abs(inputs - baselines).reshape(inputs.shape[0], -1), axis=1)


def _keep_moved(attr, l1_total):
  return jnp.where((l1_total > 0)[:, None, None, None], attr, 0)


@functools.partial(jax.jit, static_argnames=("steps", "fraction", "max_dist"))
def _guided_ig(forward, inputs, target, baselines, *, steps, fraction, max_dist):
  """All steps in one program (a ``fori_loop``): for calls under a trace."""
  l1_total = _l1(inputs, baselines)
  outer = functools.partial(_guided_ig_outer, forward, inputs, target, baselines, l1_total,
                            steps=steps, fraction=fraction, max_dist=max_dist)
  _, attr = jax.lax.fori_loop(0, steps, lambda i, c: outer(i, *c),
                              (baselines, jnp.zeros_like(inputs)))
  return _keep_moved(attr, l1_total)


_guided_ig_outer_jit = jax.jit(_guided_ig_outer, static_argnames=("steps", "fraction",
                                                                  "max_dist"))
_l1_jit, _keep_moved_jit = jax.jit(_l1), jax.jit(_keep_moved)


def _guided_ig_host(forward, inputs, target, baselines, *, steps, fraction, max_dist):
  """:func:`_guided_ig` with the steps called from Python, one compiled step: XLA:CPU runs the
  model's convolutions inside a loop body 2–3× slower than in a program of their own."""
  l1_total = _l1_jit(inputs, baselines)
  x, attr = baselines, jnp.zeros_like(inputs)
  for i in range(steps):
    x, attr = _guided_ig_outer_jit(forward, inputs, target, baselines, l1_total, np.int32(i),
                                   x, attr, steps=steps, fraction=fraction, max_dist=max_dist)
  return _keep_moved_jit(attr, l1_total)


@register("guided_ig", kind="path", signed=True, label="Guided IG",
          defaults={"steps": 50})
def guided_ig(forward, inputs, target, *, baselines=0.0, steps: int = 200,
              fraction: float = 0.25, max_dist: float = 0.02):
  """Guided Integrated Gradients (PAIR ``GuidedIG.GetMask``).

  The path from ``baselines`` to ``inputs`` moves, at each of ``steps`` steps, the ``fraction``
  of features with the smallest absolute gradients first, staying within ``max_dist`` (in path
  fraction) of the straight line; attributions accumulate ``Δx · ∇f_t`` along it.

  Args:
    forward: ``(N, H, W, C) -> (N, K)`` logits.
    inputs: float images ``(N, H, W, C)``.
    target: int or ``(N,)`` ints.
    baselines: the path's start (PAIR default 0), a number or an array broadcastable to
      ``inputs``.
    steps: path steps (PAIR ``x_steps``; one gradient of every image per step). Static.
    fraction: features moved per step. Static.
    max_dist: the largest deviation from the straight path (0 gives plain IG). Static.

  Returns:
    Attributions of the shape and dtype of ``inputs``.
  """
  forward, inputs, target = check_call(forward, inputs, target)
  steps = _check_int(steps, "steps")
  if not 0 <= float(fraction) <= 1:
    raise ValueError(f"`fraction` must be in [0, 1], got {fraction!r}")
  if not 0 <= float(max_dist) <= 1:
    raise ValueError(f"`max_dist` must be in [0, 1], got {max_dist!r}")
  base = fill_like(baselines, inputs)
  return (_guided_ig if batching.traced(forward, inputs, target, base) else _guided_ig_host)(
      forward, inputs, target, base, steps=steps, fraction=float(fraction),
      max_dist=float(max_dist))


# --------------------------------------------------------------------------------------- XRAI

_FELZENSZWALB_SCALES = (50, 100, 150, 250, 500, 1200)


def _xrai_segments_one(image, dilation_rad):
  from skimage import segmentation
  from skimage.morphology import dilation, disk
  from skimage.transform import resize
  im = np.asarray(image, np.float64)
  lo, hi = np.max(im), np.min(im)
  im = (im - hi) / (lo - hi) * 2.0 - 1.0  # PAIR's _normalize_image to [-1, 1]
  im = resize(im, (224, 224), order=3, mode="constant", preserve_range=True, anti_aliasing=True)
  masks = []
  for scale in _FELZENSZWALB_SCALES:
    seg = segmentation.felzenszwalb(im, scale=scale, sigma=0.8, min_size=150)
    seg = resize(seg, image.shape[:2], order=0, preserve_range=True, mode="constant",
                 anti_aliasing=False).astype(int)
    masks.extend(seg == label for label in range(seg.min(), seg.max() + 1))
  if dilation_rad:
    footprint = disk(dilation_rad)
    masks = [dilation(m, footprint=footprint) for m in masks]
  return np.stack(masks)


def xrai_segments(images, *, dilation_rad: int = 5, max_segments: int | None = None):
  """PAIR XRAI's default segments of each image: ``(N, S, H, W)`` bool (on the host).

  Felzenszwalb segmentations at scales 50-1200 (σ 0.8, min size 150) of the image rescaled to
  [-1, 1] and resized to 224×224, resized back, one mask per segment, each dilated by a disk of
  ``dilation_rad`` (PAIR ``_get_segments_felzenszwalb``). Images with fewer segments are padded
  with empty masks (XRAI skips them) up to ``max_segments`` (default: the most of any image).
  """
  images = np.asarray(images)
  if images.ndim != 4:
    raise ValueError(f"`images` must have rank 4 (N, H, W, C), got shape {images.shape}")
  per_image = [_xrai_segments_one(im, dilation_rad) for im in images]
  s = max(len(m) for m in per_image) if max_segments is None else int(max_segments)
  if any(len(m) > s for m in per_image):
    raise ValueError(f"`max_segments` {s} < the {max(len(m) for m in per_image)} segments "
                     "of an image")
  out = np.zeros((len(images), s) + images.shape[1:3], bool)
  for i, m in enumerate(per_image):
    out[i, :len(m)] = m
  return out


def _xrai_grow(attr, masks, area_threshold, min_pixel_diff):
  """PAIR ``XRAI._xrai`` (the "full" algorithm) for one image: ``attr`` (P,), ``masks`` (S, P)."""
  dtype = attr.dtype
  p = attr.shape[0]
  mf = masks.astype(dtype)
  neg_inf = jnp.asarray(-jnp.inf, dtype)

  def cond(state):
    current, remaining, _, area = state
    return (area <= area_threshold) & jnp.any(remaining)

  def body(state):
    current, remaining, out, _ = state
    free = (~current).astype(dtype)
    count = jnp.einsum("sp,p->s", mf, free, precision=_HIGHEST)
    remaining = remaining & (count >= min_pixel_diff)
    total = jnp.einsum("sp,p->s", mf, attr * free, precision=_HIGHEST)
    gain = jnp.where(remaining, total / jnp.maximum(count, 1), neg_inf)
    best = jnp.argmax(gain)
    go = jnp.any(remaining)
    added = masks[best] & ~current & go
    out = jnp.where(added, gain[best], out)
    current = current | (masks[best] & go)
    remaining = remaining.at[best].set(False)
    return current, remaining, out, jnp.mean(current.astype(dtype))

  state = (jnp.zeros(p, bool), jnp.ones(masks.shape[0], bool), jnp.full(p, neg_inf, dtype),
           jnp.asarray(0.0, dtype))
  _, _, out, _ = jax.lax.while_loop(cond, body, state)
  rest = out == neg_inf
  fill = jnp.sum(jnp.where(rest, attr, 0)) / jnp.maximum(jnp.sum(rest), 1)
  return jnp.where(rest, fill, out)


def _pair_ig(forward, inputs, target, baseline, steps, batch_size):
  """PAIR ``IntegratedGradients.GetMask``: ``linspace(0, 1, steps)`` points, sum / steps."""
  alphas = jnp.linspace(0.0, 1.0, steps, dtype=inputs.dtype)
  diff = inputs - baseline

  def grad_at(a):
    return target_grad(forward, baseline + a * diff, target)

  grads = batching.chunked_map(grad_at, alphas, batch_size=batch_size)
  return jnp.sum(grads, axis=0) * diff / steps


@functools.partial(jax.jit, static_argnames=("steps", "area_threshold", "min_pixel_diff",
                                             "batch_size", "given"))
def _xrai(forward, inputs, target, segments, attributions, *, steps, area_threshold,
          min_pixel_diff, batch_size, given):
  n, h, w, c = inputs.shape
  if given:
    attr = attributions
  else:  # PAIR's default baselines: the image's min and max everywhere
    flat = inputs.reshape(n, -1)
    lo = jnp.broadcast_to(jnp.min(flat, axis=1)[:, None, None, None], inputs.shape)
    hi = jnp.broadcast_to(jnp.max(flat, axis=1)[:, None, None, None], inputs.shape)
    attr = 0.5 * (_pair_ig(forward, inputs, target, lo, steps, batch_size)
                  + _pair_ig(forward, inputs, target, hi, steps, batch_size))
  attr = jnp.max(attr, axis=3).reshape(n, h * w)
  grow = jax.vmap(functools.partial(_xrai_grow, area_threshold=area_threshold,
                                    min_pixel_diff=min_pixel_diff))
  out = grow(attr, segments.reshape(n, segments.shape[1], h * w)).reshape(n, h, w, 1)
  return jnp.broadcast_to(out, inputs.shape).astype(inputs.dtype)


@register("xrai", kind="path", signed=True, label="XRAI", defaults={"steps": 50})
def xrai(forward, inputs, target, *, segments=None, attributions=None, steps: int = 100,
         area_threshold: float = 1.0, min_pixel_diff: int = 50, batch_size: int | None = 32):
  """XRAI: regions ranked by their integrated-gradients density (PAIR ``XRAI.GetMask``).

  Integrated gradients from the image's minimum and from its maximum (PAIR's default
  baselines, ``linspace(0, 1, steps)`` points) are averaged and maxed over channels; then,
  greedily, the segment adding the highest mean attribution over its not-yet-covered pixels
  (at least ``min_pixel_diff`` of them) is added and its new pixels take that mean, until
  ``area_threshold`` of the image is covered or no segment is left; the rest take their own
  mean.

  Args:
    forward: ``(N, H, W, C) -> (N, K)`` logits.
    inputs: float images ``(N, H, W, C)``.
    target: int or ``(N,)`` ints.
    segments: ``(N, S, H, W)`` bool candidate regions (PAIR ``segments``); default
      :func:`xrai_segments` of the (concrete) inputs, PAIR's Felzenszwalb segments.
    attributions: optional ``(N, H, W, C)`` base attributions used instead of integrated
      gradients (PAIR ``base_attribution``).
    steps: integrated-gradients points per baseline. Static.
    area_threshold: the covered fraction at which growth stops. Static.
    min_pixel_diff: the fewest new pixels a segment must add. Static.
    batch_size: path points whose gradients are taken at once (``None``: all). Static.

  Returns:
    The region attribution map, of the shape and dtype of ``inputs`` (equal across channels).
  """
  forward, inputs, target = check_call(forward, inputs, target)
  steps = _check_int(steps, "steps")
  min_pixel_diff = _check_int(min_pixel_diff, "min_pixel_diff")
  batch_size = batching.check_batch_size(batch_size)
  n, h, w, _ = inputs.shape
  if segments is None:
    if isinstance(inputs, jax.core.Tracer):
      raise ValueError("`segments` is required when `inputs` are traced: pass "
                       "jaxplain.attribution.xrai_segments(images)")
    segments = xrai_segments(np.asarray(inputs))
  segments = jnp.asarray(segments)
  if segments.ndim != 4 or segments.shape[0] != n or segments.shape[2:] != (h, w):
    raise ValueError(f"`segments` shape {tuple(segments.shape)} must be (N, S, H, W) = "
                     f"({n}, S, {h}, {w})")
  if attributions is not None:
    attributions = jnp.asarray(attributions, inputs.dtype)
    if attributions.shape != inputs.shape:
      raise ValueError(f"`attributions` shape {tuple(attributions.shape)} != `inputs` shape "
                       f"{tuple(inputs.shape)}")
  return _xrai(forward, inputs, target, segments.astype(bool), attributions, steps=steps,
               area_threshold=float(area_threshold), min_pixel_diff=min_pixel_diff,
               batch_size=batch_size, given=attributions is not None)
