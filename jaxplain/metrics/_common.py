"""What every metric shares: argument checks, Quantus's pre-processing (normalise, abs), the
perturbation baselines, the batched model evaluation of perturbed copies, and the similarity
functions (Pearson, Spearman, SSIM) written in JAX."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxplain import batching
from jaxplain.attribution._common import as_forward, check_target, num_classes, select
from jaxplain.models import check_images

__all__ = ["Curve", "auc", "check_metric_call", "pearson", "spearman", "ssim"]

BASELINES = ("black", "white", "mean", "uniform")


class Curve(NamedTuple):
  """A per-image curve (deletion, region perturbation, ROAD) and its area.

  Attributes:
    auc: ``(N,)`` area under each curve, trapezoidal with unit spacing (Quantus
      ``calculate_auc``, ``np.trapz(curve, dx=1)``).
    curve: ``(N, S)`` the score after each perturbation step.
  """

  auc: jax.Array
  curve: jax.Array


def auc(curve):
  """Trapezoidal area under ``(..., S)`` curves with unit spacing (``np.trapz(dx=1)``)."""
  curve = jnp.asarray(curve)
  if curve.shape[-1] < 2:
    return jnp.zeros(curve.shape[:-1], curve.dtype)
  return jnp.sum((curve[..., 1:] + curve[..., :-1]) / 2, axis=-1)


def check_metric_call(forward, inputs, target, attributions=None, *, need_attributions=True):
  """Validates ``metric(forward, inputs, target, attributions)`` before any work.

  Returns ``(forward, inputs, target, attributions)`` with ``forward`` a pytree ``Partial``,
  ``target`` int32 ``(N,)`` and ``attributions`` broadcast to the inputs' shape (an
  ``(N, H, W)`` or ``(N, H, W, 1)`` map is repeated over channels, as Quantus does).
  """
  fwd = as_forward(forward)
  check_images(inputs, name="inputs")
  inputs = jnp.asarray(inputs)
  k = num_classes(fwd, inputs)
  target = check_target(target, inputs.shape[0], k)
  if attributions is None:
    if need_attributions:
      raise ValueError("`attributions` must be an array (N, H, W, C) like `inputs`, got None")
    return fwd, inputs, target, None
  if not hasattr(attributions, "shape"):
    attributions = np.asarray(attributions)
  shape = tuple(attributions.shape)
  if len(shape) == 3:
    attributions = jnp.asarray(attributions)[..., None]
    shape = tuple(attributions.shape)
  if (len(shape) != 4 or shape[:3] != tuple(inputs.shape[:3])
      or shape[3] not in (1, inputs.shape[3])):
    raise ValueError(f"`attributions` shape {shape} != `inputs` shape {tuple(inputs.shape)} "
                     "(or (N, H, W) / (N, H, W, 1))")
  if not jnp.issubdtype(attributions.dtype, jnp.floating):
    raise ValueError(f"`attributions` must be float, got dtype {attributions.dtype}")
  attributions = jnp.broadcast_to(jnp.asarray(attributions, inputs.dtype), inputs.shape)
  return fwd, inputs, target, attributions


def check_positive(value, name: str, *, allow_none: bool = False) -> int | None:
  return batching.check_batch_size(value, name=name, allow_none=allow_none)


def check_features_in_step(features_in_step, inputs) -> tuple[int, int]:
  """``(f, d)``: ``features_in_step`` checked against the ``d`` features of one image."""
  f = check_positive(features_in_step, "features_in_step")
  d = int(np.prod(inputs.shape[1:]))
  if f > d:
    raise ValueError(f"`features_in_step` must be at most the {d} features of an image, got {f}")
  return f, d


def need_key(key, perturb_baseline, name: str):
  """``key``, required when ``perturb_baseline="uniform"`` draws values (else a fixed one)."""
  if perturb_baseline == "uniform" and key is None:
    raise ValueError(f"{name}: `perturb_baseline='uniform'` draws random values, pass `key`")
  return jax.random.key(0) if key is None else key


def explained_call(method, forward, inputs, target, attributions, method_options):
  """The checks of a metric that calls the attribution ``method`` itself, before any work.

  Returns:
    ``(method, model, inputs, target, attributions, static, dynamic)``: the checked method, the
    model as methods take it (:func:`as_model`), the checked inputs and targets, the maps
    (computed when ``attributions`` is ``None``) and the method's options split by
    :func:`split_options`.
  """
  method = check_method(method)
  model = as_model(forward)
  _, inputs, target, _ = check_metric_call(forward, inputs, target, None,
                                           need_attributions=False)
  static, dynamic = split_options(method_options)
  if attributions is None:
    attributions = call_method(method, model, inputs, target, static, dynamic)
  _, inputs, target, attributions = check_metric_call(forward, inputs, target, attributions)
  return method, model, inputs, target, attributions, static, dynamic


def check_baseline(perturb_baseline) -> str | float:
  if isinstance(perturb_baseline, str):
    if perturb_baseline.lower() not in BASELINES:
      raise ValueError(f"`perturb_baseline` must be one of {BASELINES} or a number, got "
                       f"{perturb_baseline!r}")
    return perturb_baseline.lower()
  if isinstance(perturb_baseline, (bool, np.bool_)) or not isinstance(
      perturb_baseline, (int, float, np.integer, np.floating)):
    raise ValueError(f"`perturb_baseline` must be one of {BASELINES} or a number, got "
                     f"{perturb_baseline!r}")
  return float(perturb_baseline)


def baseline_values(inputs, perturb_baseline, key=None, shape=()):
  """The value hidden features take, per image: ``(N,) + shape``.

  Quantus ``get_baseline_value(batched=True)``: ``black`` / ``white`` the image's own min / max,
  ``mean`` its mean, ``uniform`` a U(0, 1) draw per image (and per entry of ``shape``: one per
  perturbation step or sample), a number that number.
  """
  n = inputs.shape[0]
  axes = tuple(range(1, inputs.ndim))
  if perturb_baseline == "uniform":
    if key is None:
      raise ValueError("`perturb_baseline='uniform'` draws random values: pass `key`")
    return jax.random.uniform(key, (n,) + tuple(shape), inputs.dtype)
  if perturb_baseline == "black":
    v = inputs.min(axes)
  elif perturb_baseline == "white":
    v = inputs.max(axes)
  elif perturb_baseline == "mean":
    v = inputs.mean(axes)
  else:
    v = jnp.full((n,), perturb_baseline, inputs.dtype)
  return jnp.broadcast_to(v.reshape((n,) + (1,) * len(shape)), (n,) + tuple(shape))


def preprocess(attributions, *, normalise: bool, abs: bool):  # noqa: A002 (Quantus's name)
  """Quantus's ``normalise_by_max`` then ``abs``, per image.

  Quantus divides by the maximum |a| over the whole batch it is given (``normalise_axes``
  defaults to every axis, the batch axis included), so one face's score depends on the other
  faces of its batch of 64; here each map is divided by its own maximum (Quantus with
  ``normalise_func_kwargs={"normalise_axes": [1, 2, 3]}``, or with batches of one face). An
  all-zero map stays zero. Metrics that only rank or correlate attributions do not depend on
  the difference.
  """
  a = attributions
  if normalise:
    m = jnp.max(jnp.abs(a), axis=tuple(range(1, a.ndim)), keepdims=True)
    a = a / jnp.where(m > 0, m, 1)
  if abs:
    a = jnp.abs(a)
  return a


def predict_target(forward, x, target, softmax: bool):
  """The target class's output (softmax probability or raw output) for each row: ``(B,)``."""
  out = forward(x)
  if softmax:
    out = jax.nn.softmax(out, axis=-1)
  return select(out, target)


# Images per forward pass that run fastest on a CPU (cache-sized activations): what
# forward-only metrics aim for when a host loop runs their chunks (auto_rows). Measured with the
# converted NetworkV2 on the 2-core EPYC: 1.05-1.2 ms a face from 16 to 50 rows,
# 1.6 ms from 52 rows up (likely where two layers' activations outgrow the 32 MiB L3).
FAST_ROWS = 32
# Images per forward pass that chunks written out in one program aim for (auto_steps, under a
# trace): more than FAST_ROWS, since every chunk is compiled separately (NetworkV2: 50 chunks of
# 64 faces compile in about 12 s).
PROGRAM_ROWS = 64


def auto_steps(fn, inputs, steps: int, batch_size: int | None, *args,
               forward_only: bool = False) -> int:
  """How many perturbed copies of each image to evaluate in one call of ``fn(inputs, *args)``
  (a model's forward, or an attribution method) on the whole batch.

  ``batch_size`` given: that many (at most ``steps``). ``None``: as many as fit
  :func:`jaxplain.batching.default_budget` bytes of ``fn``'s activations on ``inputs`` (read off
  its jaxpr; ``args`` are traced too, so array options stay abstract): all of them when ``fn``
  is differentiated (:func:`jaxplain.batching.activation_bytes`), its live set when it is only
  evaluated (``forward_only``, :func:`jaxplain.batching.forward_bytes`).
  """
  if batch_size is not None:
    return int(min(check_positive(batch_size, "batch_size"), steps))
  x = jax.ShapeDtypeStruct(inputs.shape, inputs.dtype)
  measure = batching.forward_bytes if forward_only else batching.activation_bytes
  fit = batching.auto_batch_size(measure(lambda v, *a: fn(v, *a), x, *args), steps)
  if not forward_only or not batching.on_cpu():
    return fit
  # About PROGRAM_ROWS images a forward pass, in at most MAX_UNROLLED_CHUNKS chunks.
  fast = max(1, PROGRAM_ROWS // inputs.shape[0])
  fewest = -(-steps // batching.MAX_UNROLLED_CHUNKS)
  return min(fit, max(fast, fewest))


def auto_rows(forward, inputs, rows: int, batch_size: int | None) -> int:
  """Rows per model call for :func:`predict_rows`: ``rows`` perturbed copies in all, spread
  over the ``N`` images of ``inputs``.

  ``batch_size`` given: that many copies of every image (``batch_size · N`` rows, as
  :func:`auto_steps` counts). ``None``: what fits the memory budget, and on a CPU at most
  :data:`FAST_ROWS` (a host loop has no limit on the number of chunks, so chunks can be as
  small as runs fastest).
  """
  n = inputs.shape[0]
  if batch_size is not None:
    return int(min(check_positive(batch_size, "batch_size") * n, rows))
  x = jax.ShapeDtypeStruct(inputs.shape, inputs.dtype)
  fit = batching.auto_batch_size(batching.forward_bytes(forward, x), -(-rows // n)) * n
  if batching.on_cpu():
    fit = min(fit, FAST_ROWS)
  return int(max(1, min(fit, rows)))


traced = batching.traced


@functools.partial(jax.jit, static_argnames=("make_row", "softmax"))
def _predict_chunk(forward, source, target, rows, *, make_row, softmax):
  x = jax.vmap(make_row, in_axes=(None, 0))(source, rows)
  return predict_target(forward, x, target[rows[0]], softmax)


def predict_rows(forward, source, target, make_row: Callable, rows, *, softmax: bool,
                 size: int):
  """``predict_target`` of every perturbed copy, from a host loop over fixed-size chunks.

  ``rows`` is a tuple of arrays with a leading axis M, the first the copy's image index;
  ``make_row(source, row)`` builds one ``(H, W, C)`` copy from the pytree ``source`` (the
  inputs and what the metric prepared from them) and one row (a module-level function: it is
  part of the compiled chunk's identity). ``size`` rows run per call of one compiled function
  (:func:`jaxplain.batching.map_chunks`, the last chunk padded), so chunks stay cache-sized
  whatever M, and the model compiles once, where :func:`evaluate_copies` writes every chunk out
  in one program. Needs concrete arrays (callers under a trace use :func:`evaluate_copies`).

  Returns:
    ``(M,)`` NumPy scores.
  """

  def call(*chunk):
    return _predict_chunk(forward, source, target, chunk, make_row=make_row, softmax=softmax)

  return batching.map_chunks(call, rows, size=size)


def split_options(options) -> tuple[tuple, dict]:
  """A method's options as ``(static, dynamic)``: hashable Python values (they fix shapes and
  are part of the compiled function's identity) and arrays (traced, so new values do not
  recompile)."""
  static, dynamic = [], {}
  for k, v in dict(options or {}).items():
    if isinstance(v, (jax.Array, np.ndarray)) or (hasattr(v, "dtype") and hasattr(v, "shape")):
      dynamic[k] = v
    else:
      try:
        hash(v)
      except TypeError:
        raise ValueError(f"`method_options[{k!r}]` must be an array or a hashable value, got "
                         f"{type(v).__name__}") from None
      static.append((k, v))
  return tuple(sorted(static)), dynamic


def as_model(forward):
  """``forward`` as a pytree to pass to attribution methods: a ``Classifier`` stays one (layer
  methods need it), anything else becomes its ``Partial``."""
  from jaxplain.models import Classifier
  return forward if isinstance(forward, Classifier) else as_forward(forward)


def call_method(method, model, inputs, target, static, dynamic):
  """``method(model, inputs, target, **options)`` with the options :func:`split_options` split,
  broadcast to the inputs' shape (Grad-CAM returns one channel)."""
  return jnp.broadcast_to(method(model, inputs, target, **dict(static), **dynamic), inputs.shape)


def check_method(method, name: str = "method"):
  if not callable(method):
    raise ValueError(f"`{name}` must be an attribution function method(forward, inputs, target, "
                     f"**options), got {type(method).__name__}")
  try:
    hash(method)
  except TypeError:
    raise ValueError(f"`{name}` must be hashable (a function, not an unhashable object), got "
                     f"{type(method).__name__}") from None
  return method


def evaluate_copies(forward, make: Callable, steps, target, *, softmax: bool,
                    batch_size: int | None):
  """``predict_target(forward, make(step))`` for every step: ``(N, S)``.

  ``steps`` is a pytree with a leading axis S; ``make(step)`` builds the perturbed ``(N, H, W,
  C)`` batch for one step. Steps run ``batch_size`` at a time, vmapped, inside the caller's jit
  (:func:`jaxplain.batching.chunked_map`): one compilation, a few large model calls.
  """
  out = batching.chunked_map(lambda s: predict_target(forward, make(s), target, softmax), steps,
                             batch_size=batch_size)
  return out.T


def ranks(v):
  """Average ranks (1-based, ties share their mean rank) along the last axis, as
  ``scipy.stats.rankdata``."""
  s = jnp.sort(v, axis=-1)
  search = jnp.vectorize(lambda srt, x: jnp.stack([jnp.searchsorted(srt, x, side="left"),
                                                   jnp.searchsorted(srt, x, side="right")]),
                         signature="(n),(n)->(2,n)")
  lr = search(s, v).astype(v.dtype)
  return (lr[..., 0, :] + 1 + lr[..., 1, :]) / 2


def pearson(a, b):
  """Pearson correlation along the last axis (``scipy.stats.pearsonr``); NaN when constant."""
  a = a - a.mean(-1, keepdims=True)
  b = b - b.mean(-1, keepdims=True)
  na = jnp.sqrt(jnp.sum(a * a, -1))
  nb = jnp.sqrt(jnp.sum(b * b, -1))
  return jnp.clip(jnp.sum(a * b, -1) / (na * nb), -1, 1)


def spearman(a, b):
  """Spearman rank correlation along the last axis (``scipy.stats.spearmanr``, ties averaged)."""
  return pearson(ranks(a), ranks(b))


def _box(v, win: int, axes):
  """Mean over every full ``win``-wide window along ``axes`` ('valid' positions only)."""
  for ax in axes:
    n = v.shape[ax]
    v = sum(jax.lax.slice_in_dim(v, k, n - win + 1 + k, axis=ax) for k in range(win)) / win
  return v


def ssim(a, b, *, axes=(-2, -1), win_size: int = 7):
  """Structural similarity of ``a`` and ``b`` over ``axes`` (scikit-image
  ``structural_similarity`` defaults: uniform ``win_size`` window, K1 = 0.01, K2 = 0.03, sample
  covariance, the mean over windows lying inside the image), with Quantus's ``data_range``:
  the spread of both maps together. Returns one value per remaining index."""
  axes = tuple(ax % a.ndim for ax in axes)
  hi = jnp.maximum(a.max(axes, keepdims=True), b.max(axes, keepdims=True))
  lo = jnp.minimum(a.min(axes, keepdims=True), b.min(axes, keepdims=True))
  r = jnp.abs(hi - lo)
  np_ = win_size ** len(axes)
  cov = np_ / (np_ - 1)
  ux, uy = _box(a, win_size, axes), _box(b, win_size, axes)
  uxx, uyy, uxy = _box(a * a, win_size, axes), _box(b * b, win_size, axes), _box(a * b, win_size,
                                                                                   axes)
  vx, vy, vxy = cov * (uxx - ux * ux), cov * (uyy - uy * uy), cov * (uxy - ux * uy)
  c1, c2 = (0.01 * r) ** 2, (0.03 * r) ** 2
  s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux ** 2 + uy ** 2 + c1) * (vx + vy + c2))
  return s.mean(axes)


def flat(a):
  return a.reshape(a.shape[0], -1)
