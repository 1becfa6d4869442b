"""The CNN's fast inference path (BatchNorm folded, pooling as reshape + max) against the Flax
layers it replaces and against PyTorch's max-pool gradient."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxplain import models


class FlaxCNN(models.CNN):
  flax_inference = True  # eval mode through nn.Conv / nn.BatchNorm / nn.max_pool


def _pair(key, **config):
  """(fast model, Flax-path model, variables with non-trivial BatchNorm statistics)."""
  model = models.CNN(**config)
  variables = model.init(key, jnp.zeros((1, 48, 48, 1)))
  k1, k2, k3, k4 = jax.random.split(key, 4)
  stats = jax.tree.map(lambda v: v, variables["batch_stats"])
  params = jax.tree.map(lambda v: v, variables["params"])
  for name in stats:
    c = stats[name]["mean"].shape[0]
    stats[name] = {"mean": jax.random.normal(k1, (c,)) * 0.3,
                   "var": jax.random.uniform(k2, (c,), minval=0.2, maxval=3.0)}
    params[name] = {"scale": 1 + jax.random.normal(k3, (c,)) * 0.3,
                    "bias": jax.random.normal(k4, (c,)) * 0.2}
  return model, FlaxCNN(**config), {"params": params, "batch_stats": stats}


def _images(n, size=48, levels=None):
  x = np.random.default_rng(0).uniform(size=(n, size, size, 1)).astype(np.float32)
  if levels:  # few grey levels: flat regions, so max-pool windows tie
    x = np.round(x * levels) / levels
  x[:, :6] = 0.0  # a black band, as on padded faces
  return jnp.asarray(x)


@jax.default_matmul_precision("float32")  # a GPU's default TF32 convolutions differ by 1e-3
def test_fast_inference_equals_flax_layers(key):
  size = 46  # odd sizes after pooling (23, 11): the VALID crop is exercised too
  config = dict(widths=(8, 16, 16), depths=(1, 2, 1), hidden=16)
  fast, flax_model, variables = _pair(key, **config)
  x = _images(3, size, levels=4)
  t = jnp.asarray([0, 3, 6])
  np.testing.assert_allclose(fast.apply(variables, x), flax_model.apply(variables, x),
                             rtol=1e-5, atol=1e-5)
  for guided in (False, True):  # input gradients: plain and guided ReLUs
    grads = [jax.grad(lambda v, m=m: m.apply(variables, v, guided=guided)[jnp.arange(3), t].sum())(
        x) for m in (fast, flax_model)]
    np.testing.assert_allclose(grads[0], grads[1], rtol=1e-5, atol=1e-5)
  for layer in fast.layer_names:  # every tap: activation, and the gradient at it via delta
    (l0, h0), (l1, h1) = (m.apply(variables, x, tap=layer) for m in (fast, flax_model))
    np.testing.assert_allclose(h0, h1, rtol=1e-5, atol=1e-5, err_msg=layer)
    g = [jax.grad(lambda d, m=m: m.apply(variables, x, tap=layer, delta=d)[0][:, 2].sum())(
        jnp.zeros_like(h0)) for m in (fast, flax_model)]
    np.testing.assert_allclose(g[0], g[1], rtol=1e-5, atol=1e-5, err_msg=layer)
  with pytest.raises(ValueError, match="unknown layer 'nope'"):
    fast.apply(variables, x, tap="nope")


def test_fast_inference_float64(key):
  fast, flax_model, variables = _pair(key, widths=(8, 16), depths=(1, 1), hidden=0)
  with jax.enable_x64(True):
    x = jnp.asarray(_images(2), jnp.float64)
    v64 = jax.tree.map(lambda v: jnp.asarray(v, jnp.float64), variables)
    out = fast.apply(v64, x)
    assert out.dtype == jnp.float64
    np.testing.assert_allclose(out, flax_model.apply(v64, x), rtol=1e-12, atol=1e-12)
    g = jax.grad(lambda v: fast.apply(v64, v)[:, 1].sum())(x)
    assert g.dtype == jnp.float64


def test_training_mode_keeps_flax_layers(key):
  fast, flax_model, variables = _pair(key, widths=(8,), depths=(1,), hidden=0)
  x = _images(4)
  a, ua = fast.apply(variables, x, train=True, mutable=["batch_stats"],
                     rngs={"dropout": key})
  b, ub = flax_model.apply(variables, x, train=True, mutable=["batch_stats"],
                           rngs={"dropout": key})
  np.testing.assert_array_equal(a, b)
  jax.tree.map(np.testing.assert_array_equal, ua, ub)


def test_max_pool_gradient_matches_torch_on_ties():
  torch = pytest.importorskip("torch")
  x = np.round(np.random.default_rng(1).uniform(size=(2, 7, 9, 3)) * 2).astype(np.float32) / 2
  g = np.random.default_rng(2).normal(size=(2, 3, 4, 3)).astype(np.float32)
  out, vjp = jax.vjp(models.max_pool_2x2, jnp.asarray(x))
  xt = torch.tensor(x.transpose(0, 3, 1, 2), requires_grad=True)
  ot = torch.nn.functional.max_pool2d(xt, 2)
  ot.backward(torch.tensor(g.transpose(0, 3, 1, 2)))
  np.testing.assert_array_equal(out, ot.detach().numpy().transpose(0, 2, 3, 1))
  np.testing.assert_array_equal(vjp(jnp.asarray(g))[0], xt.grad.numpy().transpose(0, 2, 3, 1))
  # forward mode too (a custom_jvp): the JVP is the VJP's transpose.
  t = np.random.default_rng(3).normal(size=x.shape).astype(np.float32)
  _, jvp = jax.jvp(models.max_pool_2x2, (jnp.asarray(x),), (jnp.asarray(t),))
  np.testing.assert_allclose(np.sum(jvp * g), np.sum(vjp(jnp.asarray(g))[0] * t), rtol=1e-5)


def test_inference_has_no_select_and_scatter(key):
  fast, _, variables = _pair(key, widths=(8, 16), depths=(1, 1), hidden=16)
  x = _images(2)
  hlo = jax.jit(jax.grad(lambda v: fast.apply(variables, v)[:, 0].sum())).lower(x).as_text()
  assert "select_and_scatter" not in hlo and "batch_norm" not in hlo
  assert hlo.count("convolution") >= 2
