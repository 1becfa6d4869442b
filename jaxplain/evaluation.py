"""How well a classifier predicts: accuracy, per-class accuracy and the confusion matrix.

(Explanation-quality metrics live in :mod:`jaxplain.metrics`.)
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from jaxplain import data as data_lib
from jaxplain.models import Classifier, predict

__all__ = ["Evaluation", "confusion_matrix", "evaluate"]


def confusion_matrix(labels, predictions, num_classes: int = 7) -> np.ndarray:
  """``C[i, j]``: examples of true class ``i`` predicted as ``j``."""
  labels, predictions = np.asarray(labels), np.asarray(predictions)
  return np.bincount(labels * num_classes + predictions,
                     minlength=num_classes * num_classes).reshape(num_classes, num_classes)


@dataclasses.dataclass(frozen=True)
class Evaluation:
  """Accuracy of a classifier on ``count`` labelled faces."""

  accuracy: float
  per_class: np.ndarray  # recall of each class (NaN where a class has no examples)
  confusion: np.ndarray
  count: int

  def to_json(self, class_names) -> dict:
    return {"accuracy": self.accuracy, "count": self.count,
            "per_class": {n: (None if math.isnan(a) else float(a))
                          for n, a in zip(class_names, self.per_class)},
            "confusion": self.confusion.tolist()}

  def format(self, class_names) -> str:
    width = max(8, *(len(n) for n in class_names))
    lines = [f"accuracy {self.accuracy:.4f} on {self.count} faces", "per-class accuracy:"]
    lines += [f"  {n:>{width}s} {a:.3f}  ({int(self.confusion[i].sum())} faces)"
              for i, (n, a) in enumerate(zip(class_names, self.per_class))]
    head = f"{'true/pred':>{width}s} " + " ".join(f"{n:>{width}s}" for n in class_names)
    lines += ["confusion matrix (rows: true class):", head]
    lines += [f"{n:>{width}s} " + " ".join(f"{v:{width}d}" for v in row)
              for n, row in zip(class_names, self.confusion)]
    return "\n".join(lines)


def evaluate(clf: Classifier, images_u8, labels, *, batch_size: int = 256) -> Evaluation:
  """Accuracy, per-class accuracy and confusion matrix of ``clf`` on uint8 faces."""
  labels = np.asarray(labels)
  if labels.size and (labels.min() < 0 or labels.max() >= clf.num_classes):
    raise ValueError(f"labels must be in 0..{clf.num_classes - 1}, got "
                     f"{labels.min()}..{labels.max()}")
  logits = predict(clf.forward, data_lib.to_float(images_u8), batch_size=batch_size)
  pred = logits.argmax(-1)
  cm = confusion_matrix(labels, pred, clf.num_classes)
  with np.errstate(invalid="ignore", divide="ignore"):
    per_class = np.diag(cm) / cm.sum(1)
  return Evaluation(float((pred == labels).mean()) if len(labels) else float("nan"),
                    per_class, cm, len(labels))
