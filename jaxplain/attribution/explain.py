"""One entry point for every attribution method by name, over many faces in chunks."""

from __future__ import annotations

from collections.abc import Callable

import jax
import numpy as np

from jaxplain.attribution.cam import grad_cam
from jaxplain.attribution.guided import guided_backprop
from jaxplain.attribution.integrated_gradients import integrated_gradients
from jaxplain.attribution.occlusion import occlusion
from jaxplain.attribution.saliency import input_x_gradient, saliency
from jaxplain.attribution.smoothgrad import smoothgrad
from jaxplain.models import Classifier

__all__ = ["NAMES", "attribute", "attribute_many", "default_cam_layer"]

NAMES = ("saliency", "input_x_gradient", "ig", "smoothgrad", "guided", "gradcam", "occlusion")


def default_cam_layer(classifier: Classifier) -> str:
  """The last layer of ``classifier`` with spatial ``(N, h, w, C)`` activations."""
  x = jax.ShapeDtypeStruct((1,) + tuple(classifier.input_shape), np.float32)
  for layer in reversed(classifier.layer_names):
    _, act = jax.eval_shape(classifier.tapped(layer), x, None)
    if len(act.shape) == 4 and act.shape[1] > 1:
      return layer
  raise ValueError("the classifier has no spatial layer for Grad-CAM")


def attribute(classifier: Classifier, inputs, target, *, method: str, key=None, **options):
  """``method`` (one of :data:`NAMES`) of ``classifier`` on ``inputs`` for ``target``.

  ``options`` go to the method (``steps``, ``samples``, ``stdev``, ``layer``, ``window``, ...);
  ``key`` is used by ``"smoothgrad"``.
  """
  if method == "saliency":
    return saliency(classifier.forward, inputs, target, **options)
  if method == "input_x_gradient":
    return input_x_gradient(classifier.forward, inputs, target)
  if method == "ig":
    return integrated_gradients(classifier.forward, inputs, target, key=key, **options)
  if method == "smoothgrad":
    return smoothgrad(classifier.forward, inputs, target, key=key, **options)
  if method == "guided":
    return guided_backprop(classifier, inputs, target)
  if method == "gradcam":
    options.setdefault("layer", default_cam_layer(classifier))
    return grad_cam(classifier, inputs, target, **options)
  if method == "occlusion":
    return occlusion(classifier.forward, inputs, target, **options)
  raise ValueError(f"`method` must be one of {NAMES}, got {method!r}")


def attribute_many(classifier: Classifier, inputs, target, *, method: str, key=None,
                   chunk: int = 32, progress: Callable[[int], None] | None = None,
                   **options) -> np.ndarray:
  """:func:`attribute` over many faces, ``chunk`` at a time (the last chunk padded, so one
  compilation serves all); ``progress(n)`` is called after each chunk of ``n`` faces."""
  inputs, target = np.asarray(inputs), np.asarray(target, np.int32)
  n = len(inputs)
  if n == 0:
    raise ValueError("`inputs` is empty")
  size = min(chunk, n)
  outs = []
  for i, start in enumerate(range(0, n, size)):
    x, t = inputs[start:start + size], target[start:start + size]
    pad = size - len(x)
    if pad:
      x = np.concatenate([x, np.repeat(x[:1], pad, 0)])
      t = np.concatenate([t, np.repeat(t[:1], pad, 0)])
    k = None if key is None else jax.random.fold_in(key, i)
    outs.append(np.asarray(attribute(classifier, x, t, method=method, key=k, **options))[
        :size - pad])
    if progress is not None:
      progress(size - pad)
  return np.concatenate(outs)
