"""The pytorch-grad-cam family on a named layer: Grad-CAM++, XGrad-CAM, HiRes-CAM, Score-CAM,
Ablation-CAM, Eigen-CAM and Layer-CAM.

Each method computes a layer map ``(N, h, w)`` from the layer's activations ``A`` (and the
target logit's gradient ``G`` with respect to them, read with the classifier's ``delta`` hook)
and finishes it as the PyPI ``grad-cam`` package (``pytorch_grad_cam.BaseCAM``) does:
ReLU, each map scaled to [0, 1] (``(m − min) / (max + 1e-7)``), resized bilinearly to the input
(``cv2.resize``, half-pixel centres, the same as ``upsample(mode="bilinear")``) and scaled again.
``normalize=False`` stops after the ReLU and the resize (raw map values), ``relu=False`` keeps the
sign.

Channel weights ``w_c`` (the map is ``Σ_c w_c A_c``) or maps:

* Grad-CAM++: ``w_c = Σ_ij relu(G) α``, ``α = G² / (2G² + (Σ_ij A) G³ + 1e-6)`` (0 where G = 0).
* XGrad-CAM: ``w_c = Σ_ij G A / (Σ_ij A + 1e-7)``.
* HiRes-CAM: the map ``Σ_c G A`` (no spatial averaging).
* Layer-CAM: the map ``Σ_c relu(G) A``.
* Score-CAM: ``w = softmax_c f_t(x · norm(up(A_c)))``, each channel upsampled with
  ``align_corners=True`` bilinear weights and min-max normalised (``+1e-8``); one forward pass
  per (image, channel), chunked.
* Ablation-CAM: ``w_c = (f_t(x) − f_t(x; A_c ablated)) / f_t(x)``, the channel set to 0 (or, when
  the image's activations have a nonzero minimum, to ``min − 1e7``, as pytorch-grad-cam does); one
  evaluation of the layers above ``layer`` per (image, channel), chunked, the layers below once
  per image (pytorch-grad-cam runs the whole network per channel). Two differences from
  pytorch-grad-cam, where it departs from the paper: the scores keep the input's dtype (it
  rounds them to float32, so under float64 a face whose target output lies within float32
  rounding of its ablated outputs, e.g. a sigmoid output of 1 − 3e-11, gets real weights here
  and an empty map there); and with a nonzero minimum every channel is set to ``min − 1e7``
  (its ``AblationLayer`` re-reads the minimum of a batch it has already ablated, so the k-th
  channel of each ablation batch gets ``min − k·1e7`` and its maps depend on ``batch_size``).
* Eigen-CAM: the projection of the centred activations ``(h·w, C)`` on their first right singular
  vector (no gradients, no target). The SVD's sign is arbitrary; ``sign="svd"`` keeps LAPACK's
  (pytorch-grad-cam's behaviour), ``sign="positive"`` (default) flips each map so that it
  correlates positively with the channel-summed activation, so that the ReLU keeps the object.

References:
  Chattopadhay et al., "Grad-CAM++", WACV 2018. https://arxiv.org/abs/1710.11063
  Fu et al., "Axiom-based Grad-CAM (XGrad-CAM)", BMVC 2020. https://arxiv.org/abs/2008.02312
  Draelos and Carin, "Use HiResCAM instead of Grad-CAM", 2020. https://arxiv.org/abs/2011.08891
  Wang et al., "Score-CAM", CVPR-W 2020. https://arxiv.org/abs/1910.01279
  Desai and Ramaswamy, "Ablation-CAM", WACV 2020.
  Muhammad and Yeasin, "Eigen-CAM", IJCNN 2020. https://arxiv.org/abs/2008.00299
  Jiang et al., "LayerCAM", IEEE TIP 2021. https://ieeexplore.ieee.org/document/9462463
  Gildenblat et al., PyPI ``grad-cam`` (``pytorch_grad_cam``), the reference implementation.
"""

from __future__ import annotations

import functools
import inspect

import jax
import jax.numpy as jnp
import numpy as np

from jaxplain import batching
from jaxplain.attribution._common import select
from jaxplain.attribution.cam import _bilinear_matrix, check_cam_call, upsample
from jaxplain.attribution.registry import register

__all__ = ["ablation_cam", "eigen_cam", "grad_cam_plus_plus", "hires_cam", "layer_cam",
           "score_cam", "xgrad_cam", "finish_cam", "EIGEN_SIGNS"]

EIGEN_SIGNS = ("positive", "svd")


def _scale(maps):
  """pytorch-grad-cam's ``scale_cam_image`` without resizing: ``(m − min) / (1e-7 + max)``."""
  lo = jnp.min(maps, axis=(1, 2), keepdims=True)
  maps = maps - lo
  return maps / (1e-7 + jnp.max(maps, axis=(1, 2), keepdims=True))


def finish_cam(cam, size, *, relu: bool = True, normalize: bool = True,
               interpolate_mode: str = "bilinear"):
  """A layer map ``(N, h, w)`` as pytorch-grad-cam returns it, ``(N, H, W, 1)``.

  ReLU (``relu``), then with ``normalize``: scale to [0, 1], resize to ``size``, ReLU, scale
  (``BaseCAM.compute_cam_per_layer`` and ``aggregate_multi_layers`` for one layer); without:
  only the resize.
  """
  if relu:
    cam = jnp.maximum(cam, 0)
  if normalize:
    cam = _scale(cam)
  cam = upsample(cam[..., None], size, mode=interpolate_mode)[..., 0]
  if normalize:
    cam = _scale(jnp.maximum(cam, 0))
  return cam[..., None]


def _acts_and_grads(clf, inputs, target, layer):
  tapped = clf.tapped(layer)
  _, act = jax.eval_shape(tapped, inputs, None)
  delta = jnp.zeros(act.shape, act.dtype)

  def target_logits(d):
    logits, a = tapped(inputs, d)
    return jnp.sum(select(logits, target)), (a, select(logits, target))

  grads, (acts, scores) = jax.grad(target_logits, has_aux=True)(delta)
  return acts, grads, scores


def _eigen_projection(acts, sign):
  """First principal component map of each ``(h, w, C)`` activation: ``(N, h, w)``."""
  n, h, w, c = acts.shape
  flat = acts.reshape(n, h * w, c)
  flat = flat - jnp.mean(flat, axis=1, keepdims=True)
  _, _, vt = jnp.linalg.svd(flat, full_matrices=False)
  proj = jnp.einsum("npc,nc->np", flat, vt[:, 0], precision=jax.lax.Precision.HIGHEST)
  if sign == "positive":
    total = jnp.sum(acts.reshape(n, h * w, c), axis=2)
    total = total - jnp.mean(total, axis=1, keepdims=True)
    flip = jnp.where(jnp.sum(proj * total, axis=1) < 0, -1, 1).astype(proj.dtype)
    proj = proj * flip[:, None]
  return proj.reshape(n, h, w)


@functools.partial(jax.jit, static_argnames=("variant", "layer", "relu", "normalize",
                                             "interpolate_mode", "batch_size", "sign"))
def _cam(clf, inputs, target, *, variant, layer, relu, normalize, interpolate_mode,
         batch_size, sign):
  if variant in ("score_cam", "ablation_cam", "eigen_cam"):  # gradient-free
    logits, acts = clf.tapped(layer)(inputs, None)
    grads, scores = None, select(logits, target)
  else:
    acts, grads, scores = _acts_and_grads(clf, inputs, target, layer)
  n, h, w, c = acts.shape
  spatial = (1, 2)
  if variant == "grad_cam_plus_plus":
    g2 = grads * grads
    sum_a = jnp.sum(acts, axis=spatial, keepdims=True)
    aij = g2 / (2 * g2 + sum_a * g2 * grads + 1e-6)
    aij = jnp.where(grads != 0, aij, 0)
    cam = jnp.einsum("nhwc,nc->nhw", acts, jnp.sum(jnp.maximum(grads, 0) * aij, axis=spatial))
  elif variant == "xgrad_cam":
    sum_a = jnp.sum(acts, axis=spatial, keepdims=True)
    weights = jnp.sum(grads * acts / (sum_a + 1e-7), axis=spatial)
    cam = jnp.einsum("nhwc,nc->nhw", acts, weights)
  elif variant == "hires_cam":
    cam = jnp.sum(grads * acts, axis=3)
  elif variant == "layer_cam":
    cam = jnp.sum(jnp.maximum(grads, 0) * acts, axis=3)
  elif variant == "eigen_cam":
    cam = _eigen_projection(acts, sign)
  elif variant == "score_cam":
    size = inputs.shape[1:3]
    rows = jnp.asarray(_bilinear_matrix(h, size[0], align_corners=True), acts.dtype)
    cols = jnp.asarray(_bilinear_matrix(w, size[1], align_corners=True), acts.dtype)
    forward = clf.forward

    def score(ij):  # one (image, channel): the target logit of the masked image
      i, k = ij
      up = jnp.einsum("ih,hw,jw->ij", rows, acts[i, :, :, k], cols)
      up = (up - jnp.min(up)) / (jnp.max(up) - jnp.min(up) + 1e-8)
      return select(forward((inputs[i] * up[:, :, None])[None]), target[i][None])[0]

    index = jnp.arange(n * c)
    s = batching.chunked_map(score, (index // c, index % c), batch_size=batch_size)
    weights = jax.nn.softmax(s.reshape(n, c), axis=1)
    cam = jnp.einsum("nhwc,nc->nhw", acts, weights)
  elif variant == "ablation_cam":
    tapped = clf.tapped(layer)
    low = jnp.min(acts, axis=(1, 2, 3))
    fill = jnp.where(low == 0, 0, low - 1e7).astype(acts.dtype)

    def per_image(args):  # one image: every channel ablated, the layers below run once
      x_i, t_i, fill_i, a_i = args

      def ablated(k):  # x_i is not batched over channels, so its prefix is computed once
        delta = jnp.where((jnp.arange(c) == k)[None, None, :], fill_i - a_i, 0)[None]
        logits, _ = tapped(x_i[None], delta)
        return select(logits, t_i[None])[0]

      return batching.chunked_map(ablated, jnp.arange(c), batch_size=batch_size)

    s = jax.lax.map(per_image, (inputs, target, fill, acts))  # (N, C)
    weights = (scores[:, None] - s.reshape(n, c)) / scores[:, None]
    cam = jnp.einsum("nhwc,nc->nhw", acts, weights)
  else:  # pragma: no cover - the public functions pass only the names above
    raise ValueError(f"unknown CAM variant {variant!r}")
  cam = finish_cam(cam, inputs.shape[1:3], relu=relu, normalize=normalize,
                   interpolate_mode=interpolate_mode)
  return cam.astype(inputs.dtype)


def _run(variant, classifier, inputs, target, *, layer, relu, normalize, interpolate_mode,
         batch_size=None, sign="svd"):
  if sign not in EIGEN_SIGNS:
    raise ValueError(f"`sign` must be one of {EIGEN_SIGNS}, got {sign!r}")
  classifier, inputs, target = check_cam_call(classifier, inputs, target, layer=layer,
                                              interpolate_mode=interpolate_mode, name=variant)
  batch_size = batching.check_batch_size(batch_size)
  return _cam(classifier, inputs, target, variant=variant, layer=layer, relu=bool(relu),
              normalize=bool(normalize), interpolate_mode=interpolate_mode,
              batch_size=batch_size, sign=sign)


_ARGS = """
  Args:
    classifier: a :class:`~jaxplain.models.Classifier` (its own CNN or a converted model).
    inputs: float images ``(N, H, W, C)``.
    target: int or ``(N,)`` ints.
    layer: a spatial layer of ``classifier.layer_names`` (e.g. ``"conv4_2"``). Static.
    relu: ReLU the layer map (pytorch-grad-cam always does). Static.
    normalize: scale each map to [0, 1] before and after resizing, as pytorch-grad-cam's
      output; ``False`` returns raw map values. Static.
    interpolate_mode: ``"bilinear"`` (pytorch-grad-cam's ``cv2.resize``) or ``"nearest"``.
      Static.{extra}

  Returns:
    ``(N, H, W, 1)`` maps in the dtype of ``inputs``.
"""

_EXTRA_DOCS = {
    "batch_size": """
    batch_size: (image, channel) evaluations run at once (Ablation-CAM: channels of one image;
      memory knob; default 256). Static.""",
    "sign": """
    sign: ``"positive"`` (maps correlate positively with the summed activations) or
      ``"svd"`` (LAPACK's arbitrary sign, as pytorch-grad-cam). Static.""",
}

# The options every variant takes: (default, annotation).
_OPTIONS = {"relu": (True, "bool"), "normalize": (True, "bool"),
            "interpolate_mode": ("bilinear", "str")}


def _public(variant: str, label: str, summary: str, **extra):
  """Defines and registers the public function of one CAM ``variant``.

  Its signature is ``(classifier, inputs, target, *, layer, relu, normalize, interpolate_mode,
  **extra)``; ``extra`` maps the variant's own options to ``(default, annotation)``.
  """
  options = {**_OPTIONS, **extra}
  kw = inspect.Parameter.KEYWORD_ONLY
  params = [inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD)
            for n in ("classifier", "inputs", "target")]
  params.append(inspect.Parameter("layer", kw, annotation="str"))
  params += [inspect.Parameter(n, kw, default=d, annotation=a) for n, (d, a) in options.items()]
  defaults = {n: d for n, (d, _) in options.items()}

  def cam(classifier, inputs, target, *, layer, **given):
    unknown = sorted(set(given) - set(defaults))
    if unknown:
      raise TypeError(f"{variant}() got an unexpected keyword argument {unknown[0]!r}")
    return _run(variant, classifier, inputs, target, layer=layer, **(defaults | given))

  cam.__name__ = cam.__qualname__ = variant
  cam.__signature__ = inspect.Signature(params)
  cam.__doc__ = summary + "\n" + _ARGS.format(extra="".join(_EXTRA_DOCS[n] for n in extra))
  return register(variant, kind="layer", signed=False, label=label, classifier=True,
                  layer=True)(cam)


grad_cam_plus_plus = _public(
    "grad_cam_plus_plus", "Grad-CAM++",
    "Grad-CAM++ (pytorch-grad-cam ``GradCAMPlusPlus``): channels weighted by positive\n"
    "  gradients with the second/third-order coefficients α of Chattopadhay et al., eq. 19.")
xgrad_cam = _public(
    "xgrad_cam", "XGrad-CAM",
    "XGrad-CAM (pytorch-grad-cam ``XGradCAM``): channels weighted by the activation-\n"
    "  weighted mean gradient ``Σ G·A / Σ A``.")
hires_cam = _public(
    "hires_cam", "HiRes-CAM",
    "HiRes-CAM (pytorch-grad-cam ``HiResCAM``): the element-wise product of gradients and\n"
    "  activations summed over channels.")
layer_cam = _public(
    "layer_cam", "Layer-CAM",
    "Layer-CAM (pytorch-grad-cam ``LayerCAM``): activations weighted element-wise by the\n"
    "  positive gradients, summed over channels.")
score_cam = _public(
    "score_cam", "Score-CAM",
    "Score-CAM (pytorch-grad-cam ``ScoreCAM``): channels weighted by the softmax of the\n"
    "  target logit of the input masked by each normalised, upsampled channel.",
    batch_size=(256, "int | None"))
ablation_cam = _public(
    "ablation_cam", "Ablation-CAM",
    "Ablation-CAM (pytorch-grad-cam ``AblationCAM``): channels weighted by the relative drop\n"
    "  of the target logit when each channel is ablated.",
    batch_size=(256, "int | None"))
eigen_cam = _public(
    "eigen_cam", "Eigen-CAM",
    "Eigen-CAM (pytorch-grad-cam ``EigenCAM``): the first principal component of the layer's\n"
    "  centred activations; class-agnostic (``target`` is validated, then unused).",
    sign=("positive", "str"))
