"""What each ``jaxplain`` subcommand does, as library calls: validate, compute, write the files.

The CLI (:mod:`jaxplain.cli`) only parses arguments into these configs and calls one function;
defaults live once, in the config dataclasses below (and :class:`jaxplain.train.TrainConfig`,
:class:`jaxplain.report.ReportConfig`). Every function checks its options and its output folder
before any work starts, writes its folder atomically (nothing half-written), and never replaces
a folder that jaxplain did not write.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import pathlib
import sys
from collections.abc import Sequence

import numpy as np

from jaxplain import data as data_lib

__all__ = ["ConvertConfig", "EvaluateConfig", "ExplainConfig", "FiltersConfig", "LimeConfig",
           "MetricsConfig", "TARGETS", "check_output", "check_positive", "convert", "evaluate",
           "evaluate_explanations", "explain", "filters", "lime", "load_faces", "per_class",
           "progress_bar", "targets_for", "train"]

log = logging.getLogger("jaxplain")

# What an explanation is for, the same choices and default in every subcommand: the true class
# where the faces are labelled, else the predicted one.
TARGETS = ("true", "predicted")


def check_positive(name: str, value, *, zero: bool = False) -> None:
  """A ``ValueError`` naming option ``name`` unless ``value`` is a positive (or 0) number."""
  if value is None:
    return
  if isinstance(value, bool) or not np.isfinite(value) or value < 0 or (value == 0 and not zero):
    raise ValueError(f"{name} must be {'>= 0' if zero else 'a positive number'}, got {value}")


def check_target(target: str) -> str:
  target = {"pred": "predicted"}.get(target, target)
  if target not in TARGETS:
    raise ValueError(f"target must be one of {TARGETS}, got {target!r}")
  return target


@contextlib.contextmanager
def progress_bar(total: int, desc: str, unit: str = "face"):
  """A tqdm bar on stderr, shown when the ``jaxplain`` logger shows INFO (not with --quiet)."""
  from tqdm.auto import tqdm
  with tqdm(total=total, desc=desc, unit=unit, file=sys.stderr,
            disable=not log.isEnabledFor(logging.INFO)) as bar:
    yield bar


def _output(out, overwrite: bool):
  from jaxplain import checkpoint
  return checkpoint.atomic_directory(pathlib.Path(out), overwrite=overwrite, kind="report")


def _done(out, summary: str, wrote: str) -> pathlib.Path:
  """Prints a command's one-line ``summary``, logs what it ``wrote`` and returns ``out``."""
  print(summary)
  log.info(f"wrote {wrote} to {out}")
  return pathlib.Path(out)


def check_output(out, overwrite: bool) -> None:
  """Fails now, before any work, if ``out`` cannot be written (see :mod:`jaxplain.checkpoint`)."""
  from jaxplain import checkpoint
  checkpoint.check_output_dir(pathlib.Path(out), overwrite=overwrite, kind="report")


def _load(faces) -> data_lib.Faces:
  """``faces``, or what the loader ``faces()`` returns (commands validate before loading)."""
  return faces() if callable(faces) else faces


def labelled(faces: data_lib.Faces) -> bool:
  return len(faces) > 0 and bool((faces.labels >= 0).all())


def per_class(faces: data_lib.Faces, num_classes: int, count: int) -> data_lib.Faces:
  """The first ``count`` faces of each class (all faces for 0, or when unlabelled)."""
  check_positive("per-class", count, zero=True)
  if count and labelled(faces):
    faces = faces.take(np.concatenate([np.flatnonzero(faces.labels == k)[:count]
                                       for k in range(num_classes)]))
  if not len(faces):
    raise ValueError("no faces to explain")
  return faces


def targets_for(faces: data_lib.Faces, predictions, target: str) -> np.ndarray:
  """The class each explanation is for: true labels (when all known and asked), else predicted."""
  if check_target(target) == "true" and labelled(faces):
    return faces.labels.astype(np.int32)
  return np.asarray(predictions).astype(np.int32)


# ------------------------------------------------------------------------------- explain


@dataclasses.dataclass(frozen=True)
class ExplainConfig:
  """``jaxplain explain``: one registered attribution method over many faces."""

  method: str = "saliency"
  per_class: int = 1  # faces per class (0: all)
  target: str = "true"
  images_per_batch: int = 32
  seed: int = 0
  tol: float | None = None  # integrated gradients: refine each face to this completeness gap
  options: dict = dataclasses.field(default_factory=dict)  # the method's own options


def explain(clf, faces, out, cfg: ExplainConfig = ExplainConfig(), *,
            overwrite: bool = False) -> pathlib.Path:
  """Attributions of ``cfg.method`` for each face, as ``<method>.npz`` and pages of figures.

  ``faces`` is a :class:`~jaxplain.data.Faces` or a function returning one (called after the
  options and ``out`` are checked, like every command here).
  """
  import jax

  from jaxplain import attribution, batching, viz
  from jaxplain.attribution import registry
  method = registry.get(cfg.method)
  check_positive("images-per-batch", cfg.images_per_batch)
  check_positive("tol", cfg.tol)
  if cfg.tol is not None and method.name != "integrated_gradients":
    raise ValueError(f"--tol applies to integrated gradients only, not {method.name!r}")
  options = attribution.explain.check_method(clf, method.name, cfg.options)
  check_positive("per-class", cfg.per_class, zero=True)
  check_target(cfg.target)
  check_output(out, overwrite)
  faces = per_class(_load(faces), clf.num_classes, cfg.per_class)
  images = data_lib.to_float(faces.images)
  predictions = clf.predict(images).argmax(-1)
  targets = targets_for(faces, predictions, cfg.target)
  extra = {}
  with progress_bar(len(images), method.name) as bar:
    if cfg.tol is not None:
      ig_options = {k: v for k, v in options.items() if k in ("baselines", "batch_size")}
      fn = lambda x, t: attribution.integrated_gradients_adaptive(
          clf.forward, x, t, tol=cfg.tol, **ig_options)
      attrs, steps = batching.map_chunks(fn, (images, targets), size=cfg.images_per_batch,
                                         progress=bar.update)
      gaps = np.asarray(attribution.completeness_gap(clf.forward, images, targets, attrs))
      extra = {"steps": steps, "gaps": gaps}
    else:
      attrs = attribution.attribute_many(clf, images, targets, method=method.name,
                                         key=jax.random.key(cfg.seed),
                                         images_per_batch=cfg.images_per_batch,
                                         progress=bar.update, **options)
  name = method.name
  with _output(out, overwrite) as tmp:
    np.savez_compressed(tmp / f"{name}.npz", attributions=attrs, images=faces.images,
                        labels=faces.labels, targets=targets, predictions=predictions, **extra)
    which = "true" if np.array_equal(targets, faces.labels) else "predicted"
    label = f"{method.label} (target: {which} class)"
    for page, start in enumerate(range(0, len(images), clf.num_classes)):
      sl = slice(start, start + clf.num_classes)
      viz.save(viz.class_attribution_figure(
          images[sl], attrs[sl], clf.class_names, labels=targets[sl],
          predictions=predictions[sl], method_name=label,
          sign="all" if method.signed else "absolute_value"), tmp / f"{name}_{page:03d}.png")
    (tmp / f"{name}.json").write_text(json.dumps(
        {"method": name, "faces": len(images), "source": faces.source, "seed": cfg.seed,
         "target": cfg.target, "options": {k: _jsonable(v) for k, v in options.items()},
         "tol": cfg.tol}, indent=1))
  log.info(f"wrote {pathlib.Path(out) / f'{name}.npz'} and {page + 1} figure page(s)")
  return pathlib.Path(out)


def _jsonable(value):
  if isinstance(value, (str, int, float, bool)) or value is None:
    return value
  if isinstance(value, (list, tuple)):
    return [_jsonable(v) for v in value]
  return repr(value)


# ---------------------------------------------------------------------------------- LIME


@dataclasses.dataclass(frozen=True)
class LimeConfig:
  """``jaxplain lime``: native batched LIME per class with accuracy and the confusion matrix."""

  per_class: int = 3
  target: str = "true"
  num_samples: int = 1000
  num_features: int = 5
  n_segments: int = 50
  compactness: float = 0.1
  images_per_call: int = 8
  batch_size: int = 256  # images per forward pass
  seed: int = 0


def lime(clf, faces, out, cfg: LimeConfig = LimeConfig(), *,
         overwrite: bool = False) -> pathlib.Path:
  """LIME for each face's class; writes ``lime_classes.png``, ``lime.npz`` and ``lime.json``."""
  import jax

  from jaxplain import evaluation, lime as lime_lib, viz
  for name in ("num-samples", "num-features", "n-segments", "images-per-call", "batch-size",
               "compactness"):
    check_positive(name, getattr(cfg, name.replace("-", "_")))
  if cfg.num_samples < 2:
    raise ValueError(f"num-samples must be >= 2 (the face and one perturbation), got "
                     f"{cfg.num_samples}")
  check_target(cfg.target)
  check_positive("per-class", cfg.per_class, zero=True)
  check_output(out, overwrite)
  faces = _load(faces)
  known = labelled(faces)
  ev = evaluation.evaluate(clf, faces.images, faces.labels) if known else None
  faces = per_class(faces, clf.num_classes, cfg.per_class)
  images = data_lib.to_float(faces.images)
  probabilities = np.asarray(jax.nn.softmax(clf.predict(images), axis=-1))
  targets = targets_for(faces, probabilities.argmax(-1), cfg.target)
  segments = lime_lib.segment_faces(images, n_segments=cfg.n_segments,
                                    compactness=cfg.compactness)
  with progress_bar(len(images), "LIME") as bar:
    result = lime_lib.lime_many(clf, images, targets, segments, key=jax.random.key(cfg.seed),
                                num_samples=cfg.num_samples,
                                images_per_call=cfg.images_per_call,
                                batch_size=cfg.batch_size, progress=bar.update)
  chosen = probabilities[np.arange(len(targets)), targets]
  with _output(out, overwrite) as tmp:
    np.savez_compressed(tmp / "lime.npz", segments=segments, targets=targets,
                        labels=faces.labels, probabilities=probabilities, **result._asdict())
    viz.save(viz.lime_class_figure(
        images, segments, result.weights, targets, clf.class_names,
        labels=faces.labels if known else None, probabilities=chosen,
        per_class=None if ev is None else ev.per_class,
        confusion=None if ev is None else ev.confusion, num_features=cfg.num_features),
        tmp / "lime_classes.png")
    summary = {"faces": len(images), "source": faces.source,
               "config": dataclasses.asdict(cfg), "mean_score": float(np.mean(result.score)),
               "evaluation": None if ev is None else ev.to_json(clf.class_names)}
    (tmp / "lime.json").write_text(json.dumps(summary, indent=1))
  return _done(out, f"LIME on {len(images)} faces ({cfg.num_samples} samples each): mean R^2 of "
               f"the local models {summary['mean_score']:.3f}",
               "lime_classes.png, lime.npz and lime.json")


# ------------------------------------------------------------------------------- filters


@dataclasses.dataclass(frozen=True)
class FiltersConfig:
  """``jaxplain filters``: gradient ascent on a layer's filters and their outputs on a face."""

  layer: str | None = None  # default: feature_vis.default_layer
  filters: str = "0:64"
  steps: int = 256
  fourier: bool = True
  pixel_range: str = "sigmoid"
  jitter: int = 1
  tv: float = 0.0
  l2: float = 0.0
  blur_every: int = 0
  blur_sigma: float = 0.5
  filters_per_batch: int = 16
  seed: int = 0


def filters(clf, out, cfg: FiltersConfig = FiltersConfig(), *, face=None,
            overwrite: bool = False) -> pathlib.Path:
  """Writes ``filters_<layer>.png``, ``feature_maps_<layer>.png`` and their data."""
  import jax

  from jaxplain import feature_vis, viz
  check_positive("steps", cfg.steps)
  check_positive("filters-per-batch", cfg.filters_per_batch)
  for name in ("jitter", "tv", "l2", "blur_every", "blur_sigma"):
    check_positive(name.replace("_", "-"), getattr(cfg, name), zero=True)
  layer = cfg.layer or feature_vis.default_layer(clf)
  feature_vis.check_layer(clf, layer)
  chosen = feature_vis.parse_filters(cfg.filters, feature_vis.filter_count(clf, layer))
  check_output(out, overwrite)
  if face is None:
    sample = data_lib.sample_faces()
    face = sample.images[int(np.flatnonzero(sample.labels == 3)[0])]  # a happy face
  options = dict(steps=cfg.steps, fourier=cfg.fourier, jitter=cfg.jitter, tv=cfg.tv, l2=cfg.l2,
                 blur_every=cfg.blur_every, blur_sigma=cfg.blur_sigma,
                 pixel_range=cfg.pixel_range)
  with progress_bar(len(chosen), f"gradient ascent on {layer}", unit="filter") as bar:
    vis = feature_vis.maximize_filters(clf, layer, chosen, key=jax.random.key(cfg.seed),
                                       filters_per_batch=cfg.filters_per_batch,
                                       progress=bar.update,
                                       **options)
  index = (np.arange(len(chosen)), np.asarray(chosen))
  start = np.asarray(feature_vis.channel_activation(clf, vis.start_images, layer))[index]
  final = np.asarray(feature_vis.channel_activation(clf, vis.images, layer))[index]
  maps = np.asarray(feature_vis.activations(clf, data_lib.to_float(face[None]), layer))[0]
  bundled = data_lib.to_float(data_lib.sample_faces().images)
  ratios = feature_vis.ratio_to_best(clf, layer, chosen, vis.images, bundled) \
      if tuple(clf.input_shape) == bundled.shape[1:] else None
  with _output(out, overwrite) as tmp:
    viz.save(viz.filter_grid_figure(vis.images, chosen, layer=layer, ratios=ratios,
                                    reference=f"the best of {len(bundled)} bundled faces"),
             tmp / f"filters_{layer}.png")
    if maps.ndim == 3:  # spatial maps; a dense layer's units have none to draw
      viz.save(viz.feature_maps_figure(face, maps[..., chosen], chosen, layer=layer),
               tmp / f"feature_maps_{layer}.png")
    np.savez_compressed(tmp / f"filters_{layer}.npz", filters=np.asarray(chosen),
                        images=vis.images, trace=vis.trace, start_images=vis.start_images,
                        face=face, feature_maps=maps)
    summary = {"layer": layer, "filters": chosen, "config": dataclasses.asdict(cfg),
               "start_activation": start.tolist(), "final_activation": final.tolist(),
               "ratio_to_best_bundled_face": None if ratios is None else
               [None if np.isnan(r) else float(r) for r in ratios]}
    (tmp / f"filters_{layer}.json").write_text(json.dumps(summary, indent=1))
  return _done(out, f"{layer}: {len(chosen)} filters, mean activation {start.mean():.3g} at the "
               f"random start -> {final.mean():.3g} after {cfg.steps} steps",
               f"filters_{layer}.png and its data")


# ------------------------------------------------------------------------------ evaluate


@dataclasses.dataclass(frozen=True)
class EvaluateConfig:
  batch_size: int = 256


def evaluate(clf, faces, out=None, cfg: EvaluateConfig = EvaluateConfig(), *,
             overwrite: bool = False):
  """Accuracy, per-class accuracy, confusion matrix; with ``out`` also its figure and JSON."""
  from jaxplain import evaluation, viz
  check_positive("batch-size", cfg.batch_size)
  if out is not None:
    check_output(out, overwrite)
  faces = _load(faces)
  if not labelled(faces):
    raise ValueError(f"{faces.source}: evaluation needs labelled faces")
  ev = evaluation.evaluate(clf, faces.images, faces.labels, batch_size=cfg.batch_size)
  print(f"{faces.source}: {len(faces)} faces")
  print(ev.format(clf.class_names))
  if out is not None:
    with _output(out, overwrite) as tmp:
      viz.save(viz.confusion_figure(ev.confusion, clf.class_names, title=f"accuracy "
                                    f"{ev.accuracy:.3f} on {len(faces)} faces"),
               tmp / "confusion_matrix.png")
      (tmp / "evaluation.json").write_text(json.dumps(
          ev.to_json(clf.class_names) | {"source": faces.source}, indent=1))
    log.info(f"wrote confusion_matrix.png and evaluation.json to {out}")
  return ev


def load_faces(*, images: Sequence[str] | None = None, data: str | None = None,
               split: str | None = None, skip_bad: bool = False,
               default_split: str | None = None) -> data_lib.Faces:
  """The faces named by ``images`` (unlabelled) or ``data``/``split``, else the bundled ones."""
  if images:
    loaded = data_lib.load_images(images)  # unlabelled: label -1
    return data_lib.Faces(loaded, np.full(len(loaded), -1, np.int32),
                          np.full(len(loaded), "user"), source="--images")
  if data:
    faces = data_lib.load(data, skip_bad=skip_bad)
    if faces.skipped:
      log.warning(f"skipped {faces.skipped} malformed rows of {data}")
    split = split if split is not None else default_split
    return faces.split(split if split not in ("", "all") else None)
  log.info("no --data or --images: using the 35 bundled sample faces (5 per class)")
  return data_lib.sample_faces()


# --------------------------------------------------------------------------------- train


def train(data_path: str, out: str | None, config, *, train_split: str = "Training",
          val_split: str = "PublicTest", run_dir: str = "runs/fer", resume: bool = False,
          fresh: bool = False, stop_after: int | None = None, skip_bad: bool = False,
          overwrite: bool = False):
  """Trains the CNN on ``data_path`` (:func:`jaxplain.train.fit`) and saves it to ``out``."""
  import time

  from jaxplain import checkpoint, evaluation, train as train_lib
  if out:
    checkpoint.check_output_dir(pathlib.Path(out), overwrite=overwrite, kind="checkpoint")
  if run_dir:
    checkpoint.check_run_dir(run_dir, resume=resume, fresh=fresh)
  t0 = time.time()
  faces = data_lib.load(data_path, skip_bad=skip_bad)
  log.info(f"read {len(faces)} faces from {data_path} in {time.time() - t0:.1f}s"
           + (f" ({faces.skipped} malformed rows skipped)" if faces.skipped else ""))
  train_set = faces.split(train_split)
  val_set = faces.split(val_split) if val_split else None
  clf = train_lib.fit(train_set, val_set, config, run_dir=run_dir, resume=resume, fresh=fresh,
                      stop_after=stop_after, log=log.info)
  if out:
    extra = {}
    if val_set is not None:
      ev = evaluation.evaluate(clf, val_set.images, val_set.labels)
      extra["evaluation"] = {val_split: ev.to_json(clf.class_names)}
      print(ev.format(clf.class_names))
    extra["trained_on"] = {"file": pathlib.Path(data_path).name, "split": train_split,
                           "count": len(train_set)}
    path = checkpoint.save_classifier(clf, out, overwrite=overwrite, extra=extra)
    log.info(f"saved classifier to {path}")
  return clf


# ------------------------------------------------------------------------------- convert


@dataclasses.dataclass(frozen=True)
class ConvertConfig:
  """``jaxplain convert``: a PyTorch CNN to a jaxplain checkpoint."""

  model: str
  model_args: str | None = None  # JSON: {"in_c": 1} or [1, 32]
  weights: str | None = None
  key: str | None = None
  trusted: bool = False
  input_shape: tuple[int, ...] = (1, 48, 48)  # C, H, W
  mean: tuple[float, ...] = (0.0,)
  std: tuple[float, ...] = (1.0,)
  output_activation: str = "keep"
  frontend: str = "auto"  # "auto" (torch.fx, else torch.export), "fx" or "export"


def convert(out, cfg: ConvertConfig, *, overwrite: bool = False):
  """Converts ``cfg.model`` (with ``cfg.weights``) and saves it to ``out``; checks it on the
  bundled faces when it takes 48×48 input."""
  from jaxplain import checkpoint, convert as convert_lib
  checkpoint.check_output_dir(pathlib.Path(out), overwrite=overwrite, kind="checkpoint")
  module = convert_lib.build_module(cfg.model, cfg.model_args)
  model_args = json.loads(cfg.model_args) if cfg.model_args else {}
  if cfg.weights:
    convert_lib.load_torch_weights(module, cfg.weights, key=cfg.key, trusted=cfg.trusted)
  else:
    log.warning("no --weights: converting the module's freshly initialised weights")
  clf = convert_lib.from_torch(module, input_shape=cfg.input_shape, mean=list(cfg.mean),
                               std=list(cfg.std), output_activation=cfg.output_activation,
                               frontend=cfg.frontend)
  h, w, c = clf.input_shape
  path = checkpoint.save_classifier(clf, out, overwrite=overwrite, extra={
      "converted_from": {"model": cfg.model, "model_args": model_args,
                         "weights": pathlib.Path(cfg.weights).name if cfg.weights else None,
                         "key": cfg.key}})
  print(f"converted {type(module).__name__}: {len(clf.layer_names)} layers, "
        f"{clf.num_classes} outputs; saved to {path}")
  if (h, w) == (48, 48) and c in (1, 3):
    faces = data_lib.sample_faces()
    images = np.repeat(data_lib.to_float(faces.images), c, axis=-1)
    diff = convert_lib.torch_difference(module, clf, images)
    print(f"on {diff['n']} bundled FER2013 faces: max |torch - jax| = "
          f"{diff['max_abs_diff']:.3g}, predictions agree on {diff['argmax_agree']}/{diff['n']}")
  return clf


# ----------------------------------------------------------------- evaluate-explanations


@dataclasses.dataclass(frozen=True)
class MetricsConfig:
  """``jaxplain evaluate-explanations``: which explanation to trust, as a metrics table."""

  methods: tuple[str, ...] | None = None  # default: metrics.evaluate.DEFAULT_METHODS
  metrics: tuple[str, ...] | None = None  # default: metrics.evaluate.DEFAULT_METRICS
  per_class: int = 2
  target: str = "true"
  lime_samples: int = 300
  seed: int = 0


def evaluate_explanations(clf, faces, out, cfg: MetricsConfig = MetricsConfig(), *,
                          overwrite: bool = False):
  """Scores each attribution method under each explanation-quality metric
  (:func:`jaxplain.metrics.evaluate_methods`); writes ``metrics.json`` and ``metrics.md``."""
  import jax

  from jaxplain.metrics import evaluate as metrics_eval
  methods = tuple(cfg.methods or metrics_eval.DEFAULT_METHODS)
  metric_names = tuple(cfg.metrics or metrics_eval.DEFAULT_METRICS)
  metrics_eval._check_names(methods, metric_names)
  check_positive("per-class", cfg.per_class, zero=True)
  check_positive("lime-samples", cfg.lime_samples)
  check_target(cfg.target)
  check_output(out, overwrite)
  faces = per_class(_load(faces), clf.num_classes, cfg.per_class)
  images = data_lib.to_float(faces.images)
  targets = targets_for(faces, clf.predict(images).argmax(-1), cfg.target)
  with progress_bar(len(methods) * len(metric_names), "metrics", unit="cell") as bar:
    table = metrics_eval.evaluate_methods(clf, images, targets, methods=methods,
                                          metrics=metric_names, key=jax.random.key(cfg.seed),
                                          progress=bar.update, lime_samples=cfg.lime_samples)
  markdown = table.to_markdown()
  with _output(out, overwrite) as tmp:
    (tmp / "metrics.md").write_text(markdown + "\n")
    finite = np.vectorize(metrics_eval.finite_or_none, otypes=[object])
    (tmp / "metrics.json").write_text(json.dumps({  # strict JSON: undefined scores are null
        "faces": len(images), "source": faces.source, "config": dataclasses.asdict(cfg),
        "methods": list(methods), "metrics": list(metric_names),
        "mean": finite(table.mean()).tolist(), "std": finite(table.std()).tolist(),
        "undefined": table.undefined().tolist(),
        "scores": {f"{m}/{k}": finite(np.asarray(v, float)).tolist()
                   for (m, k), v in table.scores.items()}}, indent=1, allow_nan=False))
  print(markdown)
  log.info(f"wrote metrics.md and metrics.json to {out}")
  return table
