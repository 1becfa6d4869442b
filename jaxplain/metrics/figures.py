"""Figures of the "Which explanation to trust?" section, drawn from the data of
:func:`~jaxplain.metrics.deletion_curves` and :func:`~jaxplain.metrics.sanity_check` (NumPy
and matplotlib only; nothing here is traced)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

__all__ = ["deletion_figure", "sanity_figure"]


def _pyplot():
  import matplotlib
  matplotlib.use("Agg", force=False)
  import matplotlib.pyplot as plt
  return plt


def deletion_figure(curves: Mapping, *, title: str = "Deletion and insertion"):
  """Mean deletion (left) and insertion (right) curve of each method, AUC in the legend.

  Args:
    curves: method → :class:`~jaxplain.metrics.evaluate.CurvePair` (``deletion_curves``).

  Returns:
    a matplotlib ``Figure``.
  """
  plt = _pyplot()
  fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
  for name, c in curves.items():
    for ax, curve, area in ((axes[0], c.deletion, c.deletion_auc),
                            (axes[1], c.insertion, c.insertion_auc)):
      ax.plot(c.fraction, np.asarray(curve).mean(0), label=f"{name} ({np.mean(area):.3f})")
  axes[0].set(title="deletion: most relevant pixels removed (lower AUC is better)",
              xlabel="fraction of pixels removed", ylabel="target probability")
  axes[1].set(title="insertion: most relevant pixels revealed (higher AUC is better)",
              xlabel="fraction of pixels revealed")
  for ax in axes:
    ax.legend(fontsize=7)
    ax.title.set_fontsize(9)
  fig.suptitle(title)
  fig.tight_layout()
  return fig


def sanity_figure(check, *, faces: int = 3, title: str | None = None):
  """The sanity-check grid: rows are faces, columns the maps as layers are randomised (from the
  output layer down), each titled with its rank correlation to the original map.

  Args:
    check: :class:`~jaxplain.metrics.evaluate.SanityCheck` (``sanity_check``).
    faces: rows to draw.

  Returns:
    a matplotlib ``Figure``.
  """
  plt = _pyplot()
  maps = np.asarray(check.maps)
  rows = min(faces, maps.shape[1])
  cols = maps.shape[0]
  fig, axes = plt.subplots(rows, cols, figsize=(1.3 * cols, 1.4 * rows), squeeze=False)
  for i in range(rows):
    for j in range(cols):
      ax = axes[i, j]
      ax.imshow(maps[j, i].sum(-1), cmap="gray")
      ax.set_xticks([])
      ax.set_yticks([])
      if i == 0:
        ax.set_title(f"{check.layers[j]}\nρ {np.mean(check.spearman[j]):.2f}", fontsize=6)
  fig.suptitle(title or "Maps as layers are randomised (cascading, from the top)", fontsize=9)
  fig.tight_layout()
  return fig
