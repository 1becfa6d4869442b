"""Grad-CAM on a named layer, upsampled to the input size.

References:
  Selvaraju et al., "Grad-CAM: Visual Explanations from Deep Networks via Gradient-based
  Localization", ICCV 2017. https://arxiv.org/abs/1610.02391
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxplain import batching
from jaxplain.attribution._common import check_call, select
from jaxplain.models import Classifier
from jaxplain.attribution.registry import register

__all__ = ["check_cam_call", "grad_cam", "upsample", "INTERPOLATE_MODES"]

INTERPOLATE_MODES = ("nearest", "bilinear")


def _nearest_index(in_size: int, out_size: int) -> np.ndarray:
  """PyTorch ``F.interpolate(mode="nearest")`` source rows: ``floor(dst · in/out)`` in float32."""
  scale = np.float32(in_size) / np.float32(out_size)
  idx = np.floor(np.arange(out_size, dtype=np.float32) * scale).astype(np.int64)
  return np.minimum(idx, in_size - 1)


def _bilinear_matrix(in_size: int, out_size: int, *, align_corners: bool = False) -> np.ndarray:
  """(out, in) weights of PyTorch's 1-D linear interpolation: ``F.interpolate(mode=
  "bilinear", align_corners=False)``, or with ``align_corners`` ``nn.UpsamplingBilinear2d``."""
  if align_corners:
    src = np.arange(out_size) * ((in_size - 1) / (out_size - 1) if out_size > 1 else 0.0)
  else:
    src = np.maximum((np.arange(out_size) + 0.5) * (in_size / out_size) - 0.5, 0.0)
  lo = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
  hi = np.minimum(lo + 1, in_size - 1)
  frac = src - lo
  m = np.zeros((out_size, in_size))
  m[np.arange(out_size), lo] += 1 - frac
  m[np.arange(out_size), hi] += frac
  return m


def upsample(maps, size, *, mode: str = "nearest"):
  """Resizes ``(N, h, w, C)`` maps to ``size = (H, W)`` like ``LayerAttribution.interpolate``.

  Args:
    maps: ``(N, h, w, C)`` layer attributions.
    size: ``(H, W)``.
    mode: ``"nearest"`` (Captum's default) or ``"bilinear"`` (``align_corners=False``).
  """
  h, w = maps.shape[1:3]
  if mode == "nearest":
    return maps[:, _nearest_index(h, size[0])][:, :, _nearest_index(w, size[1])]
  if mode == "bilinear":
    rows = jnp.asarray(_bilinear_matrix(h, size[0]), maps.dtype)
    cols = jnp.asarray(_bilinear_matrix(w, size[1]), maps.dtype)
    return jnp.einsum("ih,nhwc,jw->nijc", rows, maps, cols)
  raise ValueError(f"`interpolate_mode` must be one of {INTERPOLATE_MODES}, got {mode!r}")


@functools.partial(jax.jit, static_argnames=("layer", "relu", "interpolate_mode"))
def _grad_cam(clf, inputs, target, *, layer, relu, interpolate_mode):
  tapped = clf.tapped(layer)
  _, act = jax.eval_shape(tapped, inputs, None)
  delta = jnp.zeros(act.shape, act.dtype)

  def target_logits(d):
    logits, a = tapped(inputs, d)
    return jnp.sum(select(logits, target)), a

  grads, acts = jax.grad(target_logits, has_aux=True)(delta)
  weights = jnp.mean(grads, axis=(1, 2), keepdims=True)  # (N, 1, 1, C)
  cam = jnp.sum(weights * acts, axis=3, keepdims=True)  # (N, h, w, 1)
  if relu:
    cam = jax.nn.relu(cam)
  return upsample(cam, inputs.shape[1:3], mode=interpolate_mode)


def check_cam_call(classifier, inputs, target, *, layer, interpolate_mode, name: str):
  """Validates a CAM call (classifier, spatial layer, mode); returns (classifier, inputs, target).

  Shared by every layer-map method (:func:`grad_cam` and :mod:`jaxplain.attribution.cams`).
  """
  if not isinstance(classifier, Classifier):
    raise ValueError(f"`classifier` must be a jaxplain Classifier ({name} needs its layers), "
                     f"got {type(classifier).__name__}")
  if not isinstance(layer, str):
    raise ValueError(f"`layer` must be a layer name, got {layer!r}")
  if layer not in classifier.layer_names:
    raise ValueError(f"`layer` {layer!r} is not a layer of the classifier; valid layers: "
                     f"{list(classifier.layer_names)}")
  if interpolate_mode not in INTERPOLATE_MODES:
    raise ValueError(f"`interpolate_mode` must be one of {INTERPOLATE_MODES}, "
                     f"got {interpolate_mode!r}")
  _, inputs, target = check_call(classifier.forward, inputs, target)
  _, act = batching.eval_shape(classifier.tapped(layer), inputs, None)
  if len(act.shape) != 4:
    raise ValueError(f"`layer` {layer!r} has activations of shape {tuple(act.shape)}; {name} "
                     "needs a spatial (N, h, w, C) layer")
  return classifier, inputs, target


@register("grad_cam", kind="layer", signed=False, label="Grad-CAM", classifier=True,
          layer=True, aliases=("gradcam",))
def grad_cam(classifier: Classifier, inputs, target, *, layer: str, relu: bool = True,
             interpolate_mode: str = "nearest"):
  """Grad-CAM: layer activations weighted by their spatially averaged gradients.

  Captum ``LayerGradCam`` (``mean`` of the target logit's gradient over each channel's
  ``h × w``, times the activations, summed over channels) followed by
  ``LayerAttribution.interpolate`` to the input size. The layer gradient is taken with the
  classifier's ``delta`` hook (``classifier.tapped(layer)``).

  Args:
    classifier: a :class:`~jaxplain.models.Classifier` (its own CNN or a converted model).
    inputs: float images ``(N, H, W, C)``.
    target: int or ``(N,)`` ints.
    layer: a spatial layer of ``classifier.layer_names`` (e.g. ``"conv4_2"``). Static.
    relu: keep only positive evidence (Grad-CAM's ReLU, Captum ``relu_attributions=True``);
      Captum's own default is ``False``. Static.
    interpolate_mode: ``"nearest"`` (Captum's default) or ``"bilinear"``. Static.

  Returns:
    ``(N, H, W, 1)`` maps in the dtype of ``inputs`` (one map for all channels).
  """
  classifier, inputs, target = check_cam_call(classifier, inputs, target, layer=layer,
                                              interpolate_mode=interpolate_mode,
                                              name="Grad-CAM")
  return _grad_cam(classifier, inputs, target, layer=layer, relu=bool(relu),
                   interpolate_mode=interpolate_mode)
