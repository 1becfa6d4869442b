"""``jaxplain report``: the assignment's four answers as figures and one HTML page.

One function per question, each returning its section (title, figures with captions, a table):

1. :func:`section_attributions`: each class's face under the registered attribution methods
   chosen by ``ReportConfig.methods`` (saliency, SmoothGrad, integrated gradients, Grad-CAM,
   guided backprop by default);
2. :func:`section_filters`: the filter patterns of a layer (gradient ascent) and the filters'
   outputs on a face;
3. :func:`section_lime`: native batched LIME per class, read with per-class accuracy and the
   confusion matrix, and the ``lime`` package's explanation of one face beside jaxplain's;
4. :func:`section_integrated_gradients`: integrated gradients refined per face until its
   completeness gap is below ``ig_tol``, with each face's gap and gradient evaluations.

With data (``--data``) it also measures, over many faces, the mean absolute attribution map per
class and method and the share of attribution in the eye, nose and mouth bands of the aligned
48×48 face. Computation lives here and in the method modules; figures and HTML in :mod:`viz`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import pathlib
import time
from collections.abc import Callable

import jax
import numpy as np

from jaxplain import attribution, batching, checkpoint, evaluation, feature_vis, viz
from jaxplain import data as data_lib, lime as lime_lib
from jaxplain.attribution import registry
from jaxplain.models import Classifier

__all__ = ["BANDS", "ReportConfig", "band_shares", "check", "class_mean_maps", "pick_faces",
           "report", "section_attributions", "section_filters", "section_integrated_gradients",
           "section_lime"]

log = logging.getLogger("jaxplain")

# Horizontal bands of the aligned 48×48 FER2013 face (rows, end exclusive), read off the mean
# PublicTest face: brows and eyes at rows 12-22 (pupils ~17), nose 23-32, mouth 33-43.
BANDS = {"eyes": (12, 23), "nose": (23, 33), "mouth": (33, 44)}


@dataclasses.dataclass(frozen=True)
class ReportConfig:
  """Settings of a report (those that apply are shown on the page)."""

  methods: tuple[str, ...] = ("saliency", "smoothgrad", "integrated_gradients", "grad_cam",
                              "guided_backprop")
  method_options: dict = dataclasses.field(default_factory=dict)  # name -> options of a method
  ig_tol: float = 0.01  # completeness gap of question 4's adaptive integral, relative
  gradcam_layer: str | None = None  # default: registry.default_layer
  filter_layer: str | None = None  # default: feature_vis.default_layer
  filters: int = 16
  filter_steps: int = 256
  trust_metrics: bool = False  # the "Which explanation to trust?" section (slow on a CPU)
  lime_samples: int = 1000
  lime_per_class: int = 2  # faces per class explained with LIME
  per_class: int = 50  # faces per class for the measured maps (with data)
  measure_ig_steps: int = 16  # fixed-step IG for the measured maps over many faces
  seed: int = 0


def check(cfg: ReportConfig, out, *, overwrite: bool = False) -> None:
  """Raises ``ValueError`` for bad settings or an output folder it must not write, before work."""
  for name in cfg.methods:
    registry.get(name)
  for name, options in cfg.method_options.items():
    unknown = set(options) - set(registry.get(name).options)
    if unknown:
      raise ValueError(f"method {name!r} takes no option(s) {sorted(unknown)}")
  for name in ("filters", "filter_steps", "lime_samples", "lime_per_class", "ig_tol"):
    value = getattr(cfg, name)
    if isinstance(value, bool) or not value > 0:
      raise ValueError(f"{name.replace('_', '-')} must be positive, got {value}")
  if cfg.per_class < 0:
    raise ValueError(f"per-class must be >= 0, got {cfg.per_class}")
  checkpoint.check_output_dir(pathlib.Path(out), overwrite=overwrite, kind="report")


def last_spatial_layer(clf: Classifier) -> str:
  """The default layer of the layer methods (:func:`registry.default_layer`)."""
  return registry.default_layer(clf)


def pick_faces(faces: data_lib.Faces, clf: Classifier):
  """One face per class (the first the model gets right, else the first), or all unlabelled.

  Returns:
    ``(images uint8 (n, 48, 48), targets (n,), row labels)``; unlabelled faces (``--images``)
    are explained for their predicted class.
  """
  logits = clf.predict(data_lib.to_float(faces.images))
  pred = logits.argmax(-1)
  if (faces.labels < 0).any():
    names = [f"face {i} → {clf.class_names[p]}" for i, p in enumerate(pred)]
    return faces.images, pred.astype(np.int32), names
  index, names = [], []
  for c, name in enumerate(clf.class_names):
    rows = np.flatnonzero(faces.labels == c)
    if len(rows) == 0:
      continue
    right = rows[pred[rows] == c]
    i = int(right[0] if len(right) else rows[0])
    index.append(i)
    names.append(f"{name} (pred. {clf.class_names[pred[i]]})")
  return faces.images[index], faces.labels[index], names


def _labels(clf: Classifier, cfg: ReportConfig) -> dict[str, str]:
  """Each method's column title (layer methods name their layer)."""
  layer = cfg.gradcam_layer or registry.default_layer(clf)
  return {n: f"{registry.get(n).label} ({layer})" if registry.get(n).layer
          else registry.get(n).label for n in cfg.methods}


def attribution_methods(clf: Classifier, cfg: ReportConfig, *, ig_steps: int | None = None
                        ) -> dict[str, Callable]:
  """The report's methods as ``f(key, x, target) -> (N, H, W, C)``, by name."""
  layer = cfg.gradcam_layer or registry.default_layer(clf)
  out = {}
  for name in cfg.methods:
    options = {"layer": layer} if registry.get(name).layer else {}
    options |= cfg.method_options.get(name, {})
    if ig_steps and "steps" in registry.get(name).options:
      options["steps"] = ig_steps
    # not wrapped in jit: each method compiles itself, and some (integrated gradients) drive
    # their chunks from Python when given concrete arrays, which XLA:CPU runs faster
    out[name] = lambda k, x, t, name=name, options=options: attribution.attribute(
        clf, x, t, method=name, key=k, **options)
  return out


def class_mean_maps(method: Callable, key, images_u8, labels, *, num_classes: int = 7,
                    batch_size: int = 64, progress: Callable | None = None):
  """Mean ``|attribution|`` map per class over many faces, in fixed-size batches on device.

  Args:
    method: ``f(key, x, target) -> attributions``.
    key: PRNG key (folded with the batch index).
    images_u8: uint8 ``(N, 48, 48)``; labels ``(N,)``: the target of each face.
    num_classes: K.
    batch_size: faces per call (the last batch is padded, so one compilation serves all).
    progress: called with the number of faces done.

  Returns:
    ``(K, H, W)`` mean absolute attribution (summed over channels) per class, NaN for a class
    without faces, and the count per class.
  """
  labels = np.asarray(labels).astype(np.int32)
  maps = batching.map_chunks(
      lambda k, x, t: np.abs(np.asarray(method(k, data_lib.to_float(x), t))).sum(-1),
      (images_u8, labels), size=batch_size, progress=progress, key=key)
  counts = np.bincount(labels, minlength=num_classes)
  sums = np.einsum("nk,nhw->khw", np.eye(num_classes)[labels], maps)
  with np.errstate(invalid="ignore", divide="ignore"):
    return sums / counts[:, None, None], counts


def band_shares(maps, bands: dict[str, tuple[int, int]] = BANDS) -> dict[str, np.ndarray]:
  """Share of total attribution mass in each row band, per map; ``other`` holds the rest.

  Args:
    maps: ``(..., H, W)`` non-negative attribution maps.
    bands: name → (first row, end row).

  Returns:
    name → ``(...)`` shares; with ``other`` they sum to 1.
  """
  maps = np.asarray(maps, np.float64)
  total = maps.sum((-2, -1))
  out = {}
  with np.errstate(invalid="ignore", divide="ignore"):
    for name, (r0, r1) in bands.items():
      out[name] = maps[..., r0:r1, :].sum((-2, -1)) / total
    out["other"] = 1.0 - sum(out.values())
  return out


def report(clf: Classifier, faces: data_lib.Faces, out: str | os.PathLike, *,
           config: ReportConfig = ReportConfig(), measure: data_lib.Faces | None = None,
           checkpoint_name: str = "", overwrite: bool = False,
           log: Callable[[str], None] = log.info) -> pathlib.Path:
  """Writes every figure and ``index.html`` into ``out``; returns the page's path.

  Args:
    clf: the classifier to explain.
    faces: the faces to show (one per class is picked; unlabelled faces are all shown).
    out: output directory (written to a temporary sibling, then moved into place; an existing
      folder is replaced only if it holds an earlier jaxplain report and ``overwrite``).
    config: settings.
    measure: labelled faces (a data split) for accuracy, the confusion matrix and the measured
      per-class maps; ``None``: accuracy on ``faces`` when labelled, no measured maps.
    checkpoint_name: shown on the page.
    overwrite: replace a jaxplain report already in ``out`` (a folder jaxplain did not write is
      never replaced: :func:`jaxplain.checkpoint.check_output_dir`).
    log: progress lines.
  """
  check(config, out, overwrite=overwrite)
  t_start = time.time()
  out = pathlib.Path(out).absolute()
  key = jax.random.key(config.seed)
  shown = pick_faces(faces, clf)
  with checkpoint.atomic_directory(out, overwrite=overwrite, kind="report") as tmp:
    sections = [
        section_attributions(clf, shown, tmp, config, jax.random.fold_in(key, 1), log),
        section_filters(clf, shown, tmp, config, jax.random.fold_in(key, 2), log),
        section_lime(clf, faces, measure, tmp, config, jax.random.fold_in(key, 3), log),
        section_integrated_gradients(clf, shown, tmp, config, log)]
    if config.trust_metrics:
      sections.append(section_trust(clf, shown, tmp, config, jax.random.fold_in(key, 5), log))
    if measure is not None:
      sections.append(_measured(clf, measure, tmp, config, jax.random.fold_in(key, 4), log))
    viz.write_report_html(tmp / "index.html", sections, title="jaxplain report",
                          model=_model_summary(clf, checkpoint_name),
                          settings=_settings(clf, config, measure)
                          | {"total seconds": round(time.time() - t_start, 1)})
  log(f"report written to {out / 'index.html'} in {time.time() - t_start:.0f}s")
  return out / "index.html"


def _settings(clf, cfg: ReportConfig, measure) -> dict:
  """The settings that applied, with defaults resolved (the layers actually used)."""
  settings = {
      "methods (question 1)": ", ".join(cfg.methods),
      **{f"{name} options": ", ".join(f"{k}={v}" for k, v in options.items())
         for name, options in cfg.method_options.items()},
      "layer of the layer methods": cfg.gradcam_layer or registry.default_layer(clf),
      "filter layer (question 2)": cfg.filter_layer or feature_vis.default_layer(clf),
      "filters": cfg.filters, "gradient-ascent steps": cfg.filter_steps,
      "LIME samples (question 3)": cfg.lime_samples,
      "LIME faces per class": cfg.lime_per_class,
      "IG completeness tolerance (question 4)": cfg.ig_tol, "seed": cfg.seed}
  if measure is not None:
    settings["measured faces per class"] = cfg.per_class
  return settings


def _model_summary(clf: Classifier, name: str) -> dict:
  meta = clf.metadata or {}
  summary = {"checkpoint": name, "kind": meta.get("kind", "?"),
             "input": f"{clf.input_shape} float in [0, 1]", "classes": ", ".join(clf.class_names),
             "layers": ", ".join(clf.layer_names)}
  for split, ev in (meta.get("evaluation") or {}).items():
    summary[f"{split} accuracy (recorded)"] = f"{ev['accuracy']:.4f} on {ev['count']} faces"
  return summary


def _stage(log, name):
  log(f"[{time.strftime('%H:%M:%S')}] {name}")


def section_attributions(clf, shown, out, cfg, key, log) -> dict:
  """Question 1: one face per class under each of ``cfg.methods``."""
  images, targets, row_names = shown
  x, t = data_lib.to_float(images), np.asarray(targets, np.int32)
  labels = _labels(clf, cfg)
  _stage(log, f"1. attributions: {len(t)} faces x {len(cfg.methods)} methods")
  maps = {}
  for i, (name, fn) in enumerate(attribution_methods(clf, cfg).items()):
    t0 = time.time()
    maps[labels[name]] = np.asarray(fn(jax.random.fold_in(key, i), x, t))
    log(f"  {labels[name]}: {time.time() - t0:.1f}s")
  viz.save(viz.attribution_grid(images, maps, row_names), out / "attributions.png")
  return {"title": "1. Which pixels does each class score depend on?",
          "figures": [("attributions.png",
                       "One face per class (rows) and the attribution of its class score by "
                       + ", ".join(maps) + ". Brighter: more attribution (absolute values, "
                       "99th-percentile clipped).")]}


def section_filters(clf, shown, out, cfg, key, log) -> dict:
  """Question 2: the inputs that maximise a layer's filters, and the filters' outputs."""
  images, _, row_names = shown
  layer = cfg.filter_layer or feature_vis.default_layer(clf)
  count = feature_vis.filter_count(clf, layer)
  chosen = list(range(min(cfg.filters, count)))
  _stage(log, f"2. filters: gradient ascent on {len(chosen)} filters of {layer}")
  t0 = time.time()
  vis = feature_vis.maximize_activation(clf, layer, chosen, key=key, steps=cfg.filter_steps)
  log(f"  {time.time() - t0:.1f}s")
  acts = np.asarray(feature_vis.activations(clf, data_lib.to_float(images[:1]), layer))[0]
  viz.save(viz.filter_grid_figure(np.asarray(vis.images), chosen, layer=layer),
           out / "filters.png")
  figures = [("filters.png", f"Input that maximises the mean activation of each of filters "
              f"{chosen[0]}–{chosen[-1]} of {layer}, found by {cfg.filter_steps} steps of "
              "gradient ascent (all filters at once, vmapped), pixels kept in [0, 1].")]
  if acts.ndim == 3:
    viz.save(viz.feature_maps_figure(images[0], acts[..., chosen], chosen, layer=layer),
             out / "filter_outputs.png")
    figures.append(("filter_outputs.png", f"The same filters' outputs (activation maps) on "
                    f"the face '{row_names[0]}'."))
  trace = np.asarray(vis.trace)
  return {"title": f"2. What do the filters of {layer} respond to?", "figures": figures,
          "table": {"columns": ["filter", "activation at start", "activation at end"],
                    "rows": [[str(f), f"{trace[0, i]:.3f}", f"{trace[-1, i]:.3f}"]
                             for i, f in enumerate(chosen)]}}


def _lime_faces(faces, clf, per_class):
  if (faces.labels < 0).any():
    return np.arange(len(faces))
  return np.concatenate([np.flatnonzero(faces.labels == c)[:per_class]
                         for c in range(clf.num_classes)])


def section_lime(clf, faces, measure, out, cfg, key, log) -> dict:
  """Question 3: native batched LIME per class with accuracy and the confusion matrix, and the
  ``lime`` package's explanation of the first face beside jaxplain's."""
  index = _lime_faces(faces, clf, cfg.lime_per_class)
  x = data_lib.to_float(faces.images[index])
  labels = faces.labels[index]
  probs = np.asarray(jax.nn.softmax(clf.predict(x), -1))
  targets = np.where(labels >= 0, labels, probs.argmax(-1)).astype(np.int32)
  _stage(log, f"3. LIME (native, batched, {cfg.lime_samples} samples): {len(index)} faces")
  t0 = time.time()
  segments = lime_lib.segment_faces(x)
  result = lime_lib.lime_many(clf, x, targets, segments, key=key, num_samples=cfg.lime_samples)
  log(f"  {time.time() - t0:.1f}s; the lime package on one face for comparison")
  package = lime_lib.explain(clf, x[0], label=int(targets[0]), num_samples=cfg.lime_samples,
                             seed=cfg.seed)
  package_weights = np.zeros(result.weights.shape[1])
  for seg, value in package.local_exp[int(targets[0])]:
    package_weights[seg] = value
  labelled = measure if measure is not None else (faces if (faces.labels >= 0).all() else None)
  ev = None if labelled is None else evaluation.evaluate(clf, labelled.images, labelled.labels)
  chosen = probs[np.arange(len(index)), targets]
  viz.save(viz.lime_class_figure(
      x, segments, result.weights, targets, clf.class_names, labels=labels,
      probabilities=chosen, per_class=None if ev is None else ev.per_class,
      confusion=None if ev is None else ev.confusion), out / "lime.png")
  viz.save(viz.lime_comparison_figure(x[0], package.segments, package_weights, segments[0],
                                      result.weights[0], clf.class_names[targets[0]]),
           out / "lime_package.png")
  source = "no labelled faces" if ev is None else f"{ev.count} faces ({labelled.source})"
  figures = [
      ("lime.png", f"LIME (native, batched in JAX; SLIC superpixels, {cfg.lime_samples} "
       "perturbations each), one row per class: the 5 superpixels that raise (green) and lower "
       "(red) the probability of the explained class most; the number over each face is the "
       "model's probability of that class. Right: per-class accuracy and the confusion matrix "
       f"on {source}."),
      ("lime_package.png", "The same face explained by the lime package (its own samples) "
       "and by jaxplain's native LIME: the same superpixels should stand out.")]
  if ev is not None:
    viz.save(viz.confusion_figure(ev.confusion, clf.class_names,
                                  title=f"accuracy {ev.accuracy:.3f} on {ev.count} faces"),
             out / "confusion_matrix.png")
    figures.append(("confusion_matrix.png", "Confusion matrix (rows: true class, "
                    "row-normalised; counts in brackets)."))
  return {"title": "3. LIME per class, with accuracy", "figures": figures}


def section_integrated_gradients(clf, shown, out, cfg, log) -> dict:
  """Question 4: integrated gradients refined until each face's completeness gap is below
  ``cfg.ig_tol`` of ``|f(x) − f(black)|``; each face's gap and gradient evaluations."""
  images, targets, row_names = shown
  x, t = data_lib.to_float(images), np.asarray(targets, np.int32)
  _stage(log, f"4. integrated gradients to a {cfg.ig_tol:g} completeness gap: {len(t)} faces")
  t0 = time.time()
  ig, steps = attribution.integrated_gradients_adaptive(clf.forward, x, t, tol=cfg.ig_tol)
  ig, steps = np.asarray(ig), np.asarray(steps)
  gaps = np.asarray(attribution.completeness_gap(clf.forward, x, t, ig))
  diff = -np.asarray(attribution.completeness_gap(clf.forward, x, t, np.zeros_like(ig)))
  log(f"  {time.time() - t0:.1f}s")
  viz.save(viz.integrated_gradients_figure(images, ig, row_names, gaps, diff),
           out / "integrated_gradients.png")
  return {
      "title": "4. Integrated gradients per class",
      "figures": [("integrated_gradients.png",
                   "Integrated gradients from a black baseline, signed: red raises the class "
                   "score, blue lowers it. Completeness: the attributions should sum to "
                   "f(x) − f(black); the path integral is refined where its local error is "
                   f"largest until the gap is below {cfg.ig_tol:g} of |f(x) − f(black)|.")],
      "table": {"columns": ["face", "f(x) − f(baseline)", "sum(attr)", "gap", "relative gap",
                            "gradient evaluations"],
                "rows": [[n, f"{d:.4f}", f"{d + g:.4f}", f"{g:+.2e}",
                          f"{abs(g) / max(abs(d), 1e-12):.2%}", str(int(s))]
                         for n, d, g, s in zip(row_names, diff, gaps, steps)]}}


def section_trust(clf, shown, out, cfg, key, log) -> dict:
  """Which explanation to trust: each method of question 1 (and native LIME) scored on the
  shown faces by the explanation-quality metrics of :mod:`jaxplain.metrics`."""
  from jaxplain.metrics import evaluate as metrics_eval
  images, targets, _ = shown
  methods = tuple(dict.fromkeys(cfg.methods + ("input_x_gradient", "occlusion", "lime")))
  metrics = metrics_eval.DEFAULT_METRICS
  _stage(log, f"which explanation to trust: {len(methods)} methods x {len(metrics)} metrics on "
         f"{len(targets)} faces")
  t0 = time.time()
  x, t, lime_samples = data_lib.to_float(images), np.asarray(targets), min(cfg.lime_samples, 300)
  table = metrics_eval.evaluate_methods(clf, x, t, methods=methods, metrics=metrics, key=key,
                                        lime_samples=lime_samples)
  log(f"  {time.time() - t0:.1f}s")
  from jaxplain.metrics import figures as metric_figures
  # The table's key: each method's maps (random ones too) are the table's, so the AUCs in the
  # figure's legend are the table's deletion and insertion columns.
  curves = metrics_eval.deletion_curves(clf, x, t, methods=methods, key=key,
                                        lime_samples=lime_samples)
  viz.save(metric_figures.deletion_figure(curves, title=f"Deletion and insertion, mean over "
                                          f"{len(t)} faces"), out / "deletion_insertion.png")
  check = metrics_eval.sanity_check(clf, x, t, method="saliency", key=jax.random.fold_in(key, 2))
  viz.save(metric_figures.sanity_figure(check), out / "sanity_check.png")
  log(f"  with the curve and sanity-check figures: {time.time() - t0:.1f}s")
  head = [metrics_eval.METRICS[k].label + {True: " ↑", False: " ↓", None: ""}[
      metrics_eval.METRICS[k].higher_is_better] for k in metrics]
  rows = [[m] + [table.cell(i, j) for j in range(len(metrics))] for i, m in enumerate(methods)]
  rows.append(["best"] + [table.best(k) or "–" for k in metrics])
  return {"title": "Which explanation to trust?",
          "text": "Each method scored on the faces above by explanation-quality metrics "
                  "(jaxplain.metrics, equal to Quantus 0.6): deletion/insertion AUC of the "
                  "class probability as the most attributed pixels are removed/added, "
                  "faithfulness correlation, max-sensitivity to input noise, the rank "
                  "correlation left after randomising the model's weights (sanity check: "
                  "lower is better), random-logit similarity, sparseness, complexity and the "
                  "share in the eye band. ↑: higher is better, ↓: lower is better.",
          "table": {"columns": ["method"] + head, "rows": rows},
          "figures": [("deletion_insertion.png",
                       "Deletion and insertion curves of each method (mean over the faces; "
                       "AUC in the legend)"),
                      ("sanity_check.png",
                       "Sanity check: saliency maps as the layers are randomised from the top; "
                       "a faithful method's maps change (ρ: rank correlation with the "
                       "original)")]}


def _measured(clf, measure, out, cfg, key, log):
  rng = np.random.default_rng(cfg.seed)
  index = np.concatenate([
      rng.permutation(np.flatnonzero(measure.labels == c))[:cfg.per_class]
      for c in range(clf.num_classes)])
  images, labels = measure.images[index], measure.labels[index]
  methods = attribution_methods(clf, cfg, ig_steps=cfg.measure_ig_steps)
  class_maps = {}
  labels_of = _labels(clf, cfg)
  for i, (name, fn) in enumerate(methods.items()):
    name = labels_of[name]
    _stage(log, f"measured maps: {name} over {len(labels)} faces")
    done = [0]

    def progress(n, name=name):
      done[0] += n
      log(f"  {name}: {done[0]}/{len(labels)}")

    class_maps[name], counts = class_mean_maps(fn, jax.random.fold_in(key, 200 + i), images,
                                               labels, num_classes=clf.num_classes,
                                               progress=progress)
  viz.save(viz.class_mean_maps_figure(class_maps, clf.class_names), out / "class_mean_maps.png")
  shares = {name: band_shares(m) for name, m in class_maps.items()}
  area = band_shares(np.ones((1, 48, 48)))
  viz.save(viz.band_share_figure(shares, clf.class_names, area), out / "band_shares.png")
  rows = []
  for name, s in shares.items():
    for c, cname in enumerate(clf.class_names):
      rows.append([name, cname, str(int(counts[c]))]
                  + [f"{s[b][c]:.3f}" for b in list(BANDS) + ["other"]])
  (out / "band_shares.json").write_text(json.dumps(
      {name: {b: np.asarray(v).tolist() for b, v in s.items()} for name, s in shares.items()}
      | {"area": {b: float(v[0]) for b, v in area.items()}, "bands": BANDS,
         "classes": list(clf.class_names), "counts": counts.tolist()}, indent=1))
  bands = ", ".join(f"{b} rows {r0}–{r1 - 1}" for b, (r0, r1) in BANDS.items())
  return {
      "title": f"Measured over {len(labels)} faces of {measure.source}",
      "figures": [
          ("class_mean_maps.png", "Mean |attribution| per class (columns) and method (rows) "
           f"over up to {cfg.per_class} faces per class, each face attributed for its true "
           "class."),
          ("band_shares.png", f"Share of attribution mass in the bands of the aligned face "
           f"({bands}); the grey line is each band's share of the image area, so bars above it "
           "mean the method concentrates there.")],
      "table": {"columns": ["method", "class", "faces"] + list(BANDS) + ["other"], "rows": rows}}
