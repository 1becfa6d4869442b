"""Faithfulness: does hiding what the explanation calls important change the model's output?

Perturbed copies are evaluated in fixed-size chunks, many per model call: inside one
jit-compiled function, ``batch_size`` perturbations of all N images per model call
(:func:`jaxplain.batching.chunked_map`), where Quantus runs one model call per step from a
Python loop. Pixel flipping, insertion and faithfulness correlation, given concrete arrays,
instead run cache-sized chunks of copies through one compiled forward from a host loop
(``_common.predict_rows``: on a CPU, NetworkV2 forwards of 32 faces cost 1.15 ms a face, of 64
faces 1.6 ms, and the program no longer holds one copy of the model per chunk); under a trace
(``jax.jit``, ``jax.vmap``) they stay one program. Both give the same scores.

Feature order: features are the entries of the flattened ``(H, W, C)`` map (for gray faces, the
pixels in row-major order, as Quantus flattens ``(C, H, W)``). Ties in the attributions are
broken by feature index (a stable sort); Quantus's ``np.argsort`` quicksort leaves their order
unspecified, so the two agree exactly on maps without ties.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxplain import batching
from jaxplain.metrics._common import (Curve, auc, auto_rows, auto_steps, baseline_values,
                                      check_baseline, check_features_in_step, check_metric_call,
                                      check_positive, evaluate_copies, flat, need_key, pearson,
                                      predict_rows, predict_target, preprocess, spearman, traced)

__all__ = ["faithfulness_correlation", "infidelity", "insertion", "monotonicity_correlation",
           "pixel_flipping", "region_perturbation", "road"]


# ---------------------------------------------------------------------------------------------
# Pixel flipping (deletion) and insertion
# ---------------------------------------------------------------------------------------------


def _flip_plan(inputs, attributions, key, *, features_in_step, perturb_baseline, abs,
               normalise):  # noqa: A002
  """``(step_of, fill)``, both ``(N, H, W, C)``: the step at which each feature is removed and
  the value it takes then."""
  a = flat(preprocess(attributions, normalise=normalise, abs=abs))
  d = a.shape[1]
  steps = math.ceil(d / features_in_step)
  order = jnp.argsort(-a, axis=1, stable=True)
  step_of = (jnp.argsort(order, axis=1) // features_in_step).reshape(inputs.shape)
  fill = baseline_values(inputs, perturb_baseline, key, (steps,))  # (N, S): a value per step
  fill = jnp.take_along_axis(fill, step_of.reshape(len(a), -1), axis=1).reshape(inputs.shape)
  return step_of, fill


_flip_plan_jit = jax.jit(_flip_plan, static_argnames=("features_in_step", "perturb_baseline",
                                                      "abs", "normalise"))


def _flipped(inputs, step_of, fill, k, insert):
  hidden = step_of <= k
  if insert:  # the first k + 1 steps' features revealed, the rest hidden
    return jnp.where(hidden, inputs, fill)
  return jnp.where(hidden, fill, inputs)


def _deleted_row(source, row):
  (inputs, step_of, fill), (i, k) = source, row
  return _flipped(inputs[i], step_of[i], fill[i], k, insert=False)


def _inserted_row(source, row):
  (inputs, step_of, fill), (i, k) = source, row
  return _flipped(inputs[i], step_of[i], fill[i], k, insert=True)


@functools.partial(jax.jit, static_argnames=("features_in_step", "perturb_baseline", "softmax",
                                             "abs", "normalise", "batch_size", "insert"))
def _flip(forward, inputs, target, attributions, key, *, features_in_step, perturb_baseline,
          softmax, abs, normalise, batch_size, insert):  # noqa: A002
  """The whole metric in one program (under a trace: jit, vmap)."""
  step_of, fill = _flip_plan(inputs, attributions, key, features_in_step=features_in_step,
                             perturb_baseline=perturb_baseline, abs=abs, normalise=normalise)
  steps = math.ceil(step_of[0].size / features_in_step)
  curve = evaluate_copies(forward, lambda k: _flipped(inputs, step_of, fill, k, insert),
                          jnp.arange(steps), target, softmax=softmax, batch_size=batch_size)
  return Curve(auc(curve), curve)


def _flipping(name, forward, inputs, target, attributions, key, *, features_in_step, abs,
              normalise, perturb_baseline, softmax, batch_size, insert):  # noqa: A002
  forward, inputs, target, attributions = check_metric_call(forward, inputs, target, attributions)
  f, d = check_features_in_step(features_in_step, inputs)
  perturb_baseline = check_baseline(perturb_baseline)
  key = need_key(key, perturb_baseline, name)
  steps = math.ceil(d / f)
  options = dict(features_in_step=f, perturb_baseline=perturb_baseline, abs=bool(abs),
                 normalise=bool(normalise))
  if traced(forward, inputs, target, attributions, key):
    return _flip(forward, inputs, target, attributions, key, **options, softmax=bool(softmax),
                 insert=insert,
                 batch_size=auto_steps(forward, inputs, steps, batch_size, forward_only=True))
  # Concrete arrays: cache-sized chunks of the N × steps copies from a host loop (see
  # faithfulness_correlation).
  n = inputs.shape[0]
  step_of, fill = _flip_plan_jit(inputs, attributions, key, **options)
  rows = (np.repeat(np.arange(n, dtype=np.int32), steps),
          np.tile(np.arange(steps, dtype=np.int32), n))
  curve = predict_rows(forward, (inputs, step_of, fill), target,
                       _inserted_row if insert else _deleted_row, rows, softmax=bool(softmax),
                       size=auto_rows(forward, inputs, n * steps, batch_size))
  curve = jnp.asarray(curve.reshape(n, steps))
  return Curve(auc(curve), curve)


def pixel_flipping(forward, inputs, target, attributions, *, key=None, features_in_step: int = 1,
                   abs: bool = False, normalise: bool = True,  # noqa: A002 (Quantus's name)
                   perturb_baseline="black", softmax: bool = True,
                   batch_size: int | None = None) -> Curve:
  """Pixel flipping (deletion): the target's score as the most relevant features are removed.

  Quantus ``PixelFlipping``: features are sorted by decreasing attribution; step ``k`` replaces
  the first ``(k + 1) · features_in_step`` of them with the baseline (cumulatively) and records
  the target's output. A faithful map makes the curve fall fast: lower AUC is better.

  Args:
    forward: ``(N, H, W, C) -> (N, K)`` (``classifier.forward`` or a ``Classifier``).
    inputs: float images ``(N, H, W, C)``.
    target: the explained class, int or ``(N,)``.
    attributions: ``(N, H, W, C)`` (or ``(N, H, W)``) maps.
    key: PRNG key, needed only for ``perturb_baseline="uniform"``.
    features_in_step: features removed per step (static).
    abs, normalise: Quantus's pre-processing of the maps (see ``preprocess``; order only).
    perturb_baseline: ``"black"`` (the image's minimum, Quantus's default), ``"white"`` (its
      maximum), ``"mean"`` (its mean), ``"uniform"`` (a U(0, 1) value per step) or a number.
      Quantus computes ``"mean"`` on the already perturbed image at each step; here it is the
      original image's mean.
    softmax: score the softmax probability (Quantus's default) rather than the raw output.
    batch_size: perturbation steps evaluated per model call (each call sees N × batch_size
      images); ``None`` fits :func:`jaxplain.batching.default_budget` (on a CPU, about
      ``FAST_ROWS`` = 32 images a call).

  Returns:
    :class:`Curve`: ``curve (N, ceil(D / features_in_step))`` and its ``auc (N,)`` (Quantus's
    ``return_auc_per_sample``).

  References:
    Bach et al., "On pixel-wise explanations for non-linear classifier decisions by layer-wise
    relevance propagation", PLoS ONE 2015.
  """
  return _flipping("pixel_flipping", forward, inputs, target, attributions, key,
                   features_in_step=features_in_step, abs=abs, normalise=normalise,
                   perturb_baseline=perturb_baseline, softmax=softmax, batch_size=batch_size,
                   insert=False)


def insertion(forward, inputs, target, attributions, *, key=None, features_in_step: int = 1,
              abs: bool = False, normalise: bool = True,  # noqa: A002
              perturb_baseline="black", softmax: bool = True,
              batch_size: int | None = None) -> Curve:
  """Insertion: the target's score as the most relevant features are revealed on a blank image.

  The mirror of :func:`pixel_flipping` (RISE's insertion game, not in Quantus): the image starts
  all baseline, and step ``k`` restores the first ``(k + 1) · features_in_step`` features in
  decreasing attribution order. A faithful map makes the curve rise fast: higher AUC is better.
  Arguments as :func:`pixel_flipping`.

  References:
    Petsiuk et al., "RISE: Randomized Input Sampling for Explanation of Black-box Models",
    BMVC 2018.
  """
  return _flipping("insertion", forward, inputs, target, attributions, key,
                   features_in_step=features_in_step, abs=abs, normalise=normalise,
                   perturb_baseline=perturb_baseline, softmax=softmax, batch_size=batch_size,
                   insert=True)


# ---------------------------------------------------------------------------------------------
# Region perturbation
# ---------------------------------------------------------------------------------------------


def _padding(dim: int, patch: int) -> tuple[int, int]:
  """Quantus ``get_padding_size``: pad to a multiple of ``patch``, half before, half after."""
  rest = dim % patch
  if rest == 0:
    return 0, 0
  total = patch - rest
  return total // 2, total - total // 2


@functools.partial(jax.jit, static_argnames=("patch_size", "order", "regions", "perturb_baseline",
                                             "softmax", "abs", "normalise", "batch_size"))
def _region(forward, inputs, target, attributions, key, *, patch_size, order, regions,
            perturb_baseline, softmax, abs, normalise, batch_size):  # noqa: A002
  n, h, w, _ = inputs.shape
  a = preprocess(attributions, normalise=normalise, abs=abs)
  (h0, h1), (w0, w1) = _padding(h, patch_size), _padding(w, patch_size)
  nbh, nbw = (h + h0 + h1) // patch_size, (w + w0 + w1) // patch_size
  rows = (np.arange(h) + h0) // patch_size
  cols = (np.arange(w) + w0) // patch_size
  block = jnp.asarray(rows[:, None] * nbw + cols[None, :])  # (H, W) block of each pixel
  sums = jax.vmap(lambda m: jax.ops.segment_sum(m.sum(-1).reshape(-1), block.reshape(-1),
                                                num_segments=nbh * nbw))(a)  # (N, B)
  kb, kv = jax.random.split(key)
  if order == "morf":
    ordered = jnp.argsort(-sums, axis=1, stable=True)
  elif order == "lerf":
    ordered = jnp.argsort(sums, axis=1, stable=True)
  else:
    ordered = jax.vmap(lambda k: jax.random.permutation(k, nbh * nbw))(jax.random.split(kb, n))
  position = jnp.argsort(ordered, axis=1)  # (N, B): step at which each block is removed
  step_of = jnp.take_along_axis(position, jnp.broadcast_to(block.reshape(1, -1), (n, h * w)),
                                axis=1).reshape(n, h, w, 1)
  fill = baseline_values(inputs, perturb_baseline, kv, (regions,))
  fill = jnp.take_along_axis(fill, jnp.minimum(step_of, regions - 1).reshape(n, -1),
                             axis=1).reshape(n, h, w, 1)
  y = predict_target(forward, inputs, target, softmax)

  def make(k):
    return jnp.where(step_of <= k, fill, inputs)

  curve = y[:, None] - evaluate_copies(forward, make, jnp.arange(regions), target,
                                       softmax=softmax, batch_size=batch_size)
  return Curve(auc(curve), curve)


def region_perturbation(forward, inputs, target, attributions, *, key=None, patch_size: int = 8,
                        order: str = "morf", regions_evaluation: int = 100,
                        abs: bool = False, normalise: bool = True,  # noqa: A002
                        perturb_baseline="black", softmax: bool = True,
                        batch_size: int | None = None) -> Curve:
  """Region perturbation: the drop of the target's score as patches are removed in order.

  Quantus ``RegionPerturbation``: the image (padded to a multiple of ``patch_size``, half
  before, half after) is cut into non-overlapping ``patch_size`` squares, ranked by their summed
  attribution (over all channels); step ``k`` replaces the first ``k + 1`` patches with the
  baseline (cumulatively). The curve is ``y(original) − y(perturbed)``: for ``"morf"`` (most
  relevant first) a faithful map makes it rise fast (higher AUC, the AOPC, is better).

  Args:
    forward, inputs, target, attributions: as :func:`pixel_flipping`.
    key: PRNG key, for ``order="random"`` or ``perturb_baseline="uniform"``.
    patch_size: side of the square patches (static).
    order: ``"morf"``, ``"lerf"`` (least relevant first) or ``"random"``.
    regions_evaluation: steps (patches removed), at most the number of patches.
    abs, normalise, perturb_baseline, softmax, batch_size: as :func:`pixel_flipping`.

  Returns:
    :class:`Curve` with ``curve (N, min(regions_evaluation, patches))`` and its ``auc``.

  References:
    Samek et al., "Evaluating the visualization of what a deep neural network has learned",
    IEEE TNNLS 2017.
  """
  forward, inputs, target, attributions = check_metric_call(forward, inputs, target, attributions)
  p = check_positive(patch_size, "patch_size")
  if p > min(inputs.shape[1:3]):
    raise ValueError(f"`patch_size` must fit the {tuple(inputs.shape[1:3])} images, got {p}")
  if order not in ("morf", "lerf", "random"):
    raise ValueError(f"`order` must be 'morf', 'lerf' or 'random', got {order!r}")
  regions = check_positive(regions_evaluation, "regions_evaluation")
  blocks = math.prod(-(-s // p) for s in inputs.shape[1:3])
  regions = min(regions, blocks)
  perturb_baseline = check_baseline(perturb_baseline)
  if order == "random" and key is None:
    raise ValueError("region_perturbation: `order='random'` draws a random order, pass `key`")
  key = need_key(key, perturb_baseline, "region_perturbation")
  return _region(forward, inputs, target, attributions, key, patch_size=p, order=order,
                 regions=regions, perturb_baseline=perturb_baseline, softmax=bool(softmax),
                 abs=bool(abs), normalise=bool(normalise),
                 batch_size=auto_steps(forward, inputs, regions, batch_size, forward_only=True))


# ---------------------------------------------------------------------------------------------
# Faithfulness correlation
# ---------------------------------------------------------------------------------------------


def random_subsets(key, n: int, runs: int, features: int, size: int):
  """``(n, runs, size)`` indices: for each image and run, ``size`` distinct features drawn
  uniformly (a uniform random subset, as ``np.random.choice(replace=False)`` draws)."""
  u = jax.random.uniform(key, (n, runs, features))
  return jax.lax.top_k(u, size)[1]


def _faith_score(forward, inputs, target, attributions, indices, preds, *, softmax, abs,
                 normalise):  # noqa: A002
  """Pearson correlation of each subset's summed attribution with the output's drop."""
  a = flat(preprocess(attributions, normalise=normalise, abs=abs))
  y = predict_target(forward, inputs, target, softmax)
  sums = jnp.take_along_axis(a[:, None, :], indices, axis=2).sum(-1)  # (N, R)
  return pearson(sums, y[:, None] - preds)


_faith_finish = jax.jit(_faith_score, static_argnames=("softmax", "abs", "normalise"))


def _subset_removed(inputs, row):
  """One perturbed copy: image ``i`` with the features ``idx`` set to ``value``."""
  i, idx, value = row
  return inputs[i].reshape(-1).at[idx].set(value).reshape(inputs.shape[1:])


@functools.partial(jax.jit, static_argnames=("perturb_baseline", "softmax", "abs", "normalise",
                                             "batch_size"))
def _faith_corr(forward, inputs, target, attributions, indices, key, *, perturb_baseline, softmax,
                abs, normalise, batch_size):  # noqa: A002
  """The whole metric in one program (under a trace: jit, vmap); chunks of copies of all N
  images (:func:`evaluate_copies`)."""
  n = inputs.shape[0]
  runs = indices.shape[1]
  fill = baseline_values(inputs, perturb_baseline, key, (runs,))  # (N, R)
  rows = jnp.arange(n)[:, None]

  def make(step):
    idx, value = step  # (N, size), (N,)
    x = flat(inputs).at[rows, idx].set(value[:, None])
    return x.reshape(inputs.shape)

  preds = evaluate_copies(forward, make, (indices.transpose(1, 0, 2), fill.T), target,
                          softmax=softmax, batch_size=batch_size)
  return _faith_score(forward, inputs, target, attributions, indices, preds, softmax=softmax,
                      abs=abs, normalise=normalise)


def faithfulness_correlation(forward, inputs, target, attributions, *, key=None,
                             nr_runs: int = 100, subset_size: int = 224,
                             abs: bool = False, normalise: bool = True,  # noqa: A002
                             perturb_baseline="black", softmax: bool = False, indices=None,
                             batch_size: int | None = None):
  """Faithfulness correlation: Pearson correlation, over random feature subsets, between the
  subset's summed attribution and the drop of the target's output when it is removed.

  Quantus ``FaithfulnessCorrelation``: ``nr_runs`` times, ``subset_size`` features drawn
  uniformly without replacement are set to the baseline; the score is the Pearson correlation
  of ``sum(a[subset])`` with ``y(x) − y(x_perturbed)``. Higher is better.

  Args:
    forward, inputs, target, attributions: as :func:`pixel_flipping`.
    key: PRNG key for the subsets (and a ``"uniform"`` baseline); required unless ``indices``.
    nr_runs: random subsets per image.
    subset_size: features per subset (less than the image's features).
    abs, normalise, perturb_baseline: as :func:`pixel_flipping`.
    softmax: Quantus's default here is the raw output (False).
    indices: ``(N, nr_runs, subset_size)`` int feature indices (into the flattened ``(H, W,
      C)`` image) to use instead of drawing them: the same draws as another run.
    batch_size: subsets of each image evaluated per model call (``batch_size · N`` copies);
      ``None``: what fits the memory budget (on a CPU, about ``FAST_ROWS`` = 32 copies a call).

  Returns:
    ``(N,)`` correlations in [-1, 1] (NaN where either side is constant).

  References:
    Bhatt et al., "Evaluating and Aggregating Feature-based Model Explanations", IJCAI 2020.
  """
  forward, inputs, target, attributions = check_metric_call(forward, inputs, target, attributions)
  n, d = inputs.shape[0], int(np.prod(inputs.shape[1:]))
  perturb_baseline = check_baseline(perturb_baseline)
  if indices is None:
    runs = check_positive(nr_runs, "nr_runs")
    size = check_positive(subset_size, "subset_size")
    if size >= d:
      raise ValueError(f"`subset_size` must be smaller than the {d} features, got {size}")
    if key is None:
      raise ValueError("faithfulness_correlation draws random subsets: pass `key` (or `indices`)")
    key, sub = jax.random.split(key)
    indices = random_subsets(sub, n, runs, d, size)
  else:
    indices = jnp.asarray(indices)
    if indices.ndim != 3 or indices.shape[0] != n or not jnp.issubdtype(indices.dtype,
                                                                          jnp.integer):
      raise ValueError(f"`indices` must be int (N, nr_runs, subset_size) with N = {n}, got "
                       f"{indices.dtype} {tuple(indices.shape)}")
    key = need_key(key, perturb_baseline, "faithfulness_correlation")
  indices = indices.astype(jnp.int32)
  options = dict(softmax=bool(softmax), abs=bool(abs), normalise=bool(normalise))
  if traced(forward, inputs, target, attributions, indices, key):
    return _faith_corr(forward, inputs, target, attributions, indices, key,
                       perturb_baseline=perturb_baseline, **options,
                       batch_size=auto_steps(forward, inputs, indices.shape[1], batch_size,
                                             forward_only=True))
  # Concrete arrays: a host loop over cache-sized chunks of the N × nr_runs copies, one
  # compiled forward (compiles in seconds; the one-program path writes out up to 64 chunks).
  runs = indices.shape[1]
  fill = baseline_values(inputs, perturb_baseline, key, (runs,))  # (N, R)
  image = np.repeat(np.arange(n, dtype=np.int32), runs)
  preds = predict_rows(forward, inputs, target, _subset_removed,
                       (image, indices.reshape(n * runs, -1), fill.reshape(-1)),
                       softmax=options["softmax"],
                       size=auto_rows(forward, inputs, n * runs, batch_size))
  return _faith_finish(forward, inputs, target, attributions, indices,
                       jnp.asarray(preds.reshape(n, runs)), **options)


# ---------------------------------------------------------------------------------------------
# Monotonicity correlation
# ---------------------------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=("features_in_step", "eps", "softmax", "abs",
                                             "normalise", "batch_size"))
def _monotonicity(forward, inputs, target, attributions, values, *, features_in_step, eps,
                  softmax, abs, normalise, batch_size):  # noqa: A002
  n = inputs.shape[0]
  a = flat(preprocess(attributions, normalise=normalise, abs=abs))
  d = a.shape[1]
  steps, samples = values.shape[1], values.shape[2]
  order = jnp.argsort(a, axis=1, stable=True)  # least relevant first
  step_of = (jnp.argsort(order, axis=1) // features_in_step).reshape(inputs.shape)
  y = predict_target(forward, inputs, target, softmax)
  inv = jnp.where(jnp.abs(y) >= eps, 1 / jnp.abs(y), 1.0) ** 2

  def make(step):
    k, value = step
    return jnp.where(step_of == k, value.reshape(n, 1, 1, 1), inputs)

  ks = jnp.repeat(jnp.arange(steps), samples)
  vs = values.transpose(1, 2, 0).reshape(steps * samples, n)
  preds = evaluate_copies(forward, make, (ks, vs), target, softmax=softmax,
                          batch_size=batch_size).reshape(n, steps, samples)
  variances = jnp.mean((preds - y[:, None, None]) ** 2, axis=2) * inv[:, None]
  ranked = jnp.take_along_axis(a, order, axis=1)
  ranked = jnp.pad(ranked, ((0, 0), (0, steps * features_in_step - d)))
  sums = ranked.reshape(n, steps, features_in_step).sum(-1)
  return spearman(sums, variances)


def monotonicity_correlation(forward, inputs, target, attributions, *, key=None,
                             nr_samples: int = 100, features_in_step: int = 1,
                             eps: float = 1e-5, abs: bool = True,  # noqa: A002
                             normalise: bool = True, perturb_baseline="uniform",
                             softmax: bool = True, values=None, batch_size: int | None = None):
  """Monotonicity correlation: Spearman correlation between each feature group's attribution
  and the variance its removal causes in the target's output.

  Quantus ``MonotonicityCorrelation``: features in increasing attribution order, in groups of
  ``features_in_step``; each group alone (not cumulatively) is set to a baseline value
  ``nr_samples`` times (a fresh U(0, 1) value each time by default), and the mean squared change
  of the target's output, divided by ``y(x)²`` (when ``|y| ≥ eps``), is its variance. Higher is
  better.

  Args:
    forward, inputs, target, attributions: as :func:`pixel_flipping`.
    key: PRNG key for ``"uniform"`` values (unless ``values`` is given).
    nr_samples: replacements per group.
    features_in_step: features per group (static).
    eps: below this ``|y(x)|`` the variance is not divided by ``y²``.
    abs, normalise, perturb_baseline, softmax: as :func:`pixel_flipping` (Quantus: abs=True).
    values: ``(N, groups, nr_samples)`` fill values to use instead of drawing them.
    batch_size: perturbed copies evaluated per model call.

  Returns:
    ``(N,)`` Spearman correlations.

  References:
    Nguyen & Martinez, "On quantitative aspects of model interpretability", 2020.
  """
  forward, inputs, target, attributions = check_metric_call(forward, inputs, target, attributions)
  n, d = inputs.shape[0], int(np.prod(inputs.shape[1:]))
  f = check_positive(features_in_step, "features_in_step")
  if f > d:
    raise ValueError(f"`features_in_step` must be at most the {d} features of an image, got {f}")
  steps = math.ceil(d / f)
  perturb_baseline = check_baseline(perturb_baseline)
  if values is None:
    samples = check_positive(nr_samples, "nr_samples")
    key = need_key(key, perturb_baseline, "monotonicity_correlation")
    values = baseline_values(inputs, perturb_baseline, key, (steps, samples))
  else:
    values = jnp.asarray(values, inputs.dtype)
    if values.ndim != 3 or values.shape[:2] != (n, steps):
      raise ValueError(f"`values` must have shape (N, groups, nr_samples) = ({n}, {steps}, ...), "
                       f"got {tuple(values.shape)}")
  return _monotonicity(forward, inputs, target, attributions, values, features_in_step=f,
                       eps=float(eps), softmax=bool(softmax), abs=bool(abs),
                       normalise=bool(normalise),
                       batch_size=auto_steps(forward, inputs, steps * values.shape[2],
                                             batch_size, forward_only=True))


# ---------------------------------------------------------------------------------------------
# ROAD: remove and debias, with noisy linear imputation
# ---------------------------------------------------------------------------------------------

# Quantus noisy_linear_imputation's neighbour weights: (row offset, column offset) -> weight.
_NEIGHBOURS = (((1, 1), 1 / 12), ((0, 1), 1 / 6), ((-1, 1), 1 / 12), ((1, -1), 1 / 12),
               ((0, -1), 1 / 6), ((-1, -1), 1 / 12), ((1, 0), 1 / 6), ((-1, 0), 1 / 6))


def _neighbour_sum(v):
  """``Σ w · v[r + dr, c + dc]`` over the 8 neighbours (zero outside): ``(H, W, C)``."""
  h, w = v.shape[:2]
  p = jnp.pad(v, ((1, 1), (1, 1), (0, 0)))
  return sum(wt * p[1 + dr:1 + dr + h, 1 + dc:1 + dc + w] for (dr, dc), wt in _NEIGHBOURS)


def linear_imputation(image, mask, *, tol: float | None = None, max_iter: int = 2000):
  """Fills the ``mask`` pixels of one ``(H, W, C)`` image with the weighted mean of their 8
  neighbours (Quantus ``noisy_linear_imputation`` without its noise), per channel.

  Quantus builds the sparse system — each hidden pixel equals the weighted average of its valid
  neighbours, hidden or not — and solves it with ``scipy.sparse.linalg.spsolve``. The system is
  symmetric positive definite (a graph Laplacian with known pixels as boundary), so here it is
  solved by Jacobi-preconditioned conjugate gradients with the 3×3 neighbour stencil as the
  operator: no matrix, fixed shapes, vmappable.
  """
  m = mask.astype(image.dtype)
  s = _neighbour_sum(jnp.ones_like(image))  # total weight of the valid neighbours

  def op(u):
    return m * (s * u - _neighbour_sum(m * u))

  b = m * _neighbour_sum((1 - m) * image)
  tol = (1e-6 if image.dtype == jnp.float32 else 1e-12) if tol is None else tol
  x = b / s
  r = b - op(x)
  z = r / s
  p = z
  rz = jnp.vdot(r, z)
  bound = (tol ** 2) * jnp.maximum(jnp.vdot(b, b), jnp.finfo(image.dtype).tiny)

  def cond(c):
    _, r, _, _, i = c
    return (jnp.vdot(r, r) > bound) & (i < max_iter)

  def body(c):
    x, r, p, rz, i = c
    ap = op(p)
    alpha = rz / jnp.where(jnp.vdot(p, ap) == 0, 1, jnp.vdot(p, ap))
    x = x + alpha * p
    r = r - alpha * ap
    z = r / s
    rz_new = jnp.vdot(r, z)
    p = z + (rz_new / jnp.where(rz == 0, 1, rz)) * p
    return x, r, p, rz_new, i + 1

  x, *_ = jax.lax.while_loop(cond, body, (x, r, p, rz, 0))
  return jnp.where(mask, x, image)


@functools.partial(jax.jit, static_argnames=("counts", "abs", "normalise", "batch_size"))
def _road(forward, inputs, target, attributions, key, noise, *, counts, abs, normalise,
          batch_size):  # noqa: A002
  a = flat(preprocess(attributions, normalise=normalise, abs=abs))
  order = jnp.argsort(-a, axis=1, stable=True)
  rank = jnp.argsort(order, axis=1).reshape(inputs.shape)
  keys = jax.random.split(key, len(counts))

  def make(step):
    count, k = step
    hidden = rank < count
    filled = jax.vmap(linear_imputation)(inputs, hidden)
    eps = jax.random.normal(k, inputs.shape, inputs.dtype)
    return jnp.where(hidden, filled + noise * eps, inputs)

  def correct(step):
    logits = forward(make(step))
    return (jnp.argmax(logits, axis=-1) == target).astype(inputs.dtype)

  curve = batching.chunked_map(correct, (jnp.asarray(counts), keys), batch_size=batch_size).T
  return Curve(auc(curve), curve)


def road(forward, inputs, target, attributions, *, key=None,
         percentages: Sequence[float] | None = None, noise: float = 0.01,
         abs: bool = False, normalise: bool = True,  # noqa: A002
         batch_size: int | None = None) -> Curve:
  """ROAD (remove and debias): is the target still predicted once the most relevant features
  are replaced by noisy linear imputation?

  Quantus ``ROAD`` (most relevant first): for each percentage ``p`` the top
  ``int(D · p / 100)`` features are filled by :func:`linear_imputation` from their neighbours
  plus ``noise · N(0, 1)``, and the curve records whether ``argmax`` still equals ``target``.
  Quantus returns the mean over the faces of its first batch only, as a dict per percentage;
  here every face's curve is returned (its mean over faces is Quantus's value). A faithful map
  makes accuracy fall fast: lower AUC is better.

  Args:
    forward, inputs, target, attributions: as :func:`pixel_flipping`.
    key: PRNG key for the imputation noise (required when ``noise > 0``).
    percentages: percentages of features removed (Quantus: 1, 3, ..., 99).
    noise: standard deviation of the noise added to imputed values.
    abs, normalise: as :func:`pixel_flipping`.
    batch_size: percentages evaluated per model call.

  Returns:
    :class:`Curve`: ``curve (N, P)`` of 0/1 (target still predicted) and its ``auc``.

  References:
    Rong et al., "A Consistent and Efficient Evaluation Strategy for Attribution Methods",
    ICML 2022.
  """
  forward, inputs, target, attributions = check_metric_call(forward, inputs, target, attributions)
  percentages = list(range(1, 100, 2)) if percentages is None else list(percentages)
  if not percentages or any(not 0 <= p <= 100 for p in percentages):
    raise ValueError(f"`percentages` must be numbers in [0, 100], got {percentages}")
  if not noise >= 0:
    raise ValueError(f"`noise` must be >= 0, got {noise}")
  if key is None:
    if noise > 0:
      raise ValueError("road adds random noise to imputed pixels: pass `key` (or noise=0)")
    key = jax.random.key(0)
  d = int(np.prod(inputs.shape[1:]))
  counts = tuple(int(d * p / 100) for p in percentages)
  return _road(forward, inputs, target, attributions, key, jnp.asarray(noise, inputs.dtype),
               counts=counts, abs=bool(abs), normalise=bool(normalise),
               batch_size=auto_steps(forward, inputs, len(counts), batch_size, forward_only=True))


# ---------------------------------------------------------------------------------------------
# Infidelity (Captum)
# ---------------------------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=("normalize", "batch_size"))
def _infidelity(forward, inputs, target, attributions, perturbations, *, normalize, batch_size):
  n = inputs.shape[0]
  y = predict_target(forward, inputs, target, False)
  preds = evaluate_copies(forward, lambda p: inputs - p, perturbations.transpose(1, 0, 2, 3, 4),
                          target, softmax=False, batch_size=batch_size)  # (N, S)
  diffs = y[:, None] - preds
  dots = jnp.sum((attributions[:, None] * perturbations).reshape(n, perturbations.shape[1], -1),
                 -1)
  samples = perturbations.shape[1]
  if normalize:
    s_aa, s_ad, s_dd = (dots ** 2).sum(-1), (dots * diffs).sum(-1), (diffs ** 2).sum(-1)
    beta = s_ad / jnp.where(s_aa == 0, 1, s_aa)
    return (beta * beta * s_aa - 2 * beta * s_ad + s_dd) / samples
  return ((dots - diffs) ** 2).sum(-1) / samples


def infidelity(forward, inputs, target, attributions, *, key=None, n_perturb_samples: int = 10,
               stdev: float = 0.003, normalize: bool = False, perturbations=None,
               batch_size: int | None = None):
  """Infidelity: expected squared error between ``aᵀI`` and ``f(x) − f(x − I)`` over random
  perturbations ``I`` (Captum ``captum.metrics.infidelity``).

  Captum takes a ``perturb_func``; here ``I ~ N(0, stdev²)`` per feature (the Gaussian
  perturbation of Captum's documented example and of the paper), or the given
  ``perturbations``. ``f`` is ``forward``'s raw output for ``target``. Lower is better.

  Args:
    forward, inputs, target, attributions: as :func:`pixel_flipping`.
    key: PRNG key (required unless ``perturbations``).
    n_perturb_samples: perturbations per image.
    stdev: standard deviation of the Gaussian perturbations.
    normalize: Captum's ``normalize``: rescale the attributions by the least-squares optimal
      ``β`` first (infidelity of ``β · a``).
    perturbations: ``(N, S, H, W, C)`` perturbations ``I`` to use instead of drawing them.
    batch_size: perturbations evaluated per model call.

  Returns:
    ``(N,)`` infidelity.

  References:
    Yeh et al., "On the (In)fidelity and Sensitivity of Explanations", NeurIPS 2019.
  """
  forward, inputs, target, attributions = check_metric_call(forward, inputs, target, attributions)
  if perturbations is None:
    samples = check_positive(n_perturb_samples, "n_perturb_samples")
    if key is None:
      raise ValueError("infidelity draws random perturbations: pass `key` (or `perturbations`)")
    perturbations = stdev * jax.random.normal(key, (inputs.shape[0], samples) + inputs.shape[1:],
                                              inputs.dtype)
  else:
    perturbations = jnp.asarray(perturbations, inputs.dtype)
    if perturbations.ndim != 5 or perturbations.shape[0] != inputs.shape[0] or \
        perturbations.shape[2:] != inputs.shape[1:]:
      raise ValueError(f"`perturbations` must have shape (N, S) + {tuple(inputs.shape[1:])} "
                       f"with N = {inputs.shape[0]}, got {tuple(perturbations.shape)}")
  return _infidelity(forward, inputs, target, attributions, perturbations,
                     normalize=bool(normalize),
                     batch_size=auto_steps(forward, inputs, perturbations.shape[1], batch_size,
                                           forward_only=True))
