"""Feature ablation, Shapley value sampling and KernelSHAP over LIME's superpixels against
Captum 0.9 on identical weights (the PyTorch twin of jaxplain's CNN; NetworkV2 in slow runs),
fed the same permutations / coalitions; and known answers on an additive model."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxplain import attribution as A
from jaxplain import data, lime

torch = pytest.importorskip("torch")
captum_attr = pytest.importorskip("captum.attr")

import test_attribution_captum as tac  # noqa: E402

PAIRS = [("twin", "float64"), pytest.param(("twin", "float32"), marks=pytest.mark.slow),
         pytest.param(("network_v2", "float64"), marks=pytest.mark.slow)]


@pytest.fixture(params=PAIRS, ids=lambda p: f"{p[0]}-{p[1]}")
def pair(request, tiny_classifier):
  model, dtype = request.param
  with jax.enable_x64(dtype == "float64"):
    yield tac.twin_pair(tiny_classifier, dtype) if model == "twin" else \
        tac.network_v2_pair(dtype)


@pytest.fixture(scope="module")
def face_batch(faces):
  idx = [int(np.flatnonzero(faces.labels == c)[0]) for c in (0, 3)]
  x = data.to_float(faces.images[idx])
  return x, faces.labels[idx].astype(np.int32), lime.segment_faces(x, n_segments=16)


def _inputs(pair, face_batch):
  x, t, seg = face_batch
  xj, t, xt, tt = tac.inputs_for(pair, (x, t))
  return xj, t, seg, xt, tt, torch.as_tensor(seg[:, None].astype(np.int64))


def test_feature_ablation_matches_captum(pair, face_batch):
  x, t, seg, xt, tt, mask = _inputs(pair, face_batch)
  with jax.enable_x64(pair.dtype == "float64"):
    ours = A.feature_ablation(pair.clf.forward, x, t, feature_mask=seg, baselines=0.3,
                              batch_size=16)
  ref = captum_attr.FeatureAblation(pair.torch).attribute(
      xt, target=tt, feature_mask=mask, baselines=0.3, perturbations_per_eval=8)
  tac.check(ours, tac.nhwc(ref), pair)


def test_shapley_value_sampling_same_permutations(pair, face_batch, key):
  x, t, seg, xt, tt, mask = _inputs(pair, face_batch)
  m = int(seg.max()) + 1
  perms = np.stack([np.asarray(jax.random.permutation(k, m))
                    for k in jax.random.split(key, 2)])
  with jax.enable_x64(pair.dtype == "float64"):
    ours = A.shapley_value_sampling(pair.clf.forward, x, t, feature_mask=seg, key=None,
                                    permutations=perms, baselines=0.2)
  svs = captum_attr.ShapleyValueSampling(pair.torch)
  svs.permutation_generator = lambda f, n: iter([list(map(int, p)) for p in perms])
  ref = svs.attribute(xt, target=tt, feature_mask=mask, baselines=0.2, n_samples=2,
                      perturbations_per_eval=m)
  # Captum accumulates in float32 whatever the inputs (total_attrib dtype=torch.float).
  tac.check(np.asarray(ours), tac.nhwc(ref), pair, tol=1e-6 if pair.dtype == "float64" else 1e-4)


def test_kernel_shap_same_coalitions(pair, face_batch, key):
  from sklearn.linear_model import LinearRegression
  x, t, seg, xt, tt, mask = _inputs(pair, face_batch)
  m = int(seg.max()) + 1
  samples = 3 * m
  rows = np.asarray(A.kernel_shap_coalitions(key, 2, samples, m))
  with jax.enable_x64(pair.dtype == "float64"):
    ours = A.kernel_shap(pair.clf.forward, x, t, feature_mask=seg, key=None, coalitions=rows,
                         baselines=0.1)
  ks = captum_attr.KernelShap(pair.torch)
  fed = iter(rows)

  def perturb(inp, **kw):  # a generator function, as Captum requires: image i's rows
    for r in next(fed):
      yield torch.as_tensor(r[None].astype(np.int64))

  ks.perturb_func = perturb
  seen = []
  fit = ks.interpretable_model.fit

  def spy(loader, **kw):
    seen.append([b.numpy() for b in next(iter(loader))])
    return fit(loader, **kw)

  ks.interpretable_model.fit = spy
  ref = tac.nhwc(ks.attribute(xt, target=tt, feature_mask=mask, baselines=0.1,
                              n_samples=samples, perturbations_per_eval=16))
  # Captum's own regression is float32 (sklearn keeps its float32 design matrix); on Captum's
  # samples and outputs, sklearn in float64 is the exact reference.
  exact = []
  for (xs, ys, ws), s in zip(seen, seg):
    np.testing.assert_array_equal(xs, rows[len(exact)])
    coef = LinearRegression().fit(xs.astype(np.float64), ys.astype(np.float64),
                                  sample_weight=ws.astype(np.float64)).coef_
    exact.append(coef[s][..., None])
  tac.check(ours, np.stack(exact), pair)
  err = tac.rel_err(ours, ref)
  assert err < (1e-2 if pair.dtype == "float64" else 2e-2), err


# ------------------------------------------------------------------ known answers, properties


def _additive(scales, seg):
  """f_k(x) = Σ_f scale_kf · (mean of x over feature f)²: additive over the features of ``seg``
  (one (H, W) mask), so every Shapley-type method must return the terms' changes."""
  m = scales.shape[1]
  onehot = np.eye(m)[seg.reshape(-1)]  # (H·W, M)
  avg = onehot / onehot.sum(0).clip(1)

  def forward(x):
    means = jnp.einsum("np,pm->nm", x[..., 0].reshape(x.shape[0], -1), jnp.asarray(avg, x.dtype))
    return jnp.einsum("km,nm->nk", jnp.asarray(scales, x.dtype), means ** 2)
  return forward, avg


def test_known_answers_on_an_additive_model(face_batch, key):
  x, t, seg = face_batch
  seg = seg[0]
  m = int(seg.max()) + 1
  scales = np.linspace(-1, 2, 7 * m).reshape(7, m)
  base = 0.5
  forward, avg = _additive(scales, seg)
  means = x[..., 0].reshape(2, -1).astype(np.float64) @ avg
  want = (scales[t] * (means ** 2 - base ** 2))[:, seg][..., None]
  with jax.enable_x64(True):
    xs = jnp.asarray(x, jnp.float64)
    got = {
        "kernel_shap": A.kernel_shap(forward, xs, t, feature_mask=seg, key=key,
                                     samples=3 * m, baselines=base),
        "shapley_value_sampling": A.shapley_value_sampling(forward, xs, t, feature_mask=seg,
                                                           key=key, samples=2, baselines=base),
        "feature_ablation": A.feature_ablation(forward, xs, t, feature_mask=seg, baselines=base),
    }
  for name, a in got.items():
    assert a.dtype == jnp.float64
    np.testing.assert_allclose(a, want, rtol=1e-6, atol=1e-8, err_msg=name)


def test_errors_and_defaults(tiny_classifier, face_batch, key):
  x, t, seg = face_batch
  with pytest.raises(ValueError, match="`feature_mask` shape"):
    A.feature_ablation(tiny_classifier.forward, x, t, feature_mask=seg[:, :10])
  with pytest.raises(ValueError, match="`key` is required"):
    A.kernel_shap(tiny_classifier.forward, x, t, feature_mask=seg, key=None)
  with pytest.raises(ValueError, match="`permutations` rows"):
    A.shapley_value_sampling(tiny_classifier.forward, x, t, feature_mask=seg, key=None,
                             permutations=np.zeros((2, int(seg.max()) + 1), int))
  # No mask: LIME's superpixels of the images.
  np.testing.assert_array_equal(
      A.feature_ablation(tiny_classifier.forward, x, t),
      A.feature_ablation(tiny_classifier.forward, x, t, feature_mask=lime.segment_faces(x)))
