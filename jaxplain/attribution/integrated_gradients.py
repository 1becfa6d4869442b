"""Integrated gradients (Captum's five quadrature rules), its completeness gap, and an
adaptive variant that refines each example's path until the gap is small.

References:
  Sundararajan et al., "Axiomatic Attribution for Deep Networks", ICML 2017.
  https://arxiv.org/abs/1703.01365
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxplain.attribution._common import check_call, select, target_grad
from jaxplain.attribution.baselines import make_baselines
from jaxplain.attribution.registry import register

__all__ = ["METHODS", "approximation", "integrated_gradients", "completeness_gap",
           "integrated_gradients_adaptive"]

METHODS = ("riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid",
           "gausslegendre")


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
def approximation(method: str, steps: int) -> tuple[np.ndarray, np.ndarray]:
  """The path points ``alphas`` in [0, 1] and quadrature ``weights`` of Captum's rule.

  Those of ``captum.attr._utils.approximation_methods``: Riemann points from a float32
  ``torch.linspace`` (its scalar formula; PyTorch's SIMD lanes may round a point differently by
  one float32 ulp), Gauss-Legendre points from ``numpy.polynomial.legendre.leggauss`` in
  float64, and the weights rounded to float32 as Captum's ``torch.tensor(step_sizes).float()``
  does. Returns float64 arrays ``(steps,)`` holding those values.
  """
  if method not in METHODS:
    raise ValueError(f"`method` must be one of {METHODS}, got {method!r}")
  if method == "gausslegendre":
    if steps < 1:
      raise ValueError(f"`steps` must be >= 1 for gausslegendre, got {steps}")
    x, w = np.polynomial.legendre.leggauss(steps)
    alphas, weights = 0.5 * (1 + x), 0.5 * w
  else:
    if steps < 2:
      raise ValueError(f"`steps` must be >= 2 for {method}, got {steps}")
    weights = np.full(steps, 1 / steps)
    rule = method.split("_")[1]
    if rule == "trapezoid":
      weights[0] /= 2
      weights[-1] /= 2
    lo, hi = {"left": (0, 1 - 1 / steps), "right": (1 / steps, 1),
              "middle": (1 / (2 * steps), 1 - 1 / (2 * steps)), "trapezoid": (0, 1)}[rule]
    alphas = _torch_linspace32(lo, hi, steps).astype(np.float64)
  return alphas, weights.astype(np.float32).astype(np.float64)


def _path_integral(forward, inputs, target, baselines, *, steps, method, batch_size):
  """``sum_s w_s ∇f(b + α_s (x − b))``, evaluating ``batch_size`` path points at a time."""
  alphas, weights = approximation(method, steps)
  dtype = inputs.dtype
  diff = inputs - baselines

  def grads_at(a):  # a: (B,) path points -> (B, N, H, W, C)
    return jax.vmap(lambda t: target_grad(forward, baselines + t * diff, target))(a)

  def weighted_sum(a, w):
    g = grads_at(a)
    return jnp.sum(w.reshape((-1,) + (1,) * inputs.ndim) * g, axis=0)

  if batch_size is None or batch_size >= steps:
    return weighted_sum(jnp.asarray(alphas, dtype), jnp.asarray(weights, dtype))
  chunks = -(-steps // batch_size)
  pad = chunks * batch_size - steps  # padded points: alpha 1, weight 0
  a = np.concatenate([alphas, np.ones(pad)]).reshape(chunks, batch_size)
  w = np.concatenate([weights, np.zeros(pad)]).reshape(chunks, batch_size)

  def body(total, aw):
    return total + weighted_sum(*aw), None

  total, _ = jax.lax.scan(body, jnp.zeros_like(inputs),
                          (jnp.asarray(a, dtype), jnp.asarray(w, dtype)))
  return total


@functools.partial(jax.jit, static_argnames=("steps", "method", "batch_size"))
def _integrated_gradients(forward, inputs, target, baselines, *, steps, method, batch_size):
  total = _path_integral(forward, inputs, target, baselines, steps=steps, method=method,
                         batch_size=batch_size)
  return total * (inputs - baselines)


def _check_options(steps, method, batch_size):
  if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)):
    raise ValueError(f"`steps` must be an int, got {steps!r}")
  approximation(method, int(steps))  # validates method and steps
  if batch_size is not None and (isinstance(batch_size, bool) or
                                 not isinstance(batch_size, (int, np.integer)) or batch_size < 1):
    raise ValueError(f"`batch_size` must be a positive int or None, got {batch_size!r}")


@register("integrated_gradients", kind="path", signed=True, label="integrated gradients",
          defaults={"steps": 50}, aliases=("ig",))
def integrated_gradients(forward, inputs, target, *, baselines=None, steps: int = 50,
                         method: str = "gausslegendre", batch_size: int | None = None,
                         key=None):
  """Integrated gradients along the straight path from ``baselines`` to ``inputs``.

  ``(x − b) · sum_s w_s ∇f_t(b + α_s (x − b))`` with Captum ``IntegratedGradients``' points
  ``α_s`` and weights ``w_s`` (:func:`approximation`); the path is vmapped.

  Args:
    forward: ``(N, H, W, C) -> (N, K)`` logits.
    inputs: float images ``(N, H, W, C)``.
    target: int or ``(N,)`` ints.
    baselines: ``None``/``"black"`` (zeros, Captum's default), a number, ``"blur"``,
      ``"uniform"`` (needs ``key``) or an array of the shape of ``inputs`` (or of one image);
      see :func:`jaxplain.attribution.baselines.make_baselines`.
    steps: path points (Captum ``n_steps``). Static.
    method: ``"riemann_left"``, ``"riemann_right"``, ``"riemann_middle"``,
      ``"riemann_trapezoid"`` or ``"gausslegendre"`` (default, as Captum). Static.
    batch_size: path points evaluated at once (each over all N images); ``None``: all of them.
      Bounds memory to about ``batch_size × N`` forward/backward passes. Static.
    key: a ``jax.random`` key for ``baselines="uniform"``.

  Returns:
    Attributions of the shape and dtype of ``inputs``.
  """
  forward, inputs, target = check_call(forward, inputs, target)
  _check_options(steps, method, batch_size)
  b = make_baselines(inputs, baselines, key=key)
  return _integrated_gradients(forward, inputs, target, b, steps=int(steps), method=method,
                               batch_size=None if batch_size is None else int(batch_size))


@jax.jit
def _gap(forward, inputs, target, attributions, baselines):
  delta = select(forward(inputs), target) - select(forward(baselines), target)
  return jnp.sum(attributions.reshape(inputs.shape[0], -1), axis=1) - delta


def completeness_gap(forward, inputs, target, attributions, *, baselines=None, key=None):
  """Per example ``sum(attributions) − (f_t(x) − f_t(baseline))``: IG's completeness error.

  Args:
    forward, inputs, target: as for :func:`integrated_gradients`.
    attributions: ``(N, H, W, C)`` attributions of ``inputs``.
    baselines: the baselines the attributions were computed with (same forms as there; pass
      the same ``key`` for ``"uniform"``).
    key: a ``jax.random`` key for ``baselines="uniform"``.

  Returns:
    ``(N,)`` gaps (Captum's ``convergence_delta``).
  """
  forward, inputs, target = check_call(forward, inputs, target)
  if not hasattr(attributions, "shape") or tuple(attributions.shape) != tuple(inputs.shape):
    raise ValueError(f"`attributions` shape {tuple(getattr(attributions, 'shape', ()))} != "
                     f"`inputs` shape {tuple(inputs.shape)}")
  b = make_baselines(inputs, baselines, key=key)
  return _gap(forward, inputs, target, jnp.asarray(attributions, inputs.dtype), b)


def _levels(min_steps: int, max_steps: int) -> tuple[int, ...]:
  levels = [min_steps]
  while levels[-1] < max_steps:
    levels.append(min(2 * levels[-1], max_steps))
  return tuple(levels)


@functools.partial(jax.jit, static_argnames=("levels", "method", "batch_size"))
def _adaptive(forward, inputs, target, baselines, tol, *, levels, method, batch_size):
  n = inputs.shape[0]
  delta = select(forward(inputs), target) - select(forward(baselines), target)
  bound = tol * jnp.abs(delta)
  attr = jnp.zeros_like(inputs)
  used = jnp.zeros((n,), jnp.int32)
  done = jnp.zeros((n,), bool)
  for steps in levels:
    def run(_, steps=steps):
      return _integrated_gradients(forward, inputs, target, baselines, steps=steps,
                                   method=method, batch_size=batch_size)
    a = jax.lax.cond(jnp.all(done), jnp.zeros_like, run, inputs)
    ok = jnp.abs(jnp.sum(a.reshape(n, -1), axis=1) - delta) <= bound
    fresh = ~done
    attr = jnp.where(fresh.reshape((n,) + (1,) * (inputs.ndim - 1)), a, attr)
    used = jnp.where(fresh, steps, used)
    done = done | ok
  return attr, used


def integrated_gradients_adaptive(forward, inputs, target, *, tol: float = 0.01,
                                  max_steps: int = 512, min_steps: int = 16, baselines=None,
                                  method: str = "gausslegendre", batch_size: int | None = None,
                                  key=None):
  """Integrated gradients with as many path points as each example needs.

  Runs :func:`integrated_gradients` with ``min_steps``, then twice as many, ... up to
  ``max_steps`` points; each example keeps the first result whose completeness gap satisfies
  ``|gap| ≤ tol · |f_t(x) − f_t(baseline)|`` (the last level otherwise). The levels are fixed
  at trace time, so it compiles once and runs under ``jit``/``vmap``; a level is skipped
  (``lax.cond``) once every example is done.

  Args:
    forward, inputs, target: as for :func:`integrated_gradients`.
    tol: relative completeness tolerance.
    max_steps: the most path points an example may use. Static.
    min_steps: the points of the first level. Static.
    baselines, method, batch_size, key: as for :func:`integrated_gradients`.

  Returns:
    ``(attributions, steps)``: attributions of the shape and dtype of ``inputs`` and int32
    ``(N,)`` path points each example used (``max_steps`` also when it did not converge: check
    :func:`completeness_gap`).
  """
  forward, inputs, target = check_call(forward, inputs, target)
  _check_options(min_steps, method, batch_size)
  if isinstance(max_steps, bool) or not isinstance(max_steps, (int, np.integer)) or \
      max_steps < min_steps:
    raise ValueError(f"`max_steps` must be an int >= `min_steps` ({min_steps}), got {max_steps!r}")
  if not isinstance(tol, jax.core.Tracer) and (not np.isscalar(tol) or not tol >= 0):
    raise ValueError(f"`tol` must be a number >= 0, got {tol!r}")
  b = make_baselines(inputs, baselines, key=key)
  return _adaptive(forward, inputs, target, b, jnp.asarray(tol, inputs.dtype),
                   levels=_levels(int(min_steps), int(max_steps)), method=method,
                   batch_size=None if batch_size is None else int(batch_size))
