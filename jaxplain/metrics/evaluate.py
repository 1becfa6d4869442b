"""Which explanation to trust? Every registered attribution method (and native LIME) scored by
the metrics, as a table; and the data of the deletion/insertion and sanity-check figures.

The CLI (``jaxplain evaluate-explanations``) and the report call :func:`evaluate_methods`,
:func:`deletion_curves` and :func:`sanity_check`; :mod:`jaxplain.metrics.figures` draws them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxplain import lime as lime_lib
from jaxplain.attribution import registry
from jaxplain.attribution.explain import attribute, method_options
from jaxplain.metrics import complexity_family as complexity_lib
from jaxplain.metrics import (axiomatic, faithfulness,
                              localisation, randomisation, robustness)
from jaxplain.models import Classifier, check_images

__all__ = ["DEFAULT_METHODS", "DEFAULT_METRICS", "LIME", "METRICS", "CurvePair", "LimeMethod",
           "Metric", "RegisteredMethod", "SanityCheck", "Table", "deletion_curves",
           "evaluate_methods", "method_function", "sanity_check"]

LIME = "lime"
DEFAULT_METHODS = ("saliency", "input_x_gradient", "smoothgrad", "integrated_gradients",
                   "guided_backprop", "grad_cam", "occlusion", LIME)


@dataclasses.dataclass(frozen=True)
class RegisteredMethod:
  """A registered attribution method as a metric's ``method``: ``fn(classifier, inputs,
  target, key=None)`` through :func:`jaxplain.attribution.attribute` (registered defaults and
  default layer). Hashable by value, so metrics compile once per method."""

  name: str
  options: tuple = ()

  def __call__(self, classifier, inputs, target, key=None):
    return attribute(classifier, inputs, target, method=self.name, key=key, **dict(self.options))


@dataclasses.dataclass(frozen=True)
class LimeMethod:
  """Native LIME (:func:`jaxplain.lime.lime_batch`) as a pixel map: each pixel gets its
  superpixel's weight (:func:`jaxplain.lime.weights_to_image`). The superpixels are those of
  the original faces (``segments``), also for perturbed copies of them."""

  num_samples: int = 300
  max_segments: int = 64

  def __call__(self, classifier, inputs, target, *, segments, key):
    forward = classifier.forward if isinstance(classifier, Classifier) else classifier
    result = lime_lib.lime_batch(forward, inputs, target, segments, key=key,
                                 num_samples=self.num_samples, max_segments=self.max_segments)
    n = inputs.shape[0]
    pixels = jnp.take_along_axis(result.weights, segments.reshape(n, -1), axis=1)
    return jnp.broadcast_to(pixels.reshape(segments.shape + (1,)).astype(inputs.dtype),
                            inputs.shape)


def method_function(classifier: Classifier, name: str, images, *, key, lime_samples: int = 300):
  """``(method, method_options)`` for the metrics: a registered method by name, or ``"lime"``."""
  if name == LIME:
    segments = lime_lib.segment_faces(np.asarray(images))
    m = max(64, int(segments.max()) + 1)
    return LimeMethod(lime_samples, m), {"segments": jnp.asarray(segments, jnp.int32), "key": key}
  registry.get(name)
  options = method_options(classifier, name, {})
  static = tuple(sorted((k, v) for k, v in options.items()
                        if not hasattr(v, "shape")))
  return RegisteredMethod(registry.get(name).name, static), {"key": key}


class Metric(NamedTuple):
  """One column of the table: ``run(ctx) -> (N,)``, whether higher is better (``None``: no
  direction, a description), and its label."""

  run: Callable[[dict], Any]
  higher_is_better: bool | None
  label: str


def _normalised_auc(curve):
  steps = curve.curve.shape[1]
  return curve.auc / max(steps - 1, 1)


def _band(name):
  def run(c):
    mask = localisation.face_bands(c["images"].shape[1:3])[name]
    return localisation.region_share(c["forward"], c["images"], c["targets"], c["maps"],
                                     mask=mask)
  return run


METRICS: dict[str, Metric] = {
    "deletion": Metric(lambda c: _normalised_auc(faithfulness.pixel_flipping(
        c["forward"], c["images"], c["targets"], c["maps"], features_in_step=48)), False,
        "deletion AUC"),
    "insertion": Metric(lambda c: _normalised_auc(faithfulness.insertion(
        c["forward"], c["images"], c["targets"], c["maps"], features_in_step=48)), True,
        "insertion AUC"),
    "faithfulness_correlation": Metric(lambda c: faithfulness.faithfulness_correlation(
        c["forward"], c["images"], c["targets"], c["maps"], key=c["key"], nr_runs=50), True,
        "faithfulness correlation"),
    "road": Metric(lambda c: _normalised_auc(faithfulness.road(
        c["forward"], c["images"], c["targets"], c["maps"], key=c["key"],
        percentages=range(5, 100, 10))), False, "ROAD accuracy AUC"),
    "max_sensitivity": Metric(lambda c: robustness.max_sensitivity(
        c["classifier"], c["images"], c["targets"], c["maps"], method=c["method"],
        method_options=c["method_options"], key=c["key"], nr_samples=10), False,
        "max-sensitivity"),
    "model_parameter_randomisation": Metric(lambda c: jnp.mean(
        randomisation.model_parameter_randomisation(
            c["method"], c["classifier"], c["images"], c["targets"], key=c["key"],
            method_options=c["method_options"]).scores, axis=0), False,
        "randomisation rank corr."),
    "random_logit": Metric(lambda c: randomisation.random_logit(
        c["method"], c["classifier"], c["images"], c["targets"], key=c["key"],
        method_options=c["method_options"]), False, "random-logit SSIM"),
    "sparseness": Metric(lambda c: complexity_lib.sparseness(
        c["forward"], c["images"], c["targets"], c["maps"]), True, "sparseness (Gini)"),
    "complexity": Metric(lambda c: complexity_lib.complexity(
        c["forward"], c["images"], c["targets"], c["maps"]), False, "complexity (entropy)"),
    "input_invariance": Metric(lambda c: axiomatic.input_invariance(
        c["classifier"], c["images"], c["targets"], c["maps"], method=c["method"],
        method_options=c["method_options"]).astype(jnp.float32), True, "input invariance"),
    "eyes_share": Metric(_band("eyes"), None, "share in eye band"),
    "mouth_share": Metric(_band("mouth"), None, "share in mouth band"),
}
DEFAULT_METRICS = ("deletion", "insertion", "faithfulness_correlation", "max_sensitivity",
                   "model_parameter_randomisation", "random_logit", "sparseness", "complexity",
                   "eyes_share")


def finite_or_none(value) -> float | None:
  """``value`` as a float, or ``None`` (JSON ``null``) when it is NaN or infinite."""
  value = float(value)
  return value if np.isfinite(value) else None


@dataclasses.dataclass(frozen=True)
class Table:
  """Scores of each method under each metric.

  Attributes:
    methods: row names.
    metrics: column names (keys of :data:`METRICS`).
    scores: ``(method, metric)`` → ``(N,)`` per-face scores (NumPy).
  """

  methods: tuple[str, ...]
  metrics: tuple[str, ...]
  scores: Mapping[tuple[str, str], np.ndarray]

  def _over_faces(self, fn) -> np.ndarray:
    """``fn`` of each cell's finite scores (NaN where a cell has none)."""
    def cell(v):
      v = np.asarray(v, float)
      v = v[np.isfinite(v)]
      return fn(v) if v.size else np.nan
    return np.array([[cell(self.scores[m, k]) for k in self.metrics] for m in self.methods])

  def mean(self) -> np.ndarray:
    """``(methods, metrics)`` mean over the faces whose score is finite: a face can have none
    (a correlation with a constant map is NaN; an all-zero map's normalised max-sensitivity is
    infinite), counted by :meth:`undefined`."""
    return self._over_faces(np.mean)

  def std(self) -> np.ndarray:
    return self._over_faces(np.std)

  def undefined(self) -> np.ndarray:
    """``(methods, metrics)`` number of faces whose score is NaN or infinite."""
    return np.array([[int((~np.isfinite(np.asarray(self.scores[m, k], float))).sum())
                      for k in self.metrics] for m in self.methods])

  def cell(self, i: int, j: int, digits: int = 3) -> str:
    """``mean ± std`` of row ``i``, column ``j``, with the count of undefined faces if any."""
    v = np.asarray(self.scores[self.methods[i], self.metrics[j]], float)
    ok = v[np.isfinite(v)]
    if not ok.size:
      return "undefined"
    text = f"{ok.mean():.{digits}f} ± {ok.std():.{digits}f}"
    return text + (f" ({v.size - ok.size}/{v.size} faces undefined)" if ok.size < v.size else "")

  def best(self, metric: str) -> str | None:
    """The method with the best mean under ``metric`` (``None`` when it has no direction):
    among the methods scored on every face where there are any (a mean over fewer faces is
    not comparable), else among those with a finite mean."""
    hib = METRICS[metric].higher_is_better
    if hib is None:
      return None
    j = self.metrics.index(metric)
    col = self.mean()[:, j]
    complete = self.undefined()[:, j] == 0
    if (complete & np.isfinite(col)).any():
      col = np.where(complete, col, np.nan)
    if not np.isfinite(col).any():
      return None
    return self.methods[int(np.nanargmax(col) if hib else np.nanargmin(col))]

  def to_markdown(self, digits: int = 3) -> str:
    """The table as Markdown: ``mean ± std``, the best method of each column in bold."""
    arrows = {True: " ↑", False: " ↓", None: ""}
    heads = [METRICS[k].label + arrows[METRICS[k].higher_is_better] for k in self.metrics]
    lines = ["| method | " + " | ".join(heads) + " |", "|---" * (len(heads) + 1) + "|"]
    best = [self.best(k) for k in self.metrics]
    for i, m in enumerate(self.methods):
      cells = []
      for j in range(len(self.metrics)):
        cell = self.cell(i, j, digits)
        cells.append(f"**{cell}**" if best[j] == m else cell)
      lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines)

  def to_dict(self) -> dict:
    """JSON-ready (strict JSON: undefined values are ``None``): per metric, per method, the
    mean, std, number of undefined faces and per-face scores."""
    mean, std, bad = self.mean(), self.std(), self.undefined()
    return {"methods": list(self.methods), "metrics": list(self.metrics),
            "higher_is_better": {k: METRICS[k].higher_is_better for k in self.metrics},
            "labels": {k: METRICS[k].label for k in self.metrics},
            "mean": {m: {k: finite_or_none(mean[i, j]) for j, k in enumerate(self.metrics)}
                     for i, m in enumerate(self.methods)},
            "std": {m: {k: finite_or_none(std[i, j]) for j, k in enumerate(self.metrics)}
                    for i, m in enumerate(self.methods)},
            "undefined": {m: {k: int(bad[i, j]) for j, k in enumerate(self.metrics)}
                          for i, m in enumerate(self.methods)},
            "scores": {m: {k: [finite_or_none(v) for v in np.asarray(self.scores[m, k], float)]
                           for k in self.metrics} for m in self.methods}}


def _check_names(methods, metrics):
  known = set(registry.names()) | {LIME}
  bad = [m for m in methods if m not in known and m not in _aliases()]
  if bad:
    raise ValueError(f"`methods` {bad} are not registered; choose from {sorted(known)}")
  bad = [k for k in metrics if k not in METRICS]
  if bad:
    raise ValueError(f"`metrics` {bad} are unknown; choose from {list(METRICS)}")
  if not methods or not metrics:
    raise ValueError("`methods` and `metrics` must not be empty")


def _aliases():
  out = []
  for name in registry.names():
    out.extend(registry.get(name).aliases)
  return out


def _check_batch(classifier, images, targets):
  if not isinstance(classifier, Classifier):
    raise ValueError(f"`classifier` must be a jaxplain Classifier, got {type(classifier).__name__}")
  check_images(images, name="images", shape=classifier.input_shape)
  targets = np.asarray(targets)
  if targets.ndim == 0:
    targets = np.full(len(images), int(targets))
  if targets.shape != (len(images),) or not np.issubdtype(targets.dtype, np.integer):
    raise ValueError(f"`targets` must be ({len(images)},) class indices, got {targets.dtype} "
                     f"{targets.shape}")
  return jnp.asarray(images), jnp.asarray(targets, jnp.int32)


def _maps(classifier, name, method, options, images, targets):
  if name == LIME:
    return method(classifier, images, targets, **options)
  return method(classifier, images, targets, key=options["key"])


def evaluate_methods(classifier: Classifier, images, targets, *,
                     methods: Sequence[str] = DEFAULT_METHODS,
                     metrics: Sequence[str] = DEFAULT_METRICS, key,
                     progress: Callable[[int], Any] | None = None,
                     lime_samples: int = 300) -> Table:
  """Scores every method under every metric on the same faces.

  Args:
    classifier: the model.
    images: float ``(N, H, W, C)`` faces in [0, 1].
    targets: ``(N,)`` explained classes (the labels or the predictions).
    methods: registered attribution methods (:func:`jaxplain.attribution.registry.names`) and
      ``"lime"`` (native LIME on :func:`jaxplain.lime.segment_faces` superpixels).
    metrics: keys of :data:`METRICS` (each a metric of this package with the table's settings).
    key: PRNG key (method ``i``, metric ``j`` use ``fold_in(fold_in(key, i), j)``).
    progress: called with 1 after each (method, metric) cell, ``len(methods) * len(metrics)``
      in all (e.g. ``tqdm.update``).
    lime_samples: LIME's samples per face.

  Returns:
    :class:`Table`.
  """
  methods, metrics = tuple(methods), tuple(metrics)
  _check_names(methods, metrics)
  images, targets = _check_batch(classifier, images, targets)
  scores = {}
  for i, name in enumerate(methods):
    mkey = jax.random.fold_in(key, i)
    method, options = method_function(classifier, name, images, key=mkey,
                                      lime_samples=lime_samples)
    maps = _maps(classifier, name, method, options, images, targets)
    for j, metric in enumerate(metrics):
      ctx = dict(classifier=classifier, forward=classifier.forward, images=images,
                 targets=targets, maps=maps, method=method, method_options=options,
                 key=jax.random.fold_in(mkey, j + 1))
      scores[name, metric] = np.asarray(METRICS[metric].run(ctx), np.float64)
      if progress is not None:
        progress(1)
  return Table(methods, metrics, scores)


class CurvePair(NamedTuple):
  """Deletion and insertion curves of one method (data of the curve figure).

  Attributes:
    fraction: ``(S,)`` fraction of the pixels removed (deletion) or revealed (insertion).
    deletion, insertion: ``(N, S)`` target probability per face.
    deletion_auc, insertion_auc: ``(N,)`` areas, normalised to [0, 1].
  """

  fraction: np.ndarray
  deletion: np.ndarray
  insertion: np.ndarray
  deletion_auc: np.ndarray
  insertion_auc: np.ndarray


def deletion_curves(classifier: Classifier, images, targets, *,
                    methods: Sequence[str] = DEFAULT_METHODS, key, features_in_step: int = 48,
                    perturb_baseline="black", lime_samples: int = 300,
                    progress: Callable[[int], Any] | None = None) -> dict[str, CurvePair]:
  """Deletion (pixel flipping) and insertion curves of each method on the same faces."""
  methods = tuple(methods)
  _check_names(methods, ("deletion",))
  images, targets = _check_batch(classifier, images, targets)
  out = {}
  for i, name in enumerate(methods):
    method, options = method_function(classifier, name, images, key=jax.random.fold_in(key, i),
                                      lime_samples=lime_samples)
    maps = _maps(classifier, name, method, options, images, targets)
    kw = dict(features_in_step=features_in_step, perturb_baseline=perturb_baseline)
    d = faithfulness.pixel_flipping(classifier.forward, images, targets, maps, **kw)
    ins = faithfulness.insertion(classifier.forward, images, targets, maps, **kw)
    steps = d.curve.shape[1]
    features = int(np.prod(images.shape[1:]))
    fraction = np.minimum((np.arange(steps) + 1) * features_in_step, features) / features
    out[name] = CurvePair(fraction, np.asarray(d.curve), np.asarray(ins.curve),
                          np.asarray(_normalised_auc(d)), np.asarray(_normalised_auc(ins)))
    if progress is not None:
      progress(1)
  return out


class SanityCheck(NamedTuple):
  """Data of the sanity-check figure (Adebayo et al.'s cascading randomisation).

  Attributes:
    layers: ``("original", layer, ...)``, the last layer randomised first.
    maps: ``(L + 1, N, H, W, C)`` the method's maps (absolute, normalised) after each step.
    spearman: ``(L + 1, N)`` rank correlation of each map with the original one.
    ssim: ``(L + 1, N)`` SSIM of each map with the original one.
  """

  layers: tuple[str, ...]
  maps: np.ndarray
  spearman: np.ndarray
  ssim: np.ndarray


def sanity_check(classifier: Classifier, images, targets, *, method: str = "saliency", key,
                 layer_order: str = "top_down", lime_samples: int = 300) -> SanityCheck:
  """The maps of ``method`` as the classifier's layers are randomised, and their similarity to
  the original maps (the data of the sanity-check figure)."""
  _check_names((method,), ("deletion",))
  images, targets = _check_batch(classifier, images, targets)
  fn, options = method_function(classifier, method, images, key=key, lime_samples=lime_samples)
  layers, maps = randomisation.randomised_maps(fn, classifier, images, targets,
                                               key=jax.random.fold_in(key, 1),
                                               layer_order=layer_order, method_options=options)
  ref = jnp.asarray(maps[0])
  rho = np.stack([np.asarray(randomisation.similarity(ref, jnp.asarray(m), "spearman"))
                  for m in maps])
  s = np.stack([np.asarray(randomisation.similarity(ref, jnp.asarray(m), "ssim"))
                for m in maps])
  return SanityCheck(layers, maps, rho, s)
