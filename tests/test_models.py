import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxplain import data, models, train


def _x(faces, n=4):
  return jnp.asarray(data.to_float(faces.images[:n]))


def test_forward_shape_and_jit_no_recompile(tiny_classifier, faces):
  x = _x(faces)
  f = jax.jit(lambda forward, x: forward(x))
  out = f(tiny_classifier.forward, x)
  assert out.shape == (4, 7) and out.dtype == jnp.float32
  np.testing.assert_allclose(out, tiny_classifier.forward(x), rtol=1e-5, atol=1e-6)
  other = jax.tree.map(lambda v: v * 1.5, tiny_classifier.variables)
  clf2 = models.Classifier(tiny_classifier.apply_fn, other, layer_names=tiny_classifier.layer_names)
  out2 = f(clf2.forward, x)
  assert f._cache_size() == 1  # new weights, same compiled function
  assert not np.allclose(out, out2)


def test_classifier_is_pytree_through_jit(tiny_classifier, faces):
  g = jax.jit(lambda clf, x: clf.forward(x))
  np.testing.assert_allclose(g(tiny_classifier, _x(faces)), tiny_classifier.forward(_x(faces)),
                             rtol=1e-5, atol=1e-6)


def test_vmap_single_images_equals_batch(tiny_classifier, faces):
  x = _x(faces)
  single = jax.vmap(lambda xi: tiny_classifier.forward(xi[None])[0])(x)
  np.testing.assert_allclose(single, tiny_classifier.forward(x), rtol=1e-5, atol=1e-6)


def test_float64_preserved(tiny_classifier, faces):
  with jax.enable_x64(True):
    x = jnp.asarray(data.to_float(faces.images[:2]), jnp.float64)
    variables = jax.tree.map(lambda v: jnp.asarray(v, jnp.float64), tiny_classifier.variables)
    out = tiny_classifier.apply_fn(variables, x)
    assert out.dtype == jnp.float64


def test_tap_returns_activation_and_delta_gradient(tiny_classifier, faces):
  x = _x(faces, 2)
  logits, act = tiny_classifier.tapped("conv2_1")(x, None)
  assert act.shape == (2, 24, 24, 16)
  np.testing.assert_allclose(logits, tiny_classifier.forward(x), rtol=1e-5, atol=1e-6)
  # d logits[:, 3] / d (logits + delta) is one-hot: checks that delta is added where tapped.
  tap = tiny_classifier.tapped("logits")
  g = jax.grad(lambda d: tap(x, d)[0][:, 3].sum())(jnp.zeros((2, 7)))
  np.testing.assert_array_equal(g, np.eye(7)[[3, 3]])
  # A delta at an inner layer changes the output exactly as a finite difference predicts.
  tap = tiny_classifier.tapped("dense")
  _, h = tap(x, None)
  d = jax.random.normal(jax.random.key(1), h.shape) * 1e-3
  g = jax.grad(lambda d: tap(x, d)[0][:, 0].sum())(jnp.zeros_like(h))
  changed = tap(x, d)[0][:, 0].sum() - tap(x, None)[0][:, 0].sum()
  np.testing.assert_allclose(changed, (g * d).sum(), rtol=2e-2)


def test_unknown_layer(tiny_classifier):
  with pytest.raises(ValueError, match="unknown layer 'conv9'.*conv1_1"):
    tiny_classifier.tapped("conv9")


def test_guided_forward_same_values_guided_gradients(tiny_classifier, faces):
  x = _x(faces, 2)
  np.testing.assert_allclose(tiny_classifier.guided_forward(x), tiny_classifier.forward(x),
                             rtol=1e-6)
  g = jax.grad(lambda v: models.guided_relu(v).sum() * -1.0)(jnp.array([1.0, -1.0]))
  np.testing.assert_array_equal(g, [0.0, 0.0])  # negative gradients are cut
  g = jax.grad(lambda v: (models.guided_relu(v) * 2.0).sum())(jnp.array([1.0, -1.0]))
  np.testing.assert_array_equal(g, [2.0, 0.0])


def test_predict_chunks_equal_forward(tiny_classifier, faces):
  x = np.asarray(_x(faces, 35))
  np.testing.assert_allclose(tiny_classifier.predict(x, batch_size=8), tiny_classifier.forward(x),
                             rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("bad, message", [
    (np.zeros((48, 48, 1), np.float32), "rank 4"),
    (np.zeros((1, 48, 48, 1), np.uint8), "float"),
    (np.zeros((1, 32, 32, 1), np.float32), r"\(32, 32, 1\)"),
    (np.full((1, 48, 48, 1), np.nan, np.float32), "NaN"),
])
def test_check_images(bad, message):
  with pytest.raises(ValueError, match=message):
    models.check_images(bad, shape=(48, 48, 1))


def test_augment_identity_and_flip():
  x = jax.random.uniform(jax.random.key(0), (3, 48, 48, 1))
  same = train._augment(jax.random.key(1), x, max_rotation=0.0, max_shift=0.0, max_zoom=0.0,
                        flip=False)
  np.testing.assert_allclose(same, x, atol=1e-5)
  out = train.augment(jax.random.key(2), x)
  assert out.shape == x.shape and out.dtype == x.dtype
  assert np.all((out >= 0) & (out <= 1))


def test_confusion_matrix_matches_sklearn():
  from sklearn.metrics import confusion_matrix
  rng = np.random.default_rng(0)
  y, p = rng.integers(0, 7, 200), rng.integers(0, 7, 200)
  np.testing.assert_array_equal(train.confusion_matrix(y, p),
                                confusion_matrix(y, p, labels=range(7)))


def test_class_weights_inverse_frequency():
  w = train.class_weights(np.array([0] * 90 + [1] * 10), 1.0, num_classes=2)
  # weighted counts are equal across classes and the mean weight per example is 1
  np.testing.assert_allclose(w[0] * 90, w[1] * 10)
  np.testing.assert_allclose((w[0] * 90 + w[1] * 10) / 100, 1.0)


@pytest.mark.parametrize("shape, window", [((3, 7, 9, 4), (1, 2, 2, 1)),
                                           ((2, 5, 6, 8), (1, 3, 2, 1)), ((4, 10), (2, 5))])
def test_window_max_equals_reduce_window_and_its_gradient(shape, window):
  """Values bit-equal to reduce_window (VALID, odd tails dropped); gradient equal to XLA's
  select_and_scatter on untied data; a tied window sends its gradient to the first maximum."""
  x = jax.random.normal(jax.random.key(0), shape)
  ref = lambda v: jax.lax.reduce_window(v, -jnp.inf, jax.lax.max, window, window, "VALID")
  np.testing.assert_array_equal(models.window_max(x, window), ref(x))
  w = jax.random.normal(jax.random.key(1), ref(x).shape)
  g = jax.grad(lambda v: jnp.sum(w * models.window_max(v, window)))(x)
  np.testing.assert_allclose(g, jax.grad(lambda v: jnp.sum(w * ref(v)))(x), atol=1e-6)
  tied = jnp.zeros(shape)
  g = jax.grad(lambda v: jnp.sum(models.window_max(v, window)))(tied)
  first = np.zeros(shape)
  first[tuple(slice(0, (d // k) * k, k) for d, k in zip(shape, window))] = 1
  np.testing.assert_array_equal(g, first)


@pytest.mark.parametrize("shape, kernel, strides, padding, dilation", [
    ((2, 12, 12, 1), (3, 3), (1, 1), "SAME", (1, 1)),
    ((1, 13, 11, 3), (3, 3), (2, 1), ((1, 2), (0, 1)), (2, 2)),
    ((1, 9, 10, 2), (3, 3), (3, 2), ((-1, 2), (1, 1)), (1, 1)),
])
def test_conv_nhwc_equals_xla_conv_and_its_derivatives(shape, kernel, strides, padding, dilation):
  """conv_nhwc (first layers: input gradient through patches) equals lax.conv_general_dilated:
  values bit for bit, and the VJP (input and kernel), JVP and vmap of its gradient to rounding."""
  x = jax.random.uniform(jax.random.key(0), shape)
  w = jax.random.normal(jax.random.key(1), kernel + (shape[3], 5))
  ref = lambda v, k: jax.lax.conv_general_dilated(
      v, k, strides, padding, rhs_dilation=dilation, dimension_numbers=("NHWC", "HWIO", "NHWC"),
      precision="highest")
  new = lambda v, k: models.conv_nhwc(v, k, strides=strides, padding=padding, dilation=dilation,
                                      precision="highest")
  y = ref(x, w)
  np.testing.assert_array_equal(new(x, w), y)
  g = jax.random.normal(jax.random.key(2), y.shape)
  for got, want in zip(jax.vjp(new, x, w)[1](g), jax.vjp(ref, x, w)[1](g)):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  t = jax.random.normal(jax.random.key(3), shape)
  np.testing.assert_allclose(jax.jvp(lambda v: new(v, w), (x,), (t,))[1],
                             jax.jvp(lambda v: ref(v, w), (x,), (t,))[1], rtol=1e-5, atol=1e-5)
  grad = lambda f: jax.vmap(jax.grad(lambda v: jnp.sum(jnp.sin(f(v[None], w)))))(x)
  np.testing.assert_allclose(grad(new), grad(ref), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape", [(4, 6, 6, 3), (3, 5, 7, 8)])
def test_batch_norm_equals_flax_batch_norm(shape):
  """models.BatchNorm (sums in blocks, custom backward) against flax.linen.BatchNorm in float64:
  outputs, running statistics and gradients (inputs, scale, bias) in train and eval mode; and its
  custom VJP against autodiff of the plain formula, the statistics' cotangents included."""
  from flax import linen as nn
  with jax.enable_x64(True):
    x = 2.0 + jax.random.normal(jax.random.key(0), shape, jnp.float64)
    w = jax.random.normal(jax.random.key(3), shape, jnp.float64)
    params = {"scale": jnp.linspace(0.5, 1.5, shape[-1]), "bias": jnp.linspace(-1, 1, shape[-1])}
    stats = {"mean": jnp.linspace(0, 1, shape[-1]), "var": jnp.linspace(1, 2, shape[-1])}
    for train in (True, False):
      def loss(module, p, v):
        y, updates = module.apply({"params": p, "batch_stats": stats}, v, mutable=["batch_stats"])
        return jnp.sum(w * jnp.sin(y)), updates
      grad = lambda m: jax.value_and_grad(loss, (1, 2), has_aux=True)(m, params, x)  # noqa: E731
      want = grad(nn.BatchNorm(use_running_average=not train, momentum=0.9))
      got = grad(models.BatchNorm(use_running_average=not train, momentum=0.9))
      for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)

    def plain(v, s, b):
      mean = jnp.mean(v, axis=(0, 1, 2))
      var = jnp.mean(v * v, axis=(0, 1, 2)) - mean ** 2
      return (v - mean[None, None, None]) * (jax.lax.rsqrt(var + 1e-5) * s)[None, None, None] \
          + b[None, None, None], mean, var

    total = lambda f: lambda *a: sum(jnp.sum(jnp.cos(o)) for o in f(*a))  # noqa: E731
    ours = lambda v, s, b: models._batch_norm_train(v, s, b, 1e-5)  # noqa: E731
    args = (x, params["scale"], params["bias"])
    for a, b in zip(jax.grad(total(ours), (0, 1, 2))(*args),
                    jax.grad(total(plain), (0, 1, 2))(*args)):
      np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)
