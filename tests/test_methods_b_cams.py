"""The CAM family (jaxplain.attribution.cams) against PyPI ``grad-cam`` (pytorch_grad_cam) on
identical weights, on real faces: the PyTorch twin of jaxplain's CNN and the pretrained FER2013
NetworkV2.

Two comparisons per method:

* the raw layer map (before ReLU, scaling and resizing) against the reference's
  ``get_cam_image`` on the same activations and gradients: float64 within 1e-6 relative
  (Score-CAM and Ablation-CAM: the reference rounds its scores to float32, so 1e-5);
* the finished map (ReLU, [0, 1] scaling, ``cv2.resize``) against the reference's ``__call__``,
  which always returns float32: within 1e-4 in float32 (Ablation-CAM in float64: on the faces
  whose scores survive the reference's float32 rounding; the others are checked against the
  paper's formula evaluated with the PyTorch network in float64).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxplain import attribution as A

torch = pytest.importorskip("torch")
gc = pytest.importorskip("pytorch_grad_cam")
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # noqa: E402

import test_attribution_captum as tac  # noqa: E402  (pairs of identical jaxplain/torch models)

METHODS = {
    "grad_cam_plus_plus": gc.GradCAMPlusPlus,
    "xgrad_cam": gc.XGradCAM,
    "hires_cam": gc.HiResCAM,
    "layer_cam": gc.LayerCAM,
    "score_cam": gc.ScoreCAM,
    "ablation_cam": gc.AblationCAM,
    "eigen_cam": gc.EigenCAM,
}
# The reference turns Score-CAM / Ablation-CAM scores into float32 (torch.Tensor(list),
# np.float32), so its float64 weights carry float32 rounding.
RAW_TOL = {"score_cam": 1e-5, "ablation_cam": 1e-5}


@pytest.fixture(scope="module")
def face_batch(faces):
  from jaxplain import data
  idx = [int(np.flatnonzero(faces.labels == c)[0]) for c in (0, 3, 5)]
  return data.to_float(faces.images[idx]), faces.labels[idx].astype(np.int32)


def _case(model, dtype, method):
  """Default run: one method per code path (weights from gradients, Score-CAM, Ablation-CAM,
  Eigen-CAM) on the twin in float64; every method on every model and dtype in slow runs."""
  fast = (model, dtype) == ("twin", "float64") and method in (
      "grad_cam_plus_plus", "score_cam", "ablation_cam", "eigen_cam")
  return pytest.param((model, dtype), method, marks=() if fast else pytest.mark.slow,
                      id=f"{model}-{dtype}-{method}")


CASES = [_case(m, d, method) for m in ("twin", "network_v2") for d in ("float64", "float32")
         for method in sorted(METHODS)]


@pytest.fixture
def pair(request, tiny_classifier):
  model, dtype = request.param
  with jax.enable_x64(dtype == "float64"):
    yield tac.twin_pair(tiny_classifier, dtype) if model == "twin" else \
        tac.network_v2_pair(dtype)


def _layer(pair):
  name = "conv2_1" if "conv2_1" in pair.layers else "conv_4.3"
  return name, pair.layers[name]


def _reference(method, pair, module, xt, t):
  cam = METHODS[method](model=pair.torch, target_layers=[module])
  if method == "ablation_cam":
    cam.batch_size = 16
  targets = [ClassifierOutputTarget(int(c)) for c in t]
  out = cam(input_tensor=xt, targets=targets)
  acts = cam.activations_and_grads.activations[0].numpy()
  grads = cam.activations_and_grads.gradients[0].numpy() if cam.uses_gradients else None
  raw = cam.get_cam_image(xt, module, targets, acts, grads, False)
  return out, np.asarray(raw)


def _nearest_sources(maps, h, w):
  """The (h, w) source grid of a nearest-upsampled (N, H, W, 1) map."""
  rows = np.ceil(np.arange(h) * maps.shape[1] / h).astype(int)
  cols = np.ceil(np.arange(w) * maps.shape[2] / w).astype(int)
  return np.asarray(maps)[:, rows][:, :, cols, 0]


@pytest.mark.parametrize("pair,method", CASES, indirect=["pair"])
def test_cam_matches_grad_cam_package(pair, face_batch, method):
  x, t, xt, _ = tac.inputs_for(pair, face_batch)
  layer, module = _layer(pair)
  fn = getattr(A, method)
  opts = {"sign": "svd"} if method == "eigen_cam" else {}
  with jax.enable_x64(pair.dtype == "float64"):
    ours = fn(pair.clf, x, t, layer=layer, **opts)
    raw = fn(pair.clf, x, t, layer=layer, relu=False, normalize=False,
             interpolate_mode="nearest", **opts)
  ref_out, ref_raw = _reference(method, pair, module, xt, t)
  assert ours.dtype == x.dtype and ours.shape == x.shape
  raw = _nearest_sources(raw, *ref_raw.shape[1:])
  if method == "eigen_cam":  # the SVD's sign is arbitrary: compare up to it, per image
    flip = np.sign(np.sum(raw * ref_raw, axis=(1, 2)))[:, None, None]
    raw = raw * flip
    tol = 1e-4  # the reference's projection is float32
  else:
    tol = RAW_TOL.get(method, tac.TOL[pair.dtype]) if pair.dtype == "float64" else 1e-4
  err = tac.rel_err(raw, ref_raw)
  assert err <= tol, f"raw map relative error {err:.3g}"
  if method == "eigen_cam" and not np.all(flip > 0):
    pytest.skip("LAPACK builds chose different SVD signs; the finished maps differ by design")
  keep = np.ones(len(t), bool)
  if method == "ablation_cam" and pair.dtype == "float64":
    # The reference rounds its scores to float32: where the target's output is within float32
    # rounding of 1 it sees no drop at all and returns an empty map, while float64 resolves the
    # drops (test_ablation_cam_float64_resolves_drops_the_reference_rounds_away).
    keep = _float32_resolves(pair, xt, t)
    assert keep.any()
  err = tac.rel_err(np.asarray(ours)[keep, ..., 0], ref_out[keep])
  assert err <= 1e-4, f"finished map relative error {err:.3g}"


def _target_scores(model, xt, t):
  with torch.no_grad():
    out = model(xt)
  return out[torch.arange(len(t)), torch.as_tensor(np.asarray(t), dtype=torch.long)].numpy()


def _float32_resolves(pair, xt, t):
  """Images whose target output float32 can tell from 1 (NetworkV2 ends in a sigmoid)."""
  return np.float32(_target_scores(pair.torch, xt, t)) != np.float32(1)


@pytest.mark.slow
def test_ablation_cam_float64_resolves_drops_the_reference_rounds_away(face_batch):
  """Ablation-CAM's weights ``(y − y_k) / y`` (Desai and Ramaswamy, eq. 2) in float64.

  pytorch-grad-cam casts the scores to float32 (``np.float32``) before taking the drop; on a
  face that NetworkV2 scores 1 − 3e-11 every ablated score rounds to the original, every weight
  is 0 and its map is empty. jaxplain keeps the input's dtype: its raw map equals the paper's
  formula evaluated here with the PyTorch network in float64 (each channel of ``conv_4.3`` set
  to 0 by a forward hook, one copy of the face per channel).
  """
  with jax.enable_x64(True):
    pair = tac.network_v2_pair("float64")
    x, t, xt, _ = tac.inputs_for(pair, face_batch)
    layer, module = _layer(pair)
    raw = np.asarray(A.ablation_cam(pair.clf, x, t, layer=layer, relu=False, normalize=False,
                                    interpolate_mode="nearest"))
  saturated = np.flatnonzero(~_float32_resolves(pair, xt, t))
  assert saturated.size, "the batch no longer holds a face scored within float32 of 1"
  i = int(saturated[0])
  _, ref_raw = _reference("ablation_cam", pair, module, xt[i:i + 1], t[i:i + 1])
  assert np.all(ref_raw == 0)  # the reference's float32 rounding: no drop, no map

  acts = {}
  handle = module.register_forward_hook(lambda m, inp, out: acts.setdefault("a", out))
  y = _target_scores(pair.torch, xt[i:i + 1], t[i:i + 1])[0]
  handle.remove()
  a = acts["a"][0]  # (C, h, w)
  c = a.shape[0]
  assert float(a.min()) == 0  # a ReLU: the paper's ablation (0) and the package's agree
  keep = 1 - torch.eye(c, dtype=a.dtype)[:, :, None, None]  # copy k has channel k zeroed
  handle = module.register_forward_hook(lambda m, inp, out: out * keep)
  try:
    yk = _target_scores(pair.torch, xt[i:i + 1].repeat(c, 1, 1, 1), np.full(c, t[i]))
  finally:
    handle.remove()
  weights = (y - yk) / y
  assert np.abs(weights).max() > 0  # float64 sees the drops
  paper = np.einsum("c,chw->hw", weights, a.numpy())
  ours = _nearest_sources(raw, *paper.shape)[i]
  err = tac.rel_err(ours, paper)
  assert err <= 1e-6, f"raw map relative error {err:.3g}"
