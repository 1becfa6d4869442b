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
    os.replace(tmp, path)
  except BaseException:
    pathlib.Path(tmp).unlink(missing_ok=True)
    raise
  finally:
    plt.close(fig)
  return path


def confusion_figure(confusion, class_names, *, title: str = "", normalize: bool = True):
  """The confusion matrix (rows: true class), row-normalised, with counts in the cells."""
  confusion = np.asarray(confusion)
  with np.errstate(invalid="ignore", divide="ignore"):
    shown = confusion / confusion.sum(1, keepdims=True) if normalize else confusion
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
  fig.colorbar(im, ax=ax, fraction=0.046)
  ax.set_title(title or "confusion matrix (row-normalised)")
  return fig


def per_class_accuracy_figure(per_class, class_names, *, ax=None, title: str = ""):
  """Bar chart of each class's accuracy (recall)."""
  fig = None
  if ax is None:
    fig, ax = plt.subplots(figsize=(5.5, 3.2))
  values = np.nan_to_num(np.asarray(per_class, float))
  bars = ax.bar(range(len(class_names)), values, color="tab:blue")
  ax.set_xticks(range(len(class_names)), class_names, rotation=30, ha="right")
  ax.set_ylim(0, 1)
  ax.set_ylabel("accuracy")
  for b, v in zip(bars, values):
    ax.text(b.get_x() + b.get_width() / 2, v + 0.02, f"{v:.2f}", ha="center", fontsize=8)
  ax.set_title(title or "per-class accuracy")
  return fig if fig is not None else ax.figure


# --- attribution figures (issue 4) ---


# --- filter figures (issue 5) ---


# --- LIME figures (issue 6) ---


# --- report (issue 7) ---
