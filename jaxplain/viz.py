"""matplotlib figures and the HTML report. NumPy in, files out: nothing here runs under jit."""

from __future__ import annotations

import os
import pathlib
import tempfile

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def save(fig, path: str | os.PathLike, *, dpi: int = 110) -> pathlib.Path:
  """Writes ``fig`` to ``path`` atomically (temp file, then rename) and closes it."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix, dir=path.parent)
  os.close(fd)
  try:
    fig.savefig(tmp, dpi=dpi, bbox_inches="tight")
    os.chmod(tmp, 0o644)  # mkstemp makes it private; figures are for sharing
    os.replace(tmp, path)
  except BaseException:
    pathlib.Path(tmp).unlink(missing_ok=True)
    raise
  finally:
    plt.close(fig)
  return path


def confusion_figure(confusion, class_names, *, title: str = "", normalize: bool = True,
                     ax=None):
  """The confusion matrix (rows: true class), row-normalised, with counts in the cells."""
  confusion = np.asarray(confusion)
  with np.errstate(invalid="ignore", divide="ignore"):
    shown = confusion / confusion.sum(1, keepdims=True) if normalize else confusion
  fig = None
  if ax is None:
    fig, ax = plt.subplots(figsize=(6.2, 5.4))
  im = ax.imshow(np.nan_to_num(shown), cmap="Blues", vmin=0, vmax=1 if normalize else None)
  k = len(class_names)
  ax.set_xticks(range(k), class_names, rotation=45, ha="right")
  ax.set_yticks(range(k), class_names)
  ax.set_xlabel("predicted")
  ax.set_ylabel("true")
  for i in range(k):
    for j in range(k):
      v = shown[i, j]
      ax.text(j, i, f"{v:.2f}\n({confusion[i, j]})" if normalize else f"{confusion[i, j]}",
              ha="center", va="center", fontsize=7,
              color="white" if np.nan_to_num(v) > (0.5 if normalize else shown.max() / 2)
              else "black")
  ax.figure.colorbar(im, ax=ax, fraction=0.046)
  ax.set_title(title or "confusion matrix (row-normalised)")
  return fig if fig is not None else ax.figure


def per_class_accuracy_figure(per_class, class_names, *, ax=None, title: str = ""):
  """Bar chart of each class's accuracy (recall)."""
  fig = None
  if ax is None:
    fig, ax = plt.subplots(figsize=(5.5, 3.2))
  values = np.nan_to_num(np.asarray(per_class, float))
  bars = ax.bar(range(len(class_names)), values, color="tab:blue")
  ax.set_xticks(range(len(class_names)), class_names, rotation=30, ha="right")
  ax.set_ylim(0, 1.18)  # room for the value over a full bar, below the title
  ax.set_yticks([0, 0.25, 0.5, 0.75, 1])
  ax.set_ylabel("accuracy")
  for b, v in zip(bars, values):
    ax.text(b.get_x() + b.get_width() / 2, v + 0.02, f"{v:.2f}", ha="center", fontsize=8)
  ax.set_title(title or "per-class accuracy")
  return fig if fig is not None else ax.figure


# --- attribution figures ---

ATTR_SIGNS = ("all", "positive", "negative", "absolute_value")


def normalize_attribution(attr, *, sign: str = "absolute_value", outlier_perc: float = 2.0):
  """An ``(H, W[, C])`` attribution summed over channels and scaled to [-1, 1] or [0, 1].

  Captum ``visualize_image_attr``'s normalisation: keep the ``sign`` part (``"all"``,
  ``"positive"``, ``"negative"``, ``"absolute_value"``), divide by the value where the
  cumulative sum of sorted ``|attr|`` reaches ``100 − outlier_perc`` percent of the total (so the
  largest ``outlier_perc`` percent of the mass saturates), and clip.
  """
  if sign not in ATTR_SIGNS:
    raise ValueError(f"`sign` must be one of {ATTR_SIGNS}, got {sign!r}")
  if not 0 <= outlier_perc <= 100:
    raise ValueError(f"`outlier_perc` must be in [0, 100], got {outlier_perc}")
  attr = np.asarray(attr, np.float64)
  if attr.ndim == 3:
    attr = attr.sum(axis=2)
  if attr.ndim != 2:
    raise ValueError(f"`attr` must be (H, W) or (H, W, C), got shape {attr.shape}")
  attr = {"all": attr, "positive": np.maximum(attr, 0), "negative": np.minimum(attr, 0),
          "absolute_value": np.abs(attr)}[sign]
  values = np.sort(np.abs(attr).ravel())
  cums = np.cumsum(values)
  above = np.flatnonzero(cums >= cums[-1] * 0.01 * (100.0 - outlier_perc))
  threshold = values[above[0] if len(above) else -1]  # (Captum fails on rounding at 0 %)
  if threshold == 0:
    return np.zeros_like(attr)
  return np.clip(attr / (-threshold if sign == "negative" else threshold), -1, 1)


def _attr_cmap(sign: str):
  from matplotlib.colors import LinearSegmentedColormap
  if sign == "all":
    return LinearSegmentedColormap.from_list("RdWhGn", ["red", "white", "green"]), -1, 1
  return {"positive": "Greens", "negative": "Reds", "absolute_value": "Blues"}[sign], 0, 1


def attribution_figure(image, attr, *, style: str = "blended_heat_map",
                       sign: str = "absolute_value", outlier_perc: float = 2.0,
                       alpha: float = 0.5, ax=None, title: str = "", colorbar: bool = False,
                       method: str | None = None):
  """One attribution map drawn like Captum's ``visualize_image_attr``.

  Args:
    image: the face ``(H, W)`` or ``(H, W, C)`` in [0, 1] (or uint8).
    attr: its attribution ``(H, W)`` or ``(H, W, C)``.
    style: ``"heat_map"``, ``"blended_heat_map"`` (the map over the gray face),
      ``"original_image"`` or ``"masked_image"`` (the face times the normalised |map|)
      (Captum's ``method``).
    sign, outlier_perc: see :func:`normalize_attribution`.
    alpha: opacity of the heat map in ``"blended_heat_map"``.
    ax: draw into this axis (else a new figure).
    method: deprecated name of ``style``.
  """
  if method is not None:
    import warnings
    warnings.warn("attribution_figure(method=...) is deprecated; use style=...",
                  DeprecationWarning, stacklevel=2)
    style = method
  styles = ("heat_map", "blended_heat_map", "original_image", "masked_image")
  if style not in styles:
    raise ValueError(f"`style` must be one of {styles}, got {style!r}")
  image = np.asarray(image, np.float64)
  if image.max() > 1.0:
    image = image / 255.0
  gray = image.mean(axis=2) if image.ndim == 3 else image
  fig = None
  if ax is None:
    fig, ax = plt.subplots(figsize=(3, 3))
  ax.set_axis_off()
  if style == "original_image":
    ax.imshow(gray, cmap="gray", vmin=0, vmax=1)
  else:
    norm = normalize_attribution(attr, sign=sign, outlier_perc=outlier_perc)
    cmap, vmin, vmax = _attr_cmap(sign)
    if style == "masked_image":
      ax.imshow(gray * np.abs(norm), cmap="gray", vmin=0, vmax=1)
    else:
      if style == "blended_heat_map":
        ax.imshow(gray, cmap="gray", vmin=0, vmax=1)
      im = ax.imshow(norm, cmap=cmap, vmin=vmin, vmax=vmax,
                     alpha=alpha if style == "blended_heat_map" else None)
      if colorbar:
        ax.figure.colorbar(im, ax=ax, fraction=0.046)
  if title:
    ax.set_title(title, fontsize=8)
  return fig if fig is not None else ax.figure


def class_attribution_figure(images, attrs, class_names, *, labels=None, predictions=None,
                             method_name: str = "saliency", sign: str = "absolute_value",
                             outlier_perc: float = 2.0, blended: bool = False):
  """The assignment's figure: each face (top row) above its attribution map (bottom row).

  Args:
    images: ``(K, H, W[, C])`` faces, typically one per class.
    attrs: ``(K, H, W[, C])`` their attributions (e.g. of the true class).
    class_names: names for ``labels`` / ``predictions``.
    labels: ``(K,)`` true classes (column titles), optional.
    predictions: ``(K,)`` predicted classes, optional.
    method_name: shown in the figure title.
    sign, outlier_perc: see :func:`normalize_attribution`.
    blended: draw the map over the face instead of a plain heat map.
  """
  images, attrs = np.asarray(images), np.asarray(attrs)
  k = len(images)
  if len(attrs) != k:
    raise ValueError(f"`attrs` has {len(attrs)} maps for {k} `images`")
  fig, axes = plt.subplots(2, k, figsize=(1.6 * k, 3.6), squeeze=False)
  for i in range(k):
    title = ""
    if labels is not None:
      title = class_names[int(labels[i])] if int(labels[i]) >= 0 else "?"
    if predictions is not None:
      title += f"\n(pred {class_names[int(predictions[i])]})"
    attribution_figure(images[i], None, style="original_image", ax=axes[0, i], title=title)
    attribution_figure(images[i], attrs[i], style="blended_heat_map" if blended else "heat_map",
                       sign=sign, outlier_perc=outlier_perc, ax=axes[1, i])
  fig.suptitle(f"{method_name} ({sign.replace('_', ' ')}, top {outlier_perc:g}% clipped)",
               fontsize=10)
  fig.tight_layout()
  return fig



# --- filter figures ---


def _grid_axes(n: int, cols: int, size: float, extra: int = 0):
  cols = max(1, min(cols, n + extra))
  rows = -(-(n + extra) // cols)
  fig, axes = plt.subplots(rows, cols, figsize=(size * cols, (size + 0.15) * rows + 0.4),
                           squeeze=False)
  for ax in axes.ravel():
    ax.axis("off")
  return fig, axes.ravel()


def filter_grid_figure(images, filters, *, layer: str = "", scores=None, cols: int = 8,
                       title: str = "", ratios=None, reference: str = "the best real face"):
  """The optimised input of each filter of a layer (question 2, part 1), one tile per filter.

  Args:
    images: ``(F, H, W, 1)`` or ``(F, H, W)`` in [0, 1] (``maximize_activation(...).images``).
    filters: the F filter indices (tile labels).
    layer: the layer's name, for the title.
    scores: optional ``(F,)`` numbers printed under each tile (e.g. the ratio to the best
      real face).
    cols: tiles per row.
    title: overrides the default title.
    ratios: optional ``(F,)`` activation of each image / that of the most activating real face
      (``feature_vis.ratio_to_best``; NaN where undefined), printed under each tile (3
      significant digits: a tie, 1×, stays apart from 0.995×) and explained in the title.
    reference: what the ratios compare with, for the title (e.g. "the best of 35 faces").
  """
  images = np.asarray(images)
  images = images[..., 0] if images.ndim == 4 else images
  if ratios is not None:
    scores = np.asarray(ratios, np.float64)
    title = (title or f"inputs that maximise each filter of {layer}") + \
        f"\n(×: its activation / that of {reference})"
  fig, axes = _grid_axes(len(images), cols, 1.25)
  for i, (ax, image, f) in enumerate(zip(axes, images, filters)):
    ax.imshow(image, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    label = f"#{int(f)}" + (f"  {float(scores[i]):.3g}×" if scores is not None else "")
    label = label.replace("nan×", "n/a")
    ax.set_title(label, fontsize=7, pad=2)
  fig.suptitle(title or f"inputs that maximise each filter of {layer}", fontsize=10)
  fig.tight_layout()
  return fig


def feature_maps_figure(face, maps, filters, *, layer: str = "", cols: int = 8,
                        title: str = ""):
  """A face and what the filters of a layer output on it (question 2, part 2).

  Args:
    face: ``(H, W, 1)``, ``(H, W)`` in [0, 1] or uint8.
    maps: ``(h, w, F)`` activations of those filters on the face
      (``activations(clf, face[None], layer)[0][..., filters]``).
    filters: the F filter indices (tile labels).
    layer: the layer's name, for the title.
    cols: tiles per row (the face takes the first).
    title: overrides the default title.

  Each map has its own colour scale (``viridis``, 0 at the bottom); its maximum is printed.
  """
  face, maps = np.asarray(face), np.asarray(maps)
  face = face[..., 0] if face.ndim == 3 else face
  fig, axes = _grid_axes(maps.shape[-1], cols, 1.25, extra=1)
  axes[0].imshow(face, cmap="gray", vmin=0, vmax=255 if face.dtype == np.uint8 else 1)
  axes[0].set_title("input", fontsize=7, pad=2)
  for ax, i, f in zip(axes[1:], range(maps.shape[-1]), filters):
    m = maps[..., i]
    top = float(m.max())
    ax.imshow(m, cmap="viridis", vmin=min(0.0, float(m.min())), vmax=top if top > 0 else 1,
              interpolation="nearest")
    ax.set_title(f"#{int(f)} max {top:.2g}", fontsize=7, pad=2)
  fig.suptitle(title or f"outputs of the filters of {layer} on a face", fontsize=10)
  fig.tight_layout()
  return fig


# --- LIME figures ---


def lime_overlay(image, segments, weights, *, num_features: int = 5, tint: float = 0.3):
  """A face with its LIME superpixels marked: positive green, negative red.

  The ``num_features`` superpixels with the largest positive weights are tinted green and
  outlined with ``skimage.segmentation.mark_boundaries``; the ``num_features`` most negative ones
  red (lime's ``get_image_and_mask(positive_only=False)`` shows the same two sets).

  Args:
    image: ``(H, W)`` or ``(H, W, C)`` in [0, 1].
    segments: int ``(H, W)`` superpixel labels.
    weights: ``(M,)`` weight of each superpixel label (``M`` > the largest label).
    num_features: superpixels shown on each side.
    tint: strength of the colour tint inside marked superpixels.

  Returns:
    float RGB ``(H, W, 3)`` in [0, 1].
  """
  from skimage.segmentation import mark_boundaries
  image = np.asarray(image, np.float64)
  if image.ndim == 3 and image.shape[-1] == 1:
    image = image[..., 0]
  rgb = np.repeat(image[..., None], 3, -1) if image.ndim == 2 else image[..., :3]
  segments = np.asarray(segments)
  weights = np.asarray(weights, np.float64)
  order = np.argsort(-weights)
  positive = [s for s in order[:num_features] if weights[s] > 0]
  negative = [s for s in order[::-1][:num_features] if weights[s] < 0]
  out = rgb.copy()
  for chosen, color in ((positive, (0.0, 1.0, 0.0)), (negative, (1.0, 0.0, 0.0))):
    inside = np.isin(segments, chosen)
    out[inside] = (1 - tint) * out[inside] + tint * np.asarray(color)
    out = mark_boundaries(out, np.where(inside, segments + 1, 0), color=color, mode="inner",
                          background_label=0)
  return np.clip(out, 0, 1)


def lime_class_figure(images, segments, weights, targets, class_names, *, labels=None,
                      probabilities=None, per_class=None, confusion=None,
                      num_features: int = 5, title: str = ""):
  """Per-class LIME panels beside per-class accuracy and the confusion matrix.

  One row per class (the true class where ``labels`` are known, else the explained class), one
  panel per face: :func:`lime_overlay` of the explanation of ``targets``. On the right,
  :func:`per_class_accuracy_figure` and :func:`confusion_figure` when given.

  Args:
    images: ``(N, H, W, C)`` or ``(N, H, W)`` in [0, 1].
    segments: int ``(N, H, W)``.
    weights: ``(N, M)`` LIME weights (``jaxplain.lime.LimeResult.weights``).
    targets: ``(N,)`` the class each explanation is for.
    class_names: the K class names.
    labels: ``(N,)`` true classes (``-1``: unknown).
    probabilities: ``(N,)`` the classifier's probability of ``targets`` (shown in titles).
    per_class: ``(K,)`` per-class accuracy.
    confusion: ``(K, K)`` confusion matrix.
    num_features: superpixels marked on each side.
    title: the figure's title.
  """
  images, segments, weights = np.asarray(images), np.asarray(segments), np.asarray(weights)
  targets = np.asarray(targets)
  labels = np.full(len(images), -1) if labels is None else np.asarray(labels)
  rows_of = np.where(labels >= 0, labels, targets)
  classes = [k for k in range(len(class_names)) if (rows_of == k).any()]
  cols = max([int((rows_of == k).sum()) for k in classes] + [1])
  side = per_class is not None or confusion is not None
  rows = max(len(classes), 1)
  height = max(1.75 * rows + 0.7, 9.0 if side else 0)
  fig = plt.figure(figsize=(1.75 * cols + 1.0 + (6.2 if side else 0), height),
                   layout="constrained")
  outer = fig.add_gridspec(1, 2 if side else 1, width_ratios=[1.75 * cols + 1.0, 6.2][:1 + side])
  faces = outer[0].subgridspec(rows, cols)
  for r, k in enumerate(classes):
    for c, i in enumerate(np.flatnonzero(rows_of == k)):
      ax = fig.add_subplot(faces[r, c])
      ax.imshow(lime_overlay(images[i], segments[i], weights[i], num_features=num_features),
                interpolation="nearest")
      ax.set_xticks([])
      ax.set_yticks([])
      text = f"for {class_names[targets[i]]}"
      if probabilities is not None:
        text += f"\np = {float(np.asarray(probabilities)[i]):.2f}"
      ax.set_title(text, fontsize=7)
      if c == 0:
        ax.set_ylabel(class_names[k] if labels[i] >= 0 else f"pred {class_names[k]}", fontsize=9)
  if side:
    inner = outer[1].subgridspec(2, 1, height_ratios=[1, 1.7])
    if per_class is not None:
      per_class_accuracy_figure(per_class, class_names, ax=fig.add_subplot(inner[0]))
    if confusion is not None:
      confusion_figure(confusion, class_names, ax=fig.add_subplot(inner[1]))
  fig.suptitle(title or f"LIME: green supports, red opposes the explained class (top "
               f"{num_features} superpixels each); p: the model's probability of that class",
               fontsize=10)
  return fig


def lime_comparison_figure(image, package_segments, package_weights, segments, weights,
                           class_name: str, *, num_features: int = 5):
  """One face explained by the ``lime`` package and by jaxplain's native LIME, side by side."""
  fig, axes = plt.subplots(1, 2, figsize=(5.0, 2.9), layout="constrained")
  for ax, segs, w, name in ((axes[0], package_segments, package_weights, "lime package"),
                            (axes[1], segments, weights, "jaxplain native LIME")):
    ax.imshow(lime_overlay(image, segs, w, num_features=num_features), interpolation="nearest")
    ax.set_title(name, fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])
  fig.suptitle(f"LIME for {class_name}", fontsize=9)
  return fig


# --- report ---


def _abs_map(attr, clip: float = 99.0):
  """``|attr|`` summed over channels, scaled to [0, 1] by its ``clip`` percentile."""
  a = np.abs(np.asarray(attr, np.float64))
  a = a.sum(-1) if a.ndim == 3 else a
  top = np.percentile(a, clip)
  return np.clip(a / top, 0, 1) if top > 0 else np.zeros_like(a)


def _signed_map(attr, clip: float = 99.0):
  """Signed attribution summed over channels, scaled to [-1, 1] by the ``clip`` percentile of |a|."""
  a = np.asarray(attr, np.float64)
  a = a.sum(-1) if a.ndim == 3 else a
  top = np.percentile(np.abs(a), clip)
  return np.clip(a / top, -1, 1) if top > 0 else np.zeros_like(a)


def attribution_grid(images, maps: dict, row_names, *, cmap: str = "inferno"):
  """Faces (rows) with one attribution map per method (columns), absolute values.

  Args:
    images: uint8 ``(n, 48, 48)`` faces.
    maps: method name → ``(n, H, W, C)`` attributions.
    row_names: a label per face.
  """
  n, cols = len(images), len(maps) + 1
  fig, axes = plt.subplots(n, cols, figsize=(1.7 * cols, 1.75 * n), squeeze=False)
  for r in range(n):
    axes[r, 0].imshow(images[r], cmap="gray", vmin=0, vmax=255)
    axes[r, 0].set_ylabel(row_names[r], fontsize=8)
    for c, (name, m) in enumerate(maps.items(), start=1):
      axes[r, c].imshow(_abs_map(m[r]), cmap=cmap, vmin=0, vmax=1)
      if r == 0:
        axes[r, c].set_title(name, fontsize=8)
  axes[0, 0].set_title("face", fontsize=8)
  for ax in axes.ravel():
    ax.set_xticks([])
    ax.set_yticks([])
  fig.tight_layout()
  return fig


def integrated_gradients_figure(images, attributions, row_names, gaps, differences):
  """Each face, its signed integrated-gradients map, and its overlay; completeness in the title."""
  n = len(images)
  fig, axes = plt.subplots(n, 3, figsize=(5.4, 2.0 * n), squeeze=False)
  for r in range(n):
    signed = _signed_map(attributions[r])
    axes[r, 0].imshow(images[r], cmap="gray", vmin=0, vmax=255)
    axes[r, 0].set_ylabel(row_names[r], fontsize=8)
    axes[r, 1].imshow(signed, cmap="bwr", vmin=-1, vmax=1)
    axes[r, 1].set_xlabel(f"Δf {differences[r]:.3f}, gap {gaps[r]:+.1e}", fontsize=7)
    axes[r, 2].imshow(images[r], cmap="gray", vmin=0, vmax=255)
    axes[r, 2].imshow(np.abs(signed), cmap="inferno", alpha=0.55, vmin=0, vmax=1)
  for ax, title in zip(axes[0], ("face", "IG (signed)", "|IG| overlay")):
    ax.set_title(title, fontsize=8)
  for ax in axes.ravel():
    ax.set_xticks([])
    ax.set_yticks([])
  fig.tight_layout()
  return fig


def class_mean_maps_figure(class_maps: dict, class_names):
  """Mean |attribution| per class (columns) and method (rows), each map scaled to its maximum."""
  rows, cols = len(class_maps), len(class_names)
  fig, axes = plt.subplots(rows, cols, figsize=(1.45 * cols, 1.6 * rows), squeeze=False)
  for r, (name, maps) in enumerate(class_maps.items()):
    for c in range(cols):
      m = np.nan_to_num(np.asarray(maps[c], np.float64))
      axes[r, c].imshow(m / m.max() if m.max() > 0 else m, cmap="inferno", vmin=0, vmax=1)
      axes[r, c].set_xticks([])
      axes[r, c].set_yticks([])
      if r == 0:
        axes[r, c].set_title(class_names[c], fontsize=8)
    axes[r, 0].set_ylabel(name, fontsize=7)
  fig.tight_layout()
  return fig


def band_share_figure(shares: dict, class_names, area: dict):
  """Bars: share of attribution in each face band, per class, one panel per method."""
  methods = list(shares)
  bands = [b for b in next(iter(shares.values())) if b != "other"]
  fig, axes = plt.subplots(1, len(methods), figsize=(3.2 * len(methods), 3.0), squeeze=False,
                           sharey=True)
  width = 0.8 / len(bands)
  for ax, name in zip(axes[0], methods):
    for j, b in enumerate(bands):
      xs = np.arange(len(class_names)) + (j - (len(bands) - 1) / 2) * width
      ax.bar(xs, np.nan_to_num(shares[name][b]), width, label=b)
      ax.hlines(float(np.ravel(area[b])[0]), xs[0] - width / 2, xs[-1] + width / 2,
                colors="grey", linestyles="--", linewidth=0.8)
    ax.set_xticks(range(len(class_names)), class_names, rotation=45, ha="right", fontsize=7)
    ax.set_title(name, fontsize=8)
  axes[0, 0].set_ylabel("share of |attribution|")
  axes[0, 0].legend(fontsize=7)
  fig.tight_layout()
  return fig


def write_report_html(path, sections, *, title: str, model: dict, settings: dict):
  """Writes the report page: model summary, settings, then each section's figures and table.

  Every ``<img>`` marks itself ``data-loaded`` when it renders (or ``data-broken``), which the
  page's footer counts, so a reader (or a headless browser) sees at once if a figure is missing.
  """
  import html as h
  esc = h.escape
  parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{esc(title)}</title>",
           "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
           "figure{margin:1em 0}figcaption{color:#333;font-size:.92em;max-width:900px}"
           "img{max-width:100%}table{border-collapse:collapse;font-size:.85em;margin:.5em 0}"
           "td,th{border:1px solid #ccc;padding:2px 6px;text-align:left}"
           "#status{color:#a00}</style></head><body>",
           f"<h1>{esc(title)}</h1>", "<h2>Model</h2>", _table(["", ""], model.items())]
  for s in sections:
    parts.append(f"<h2>{esc(s['title'])}</h2>")
    if s.get("text"):
      parts.append(f"<p>{esc(s['text'])}</p>")
    for src, caption in s.get("figures", []):
      parts.append(f"<figure><img src='{esc(src)}' alt='{esc(caption[:80])}' "
                   "onload=\"this.dataset.loaded='1'\" onerror=\"this.dataset.broken='1'\">"
                   f"<figcaption>{esc(caption)}</figcaption></figure>")
    if s.get("table"):
      parts.append(_table(s["table"]["columns"], s["table"]["rows"]))
  parts += ["<h2>Settings</h2>", _table(["setting", "value"], settings.items()),
            "<p id='status'></p><script>window.addEventListener('load',function(){"
            "var b=document.querySelectorAll('img[data-broken]').length;"
            "document.getElementById('status').textContent=b?b+' figure(s) failed to load':'';"
            "});</script></body></html>"]
  path = pathlib.Path(path)
  path.write_text("\n".join(parts), encoding="utf-8")
  return path


def _table(columns, rows):
  import html as h
  head = "".join(f"<th>{h.escape(str(c))}</th>" for c in columns)
  body = "".join("<tr>" + "".join(f"<td>{h.escape(str(v))}</td>" for v in row) + "</tr>"
                 for row in rows)
  return f"<table><tr>{head}</tr>{body}</table>"
