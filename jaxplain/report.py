"""``jaxplain report``: the assignment's four answers as figures and one HTML page.

1. saliency per class, with SmoothGrad, integrated gradients, Grad-CAM and guided backprop;
2. the filter patterns of a layer (gradient ascent) and the filters' outputs on a face;
3. LIME per class, read with per-class accuracy and the confusion matrix;
4. integrated gradients per class with each face's completeness gap.

With data (``--data``) it also measures, over many faces, the mean absolute attribution map per
class and method and the share of attribution in the eye, nose and mouth bands of the aligned
48×48 face. Computation lives here and in the method modules; figures and HTML in :mod:`viz`.
"""

from __future__ import annotations

import dataclasses
import html
import json
import os
import pathlib
import sys
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxplain import attribution, checkpoint, feature_vis, train, viz
from jaxplain import data as data_lib, lime as lime_lib
from jaxplain.models import Classifier

__all__ = ["BANDS", "ReportConfig", "band_shares", "class_mean_maps", "pick_faces", "report"]

# Horizontal bands of the aligned 48×48 FER2013 face (rows, end exclusive), read off the mean
# PublicTest face: brows and eyes at rows 12-22 (pupils ~17), nose 23-32, mouth 33-43.
BANDS = {"eyes": (12, 23), "nose": (23, 33), "mouth": (33, 44)}


@dataclasses.dataclass(frozen=True)
class ReportConfig:
  """Settings of a report (all shown on the page)."""

  ig_steps: int = 50
  ig_method: str = "gausslegendre"
  smoothgrad_samples: int = 25
  smoothgrad_stdev: float = 0.15  # in input units (images are in [0, 1])
  gradcam_layer: str | None = None  # default: the last spatial layer
  filter_layer: str | None = None  # default: feature_vis.default_layer
  filters: int = 16
  filter_steps: int = 256
  lime_samples: int = 1000
  lime_per_class: int = 2  # faces per class explained with LIME
  per_class: int = 50  # faces per class for the measured maps (with data)
  measure_ig_steps: int = 16
  seed: int = 0


def _log(message: str) -> None:
  print(message, file=sys.stderr, flush=True)


def last_spatial_layer(clf: Classifier) -> str:
  """The last layer with ``(N, h, w, c)`` maps of at least 1/8 of the input's side.

  Grad-CAM's usual choice is the last convolutional block: coarse enough to be semantic, fine
  enough to localise (6×6 on a 48×48 face).
  """
  x = jax.ShapeDtypeStruct((1,) + tuple(clf.input_shape), jnp.float32)
  side = max(2, min(clf.input_shape[:2]) // 8)
  best = None
  for name in clf.layer_names:
    shape = jax.eval_shape(clf.tapped(name), x, None)[1].shape
    if len(shape) == 4 and min(shape[1:3]) >= side:
      best = name
  if best is None:
    raise ValueError(f"the classifier has no spatial layer for Grad-CAM: {clf.layer_names}")
  return best


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


def _lime_faces(faces, clf, per_class):
  if (faces.labels < 0).any():
    return np.arange(len(faces))
  return np.concatenate([np.flatnonzero(faces.labels == c)[:per_class]
                         for c in range(clf.num_classes)])


def attribution_methods(clf: Classifier, cfg: ReportConfig, *, ig_steps: int | None = None
                        ) -> dict[str, Callable]:
  """The report's methods as ``f(key, x, target) -> (N, H, W, C)`` (jit-compiled)."""
  layer = cfg.gradcam_layer or last_spatial_layer(clf)
  steps = ig_steps or cfg.ig_steps
  forward = clf.forward
  return {
      "saliency": jax.jit(lambda k, x, t: attribution.saliency(forward, x, t)),
      "smoothgrad": jax.jit(lambda k, x, t: attribution.smoothgrad(
          forward, x, t, key=k, samples=cfg.smoothgrad_samples, stdev=cfg.smoothgrad_stdev)),
      "integrated gradients": jax.jit(lambda k, x, t: attribution.integrated_gradients(
          forward, x, t, steps=steps, rule=cfg.ig_method)),
      f"Grad-CAM ({layer})": jax.jit(lambda k, x, t: attribution.grad_cam(
          clf, x, t, layer=layer)),
      "guided backprop": jax.jit(lambda k, x, t: attribution.guided_backprop(forward, x, t)),
  }


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
  sums, counts = None, np.bincount(labels, minlength=num_classes)
  for b, start in enumerate(range(0, len(labels), batch_size)):
    x = data_lib.to_float(images_u8[start:start + batch_size])
    t = labels[start:start + batch_size].astype(np.int32)
    pad = batch_size - len(t)
    if pad:
      x = np.concatenate([x, np.zeros((pad,) + x.shape[1:], x.dtype)])
      t = np.concatenate([t, np.zeros(pad, np.int32)])
    a = np.abs(np.asarray(method(jax.random.fold_in(key, b), x, t))).sum(-1)[:batch_size - pad]
    onehot = np.eye(num_classes)[t[:batch_size - pad]]
    part = np.einsum("nk,nhw->khw", onehot, a)
    sums = part if sums is None else sums + part
    if progress:
      progress(len(t) - pad)
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
           checkpoint_name: str = "", log: Callable[[str], None] = _log) -> pathlib.Path:
  """Writes every figure and ``index.html`` into ``out``; returns the page's path.

  Args:
    clf: the classifier to explain.
    faces: the faces to show (one per class is picked; unlabelled faces are all shown).
    out: output directory (written to a temporary sibling, then renamed into place).
    config: settings.
    measure: labelled faces (a data split) for accuracy, the confusion matrix and the measured
      per-class maps; ``None``: accuracy on ``faces`` when labelled, no measured maps.
    checkpoint_name: shown on the page.
    log: progress lines.
  """
  t_start = time.time()
  out = pathlib.Path(out).absolute()
  with checkpoint.atomic_directory(out) as tmp:
    sections = _build(clf, faces, tmp, config, measure, log)
    viz.write_report_html(tmp / "index.html", sections, title="jaxplain report",
                          model=_model_summary(clf, checkpoint_name),
                          settings=dataclasses.asdict(config)
                          | {"total seconds": round(time.time() - t_start, 1)})
  log(f"report written to {out / 'index.html'} in {time.time() - t_start:.0f}s")
  return out / "index.html"


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


def _build(clf, faces, out, cfg, measure, log):
  key = jax.random.key(cfg.seed)
  sections = []
  images, targets, row_names = pick_faces(faces, clf)
  x = data_lib.to_float(images)
  t = np.asarray(targets, np.int32)

  # 1 + 4: attributions of the picked faces.
  _stage(log, f"attributions: {len(t)} faces x 5 methods")
  methods = attribution_methods(clf, cfg)
  maps = {}
  for i, (name, fn) in enumerate(methods.items()):
    t0 = time.time()
    maps[name] = np.asarray(fn(jax.random.fold_in(key, i), x, t))
    log(f"  {name}: {time.time() - t0:.1f}s")
  viz.save(viz.attribution_grid(images, maps, row_names), out / "attributions.png")
  sections.append({
      "title": "1. Which pixels does each class score depend on?",
      "figures": [("attributions.png",
                   "One face per class (rows) and the attribution of its class score by saliency "
                   "(|∂score/∂pixel|), SmoothGrad, integrated gradients, Grad-CAM and guided "
                   "backprop. Brighter: more attribution (absolute values, 99th-percentile "
                   "clipped).")]})

  ig = maps["integrated gradients"]
  gaps = np.asarray(attribution.completeness_gap(clf.forward, x, t, ig))
  diff = np.asarray(attribution.completeness_gap(clf.forward, x, t, np.zeros_like(ig)))
  viz.save(viz.integrated_gradients_figure(images, ig, row_names, gaps, -diff),
           out / "integrated_gradients.png")
  sections.append({
      "title": "4. Integrated gradients per class",
      "figures": [("integrated_gradients.png",
                   f"Integrated gradients (black baseline, {cfg.ig_steps} steps, "
                   f"{cfg.ig_method}), signed: red raises the class score, blue lowers it. "
                   "Completeness: the attributions should sum to f(x) − f(black); the gap "
                   "below each face is sum(attr) − (f(x) − f(baseline)).")],
      "table": {"columns": ["face", "f(x) − f(baseline)", "sum(attr)", "gap"],
                "rows": [[n, f"{-d:.4f}", f"{-d + g:.4f}", f"{g:+.2e}"]
                         for n, d, g in zip(row_names, diff, gaps)]}})

  # 2: filters.
  layer = cfg.filter_layer or feature_vis.default_layer(clf)
  count = feature_vis.filter_count(clf, layer)
  chosen = list(range(min(cfg.filters, count)))
  _stage(log, f"filters: gradient ascent on {len(chosen)} filters of {layer}")
  t0 = time.time()
  vis = feature_vis.maximize_activation(clf, layer, chosen, key=jax.random.fold_in(key, 100),
                                        steps=cfg.filter_steps)
  log(f"  {time.time() - t0:.1f}s")
  acts = np.asarray(feature_vis.activations(clf, x[:1], layer))[0]
  viz.save(viz.filter_grid_figure(np.asarray(vis.images), chosen, layer=layer),
           out / "filters.png")
  viz.save(viz.feature_maps_figure(images[0], acts[..., chosen], chosen, layer=layer),
           out / "filter_outputs.png")
  trace = np.asarray(vis.trace)
  sections.append({
      "title": f"2. What do the filters of {layer} respond to?",
      "figures": [
          ("filters.png", f"Input that maximises the mean activation of each of filters "
           f"{chosen[0]}–{chosen[-1]} of {layer}, found by {cfg.filter_steps} steps of gradient "
           "ascent (all filters at once, vmapped) with jitter, blur, total-variation and L2 "
           "regularisation, pixels kept in [0, 1]."),
          ("filter_outputs.png", f"The same filters' outputs (activation maps) on the face "
           f"'{row_names[0]}'.")],
      "table": {"columns": ["filter", "activation at start", "activation at end"],
                "rows": [[str(f), f"{trace[0, i]:.3f}", f"{trace[-1, i]:.3f}"]
                         for i, f in enumerate(chosen)]}})

  # 3: LIME (the lime package), with accuracy and the confusion matrix.
  lime_idx = _lime_faces(faces, clf, cfg.lime_per_class)
  lime_x = data_lib.to_float(faces.images[lime_idx])
  lime_labels = faces.labels[lime_idx]
  lime_targets = np.where(lime_labels >= 0, lime_labels,
                          clf.predict(lime_x).argmax(-1)).astype(np.int32)
  _stage(log, f"LIME (lime package, {cfg.lime_samples} samples): {len(lime_idx)} faces")
  segments, weights, probs = [], [], []
  t0 = time.time()
  for i in range(len(lime_idx)):
    e = lime_lib.explain(clf, lime_x[i], label=int(lime_targets[i]),
                         num_samples=cfg.lime_samples, seed=cfg.seed)
    w = np.zeros(int(e.segments.max()) + 1)
    for seg, value in e.local_exp[int(lime_targets[i])]:
      w[seg] = value
    segments.append(e.segments)
    weights.append(w)
    log(f"  face {i + 1}/{len(lime_idx)} ({time.time() - t0:.0f}s)")
  width = max(len(w) for w in weights)
  weights = np.stack([np.pad(w, (0, width - len(w))) for w in weights])
  probs = jax.nn.softmax(clf.predict(lime_x), -1)[np.arange(len(lime_idx)), lime_targets]
  labelled = measure if measure is not None else (faces if (faces.labels >= 0).all() else None)
  ev = None if labelled is None else train.evaluate(clf, labelled.images, labelled.labels)
  viz.save(viz.lime_class_figure(
      lime_x, np.stack(segments), weights, lime_targets, clf.class_names, labels=lime_labels,
      probabilities=probs, per_class=None if ev is None else ev.per_class,
      confusion=None if ev is None else ev.confusion), out / "lime.png")
  figs = [("lime.png", "LIME from the lime package (SLIC superpixels, "
           f"{cfg.lime_samples} perturbations each), one row per class: the 5 superpixels that "
           "raise (green) and lower (red) the class probability most. Right: per-class accuracy "
           f"and the confusion matrix on {'no labelled faces' if ev is None else ev.count} "
           f"faces ({'' if labelled is None else labelled.source}).")]
  if ev is not None:
    viz.save(viz.confusion_figure(ev.confusion, clf.class_names,
                                  title=f"accuracy {ev.accuracy:.3f} on {ev.count} faces"),
             out / "confusion_matrix.png")
    figs.append(("confusion_matrix.png", "Confusion matrix (rows: true class, row-normalised; "
                 "counts in brackets)."))
  sections.append({"title": "3. LIME per class, with accuracy", "figures": figs})

  # Measured answers over many faces.
  if measure is not None:
    sections.append(_measured(clf, measure, out, cfg, key, log))
  return sections


def _measured(clf, measure, out, cfg, key, log):
  rng = np.random.default_rng(cfg.seed)
  index = np.concatenate([
      rng.permutation(np.flatnonzero(measure.labels == c))[:cfg.per_class]
      for c in range(clf.num_classes)])
  images, labels = measure.images[index], measure.labels[index]
  methods = attribution_methods(clf, cfg, ig_steps=cfg.measure_ig_steps)
  class_maps = {}
  for i, (name, fn) in enumerate(methods.items()):
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
      "title": f"Measured over {len(labels)} faces of {html.escape(measure.source)}",
      "figures": [
          ("class_mean_maps.png", "Mean |attribution| per class (columns) and method (rows) "
           f"over up to {cfg.per_class} faces per class, each face attributed for its true "
           "class."),
          ("band_shares.png", f"Share of attribution mass in the bands of the aligned face "
           f"({bands}); the grey line is each band's share of the image area, so bars above it "
           "mean the method concentrates there.")],
      "table": {"columns": ["method", "class", "faces"] + list(BANDS) + ["other"], "rows": rows}}
