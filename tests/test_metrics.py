"""jaxplain.metrics: known answers (models whose faithful explanation is known), sanity checks,
jit / vmap / dtype behaviour, errors, and the evaluation table. Equality with Quantus and
Captum is in test_metrics_quantus.py."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxplain
from jaxplain import attribution as A
from jaxplain import data
from jaxplain import metrics as M

EYES = M.face_bands()["eyes"]
MOUTH = M.face_bands()["mouth"]


# ---------------------------------------------------------------------------------------------
# Models with known answers
# ---------------------------------------------------------------------------------------------


def _linear(params, x):
  w, b = params
  return x.reshape(x.shape[0], -1) @ w + b[None]


def linear_model(key, shape=(12, 12, 1), k=3):
  w = jax.random.normal(key, (int(np.prod(shape)), k))
  return jax.tree_util.Partial(_linear, (w, jnp.zeros((k,))))


def _eyes_only(w, x):
  """Logits that read only the eye band: class k scores w[k] · (mean of the eye rows)."""
  band = jnp.asarray(EYES, x.dtype)[None, :, :, None]
  s = jnp.sum(x * band, axis=(1, 2, 3)) / band.sum()
  return s[:, None] * w[None, :]


def edges(forward, inputs, target):
  """An edge detector (Sobel magnitude of the image): a 'method' that ignores the model."""
  del forward, target
  kx = jnp.array([[1., 0., -1.], [2., 0., -2.], [1., 0., -1.]], inputs.dtype)
  k = jnp.stack([kx, kx.T], -1)[:, :, None, :]  # HWIO
  g = jax.lax.conv_general_dilated(inputs, k, (1, 1), "SAME",
                                   dimension_numbers=("NHWC", "HWIO", "NHWC"))
  return jnp.sqrt(jnp.sum(g ** 2, -1, keepdims=True))


@pytest.fixture(scope="module")
def small_faces(faces):
  x = data.to_float(faces.images[:6])
  return x.reshape(6, 12, 4, 12, 4, 1).mean((2, 4)), faces.labels[:6] % 3


def test_linear_model_input_x_gradient_is_exactly_faithful(small_faces, key):
  """f(x) = w·x: removing features S (set to 0) lowers f by Σ_S w_i x_i = Σ_S (x ⊙ ∇f)_i, so
  faithfulness correlation of input × gradient is 1 and its deletion curve is known."""
  x, t = small_faces
  fwd = linear_model(key)
  ixg = A.input_x_gradient(fwd, x, t)
  corr = M.faithfulness_correlation(fwd, x, t, ixg, key=key, nr_runs=30, subset_size=20,
                                    perturb_baseline=0.0, normalise=False)
  np.testing.assert_allclose(corr, 1.0, atol=1e-5)
  rand = jax.random.normal(key, x.shape)
  worse = M.faithfulness_correlation(fwd, x, t, rand, key=key, nr_runs=30, subset_size=20,
                                     perturb_baseline=0.0)
  assert np.all(np.asarray(worse) < 0.9)
  curve = M.pixel_flipping(fwd, x, t, ixg, features_in_step=16, perturb_baseline=0.0,
                           softmax=False).curve
  a = np.asarray(ixg).reshape(len(x), -1)
  y = np.asarray(fwd(x))[np.arange(len(x)), t]
  removed = np.cumsum(-np.sort(-a, axis=1), axis=1)[:, 15::16]
  np.testing.assert_allclose(curve, y[:, None] - removed, rtol=1e-4, atol=1e-4)
  # The signed gradient has zero infidelity: f(x) − f(x − I) = ∇f · I for every I.
  grad = A.saliency(fwd, x, t, abs=False)
  inf = M.infidelity(fwd, x, t, grad, key=key, n_perturb_samples=20, stdev=0.1)
  assert float(jnp.max(inf)) < 1e-8
  assert float(jnp.min(M.infidelity(fwd, x, t, rand, key=key, stdev=0.1))) > 1e-3


def test_model_reading_one_region_scores_maps_inside_it_best(faces, key):
  x = data.to_float(faces.images[:4])
  t = np.zeros(4, np.int32)
  fwd = jax.tree_util.Partial(_eyes_only, jnp.array([3.0, -3.0]))
  noise = 0.01 * jax.random.uniform(key, x.shape)
  inside = jnp.asarray(EYES, jnp.float32)[None, ..., None] + noise
  outside = jnp.asarray(MOUTH, jnp.float32)[None, ..., None] + noise
  kw = dict(features_in_step=96, softmax=False)
  auc_in = M.pixel_flipping(fwd, x, t, inside, **kw).auc
  auc_out = M.pixel_flipping(fwd, x, t, outside, **kw).auc
  assert np.all(np.asarray(auc_in) < np.asarray(auc_out))
  aopc_in = M.region_perturbation(fwd, x, t, inside, patch_size=8, regions_evaluation=6).auc
  aopc_out = M.region_perturbation(fwd, x, t, outside, patch_size=8, regions_evaluation=6).auc
  assert np.all(np.asarray(aopc_in) > np.asarray(aopc_out))
  grad = A.saliency(fwd, x, t)
  np.testing.assert_allclose(M.region_share(fwd, x, t, grad, mask=EYES), 1.0, atol=1e-6)
  assert float(jnp.max(M.region_share(fwd, x, t, grad, mask=MOUTH))) == 0.0


@pytest.fixture(scope="module")
def shipped():
  return jaxplain.load_classifier(jaxplain.shipped_checkpoint())


@pytest.fixture(scope="module")
def shipped_faces(faces):
  idx = [0, 8, 16, 24]
  return data.to_float(faces.images[idx]), faces.labels[idx].astype(np.int32)


def test_random_attribution_scores_worse_than_the_gradient(shipped, shipped_faces, key):
  x, t = shipped_faces
  grad = A.input_x_gradient(shipped.forward, x, t)
  rand = jax.random.normal(key, x.shape)
  kw = dict(features_in_step=144)
  assert float(M.pixel_flipping(shipped.forward, x, t, grad, **kw).auc.mean()) < \
      float(M.pixel_flipping(shipped.forward, x, t, rand, **kw).auc.mean())
  assert float(M.insertion(shipped.forward, x, t, grad, **kw).auc.mean()) > \
      float(M.insertion(shipped.forward, x, t, rand, **kw).auc.mean())


def test_randomisation_destroys_the_gradient_but_not_an_edge_detector(shipped, shipped_faces,
                                                                      key):
  """Adebayo et al.'s sanity check: cascading randomisation from the top."""
  x, t = shipped_faces
  x, t = x[:2], t[:2]
  grad = M.model_parameter_randomisation(A.saliency, shipped, x, t, key=key)
  assert grad.layers[0] == "head" and len(grad.layers) == 14
  np.testing.assert_allclose(grad.original, 1.0, atol=1e-5)
  assert float(jnp.max(grad.scores[-1])) < 0.5  # all layers random: the map is another map
  edge = M.model_parameter_randomisation(edges, shipped, x, t, key=key)
  np.testing.assert_allclose(edge.scores, 1.0, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# Purity: jit, vmap, keys, dtypes
# ---------------------------------------------------------------------------------------------


def test_jit_and_vmap_compose(small_faces, key):
  x, t = small_faces
  fwd = linear_model(key)
  a = A.input_x_gradient(fwd, x, t)

  def deletion(xx, aa):
    return M.pixel_flipping(fwd, xx, 0, aa, features_in_step=36).auc

  eager = deletion(x, a)
  np.testing.assert_allclose(jax.jit(deletion)(x, a), eager, rtol=1e-6)
  stacked = jax.vmap(deletion)(jnp.asarray(x).reshape(2, 3, 12, 12, 1), a.reshape(2, 3, 12, 12, 1))
  np.testing.assert_allclose(stacked.reshape(-1), eager, rtol=1e-6)
  sens = jax.jit(lambda xx: M.max_sensitivity(fwd, xx, 0, method=A.saliency, key=key,
                                              nr_samples=3))
  np.testing.assert_allclose(sens(x), M.max_sensitivity(fwd, x, 0, method=A.saliency, key=key,
                                                        nr_samples=3), rtol=1e-6)


def test_same_key_same_scores_and_chunking_does_not_matter(small_faces, key):
  x, t = small_faces
  fwd = linear_model(key)
  a = A.saliency(fwd, x, t)
  one = M.faithfulness_correlation(fwd, x, t, a, key=key, nr_runs=10, subset_size=20,
                                   batch_size=3)
  two = M.faithfulness_correlation(fwd, x, t, a, key=key, nr_runs=10, subset_size=20)
  np.testing.assert_allclose(one, two, rtol=1e-6)
  other = M.faithfulness_correlation(fwd, x, t, a, key=jax.random.key(1), nr_runs=10,
                                     subset_size=20)
  assert not np.allclose(one, other)


def test_faithfulness_correlation_chunks_copies_and_agrees_with_one_program(small_faces, key):
  """Concrete arrays: the 6 faces × 10 copies run as fixed-size chunks of rows through one
  compiled model call (FAST_ROWS by default, ``batch_size`` copies of every face when given;
  the last chunk padded), plus one call on the faces themselves. Under jit the whole metric is
  one program; both give the same scores, and new draws do not recompile the chunk."""
  x, t = small_faces
  base = linear_model(key)
  rows = []

  def counted(params, v):
    jax.debug.callback(lambda: rows.append(v.shape[0]))
    return _linear(params, v)

  fwd = jax.tree_util.Partial(counted, base.args[0])
  a = A.saliency(base, x, t)
  kw = dict(nr_runs=10, subset_size=20, perturb_baseline="uniform")
  eager = M.faithfulness_correlation(fwd, x, t, a, key=key, **kw)
  assert sorted(rows) == [6, M._common.FAST_ROWS, M._common.FAST_ROWS], rows
  rows.clear()
  chunked = M.faithfulness_correlation(fwd, x, t, a, key=key, batch_size=4, **kw)
  assert sorted(rows) == [6, 24, 24, 24], rows
  np.testing.assert_allclose(chunked, eager, rtol=1e-5)
  jitted = jax.jit(lambda xx, aa: M.faithfulness_correlation(fwd, xx, t, aa, key=key, **kw))
  np.testing.assert_allclose(jitted(x, a), eager, rtol=1e-5)
  compiled = M._common._predict_chunk._cache_size()
  M.faithfulness_correlation(fwd, x, t, a, key=jax.random.key(5), **kw)
  assert M._common._predict_chunk._cache_size() == compiled


def test_float64_stays_float64(small_faces):
  x, t = small_faces
  with jax.enable_x64(True):
    fwd = linear_model(jax.random.key(0))
    fwd = jax.tree_util.Partial(_linear, jax.tree.map(lambda v: v.astype(jnp.float64),
                                                      fwd.args[0]))
    x64 = jnp.asarray(x, jnp.float64)
    a = A.saliency(fwd, x64, t)
    assert M.pixel_flipping(fwd, x64, t, a, features_in_step=36).curve.dtype == jnp.float64
    assert M.sparseness(fwd, x64, t, a).dtype == jnp.float64
    assert M.faithfulness_correlation(fwd, x64, t, a, key=jax.random.key(0), nr_runs=5,
                                      subset_size=20).dtype == jnp.float64
    assert M.road(fwd, x64, t, a, percentages=[50], noise=0.0).curve.dtype == jnp.float64


def test_road_imputation_solves_the_neighbour_average():
  """Every imputed pixel equals the weighted mean of its neighbours (the system Quantus
  solves), on a random image with a random half hidden."""
  img = jax.random.uniform(jax.random.key(0), (10, 10, 1))
  mask = jax.random.bernoulli(jax.random.key(1), 0.5, (10, 10, 1))
  with jax.enable_x64(True):
    out = M.faithfulness.linear_imputation(img.astype(jnp.float64), mask)
    s = M.faithfulness._neighbour_sum(jnp.ones_like(out))
    avg = M.faithfulness._neighbour_sum(out) / s
    np.testing.assert_allclose(np.asarray(out)[np.asarray(mask)],
                               np.asarray(avg)[np.asarray(mask)], atol=1e-10)
    np.testing.assert_array_equal(np.asarray(out)[~np.asarray(mask)],
                                  np.asarray(img, np.float64)[~np.asarray(mask)])


# ---------------------------------------------------------------------------------------------
# Errors, before any work
# ---------------------------------------------------------------------------------------------


def test_errors_name_the_argument(small_faces, key):
  x, t = small_faces
  fwd = linear_model(key)
  a = A.saliency(fwd, x, t)
  with pytest.raises(ValueError, match="`attributions` shape"):
    M.pixel_flipping(fwd, x, t, a[:, :6])
  with pytest.raises(ValueError, match="`perturb_baseline`"):
    M.pixel_flipping(fwd, x, t, a, perturb_baseline="grey")
  with pytest.raises(ValueError, match="pass `key`"):
    M.pixel_flipping(fwd, x, t, a, perturb_baseline="uniform")
  with pytest.raises(ValueError, match="`features_in_step`"):
    M.pixel_flipping(fwd, x, t, a, features_in_step=1000)
  with pytest.raises(ValueError, match="`subset_size`"):
    M.faithfulness_correlation(fwd, x, t, a, key=key, subset_size=144)
  with pytest.raises(ValueError, match="`method`"):
    M.max_sensitivity(fwd, x, t, a, method="saliency", key=key)
  with pytest.raises(ValueError, match="`target`"):
    M.sparseness(fwd, x, np.full(6, 9), a)
  with pytest.raises(ValueError, match="`order`"):
    M.region_perturbation(fwd, x, t, a, patch_size=4, order="best")
  with pytest.raises(ValueError, match="`classifier`"):
    M.model_parameter_randomisation(A.saliency, fwd, x, t, key=key)
  with pytest.raises(ValueError, match="`mask`"):
    M.region_share(fwd, x, t, a, mask=np.ones((48, 48), bool))


@pytest.mark.parametrize("name", [n for n in M.__all__ if callable(getattr(M, n))])
def test_unknown_keyword_names_the_public_function(name):
  """A misspelt option is reported against the function the user called, never a private
  helper it shares with other metrics (max_sensitivity once named ``_relative_sensitivity``)."""
  with pytest.raises(TypeError, match=rf"^{name}(\.__new__|\.__init__)?\(\) got an unexpected keyword "
                                      r"argument 'bogus'"):
    getattr(M, name)(bogus=1)


# ---------------------------------------------------------------------------------------------
# The evaluation table and the figures' data
# ---------------------------------------------------------------------------------------------


def test_evaluate_methods_table(tiny_classifier, faces, key):
  x = data.to_float(faces.images[:2])
  t = faces.labels[:2]
  calls = []
  table = M.evaluate_methods(tiny_classifier, x, t, methods=("saliency", "grad_cam", "lime"),
                             metrics=("deletion", "sparseness", "max_sensitivity",
                                      "eyes_share"),
                             key=key, progress=calls.append, lime_samples=20)
  assert sum(calls) == 12
  assert table.mean().shape == (3, 4) and np.isfinite(table.mean()).all()
  md = table.to_markdown()
  assert md.count("\n") == 4 and "deletion AUC ↓" in md and "**" in md
  assert table.best("eyes_share") is None
  assert set(table.to_dict()["mean"]) == {"saliency", "grad_cam", "lime"}
  # a face without a finite score (an all-zero map's max-sensitivity is infinite) is left out
  # of the mean and counted, and the JSON stays strict
  scores = dict(table.scores)
  good = np.asarray(scores["saliency", "deletion"], float)
  scores["saliency", "deletion"] = np.array([good[0], np.inf])
  scores["lime", "deletion"] = np.array([np.nan, np.nan])
  odd = M.evaluate.Table(table.methods, table.metrics, scores)
  assert odd.mean()[0, 0] == pytest.approx(good[0]) and odd.undefined()[0, 0] == 1
  assert np.isnan(odd.mean()[2, 0]) and odd.undefined()[2, 0] == 2
  assert odd.best("deletion") == "grad_cam"  # the only method scored on both faces
  md = odd.to_markdown()
  assert f"{good[0]:.3f} ± 0.000 (1/2 faces undefined)" in md and "| lime | undefined" in md
  assert "inf" not in md and "nan" not in md
  import json
  text = json.dumps(odd.to_dict(), allow_nan=False)
  assert json.loads(text)["scores"]["saliency"]["deletion"][1] is None
  with pytest.raises(ValueError, match="`metrics`"):
    M.evaluate_methods(tiny_classifier, x, t, metrics=("accuracy",), key=key)
  with pytest.raises(ValueError, match="`methods`"):
    M.evaluate_methods(tiny_classifier, x, t, methods=("shap",), key=key)


@pytest.mark.slow
def test_figure_data(tiny_classifier, faces, key):
  x = data.to_float(faces.images[:2])
  t = faces.labels[:2]
  curves = M.deletion_curves(tiny_classifier, x, t, methods=("saliency",), key=key,
                             features_in_step=576)
  c = curves["saliency"]
  np.testing.assert_allclose(c.fraction, [0.25, 0.5, 0.75, 1.0])
  assert c.deletion.shape == c.insertion.shape == (2, 4)
  y = np.asarray(jax.nn.softmax(tiny_classifier.forward(x)))[np.arange(2), t]
  np.testing.assert_allclose(c.insertion[:, -1], y, rtol=1e-5)  # all revealed: the face
  check = M.sanity_check(tiny_classifier, x, t, key=key)
  assert check.layers[0] == "original" and check.maps.shape[:2] == (len(check.layers), 2)
  np.testing.assert_allclose(check.spearman[0], 1.0, atol=1e-6)
  from jaxplain.metrics import figures
  fig = figures.deletion_figure(curves)
  assert len(fig.axes) == 2 and len(fig.axes[0].lines) == 1
  fig = figures.sanity_figure(check, faces=2)
  assert len(fig.axes) == 2 * len(check.layers)
