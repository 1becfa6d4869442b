"""Integrated gradients: Captum's five quadrature rules, the completeness gap, and a locally
refined path integral that meets a completeness tolerance on every image.

References:
  Sundararajan et al., "Axiomatic Attribution for Deep Networks", ICML 2017.
  https://arxiv.org/abs/1703.01365
"""

from __future__ import annotations

import functools
import math
import warnings
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxplain import batching
from jaxplain.attribution._common import check_call, select
from jaxplain.attribution.baselines import make_baselines
from jaxplain.attribution.registry import register

__all__ = ["METHODS", "PIXEL_TOL", "RULES", "approximation", "integrated_gradients",
           "completeness_gap", "integrated_gradients_adaptive"]

RULES = ("riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid",
         "gausslegendre")
METHODS = RULES  # deprecated name of RULES (one release)
# The default adaptive chunk: on CPU a backward pass costs less per image in small batches
# (measured on 48×48 FER CNNs: 16 images at once ~10-25% cheaper per image than 64). On an
# accelerator a chunk costs its kernel launches whatever its size: MAX_CHUNK_ACCELERATOR.
MAX_CHUNK = 16
MAX_CHUNK_ACCELERATOR = 512
# The adaptive integral's default per-pixel tolerance (a share of ‖attributions‖₁).
PIXEL_TOL = 0.25


def _torch_linspace32(start: float, end: float, n: int) -> np.ndarray:
  """``torch.linspace(start, end, n)`` in float32 (the default dtype), as Captum draws it:
  the first half counts up from ``start``, the second half down from ``end``."""
  start, end = np.float32(start), np.float32(end)
  step = (end - start) / np.float32(n - 1)
  i = np.arange(n, dtype=np.float32)
  up = start + step * i
  down = end - step * (np.float32(n - 1) - i)
  return np.where(np.arange(n) < n // 2, up, down).astype(np.float32)


@functools.lru_cache(maxsize=None)
def approximation(rule: str, steps: int) -> tuple[np.ndarray, np.ndarray]:
  """The path points ``alphas`` in [0, 1] and quadrature ``weights`` of Captum's rule.

  Those of ``captum.attr._utils.approximation_methods``: Riemann points from a float32
  ``torch.linspace`` (its scalar formula; PyTorch's SIMD lanes may round a point differently by
  one float32 ulp), Gauss-Legendre points from ``numpy.polynomial.legendre.leggauss`` in
  float64, and the weights rounded to float32 as Captum's ``torch.tensor(step_sizes).float()``
  does. Returns float64 arrays ``(steps,)`` holding those values.
  """
  if rule not in RULES:
    raise ValueError(f"`rule` must be one of {RULES}, got {rule!r}")
  if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)):
    raise ValueError(f"`steps` must be an int, got {steps!r}")
  if rule == "gausslegendre":
    if steps < 1:
      raise ValueError(f"`steps` must be >= 1 for gausslegendre, got {steps}")
    x, w = np.polynomial.legendre.leggauss(steps)
    alphas, weights = 0.5 * (1 + x), 0.5 * w
  else:
    if steps < 2:
      raise ValueError(f"`steps` must be >= 2 for {rule}, got {steps}")
    weights = np.full(steps, 1 / steps)
    kind = rule.split("_")[1]
    if kind == "trapezoid":
      weights[0] /= 2
      weights[-1] /= 2
    lo, hi = {"left": (0, 1 - 1 / steps), "right": (1 / steps, 1),
              "middle": (1 / (2 * steps), 1 - 1 / (2 * steps)), "trapezoid": (0, 1)}[kind]
    alphas = _torch_linspace32(lo, hi, steps).astype(np.float64)
  return alphas, weights.astype(np.float32).astype(np.float64)


def _values_and_grads(forward, points, target):
  """Each row's target logit ``(B,)`` and its gradient ``(B, H, W, C)`` (rows independent)."""
  def total(z):
    v = select(forward(z), target)
    return jnp.sum(v), v
  (_, values), grads = jax.value_and_grad(total, has_aux=True)(points)
  return values, grads


def _bytes_per_image(forward, image_shape, dtype) -> int:
  """Activation bytes of one image's forward and backward pass (from shapes, nothing runs)."""
  z = jax.ShapeDtypeStruct((1,) + tuple(image_shape), dtype)
  t = jax.ShapeDtypeStruct((1,), jnp.int32)
  return batching.activation_bytes(_values_and_grads, forward, z, t)


def _rule_option(rule, method, default="gausslegendre"):
  """``rule``, or the deprecated ``method`` alias (a ``DeprecationWarning``)."""
  if method is not None:
    warnings.warn("the IG quadrature option `method=` is deprecated (it is the attribution "
                  "method elsewhere); pass `rule=` instead", DeprecationWarning, stacklevel=3)
    if rule is not None and rule != method:
      raise ValueError(f"`rule` ({rule!r}) and its deprecated alias `method` ({method!r}) "
                       "disagree; pass only `rule`")
    rule = method
  return default if rule is None else rule


# ---------------------------------------------------------------------------------------------
# Integrated gradients with a fixed rule (Captum's)
# ---------------------------------------------------------------------------------------------


def _path_integral(forward, inputs, target, baselines, *, steps, rule, batch_size):
  """``sum_s w_s ∇f(b + α_s (x − b))`` under ``rule``, ``batch_size`` path points at a time
  (traceable; the layer methods integrate at a layer with it)."""
  alphas, weights = approximation(rule, steps)
  diff = inputs - baselines

  def weighted_grads(aw):  # one path point (and its weight) over all N images
    a, w = aw
    return w * _values_and_grads(forward, baselines + a * diff, target)[1]

  aw = (jnp.asarray(alphas, inputs.dtype), jnp.asarray(weights, inputs.dtype))
  return jnp.sum(batching.chunked_map(weighted_grads, aw, batch_size=batch_size), axis=0)


def _check_options(steps, rule, batch_size):
  """``steps`` an int the ``rule`` accepts, ``batch_size`` a positive int or ``None``."""
  if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)):
    raise ValueError(f"`steps` must be an int, got {steps!r}")
  approximation(rule, int(steps))  # validates the rule and the steps
  batching.check_batch_size(batch_size)


@functools.partial(jax.jit, static_argnames=("steps", "rule", "batch_size"))
def _integrated_gradients(forward, inputs, target, baselines, *, steps, rule, batch_size):
  return _path_integral(forward, inputs, target, baselines, steps=steps, rule=rule,
                        batch_size=batch_size) * (inputs - baselines)


@functools.partial(jax.jit, donate_argnums=(6,))
def _integrated_gradients_chunk(forward, inputs, target, baselines, alphas, weights, total):
  """``total + Σ_s w_s ∇f(b + α_s (x − b))`` over one chunk of path points."""
  diff = inputs - baselines

  def weighted_grads(a, w):
    return w * _values_and_grads(forward, baselines + a * diff, target)[1]

  return total + jnp.sum(jax.vmap(weighted_grads)(alphas, weights), axis=0)


def _integrated_gradients_host(forward, inputs, target, baselines, *, steps, rule, batch_size,
                               images):
  """``_integrated_gradients`` with the chunks looped from Python (concrete arguments): the
  model runs at the top level of its compiled chunk, not inside ``lax.map`` (XLA:CPU runs a
  backward pass's transposed convolutions several times slower inside a loop). ``images``
  images at a time (the last group padded), ``batch_size`` points at a time (the last chunk
  padded with weight-0 points), so one compilation serves every chunk."""
  alphas, weights = approximation(rule, steps)
  pad = -steps % batch_size
  alphas = np.concatenate([alphas, np.ones(pad)]).astype(inputs.dtype).reshape(-1, batch_size)
  weights = np.concatenate([weights, np.zeros(pad)]).astype(inputs.dtype).reshape(-1, batch_size)
  n = inputs.shape[0]
  groups = -(-n // images)

  def grouped(v):  # (groups, images, ...): padded once with the first row, not per group
    v = jnp.concatenate([v, jnp.broadcast_to(v[:1], (groups * images - n,) + v.shape[1:])])
    return v.reshape((groups, images) + v.shape[1:])

  xs, ts, bs = (grouped(v) for v in (inputs, target, baselines)) if groups > 1 else (
      (v[None] for v in (inputs, target, baselines)))
  out = []
  for x, t, b in zip(xs, ts, bs):
    total = jnp.zeros_like(x)
    for a, w in zip(alphas, weights):
      total = _integrated_gradients_chunk(forward, x, t, b, a, w, total)
    out.append(total * (x - b))
  return (jnp.concatenate(out) if groups > 1 else out[0])[:n]


def _points_per_batch(forward, inputs, steps, batch_size, budget):
  if batch_size is not None:
    return batch_size
  per_point = inputs.shape[0] * _bytes_per_image(forward, inputs.shape[1:], inputs.dtype)
  return batching.auto_batch_size(per_point, steps, budget=budget)


def _images_per_batch(forward, inputs, points, images, budget):
  if images is not None:
    return min(images, inputs.shape[0])
  per_image = points * _bytes_per_image(forward, inputs.shape[1:], inputs.dtype)
  return batching.auto_batch_size(per_image, inputs.shape[0], budget=budget)


@register("integrated_gradients", kind="path", signed=True, label="integrated gradients",
          defaults={"steps": 50}, aliases=("ig",))
def integrated_gradients(forward, inputs, target, *, baselines=None, steps: int = 50,
                         rule: str | None = None, batch_size: int | None = None, key=None,
                         budget: int | None = None,
                         images_per_batch: int | None = None, method: str | None = None):
  """Integrated gradients along the straight path from ``baselines`` to ``inputs``.

  ``(x − b) · sum_s w_s ∇f_t(b + α_s (x − b))`` with Captum ``IntegratedGradients``' points
  ``α_s`` and weights ``w_s`` (:func:`approximation`); path points run ``batch_size`` at a time,
  each over all N images (a Python loop of one compiled chunk for concrete arguments, a
  ``jax.lax.map`` under ``jit``/``vmap``; the same sums).

  Args:
    forward: ``(N, H, W, C) -> (N, K)`` logits.
    inputs: float images ``(N, H, W, C)``.
    target: int or ``(N,)`` ints.
    baselines: ``None``/``"black"`` (zeros, Captum's default), a number, ``"blur"``,
      ``"uniform"`` (needs ``key``) or an array of the shape of ``inputs`` (or of one image);
      see :func:`jaxplain.attribution.baselines.make_baselines`.
    steps: path points (Captum ``n_steps``). Static.
    rule: the quadrature, ``"riemann_left"``, ``"riemann_right"``, ``"riemann_middle"``,
      ``"riemann_trapezoid"`` or ``"gausslegendre"`` (default, as Captum's ``method``). Static.
    batch_size: path points evaluated at once, each over all N images (memory is about
      ``batch_size × N`` forward/backward passes). ``None`` (default): as many as fit ``budget``
      bytes of activations, estimated from the forward's shapes
      (:func:`jaxplain.batching.auto_batch_size`); pass an int to override. Static.
    key: a ``jax.random`` key for ``baselines="uniform"``.
    budget: activation bytes one chunk may hold when ``batch_size`` or ``images_per_batch``
      is ``None`` (default ``None``: :func:`jaxplain.batching.default_budget`, 512 MiB on a
      CPU, up to 4 GiB on an accelerator).
    images_per_batch: with concrete arguments, images run through each chunk of path points at
      a time (``None``: as many as fit ``budget`` beside ``batch_size`` points; an int
      overrides). Under ``jit``/``vmap`` every chunk covers all N images.
    method: deprecated alias of ``rule`` (a ``DeprecationWarning``; removed next release).

  Returns:
    Attributions of the shape and dtype of ``inputs``.
  """
  rule = _rule_option(rule, method)
  forward, inputs, target = check_call(forward, inputs, target)
  approximation(rule, steps)  # validates rule and steps
  batch_size = batching.check_batch_size(batch_size)
  images_per_batch = batching.check_batch_size(images_per_batch, name="images_per_batch")
  b = make_baselines(inputs, baselines, key=key)
  chunk = min(_points_per_batch(forward, inputs, int(steps), batch_size, budget), int(steps))
  if batching.traced(forward, inputs, target, b):
    return _integrated_gradients(forward, inputs, target, b, steps=int(steps), rule=rule,
                                 batch_size=chunk)
  images = _images_per_batch(forward, inputs, chunk, images_per_batch, budget)
  return _integrated_gradients_host(forward, inputs, target, b, steps=int(steps), rule=rule,
                                    batch_size=chunk, images=images)


@jax.jit
def _gap(forward, inputs, target, attributions, baselines):
  delta = select(forward(inputs), target) - select(forward(baselines), target)
  return jnp.sum(attributions.reshape(inputs.shape[0], -1), axis=1) - delta, delta


def completeness_gap(forward, inputs, target, attributions, *, baselines=None, key=None,
                     relative: bool = False):
  """Per example ``sum(attributions) − (f_t(x) − f_t(baseline))``: IG's completeness error.

  Args:
    forward, inputs, target: as for :func:`integrated_gradients`.
    attributions: ``(N, H, W, C)`` attributions of ``inputs``.
    baselines: the baselines the attributions were computed with (same forms as there; pass
      the same ``key`` for ``"uniform"``).
    key: a ``jax.random`` key for ``baselines="uniform"``.
    relative: divide each gap by ``|f_t(x) − f_t(baseline)|`` (what
      :func:`integrated_gradients_adaptive`'s ``tol`` bounds).

  Returns:
    ``(N,)`` gaps (Captum's ``convergence_delta``; relative when asked).
  """
  forward, inputs, target = check_call(forward, inputs, target)
  if not hasattr(attributions, "shape") or tuple(attributions.shape) != tuple(inputs.shape):
    raise ValueError(f"`attributions` shape {tuple(getattr(attributions, 'shape', ()))} != "
                     f"`inputs` shape {tuple(inputs.shape)}")
  b = make_baselines(inputs, baselines, key=key)
  gap, delta = _gap(forward, inputs, target, jnp.asarray(attributions, inputs.dtype), b)
  return gap / jnp.abs(delta) if relative else gap


# ---------------------------------------------------------------------------------------------
# Locally refined integrated gradients
# ---------------------------------------------------------------------------------------------


# The refinement is written as four steps on a ``_Carry`` of fixed shapes, per group of images:
# ``_start`` (empty buffers), ``_plan`` (which path points each image asks for this round, packed
# across images), ``_run_chunk`` (the model on ``size`` packed points) and ``_commit`` (split
# the intervals, re-check the errors). ``_refine_traced`` loops them with ``lax.while_loop`` (any
# caller: ``jit``, ``vmap``); ``_refine_host`` loops them from Python when the arguments are
# concrete, so the model runs at the top level of its compiled program (XLA:CPU runs the
# transposed convolutions of a backward pass several times slower inside a while loop).
#
# Two error estimates steer it, per interval [a, b] of α:
# * the local gap ``f(b) − f(a) − (b − a)(∇f(a) + ∇f(b))·(x − x0)/2`` (exact: it sums to the
#   completeness gap, but its terms have both signs over pixels and over intervals);
# * a per-pixel one that cannot cancel: the L1 norm over pixels of ``(x − x0) ⊙ e``, with ``e``
#   the trapezoid's error on the interval estimated from the gradients (``_pixel_errors``).


class _Carry(NamedTuple):
  """One group's refinement state (N images, P = max_steps point / interval slots)."""
  alpha: jax.Array  # (N, P) the points' α
  fval: jax.Array  # (N, P) f at the points
  gd: jax.Array  # (N, P) ∇f·(x − x0) at the points
  grads: jax.Array  # (N, P, H, W, C) ∇f at the points
  err: jax.Array  # (N, P) each interval's per-pixel error estimate (L1 over pixels)
  acc: jax.Array  # (N, H, W, C) Σ over intervals of the trapezoid's ∫∇f (the current integral)
  count: jax.Array  # (N,) points used
  lo: jax.Array  # (N, P) interval i is [alpha[lo[i]], alpha[hi[i]]]
  hi: jax.Array  # (N, P)
  gap: jax.Array  # (N, P) local gaps (0 on unused slots)
  valid: jax.Array  # (N, P) used interval slots
  done: jax.Array  # (N,)


def _pixel_errors(d, g_a, g_m, g_b, left, right):
  """Per-pixel error estimates of splitting [a, b] at m (arrays (K, H, W, C), widths (K,)).

  ``delta`` = trapezoid on [a, m] and [m, b] minus trapezoid on [a, b] (what the split adds to
  the integral), and each half's estimate ``min(‖(x − x0) ⊙ delta‖₁, jump)``, where ``jump`` =
  half the width × ‖(x − x0) ⊙ (∇f change across the half)‖₁ bounds the trapezoid's error on a
  half whose integrand jumps once (a ReLU kink): a half without a kink scores 0, a smooth
  integrand scores O(h³) as Richardson's estimate does.

  Returns ``(delta, err_left, err_right)``.
  """
  pix = tuple(range(1, d.ndim))
  col = lambda v: v.reshape((-1,) + (1,) * len(pix))  # noqa: E731
  norm = lambda v: jnp.sum(jnp.abs(v * d), axis=pix)  # noqa: E731
  delta = 0.5 * (col(left) * (g_m - g_b) + col(right) * (g_m - g_a))
  rich = norm(delta)
  return (delta, jnp.minimum(rich, 0.5 * left * norm(g_m - g_a)),
          jnp.minimum(rich, 0.5 * right * norm(g_b - g_m)))


def _interval_gaps(alpha, fval, gd, lo, hi, count):
  """Each interval's local gap ``f(b) − f(a) − (b − a)(∇f(a) + ∇f(b))·(x − x0)/2`` (0 where
  the interval slot is unused), the intervals' widths and which slots are used."""
  take = lambda v, i: jnp.take_along_axis(v, i, axis=1)  # noqa: E731
  width = take(alpha, hi) - take(alpha, lo)
  gap = take(fval, hi) - take(fval, lo) - 0.5 * width * (take(gd, lo) + take(gd, hi))
  valid = jnp.arange(lo.shape[1])[None, :] < (count - 1)[:, None]
  return jnp.where(valid, gap, 0), jnp.where(valid, width, 0), valid


def _bounds(c, d, tols, min_steps):
  """Per image: the gap's bound ``tol · |f(x) − f(x0)| + atol`` (+ float rounding; slots 0 and
  min_steps − 1 hold α = 0, 1) and the per-pixel bound ``pixel_tol · ‖(x − x0) ⊙ ∫∇f‖₁``."""
  tol, atol, pixel_tol = tols
  f0, f1 = c.fval[:, 0], c.fval[:, min_steps - 1]
  eps = jnp.finfo(c.fval.dtype).eps
  gap = tol * jnp.abs(f1 - f0) + atol + 64 * eps * (jnp.abs(f0) + jnp.abs(f1))
  l1 = jnp.sum(jnp.abs(c.acc * d).reshape(d.shape[0], -1), axis=1)
  return gap, pixel_tol * l1 + atol


def _status(c, d, tols, live, *, min_steps):
  gap, _, valid = _interval_gaps(c.alpha, c.fval, c.gd, c.lo, c.hi, c.count)
  gap_bound, pixel_bound = _bounds(c, d, tols, min_steps)
  pixels = ((jnp.sum(jnp.where(valid, c.err, 0), axis=1) <= pixel_bound)
            | (c.count >= c.alpha.shape[1] // 2))  # the rest of the budget is the gap's
  met = (jnp.abs(jnp.sum(gap, axis=1)) <= gap_bound) & pixels
  done = (met & (c.count > 0)) | (c.count >= c.alpha.shape[1]) | ~live
  return c._replace(gap=gap, valid=valid, done=done)


def _start(inputs, baselines, tols, live, *, max_steps, min_steps):
  n, dtype, p = inputs.shape[0], inputs.dtype, max_steps
  k = jnp.arange(p, dtype=jnp.int32)  # the intervals start as the first grid's chain
  lo = jnp.broadcast_to(jnp.minimum(k, min_steps - 2), (n, p))
  hi = jnp.broadcast_to(jnp.minimum(k + 1, min_steps - 1), (n, p))
  zeros = jnp.zeros((n, p), dtype)
  c = _Carry(alpha=zeros, fval=zeros, gd=zeros, grads=jnp.zeros((n, p) + inputs.shape[1:], dtype),
             err=zeros, acc=jnp.zeros_like(inputs), count=jnp.zeros((n,), jnp.int32), lo=lo,
             hi=hi, gap=zeros, valid=jnp.zeros((n, p), bool), done=jnp.zeros((n,), bool))
  return _status(c, inputs - baselines, tols, live, min_steps=min_steps)


def _plan(c, d, tols, *, min_steps, growth, pad):
  """This round's requests: each image's even grid first, then the midpoints of the intervals
  whose error exceeds their share of a bound (the local gaps while the completeness gap is over
  its bound, else the per-pixel estimates; worst first, at most ``growth`` × its intervals). Returns the packed requests ``(img, alpha, slot, a, b, left, right)`` (padded by
  ``pad``; ``a``, ``b`` the split interval's end points, ``left``, ``right`` the slots of its
  halves), their number, and what ``_commit`` needs."""
  n, p = c.alpha.shape
  cap = max(min_steps, p // 2)  # most points one image asks for in one round (static)
  ranks = jnp.arange(cap, dtype=jnp.int32)[None, :]
  take = lambda v, i: jnp.take_along_axis(v, i, axis=1)  # noqa: E731
  first = c.count == 0
  intervals = c.count - 1
  gap_bound, pixel_bound = _bounds(c, d, tols, min_steps)
  tiny = jnp.finfo(c.alpha.dtype).tiny
  share = lambda e, bound: jnp.abs(e) / jnp.maximum(bound, tiny)[:, None]  # noqa: E731
  gap_unmet = jnp.abs(jnp.sum(c.gap, axis=1)) > gap_bound  # the contract first, then pixels
  score = jnp.where(gap_unmet[:, None], share(c.gap, gap_bound), share(c.err, pixel_bound))
  worst, j = jax.lax.top_k(jnp.where(c.valid, score, -1), cap)
  want = jnp.sum(worst * jnp.maximum(intervals, 1)[:, None] > 1, axis=1, dtype=jnp.int32)
  most = jnp.minimum(jnp.ceil(growth * intervals).astype(jnp.int32), p - c.count)
  split = jnp.minimum(jnp.clip(want, 1, jnp.maximum(most, 1)), p - c.count)
  split = jnp.where(c.done | first, 0, split)
  mask = ranks < split[:, None]
  old_lo, old_hi = take(c.lo, j), take(c.hi, j)
  grid = jnp.pad(jnp.linspace(0, 1, min_steps, dtype=c.alpha.dtype), (0, cap - min_steps))
  mid = 0.5 * (take(c.alpha, old_lo) + take(c.alpha, old_hi))
  req = jnp.where(first[:, None], grid[None, :], mid)
  req_mask = jnp.where((first & ~c.done)[:, None], ranks < min_steps, mask)
  slot = c.count[:, None] + jnp.cumsum(req_mask, axis=1, dtype=jnp.int32) - 1
  halves = (jnp.where(mask, j, p), jnp.where(mask, intervals[:, None] + ranks, p))
  order = jnp.argsort(~req_mask.reshape(-1), stable=True)  # requested first, image by image
  packed = ((jnp.arange(n * cap, dtype=jnp.int32) // cap), req, jnp.where(req_mask, slot, p),
            old_lo, old_hi) + halves
  packed = tuple(jnp.pad(v.reshape(-1)[order], (0, pad)) for v in packed)
  total = jnp.sum(req_mask, dtype=jnp.int32)
  return packed, total, (mask, j, old_hi, jnp.sum(req_mask, axis=1, dtype=jnp.int32))


def _run_chunk(forward, inputs, target, baselines, c, packed, total, start, *, size):
  """f and ∇f at packed requests ``start .. start + size``, stored in their images' slots; for
  a point that splits an interval, the halves' per-pixel errors and the integral's change."""
  p = c.alpha.shape[1]
  i, a, s, pa, pb, left, right = (jax.lax.dynamic_slice(v, (start,), (size,)) for v in packed)
  real = start + jnp.arange(size) < total
  s, left, right = (jnp.where(real, v, p) for v in (s, left, right))  # padding: dropped
  d = inputs[i] - baselines[i]
  pix = tuple(range(1, d.ndim))
  values, g = _values_and_grads(forward, baselines[i] + a.reshape((-1,) + (1,) * len(pix)) * d,
                                target[i])
  delta, err_left, err_right = _pixel_errors(d, c.grads[i, pa], g, c.grads[i, pb],
                                             a - c.alpha[i, pa], c.alpha[i, pb] - a)
  splits = (left < p).reshape((-1,) + (1,) * len(pix))  # not a first-grid point, not padding
  return c._replace(
      alpha=c.alpha.at[i, s].set(a, mode="drop"), fval=c.fval.at[i, s].set(values, mode="drop"),
      gd=c.gd.at[i, s].set(jnp.sum(g * d, axis=pix), mode="drop"),
      grads=c.grads.at[i, s].set(g, mode="drop"),
      err=c.err.at[i, left].set(err_left, mode="drop").at[i, right].set(err_right, mode="drop"),
      acc=c.acc.at[i].add(jnp.where(splits, delta, 0)))


def _first_grid(c, d, *, min_steps):
  """The first grid's integral (trapezoid) and its intervals' per-pixel errors: each interval's
  estimate is the larger of those of the two-interval splits it belongs to (``_pixel_errors``
  of [α_{k−1}, α_{k+1}] at α_k), or its jump bound alone when ``min_steps`` is 2."""
  g, al = c.grads[:, :min_steps], c.alpha[:, :min_steps]
  n, m = al.shape
  h = al[:, 1:] - al[:, :-1]
  col = lambda v: v.reshape(v.shape + (1,) * (g.ndim - 2))  # noqa: E731
  acc = jnp.sum(0.5 * col(h) * (g[:, 1:] + g[:, :-1]), axis=1)
  flat = lambda v: v.reshape((-1,) + v.shape[2:])  # noqa: E731
  dd = jnp.repeat(d, m - 1, axis=0)
  jump = (0.5 * h * jnp.sum(jnp.abs(flat(g[:, 1:] - g[:, :-1]) * dd),
                            axis=tuple(range(1, d.ndim))).reshape(n, m - 1))
  if m == 2:
    return acc, jump
  dd = jnp.repeat(d, m - 2, axis=0)
  _, e_left, e_right = _pixel_errors(dd, flat(g[:, :-2]), flat(g[:, 1:-1]), flat(g[:, 2:]),
                                     h[:, :-1].reshape(-1), h[:, 1:].reshape(-1))
  e_left, e_right = e_left.reshape(n, m - 2), e_right.reshape(n, m - 2)
  zero = jnp.zeros((n, 1), al.dtype)
  return acc, jnp.maximum(jnp.concatenate([e_left, zero], axis=1),
                          jnp.concatenate([zero, e_right], axis=1))


def _commit(c, d, tols, live, split, *, min_steps):
  """Splits each chosen interval [a, b] at its new point m: [a, m] in place, [m, b] in the
  next free slot; counts the new points and re-checks the errors."""
  mask, j, old_hi, asked = split
  n, p = c.alpha.shape
  rows = jnp.arange(n, dtype=jnp.int32)[:, None]
  ranks = jnp.arange(mask.shape[1], dtype=jnp.int32)[None, :]
  new = c.count[:, None] + ranks
  hi = c.hi.at[rows, jnp.where(mask, j, p)].set(new, mode="drop")
  fresh = jnp.where(mask, (c.count - 1)[:, None] + ranks, p)
  lo = c.lo.at[rows, fresh].set(new, mode="drop")
  hi = hi.at[rows, fresh].set(old_hi, mode="drop")
  first = (c.count == 0) & (asked > 0)
  acc, err = _first_grid(c, d, min_steps=min_steps)
  acc = jnp.where(first.reshape((-1,) + (1,) * (d.ndim - 1)), acc, c.acc)
  err = c.err.at[:, :min_steps - 1].set(jnp.where(first[:, None], err,
                                                  c.err[:, :min_steps - 1]))
  return _status(c._replace(count=c.count + asked, lo=lo, hi=hi, acc=acc, err=err), d, tols,
                 live, min_steps=min_steps)


def _finish(inputs, baselines, c):
  """Attributions ``(x − x0) ⊙ Σ_points w ∇f`` (trapezoid weights of the final intervals)."""
  n, p = c.alpha.shape
  _, width, _ = _interval_gaps(c.alpha, c.fval, c.gd, c.lo, c.hi, c.count)
  rows = jnp.arange(n, dtype=jnp.int32)[:, None]
  weights = jnp.zeros((n, p), c.alpha.dtype).at[rows, c.lo].add(0.5 * width).at[
      rows, c.hi].add(0.5 * width)
  return jnp.einsum("np,np...->n...", weights, c.grads) * (inputs - baselines), c.count


def _sizes(chunk):
  return (chunk, max(1, chunk // 4))  # whole chunks, then the rest in small ones


def _refine_traced(forward, inputs, target, baselines, tols, live, *, max_steps, min_steps,
                   chunk, growth):
  big, small = _sizes(chunk)
  d = inputs - baselines

  def body(c):
    packed, total, split = _plan(c, d, tols, min_steps=min_steps, growth=growth, pad=big)

    def chunks(size, until, start, c):
      def step(s):
        return s[0] + size, _run_chunk(forward, inputs, target, baselines, s[1], packed, total,
                                       s[0], size=size)
      return jax.lax.while_loop(lambda s: s[0] + until < total, step, (start, c))

    start, c = chunks(big, big - 1, jnp.int32(0), c)
    if small < big:
      start, c = chunks(small, 0, start, c)
    return _commit(c, d, tols, live, split, min_steps=min_steps)

  c = _start(inputs, baselines, tols, live, max_steps=max_steps, min_steps=min_steps)
  c = jax.lax.while_loop(lambda c: ~jnp.all(c.done), body, c)
  return _finish(inputs, baselines, c)


@functools.partial(jax.jit, static_argnames=("max_steps", "min_steps", "chunk", "images",
                                             "growth"))
def _adaptive(forward, inputs, target, baselines, tols, *, max_steps, min_steps, chunk, images,
              growth):
  n = inputs.shape[0]
  run = functools.partial(_refine_traced, forward, max_steps=max_steps, min_steps=min_steps,
                          chunk=chunk, growth=growth)
  if images >= n:
    return run(inputs, target, baselines, tols, jnp.ones((n,), bool))
  groups = -(-n // images)
  pad = groups * images - n
  live = jnp.arange(groups * images) < n

  def grouped(v):  # (N, ...) -> (groups, images, ...), padded with copies of image 0
    v = jnp.concatenate([v, jnp.repeat(v[:1], pad, axis=0)]) if pad else v
    return v.reshape((groups, images) + v.shape[1:])

  attr, steps = jax.lax.map(lambda g: run(g[0], g[1], g[2], tols, g[3]),
                            (grouped(inputs), grouped(target), grouped(baselines),
                             live.reshape(groups, images)))
  return (attr.reshape((groups * images,) + inputs.shape[1:])[:n],
          steps.reshape(-1)[:n])


_start_jit = jax.jit(_start, static_argnames=("max_steps", "min_steps"))
_plan_jit = jax.jit(_plan, static_argnames=("min_steps", "growth", "pad"))
_run_chunk_jit = jax.jit(_run_chunk, static_argnames=("size",), donate_argnums=(4,))
_commit_jit = jax.jit(_commit, static_argnames=("min_steps",), donate_argnums=(0,))
_finish_jit = jax.jit(_finish)


def _adaptive_host(forward, inputs, target, baselines, tols, *, max_steps, min_steps, chunk,
                   images, growth):
  """``_adaptive`` driven from Python (concrete arguments): the same steps, with the model at
  the top level of its compiled chunk."""
  big, small = _sizes(chunk)
  n = inputs.shape[0]
  images = min(images, n)
  attrs, steps = [], []
  for g in range(0, n, images):
    x, t, b = inputs[g:g + images], target[g:g + images], baselines[g:g + images]
    live = jnp.arange(images) < x.shape[0]  # the last group: padded with image 0, done at once
    if x.shape[0] < images:
      x, t, b = (jnp.concatenate([v, jnp.repeat(v[:1], images - v.shape[0], axis=0)])
                 for v in (x, t, b))
    d = x - b
    c = _start_jit(x, b, tols, live, max_steps=max_steps, min_steps=min_steps)
    while not bool(jnp.all(c.done)):
      packed, total, split = _plan_jit(c, d, tols, min_steps=min_steps, growth=growth, pad=big)
      total_ = int(total)
      start = 0
      for size in (big, small):
        while start + (size - 1 if size == big else 0) < total_:
          c = _run_chunk_jit(forward, x, t, b, c, packed, total, jnp.int32(start), size=size)
          start += size
      c = _commit_jit(c, d, tols, live, split, min_steps=min_steps)
    a, s = _finish_jit(x, b, c)
    attrs.append(a)
    steps.append(s)
  return jnp.concatenate(attrs)[:n], jnp.concatenate(steps)[:n]


def integrated_gradients_adaptive(forward, inputs, target, *, tol: float = 0.01,
                                  max_steps: int = 512, baselines=None,
                                  batch_size: int | None = None, key=None, atol: float = 0.0,
                                  pixel_tol: float | None = PIXEL_TOL, min_steps: int = 9,
                                  budget: int | None = None,
                                  images_per_batch: int | None = None, growth: float = 0.1,
                                  host: bool = True, method: str | None = None):
  """Integrated gradients to a completeness tolerance, refining each path where it is wrong.

  The path integral splits exactly over sub-intervals ``[a, b]`` of α, and each has its own
  checkable error, the local gap ``f(x(b)) − f(x(a)) − ∫_a^b ∇f·(x − x0) dα``: the trapezoid
  rule on ``∇f`` at the interval's ends against the forward values there (each evaluation
  gives both). The local gaps of an image have both signs and sum to its completeness gap, so
  they can meet the tolerance by cancelling while single pixels are still wrong; each interval
  therefore also carries a per-pixel error estimate that cannot cancel: the L1 norm over pixels
  of ``(x − x0) ⊙`` the change that splitting the interval made to its trapezoid estimate,
  bounded by the half-width × the gradient's change across the interval (exact for one kink;
  0 for a half without a kink; O(h³) on smooth stretches).

  Starting from ``min_steps`` evenly spaced points, every round splits each image's intervals
  whose local gap or per-pixel estimate exceeds its share of a bound not yet met (the worst
  first, at most ``growth`` × the intervals it has), until both
  ``|sum(attributions) − (f_t(x) − f_t(x0))| ≤ tol · |f_t(x) − f_t(x0)| + atol`` and
  ``Σ_intervals per-pixel estimates ≤ pixel_tol · ‖attributions‖₁ + atol`` hold (the latter
  is given up after ``max_steps // 2`` evaluations, keeping the rest of the budget for the
  gap), or the image has used ``max_steps`` evaluations. A ReLU / max-pool network is piecewise linear along the
  path, so its integrand is piecewise constant: intervals without a kink are exact and the
  points gather around the kinks; smooth networks converge as the trapezoid rule does
  (O(h²)).

  Each image refines independently; the requests of all images are packed into chunks of
  ``batch_size`` path points, so an image that is done costs nothing. Fixed shapes (a budget of
  ``max_steps`` points per image, a ``lax.while_loop`` of rounds): it compiles once per shape
  and composes with ``jit`` and ``vmap``.

  Args:
    forward, inputs, target: as for :func:`integrated_gradients`.
    tol: relative completeness tolerance (may be traced).
    max_steps: the most gradient evaluations an image may use (its point budget). Static.
    baselines, key: as for :func:`integrated_gradients`.
    atol: an absolute tolerance added to ``tol · |f_t(x) − f_t(x0)|`` (for targets whose score
      hardly changes along the path, where a relative gap is out of reach), and to the
      per-pixel bound. May be traced.
    pixel_tol: bound on the estimated per-pixel error (its L1 norm over pixels, summed over
      intervals) as a share of ``‖attributions‖₁``; :data:`PIXEL_TOL` (0.25) by default. The
      estimate adds the intervals' errors without cancellation, so it is conservative: on the
      converted NetworkV2 (float64, against Captum GL-4096) the true L1 error was 1/8 to 1/20
      of it (0.25: about 2–3% L1, 3–5% of max|attributions|; 0.1: under 0.6%). Completeness
      alone (``None``) lets errors of both signs cancel in the sum (measured: 9.5% of
      max|attributions| at tol 1e-3). May be traced.
    batch_size: path points evaluated at once (over all images). ``None`` (default): as many as
      fit ``budget`` bytes of activations (:func:`jaxplain.batching.auto_batch_size`), at most
      :data:`MAX_CHUNK` (16) on a CPU and :data:`MAX_CHUNK_ACCELERATOR` (512) on a GPU or TPU;
      pass an int to override. Static.
    min_steps: evenly spaced points of the first round, the ends included (>= 2). Static.
    budget: bytes the defaults may hold: the evaluation chunk's activations, and the stored
      gradients (``max_steps`` per image) of the images refined together (default ``None``:
      :func:`jaxplain.batching.default_budget`).
    images_per_batch: images refined together (each keeps ``max_steps`` gradients). ``None``
      (default): as many as fit ``budget``. Static.
    growth: the largest share of an image's intervals split in one round. Static.
    host: with concrete arguments, drive the rounds from Python (the default: the model then
      runs at the top level of its compiled chunk, several times faster on CPU than inside a
      ``lax.while_loop``). Under ``jit``/``vmap`` (traced arguments) it is one compiled
      ``lax.while_loop`` either way; ``False`` forces that path. The results are the same.
    method: deprecated and ignored (the rule is fixed: trapezoid on refined intervals).

  Returns:
    ``(attributions, steps)``: attributions of the shape and dtype of ``inputs`` and int32
    ``(N,)`` gradient evaluations each image used (``max_steps`` also when it did not reach
    ``tol``: check :func:`completeness_gap` with ``relative=True``).
  """
  if method is not None:
    warnings.warn("`method=` of integrated_gradients_adaptive is deprecated and ignored: it "
                  "integrates with locally refined trapezoid intervals", DeprecationWarning,
                  stacklevel=2)
  forward, inputs, target = check_call(forward, inputs, target)
  for name, value, least in (("min_steps", min_steps, 2), ("max_steps", max_steps, min_steps)):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < least:
      raise ValueError(f"`{name}` must be an int >= {least}"
                       f"{' (`min_steps`)' if name == 'max_steps' else ''}, got {value!r}")
  pixel_tol = math.inf if pixel_tol is None else pixel_tol
  for name, value in (("tol", tol), ("atol", atol), ("pixel_tol", pixel_tol)):
    if not isinstance(value, jax.core.Tracer) and (not np.isscalar(value) or not value >= 0):
      raise ValueError(f"`{name}` must be a number >= 0, got {value!r}")
  if not (isinstance(growth, (int, float)) and 0 < growth <= 1):
    raise ValueError(f"`growth` must be a number in (0, 1], got {growth!r}")
  batch_size = batching.check_batch_size(batch_size)
  images_per_batch = batching.check_batch_size(images_per_batch, name="images_per_batch")
  b = make_baselines(inputs, baselines, key=key)
  n = inputs.shape[0]
  if batch_size is None or images_per_batch is None:
    per_image = _bytes_per_image(forward, inputs.shape[1:], inputs.dtype)
    if batch_size is None:
      most = MAX_CHUNK if batching.on_cpu() else MAX_CHUNK_ACCELERATOR
      batch_size = min(most, batching.auto_batch_size(per_image, n * int(max_steps),
                                                      budget=budget))
    if images_per_batch is None:
      stored = int(max_steps) * math.prod(inputs.shape[1:]) * inputs.dtype.itemsize
      images_per_batch = batching.auto_batch_size(stored, n, budget=budget)
  tols = tuple(jnp.asarray(v, inputs.dtype) for v in (tol, atol, pixel_tol))
  traced = batching.traced(forward, inputs, target, b, tols)
  run = _adaptive if traced or not host else _adaptive_host
  return run(forward, inputs, target, b, tols, max_steps=int(max_steps),
             min_steps=int(min_steps), chunk=int(batch_size), images=int(images_per_batch),
             growth=float(growth))
