"""jaxplain.attribution on analytic functions with known gradients, completeness, jit / vmap /
grad behaviour, recompilation, dtypes and input validation. (Captum: test_attribution_captum.)"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import json
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxplain import attribution as A
from jaxplain import data

SHAPE = (3, 6, 5, 2)


def cubic_forward(x):
  """f_k(x) = sum(w_k · x³): gradient 3 w_k x², IG from 0 exactly w_k x³ (K = 4)."""
  w = jnp.linspace(-1.0, 1.5, 4 * 6 * 5 * 2).reshape(4, 6, 5, 2).astype(x.dtype)
  return jnp.einsum("khwc,nhwc->nk", w, x ** 3)


def cubic_w(dtype=np.float64):
  return np.linspace(-1.0, 1.5, 4 * 6 * 5 * 2).reshape(4, 6, 5, 2).astype(dtype)


def relu_forward(x):
  """f_k(x) = sum(v_k · max(x − 0.5, 0)); guided gradient: v_k where x > 0.5 and v_k > 0."""
  v = jnp.linspace(-1.0, 1.0, 4 * 6 * 5 * 2).reshape(4, 6, 5, 2).astype(x.dtype)
  return jnp.einsum("khwc,nhwc->nk", v, jnp.maximum(x - 0.5, 0.0))


@pytest.fixture
def x(key):
  return jax.random.uniform(key, SHAPE, jnp.float32, 0.1, 1.0)


TARGET = np.array([0, 3, 1], np.int32)


@pytest.fixture(scope="module")
def face_x(faces):
  return jnp.asarray(data.to_float(faces.images[::6])), jnp.asarray(faces.labels[::6], jnp.int32)


def test_saliency_and_input_x_gradient_analytic(x):
  w = cubic_w(np.float32)[TARGET]
  grad = 3 * w * np.asarray(x) ** 2
  np.testing.assert_allclose(A.saliency(cubic_forward, x, TARGET), np.abs(grad), rtol=1e-5)
  np.testing.assert_allclose(A.saliency(cubic_forward, x, TARGET, abs=False), grad, rtol=1e-5)
  np.testing.assert_allclose(A.input_x_gradient(cubic_forward, x, TARGET), grad * np.asarray(x),
                             rtol=1e-5)


def test_int_target_broadcasts(x):
  np.testing.assert_array_equal(A.saliency(cubic_forward, x, 2),
                                A.saliency(cubic_forward, x, np.full(3, 2)))


def test_guided_backprop_analytic_rewrites_maximum(x):
  v = np.linspace(-1.0, 1.0, 240).reshape(4, 6, 5, 2).astype(np.float32)[TARGET]
  want = np.where((np.asarray(x) > 0.5) & (v > 0), v, 0)
  np.testing.assert_allclose(A.guided_backprop(relu_forward, x, TARGET), want, atol=1e-7)
  plain = np.where(np.asarray(x) > 0.5, v, 0)  # the ordinary gradient keeps negative v
  np.testing.assert_allclose(A.saliency(relu_forward, x, TARGET, abs=False), plain, atol=1e-7)


def test_guided_backprop_without_relu_raises(x):
  with pytest.raises(ValueError, match="no ReLU"):
    A.guided_backprop(cubic_forward, x, TARGET)


def test_guided_forward_same_outputs(tiny_classifier, face_x):
  images, _ = face_x
  for g in (A.guided(tiny_classifier.forward), A.guided(lambda z: tiny_classifier.forward(z))):
    np.testing.assert_array_equal(g(images), tiny_classifier.forward(images))


@pytest.mark.parametrize("method", A.RULES)
def test_integrated_gradients_analytic(x, method):
  want = cubic_w(np.float32)[TARGET] * np.asarray(x) ** 3  # ∫ 3 w (αx)² x dα = w x³
  got = A.integrated_gradients(cubic_forward, x, TARGET, steps=64, rule=method)
  # exact for Gauss-Legendre; O(1/n²) for midpoint; O(1/n) for left and right, and for
  # Captum's "trapezoid" too: its n points span [0, 1] but its weights are 1/n, not 1/(n − 1).
  tol = {"gausslegendre": 1e-5, "riemann_middle": 1e-4, "riemann_trapezoid": 0.02}.get(method,
                                                                                       0.06)
  np.testing.assert_allclose(got, want, rtol=tol, atol=1e-6)


def test_integrated_gradients_baselines_analytic(x):
  b = 0.3 * jnp.ones_like(x)
  want = cubic_w(np.float32)[TARGET] * (np.asarray(x) ** 3 - 0.3 ** 3)
  for baselines in (0.3, b, b[0]):
    got = A.integrated_gradients(cubic_forward, x, TARGET, baselines=baselines, steps=8)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


def test_named_baselines(x, key):
  zeros = A.integrated_gradients(cubic_forward, x, TARGET)
  np.testing.assert_array_equal(A.integrated_gradients(cubic_forward, x, TARGET,
                                                       baselines="black"), zeros)
  blurred = A.blur(x)
  np.testing.assert_allclose(blurred.mean((1, 2)), np.asarray(x).mean((1, 2)), rtol=0.05)
  assert float(blurred.std()) < float(x.std())
  u1 = A.integrated_gradients(cubic_forward, x, TARGET, baselines="uniform", key=key)
  u2 = A.integrated_gradients(cubic_forward, x, TARGET, baselines="uniform", key=key)
  np.testing.assert_array_equal(u1, u2)
  gap = A.completeness_gap(cubic_forward, x, TARGET, u1, baselines="uniform", key=key)
  assert np.max(np.abs(gap)) < 1e-4
  with pytest.raises(ValueError, match="key"):
    A.integrated_gradients(cubic_forward, x, TARGET, baselines="uniform")


def test_completeness_improves_with_steps(tiny_classifier, face_x):
  images, target = face_x
  gaps = []
  for steps in (4, 16, 64):
    attr = A.integrated_gradients(tiny_classifier.forward, images[:3], target[:3], steps=steps,
                                  rule="riemann_middle")
    gaps.append(float(jnp.mean(jnp.abs(A.completeness_gap(tiny_classifier.forward, images[:3],
                                                          target[:3], attr)))))
  assert gaps[2] < gaps[1] < gaps[0], gaps


def test_completeness_gap_is_sum_minus_difference(x):
  attr = jnp.ones_like(x)
  f = np.asarray(cubic_forward(x))[np.arange(3), TARGET]
  gap = A.completeness_gap(cubic_forward, x, TARGET, attr)
  np.testing.assert_allclose(gap, np.prod(SHAPE[1:]) - f, rtol=1e-5)


def test_batch_size_chunks_equal_one_pass(tiny_classifier, face_x):
  images, target = face_x
  full = A.integrated_gradients(tiny_classifier.forward, images, target, steps=10)
  for b in (3, 10):
    np.testing.assert_allclose(A.integrated_gradients(tiny_classifier.forward, images, target,
                                                      steps=10, batch_size=b), full,
                               rtol=1e-5, atol=1e-7)


def test_occlusion_analytic():
  x = jnp.arange(1.0, 1.0 + 2 * 8 * 8).reshape(2, 8, 8, 1) / 128
  w = jnp.linspace(-1, 1, 64 * 3).reshape(3, 8, 8, 1)
  f = lambda z: jnp.einsum("khwc,nhwc->nk", w, z)  # noqa: E731 (linear: drop = sum w·x)
  t = np.array([2, 0])
  got = A.occlusion(f, x, t, window=1, stride=1)
  np.testing.assert_allclose(got, np.asarray(w)[t] * np.asarray(x), rtol=1e-4, atol=1e-5)
  # 2x2 windows, stride 2: disjoint windows, each pixel gets its window's total
  got = np.asarray(A.occlusion(f, x, t, window=2, stride=2))
  contrib = (np.asarray(w)[t] * np.asarray(x))[..., 0].reshape(2, 4, 2, 4, 2).sum((2, 4))
  np.testing.assert_allclose(got[..., 0], np.kron(contrib, np.ones((1, 2, 2))), rtol=1e-4,
                             atol=1e-5)


def test_smoothgrad_noise_free_limit_and_key(x, key):
  zero = jnp.zeros((5,) + SHAPE)
  for kind, want in [("smoothgrad", A.saliency(cubic_forward, x, TARGET)),
                     ("smoothgrad_sq", A.saliency(cubic_forward, x, TARGET) ** 2),
                     ("vargrad", jnp.zeros(SHAPE))]:
    got = A.smoothgrad(cubic_forward, x, TARGET, key=None, noise=zero, kind=kind)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)  # vargrad: E[a²] − E[a]²
  a = A.smoothgrad(cubic_forward, x, TARGET, key=key, stdev=0.1)
  b = A.smoothgrad(cubic_forward, x, TARGET, key=key, stdev=0.1)
  c = A.smoothgrad(cubic_forward, x, TARGET, key=jax.random.key(1), stdev=0.1)
  np.testing.assert_array_equal(a, b)
  assert not np.allclose(a, c)
  # E[3 w (x + ε)²] = 3 w (x² + σ²): many samples approach it
  many = A.smoothgrad(cubic_forward, x, TARGET, key=key, samples=4000, stdev=0.1,
                      attribution_method=functools.partial(A.saliency, abs=False), batch_size=500)
  want = 3 * cubic_w(np.float32)[TARGET] * (np.asarray(x) ** 2 + 0.01)
  np.testing.assert_allclose(many, want, rtol=0.1, atol=0.03)


METHOD_CALLS = {
    "saliency": lambda f, x, t: A.saliency(f, x, t),
    "input_x_gradient": lambda f, x, t: A.input_x_gradient(f, x, t),
    "smoothgrad": lambda f, x, t: A.smoothgrad(f, x, t, key=jax.random.key(3), samples=2,
                                               stdev=0.1),
    "ig": lambda f, x, t: A.integrated_gradients(f, x, t, steps=6, batch_size=4),
    "guided": lambda f, x, t: A.guided_backprop(f, x, t),
    "occlusion": lambda f, x, t: A.occlusion(f, x, t, window=16, stride=16),
}


@pytest.mark.parametrize("name", sorted(METHOD_CALLS))
def test_jit_vmap_equal_eager(name, tiny_classifier, face_x):
  images, target = face_x
  images, target = images[:3], target[:3]
  call = METHOD_CALLS[name]
  f = tiny_classifier.forward
  eager = call(f, images, target)
  jitted = jax.jit(call)(f, images, target)
  # IG's eager call drives its path chunks from Python, the jitted one runs them in one program:
  # XLA rounds the two convolutions differently, which can flip an exact tie in a max-pool
  # window (a flat face region) and move a few pixels' gradient; the rest agrees to rounding.
  atol = 1e-2 * float(np.abs(eager).max()) if name == "ig" else 1e-7
  np.testing.assert_allclose(jitted, eager, rtol=1e-5, atol=atol)
  if name == "smoothgrad":  # one draw of (samples, N, ...) noise is not N draws of (samples, 1)
    noise = 0.1 * jax.random.normal(jax.random.key(3), (2,) + images.shape)
    call = lambda f, x, t, z: A.smoothgrad(f, x, t, key=None, noise=z)  # noqa: E731
    eager = call(f, images, target, noise)
    one = jax.vmap(lambda xi, ti, zi: call(f, xi[None], ti[None], zi[:, None])[0],
                   in_axes=(0, 0, 1))(images, target, noise)
    np.testing.assert_allclose(one, eager, rtol=1e-5, atol=1e-7)
    return
  one = jax.vmap(lambda xi, ti: call(f, xi[None], ti[None])[0])(images, target)
  np.testing.assert_allclose(one, eager, rtol=1e-5, atol=1e-7)
  assert eager.shape == images.shape and eager.dtype == images.dtype


def test_grad_cam_jit_vmap(tiny_classifier, face_x):
  images, target = face_x
  call = lambda c, x, t: A.grad_cam(c, x, t, layer="conv2_1")  # noqa: E731
  eager = call(tiny_classifier, images, target)
  assert eager.shape == images.shape[:3] + (1,)
  np.testing.assert_allclose(jax.jit(call)(tiny_classifier, images, target), eager, rtol=1e-5,
                             atol=1e-7)
  one = jax.vmap(lambda xi, ti: call(tiny_classifier, xi[None], ti[None])[0])(images, target)
  np.testing.assert_allclose(one, eager, rtol=1e-5, atol=1e-7)


def test_grad_through_saliency_analytic(x):
  # d/dx sum(3 w x²) = 6 w x
  g = jax.grad(lambda z: jnp.sum(A.saliency(cubic_forward, z, TARGET, abs=False)))(x)
  np.testing.assert_allclose(g, 6 * cubic_w(np.float32)[TARGET] * np.asarray(x), rtol=1e-5)


def test_new_weights_do_not_recompile(tiny_classifier, face_x):
  images, target = face_x
  jitted = jax.jit(functools.partial(A.integrated_gradients, steps=4))
  first = jitted(tiny_classifier.forward, images, target)
  other = dataclasses.replace(tiny_classifier, variables=jax.tree.map(
      lambda v: v * 1.1, tiny_classifier.variables))
  second = jitted(other.forward, images, target)
  assert jitted._cache_size() == 1
  assert not np.allclose(first, second)
  sal_module = importlib.import_module("jaxplain.attribution.saliency")
  A.saliency(tiny_classifier.forward, images, target)
  n = sal_module._saliency._cache_size()
  A.saliency(other.forward, images, target)
  A.saliency(other, images, target)  # a Classifier is accepted and is the same forward
  assert sal_module._saliency._cache_size() == n


def test_float64_stays_float64(tiny_classifier, face_x):
  images, target = face_x
  with jax.enable_x64(True):
    x64 = jnp.asarray(np.asarray(images[:2]), jnp.float64)
    f = tiny_classifier.forward
    outs = [A.saliency(f, x64, target[:2]), A.input_x_gradient(f, x64, target[:2]),
            A.smoothgrad(f, x64, target[:2], key=jax.random.key(0), samples=2),
            A.integrated_gradients(f, x64, target[:2], steps=4),
            A.integrated_gradients_adaptive(f, x64, target[:2], max_steps=12)[0],
            A.guided_backprop(f, x64, target[:2]), A.occlusion(f, x64, target[:2], window=24,
                                                                stride=24),
            A.grad_cam(tiny_classifier, x64, target[:2], layer="conv1_1")]
    assert [o.dtype for o in outs] == [jnp.float64] * len(outs)


def test_errors_name_the_argument(tiny_classifier, face_x):
  images, target = face_x
  f = tiny_classifier.forward
  cases = [
      (lambda: A.saliency(f, images[0], target), "`inputs`.*rank 4"),
      (lambda: A.saliency(f, (images * 255).astype(jnp.uint8), target), "`inputs`.*float"),
      (lambda: A.saliency(f, images.at[0, 0, 0, 0].set(jnp.nan), target), "`inputs`.*NaN"),
      (lambda: A.saliency(f, jnp.repeat(images, 3, axis=3), target), "`forward` failed"),
      (lambda: A.saliency(f, images, target + 7), "`target`.*0..6"),
      (lambda: A.saliency(f, images, -1), "`target`"),
      (lambda: A.saliency(f, images, target[:2]), "`target` shape"),
      (lambda: A.saliency(f, images, target.astype(jnp.float32)), "`target`.*integer"),
      (lambda: A.integrated_gradients(f, images, target, baselines=images[:2]),
       "`baselines` shape"),
      (lambda: A.integrated_gradients(f, images, target, baselines="gray"), "`baselines`"),
      (lambda: A.integrated_gradients(f, images, target, rule="simpson"), "`rule`"),
      (lambda: A.integrated_gradients(f, images, target, steps=1, rule="riemann_left"),
       "`steps`"),
      (lambda: A.integrated_gradients(f, images, target, batch_size=0), "`batch_size`"),
      (lambda: A.completeness_gap(f, images, target, images[:1]), "`attributions`"),
      (lambda: A.smoothgrad(f, images, target, key=None), "`key`"),
      (lambda: A.smoothgrad(f, images, target, key=jax.random.key(0), kind="x"), "`kind`"),
      (lambda: A.smoothgrad(f, images, target, key=None, noise=images), "`noise`"),
      (lambda: A.grad_cam(tiny_classifier, images, target, layer="conv9"), "`layer`"),
      (lambda: A.grad_cam(tiny_classifier, images, target, layer="dense"), "`layer`.*spatial"),
      (lambda: A.grad_cam(f, images, target, layer="conv1_1"), "`classifier`"),
      (lambda: A.occlusion(f, images, target, window=60, stride=1), "`window`"),
      (lambda: A.occlusion(f, images, target, window=4, stride=5), "`stride`"),
      (lambda: A.occlusion(f, images, target, window=4, stride=4, baseline=images[:2]),
       "`baseline`"),
      (lambda: A.integrated_gradients_adaptive(f, images, target, min_steps=16, max_steps=8),
       "`max_steps`"),
  ]
  for i, (call, match) in enumerate(cases):
    with pytest.raises(ValueError, match=match):
      call()
      pytest.fail(f"case {i} ({match}) did not raise")


def test_target_range_checked_against_forward_outputs(x):
  with pytest.raises(ValueError, match=r"0\.\.3"):
    A.saliency(cubic_forward, x, np.array([0, 4, 1]))


@pytest.mark.slow
def test_ig_memory_256_faces_256_steps(tmp_path):
  """IG on 256 faces × 256 steps with batch_size=2 stays within 2 GB (peak RSS)."""
  script = textwrap.dedent("""
      import json, resource
      import jax, jax.numpy as jnp, numpy as np
      from jaxplain import attribution as A, data, train
      def peak_mb():  # this process's own peak: ru_maxrss keeps the forking parent's after exec
          try:
              return next(int(l.split()[1]) / 1024 for l in open("/proc/self/status")
                          if l.startswith("VmHWM:"))
          except (OSError, StopIteration):
              return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
      cfg = train.TrainConfig(model=dict(widths=(8, 16), depths=(1, 1), hidden=16))
      model, _, state = train.init_state(cfg, 1)
      clf = train._classifier(model, state, cfg)
      faces = data.sample_faces()
      x = jnp.asarray(np.resize(data.to_float(faces.images), (256, 48, 48, 1)))
      t = jnp.asarray(np.resize(faces.labels, 256), jnp.int32)
      attr = A.integrated_gradients(clf.forward, x, t, steps=256, batch_size=2)
      gap = A.completeness_gap(clf.forward, x, t, attr)
      print(json.dumps({"rss_mb": peak_mb(),
                        "finite": bool(jnp.isfinite(attr).all()),
                        "gap": float(jnp.abs(gap).max())}))
  """)
  out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                       check=True, timeout=900)
  result = json.loads(out.stdout.strip().splitlines()[-1])
  assert result["finite"]
  assert result["rss_mb"] < 2048, result


def test_normalize_attribution_equals_captum():
  vis = pytest.importorskip("captum.attr._utils.visualization")
  from jaxplain import viz
  attr = np.random.default_rng(0).normal(size=(12, 10, 1))
  for sign in ("all", "positive", "negative", "absolute_value"):
    for perc in (1, 2, 10):
      np.testing.assert_allclose(viz.normalize_attribution(attr, sign=sign, outlier_perc=perc),
                                 vis._normalize_attr(attr[..., 0], sign, perc), rtol=1e-12)
