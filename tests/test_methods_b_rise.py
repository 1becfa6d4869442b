"""RISE (Petsiuk et al. 2018; no package reference): its masks equal the authors'
``generate_masks`` (``skimage.transform.resize``) given the same cells and shifts; its saliency
equals the authors' ``RISE.forward`` (ported below) on the same masks through the PyTorch twin;
and its expectation on a linear model is the analytic one."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxplain import attribution as A
from jaxplain import data, lime

torch = pytest.importorskip("torch")

import test_attribution_captum as tac  # noqa: E402


def test_masks_equal_the_authors(key):
  from skimage.transform import resize
  size, s, n = (48, 48), 8, 20
  rng = np.random.default_rng(0)
  grids = (rng.random((n, s, s)) < 0.5).astype("float32")
  cell = np.ceil(np.array(size) / s).astype(int)
  shifts = rng.integers(0, cell, (n, 2))
  up = (s + 1) * cell
  want = np.stack([resize(g, up, order=1, mode="reflect", anti_aliasing=False)
                   [x:x + size[0], y:y + size[1]] for g, (x, y) in zip(grids, shifts)])
  with jax.enable_x64(True):
    got = A.rise_masks_from(jnp.asarray(grids, jnp.float64), jnp.asarray(shifts), size)
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-7)  # skimage keeps the float32 grid
  drawn = A.rise_masks(key, 50, size, grid=s, p=0.3)
  assert drawn.shape == (50, 48, 48) and 0 <= float(drawn.min()) and float(drawn.max()) <= 1
  assert abs(float(drawn.mean()) - 0.3) < 0.05


def _authors_forward(model, masks, x, p1):
  """eclique/RISE ``explanations.RISE.forward`` for one image (NCHW), softmax scores."""
  n, h, w = masks.shape
  stack = torch.mul(masks[:, None], x)
  p = torch.softmax(model(stack), dim=1)
  sal = torch.matmul(p.data.transpose(0, 1), masks.view(n, h * w))
  return (sal.view((p.shape[1], h, w)) / n / p1).numpy()


@pytest.mark.parametrize("dtype", ["float64", pytest.param("float32", marks=pytest.mark.slow)])
def test_rise_equals_the_authors_forward(tiny_classifier, faces, key, dtype):
  pair = tac.twin_pair(tiny_classifier, dtype) if dtype == "float32" else None
  with jax.enable_x64(dtype == "float64"):
    pair = pair or tac.twin_pair(tiny_classifier, dtype)
    x = data.to_float(faces.images[:2]).astype(dtype)
    t = np.array([3, 5], np.int32)
    masks = A.rise_masks(key, 64, (48, 48), grid=6, p=0.4, dtype=jnp.dtype(dtype))
    ours = A.rise(pair.clf.forward, jnp.asarray(x), t, key=None, masks=masks, p=0.4,
                  batch_size=32)
  mt = torch.as_tensor(np.asarray(masks))
  ref = np.stack([_authors_forward(pair.torch, mt, torch.as_tensor(xi.transpose(2, 0, 1)[None]),
                                   0.4)[ti] for xi, ti in zip(x, t)])[..., None]
  tac.check(ours, ref, pair)


def test_rise_expectation_on_a_linear_model(faces, key):
  """Superpixel masks, f = Σ w·x: E[S(q)] = p f(x) + (1 − p) Σ_{r ∈ seg(q)} w_r x_r."""
  x = data.to_float(faces.images[:1]).astype(np.float64)
  seg = lime.segment_faces(x, n_segments=12)
  w = np.linspace(-1, 1, 7 * 48 * 48).reshape(7, 48, 48, 1)
  p, t, samples = 0.5, 2, 4000
  with jax.enable_x64(True):
    forward = lambda z: jnp.einsum("khwc,nhwc->nk", jnp.asarray(w), z)  # noqa: E731
    got = np.asarray(A.rise(forward, jnp.asarray(x), t, key=key, samples=samples, p=p,
                            feature_mask=seg, logits=True))[0, ..., 0]
  contrib = (w[t] * x[0])[..., 0]
  per_seg = np.bincount(seg[0].ravel(), contrib.ravel())
  want = p * contrib.sum() + (1 - p) * per_seg[seg[0]]
  # Monte-Carlo error: the score's spread over masks, / sqrt(samples) / p.
  se = np.sqrt((contrib.sum() ** 2 + np.sum(per_seg ** 2)) / samples) / p
  assert np.max(np.abs(got - want)) < 5 * se, (np.max(np.abs(got - want)), se)


def test_rise_errors(tiny_classifier, faces, key):
  x = data.to_float(faces.images[:1])
  with pytest.raises(ValueError, match="`key` is required"):
    A.rise(tiny_classifier.forward, x, 0, key=None)
  with pytest.raises(ValueError, match="`masks` shape"):
    A.rise(tiny_classifier.forward, x, 0, key=None, masks=np.ones((3, 10, 10)))
  with pytest.raises(ValueError, match="`p` must be"):
    A.rise(tiny_classifier.forward, x, 0, key=key, p=0.0)
