"""jaxplain.lime against the lime package (same segments, same samples) and sklearn."""

from __future__ import annotations

import contextlib
import dataclasses
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxplain import data
from jaxplain import lime as jl
from jaxplain.models import Classifier

lime_image = pytest.importorskip("lime.lime_image")


@pytest.fixture(scope="module")
def sharp(tiny_classifier):
  """The tiny CNN with a scaled head, so its probabilities vary with the image."""
  variables = jax.tree_util.tree_map(lambda v: v, tiny_classifier.variables)
  params = dict(variables["params"])
  params["head"] = {**params["head"], "kernel": params["head"]["kernel"] * 20.0}
  return dataclasses.replace(tiny_classifier, variables={**variables, "params": params})


@pytest.fixture(scope="module")
def images(faces):
  return data.to_float(faces.images[[0, 17, 33]])


@contextlib.contextmanager
def captured_lime_samples():
  """Records the `data` matrix (the masks) lime draws in `LimeImageExplainer.data_labels`."""
  samples = []
  original = lime_image.LimeImageExplainer.data_labels

  def record(self, *args, **kwargs):
    masks, labels = original(self, *args, **kwargs)
    samples.append(masks.copy())
    return masks, labels

  with mock.patch.object(lime_image.LimeImageExplainer, "data_labels", record):
    yield samples


def lime_weights(explanation, label, m):
  w = np.zeros(m)
  for feature, weight in explanation.local_exp[label]:
    w[feature] = weight
  return w


def run_lime_package(clf, images, *, num_samples, labels, hide_color=None, fn=None, seed=0):
  """lime's explanations of each image (all `labels`), with its segments and masks padded."""
  exps = []
  with captured_lime_samples() as samples:
    for i, image in enumerate(images):
      if fn is None:
        exps.append(jl.explain(clf, image, label=labels, num_samples=num_samples, seed=seed + i,
                               hide_color=hide_color))
      else:  # lime driven directly (custom classifier_fn)
        explainer = lime_image.LimeImageExplainer(random_state=seed + i)
        exps.append(explainer.explain_instance(
            image[..., 0], fn, labels=labels, top_labels=None, hide_color=hide_color,
            num_samples=num_samples, batch_size=num_samples, segmentation_fn=jl.segment_face))
  segments = np.stack([e.segments for e in exps])
  m = int(segments.max()) + 1
  masks = np.zeros((len(images), num_samples, m), np.int64)
  for i, s in enumerate(samples):
    masks[i, :, :s.shape[1]] = s
  return exps, segments, masks


@pytest.mark.parametrize("x64", [True, False])
def test_lime_batch_matches_lime_package(sharp, images, x64):
  """Same segments and lime's own samples → lime's weights, intercept, score, local_pred."""
  labels = (6, 4, 3)
  with jax.enable_x64(x64):
    x = images.astype(np.float64) if x64 else images
    exps, segments, masks = run_lime_package(sharp, x, num_samples=300, labels=labels)
    m = masks.shape[-1]
    for label in labels:
      # lime overwrites `score`/`local_pred` with the last label's; check them on that label.
      result = jax.jit(jl.lime_batch, static_argnames=("max_segments",))(
          sharp.forward, x, label, segments, masks=masks, max_segments=m)
      assert result.weights.dtype == (jnp.float64 if x64 else jnp.float32)
      for i, e in enumerate(exps):
        ref = lime_weights(e, label, m)
        if label in (3, 4):
          assert np.abs(ref).max() > 1e-3  # a real signal, not a flat classifier
        np.testing.assert_allclose(result.weights[i], ref, atol=1e-5 if not x64 else 1e-12)
        np.testing.assert_allclose(result.intercept[i], e.intercept[label],
                                   atol=1e-5 if not x64 else 1e-12)
        np.testing.assert_array_equal(result.valid[i], np.arange(m) <= segments[i].max())
        if label == labels[-1]:
          np.testing.assert_allclose(result.score[i], e.score, atol=1e-5 if not x64 else 1e-12)
          np.testing.assert_allclose(result.local_pred[i], e.local_pred[0],
                                     atol=1e-5 if not x64 else 1e-12)


def test_lime_batch_hide_value_and_logits_match_lime(sharp, images):
  """hide=0 is lime's hide_color=0; logits=True is lime with a logit classifier_fn."""
  forward = jax.jit(sharp.forward)

  def logit_fn(batch):
    return np.asarray(forward(np.asarray(batch, np.float32).mean(-1, keepdims=True)), np.float64)

  x = images[:2]
  exps, segments, masks = run_lime_package(sharp, x, num_samples=200, labels=(4,), hide_color=0,
                                           fn=logit_fn)
  result = jl.lime_batch(sharp, x, 4, segments, masks=masks, hide=0.0, logits=True)
  for i, e in enumerate(exps):
    ref = lime_weights(e, 4, masks.shape[-1])
    assert np.abs(ref).max() > 1e-2
    np.testing.assert_allclose(result.weights[i], ref, atol=2e-5, rtol=1e-5)
    np.testing.assert_allclose(result.intercept[i], e.intercept[4], atol=2e-5, rtol=1e-5)


def test_weighted_ridge_is_sklearn_ridge():
  """The JAX solve against sklearn Ridge(alpha).fit(sample_weight=...) and its score."""
  sklearn = pytest.importorskip("sklearn.linear_model")
  rng = np.random.default_rng(0)
  with jax.enable_x64(True):
    for alpha in (1.0, 0.3):
      x = rng.integers(0, 2, (80, 9)).astype(np.float64)
      y = x @ rng.normal(size=9) + rng.normal(size=80) * 0.3
      w = rng.uniform(0.1, 1, 80)
      valid = np.ones(9, bool)
      b, c, score, local = jl._weighted_ridge(x, y, w, valid, alpha)
      ref = sklearn.Ridge(alpha=alpha).fit(x, y, sample_weight=w)
      np.testing.assert_allclose(b, ref.coef_, atol=1e-12)
      np.testing.assert_allclose(c, ref.intercept_, atol=1e-12)
      np.testing.assert_allclose(score, ref.score(x, y, sample_weight=w), atol=1e-12)
      np.testing.assert_allclose(local, ref.predict(x[:1])[0], atol=1e-12)


def test_cosine_kernel_is_sklearn_pairwise_distance():
  metrics = pytest.importorskip("sklearn.metrics")
  rng = np.random.default_rng(1)
  masks = rng.integers(0, 2, (50, 12))
  masks[0] = 1
  masks[1] = 0  # an all-hidden row: sklearn's cosine distance is 1
  d = metrics.pairwise_distances(masks, masks[:1], metric="cosine").ravel()
  ref = np.sqrt(np.exp(-(d ** 2) / 0.25 ** 2))
  with jax.enable_x64(True):
    ours = jl._cosine_kernel(masks.astype(np.float64), np.ones(12), 0.25)
  np.testing.assert_allclose(ours, ref, atol=1e-12)


def test_lime_batch_padding_batching_and_keys(sharp, images, key):
  """Extra padded superpixels change nothing; a batch equals images one at a time; key → same."""
  segments = jl.segment_faces(images)
  m = int(segments.max()) + 1
  a = jl.lime_batch(sharp.forward, images, 3, segments, key=key, num_samples=64, batch_size=50)
  b = jl.lime_batch(sharp.forward, images, 3, segments, key=key, num_samples=64, batch_size=50)
  np.testing.assert_array_equal(a.weights, b.weights)
  masks = jl.sample_masks(key, len(images), 64, m)
  assert (masks[:, 0] == 1).all() and 0.4 < float(masks[:, 1:].mean()) < 0.6
  np.testing.assert_allclose(a.weights, jl.lime_batch(sharp.forward, images, 3, segments,
                                                      masks=masks).weights, atol=1e-6)
  padded = jl.lime_batch(sharp.forward, images, 3, segments,
                         masks=jnp.pad(masks, ((0, 0), (0, 0), (0, 5)), constant_values=1))
  np.testing.assert_allclose(padded.weights[:, :m], a.weights, atol=1e-5)
  assert (padded.weights[:, m:] == 0).all() and not padded.valid[:, m:].any()
  for i in range(len(images)):
    one = jl.lime_batch(sharp.forward, images[i:i + 1], 3, segments[i:i + 1], masks=masks[i:i + 1])
    np.testing.assert_allclose(one.weights[0], a.weights[i], atol=1e-5)
  c = jl.lime_batch(sharp.forward, images, 3, segments, key=jax.random.key(1), num_samples=64)
  assert not np.allclose(a.weights, c.weights)


def test_explain_is_reproducible(sharp, images):
  a = jl.explain(sharp, images[0], label=3, num_samples=100, seed=5)
  b = jl.explain(sharp, images[0], label=3, num_samples=100, seed=5)
  c = jl.explain(sharp, images[0], label=3, num_samples=100, seed=6)
  assert a.local_exp[3] == b.local_exp[3]
  assert a.local_exp[3] != c.local_exp[3]
  np.testing.assert_array_equal(a.segments, jl.segment_face(images[0]))


def test_default_segmentation_suits_faces(faces):
  x = data.to_float(faces.images)
  segments = jl.segment_faces(x)
  counts = [len(np.unique(s)) for s in segments]
  assert 20 <= min(counts) and max(counts) <= 50, counts
  assert all(s.max() + 1 == c and s.min() == 0 for s, c in zip(segments, counts))  # 0..S-1
  from skimage.color import gray2rgb
  np.testing.assert_array_equal(jl.segment_face(gray2rgb(x[0, ..., 0])), segments[0])


def test_classifier_fn_probabilities_and_compile_bound(tiny_classifier, images):
  """Softmax of the logits; lime's RGB gives the gray result; ≤ ⌈log2 batch⌉+1 compiles."""
  traces = []

  def counting_apply(variables, x, **kwargs):
    traces.append(x.shape)
    return tiny_classifier.apply_fn(variables, x, **kwargs)

  clf = dataclasses.replace(tiny_classifier, apply_fn=counting_apply)
  fn = jl.classifier_fn(clf, batch_size=100)
  rng = np.random.default_rng(0)
  x = rng.uniform(0, 1, (300, 48, 48, 1)).astype(np.float32)
  ref = np.asarray(jax.nn.softmax(tiny_classifier.forward(x), -1))
  for n in (300, 1, 10, 3, 77, 100, 101, 250, 7, 64, 65, 33, 17, 299):
    rgb = np.repeat(x[:n], 3, axis=-1)  # what gray2rgb hands to lime's classifier_fn
    out = fn(rgb, batch_size=10)  # extra keyword arguments are accepted
    np.testing.assert_allclose(out, ref[:n], atol=1e-6)
  assert len(traces) <= 8  # chunk sizes 1, 2, 4, ..., 64, 100
  assert all(s[0] <= 100 for s in traces)
  np.testing.assert_allclose(fn((x[:5, ..., 0] * 255).astype(np.uint8)[..., None]),
                             np.asarray(jax.nn.softmax(tiny_classifier.forward(
                                 (x[:5] * 255).astype(np.uint8) / np.float32(255)), -1)),
                             atol=1e-6)


def test_classifier_fn_pads_small_calls_to_a_power_of_two(tiny_classifier):
  shapes = []

  def counting_apply(variables, x, **kwargs):
    shapes.append(x.shape[0])
    return tiny_classifier.apply_fn(variables, x, **kwargs)

  fn = jl.classifier_fn(dataclasses.replace(tiny_classifier, apply_fn=counting_apply),
                        batch_size=1000)
  fn(np.zeros((10, 48, 48, 3), np.float32))
  assert shapes == [16]


def test_errors(sharp, images, key):
  segments = jl.segment_faces(images)
  with pytest.raises(ValueError, match="`segments`"):
    jl.lime_batch(sharp, images, 0, segments[:, :40], key=key)
  with pytest.raises(ValueError, match="`segments`"):
    jl.lime_batch(sharp, images, 0, segments[:2], key=key)
  with pytest.raises(ValueError, match="`images`"):
    jl.lime_batch(sharp, np.repeat(images, 3, -1), 0, segments, key=key)
  with pytest.raises(ValueError, match="`images`"):
    jl.lime_batch(sharp.forward, np.repeat(images, 3, -1), 0, segments, key=key)
  with pytest.raises(ValueError, match="`images`"):
    jl.lime_batch(sharp.forward, images[..., 0], 0, segments, key=key)
  with pytest.raises(ValueError, match="`num_samples`"):
    jl.lime_batch(sharp, images, 0, segments, key=key, num_samples=1)
  with pytest.raises(ValueError, match="`num_samples`"):
    jl.explain(sharp, images[0], label=0, num_samples=1)
  with pytest.raises(ValueError, match="`key`"):
    jl.lime_batch(sharp, images, 0, segments)
  with pytest.raises(ValueError, match="`target`"):
    jl.lime_batch(sharp, images, 7, segments, key=key)
  with pytest.raises(ValueError, match="`hide`"):
    jl.lime_batch(sharp, images, 0, segments, key=key, hide="blur")
  with pytest.raises(ValueError, match="`masks`"):
    jl.lime_batch(sharp, images, 0, segments, masks=np.ones((2, 10, 60)))
  with pytest.raises(ValueError, match="`image`"):
    jl.explain(sharp, images[0, :40], label=0)
  fn = jl.classifier_fn(sharp)
  with pytest.raises(ValueError, match=r"\[0, 1\]"):
    fn(np.full((2, 48, 48, 3), 200.0))
  with pytest.raises(ValueError, match="`images`"):
    fn(np.zeros((2, 32, 32, 3), np.float32))
  assert isinstance(sharp, Classifier)


def test_lime_many_groups_compile_once(tiny_classifier, images, key):
  traces = []

  def counting_apply(variables, x, **kwargs):
    traces.append(x.shape)
    return tiny_classifier.apply_fn(variables, x, **kwargs)

  clf = dataclasses.replace(tiny_classifier, apply_fn=counting_apply)
  segments = jl.segment_faces(images)
  seen = []
  many = jl.lime_many(clf, images, [0, 3, 6], segments, key=key, num_samples=32,
                      images_per_call=2, max_segments=60, progress=seen.append)
  assert len(traces) == 1 and seen == [2, 1]
  assert many.weights.shape == (3, 60)
  first = jl.lime_batch(tiny_classifier, images[:2], np.array([0, 3]), segments[:2],
                        key=jax.random.fold_in(key, 0), num_samples=32, max_segments=60)
  np.testing.assert_allclose(many.weights[:2], first.weights, atol=1e-6)


def test_lime_figure_and_cli(tiny_classifier, tmp_path):
  from jaxplain import checkpoint, cli, viz
  checkpoint.save_classifier(tiny_classifier, tmp_path / "clf")
  out = tmp_path / "out"
  assert cli.main(["lime", "--checkpoint", str(tmp_path / "clf"), "--out", str(out),
                   "--num-samples", "16", "--per-class", "1"]) == 0
  saved = np.load(out / "lime.npz")
  assert saved["weights"].shape[0] == 7 and sorted(saved["labels"]) == list(range(7))
  assert (out / "lime_classes.png").stat().st_size > 10_000
  overlay = viz.lime_overlay(np.zeros((4, 4, 1)), np.array([[0, 0, 1, 1]] * 4),
                             np.array([1.0, -1.0]), num_features=1)
  assert overlay.shape == (4, 4, 3) and overlay[0, 0, 1] > 0 and overlay[0, 3, 0] > 0
  assert cli.main(["lime", "--checkpoint", str(tmp_path / "clf"), "--out", str(out),
                   "--num-samples", "1"]) == 2


def test_explain_segmentation_is_configurable(sharp, images):
  from lime.wrappers.scikit_image import SegmentationAlgorithm
  coarse = jl.explain(sharp, images[0], label=(3, 4), num_samples=50,
                      segmentation=lambda image: jl.segment_face(image, n_segments=16))
  assert coarse.segments.max() + 1 < jl.segment_face(images[0]).max() + 1
  assert set(coarse.local_exp) == {3, 4}
  wrapped = jl.explain(sharp, images[0], label=3, num_samples=50,
                       segmentation=SegmentationAlgorithm("slic", n_segments=30, compactness=0.1,
                                                          start_label=0))
  assert len(wrapped.local_exp[3]) == wrapped.segments.max() + 1
