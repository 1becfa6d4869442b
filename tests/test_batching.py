import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxplain import batching


def test_chunked_map_equals_vmap_for_every_batch_size():
  """Written-out chunks (up to MAX_UNROLLED_CHUNKS, a last partial one included), the loop
  beyond, pytrees in and out, and gradients through both."""
  xs = {"a": jnp.arange(100.0) / 10, "b": jnp.ones((100, 2))}

  def fn(row):
    return {"sin": jnp.sin(row["a"]), "sum": row["b"] * row["a"]}

  want = jax.vmap(fn)(xs)
  assert 100 // 7 + 1 <= batching.MAX_UNROLLED_CHUNKS < 100  # 7: written out; 1: the loop
  for b in (None, 1, 7, 10, 99, 200):
    got = jax.jit(lambda x, b=b: batching.chunked_map(fn, x, batch_size=b))(xs)
    jax.tree.map(lambda g, w: np.testing.assert_allclose(g, w, rtol=1e-6), got, want)
    grad = jax.grad(lambda a, b=b: jnp.sum(batching.chunked_map(
        fn, {"a": a, "b": xs["b"]}, batch_size=b)["sin"]))(xs["a"])
    np.testing.assert_allclose(grad, jnp.cos(xs["a"]), rtol=1e-6)


def test_map_chunks_pads_with_a_real_row_and_compiles_once():
  calls = []

  @jax.jit
  def f(x, t):
    calls.append(x.shape)  # traced once per shape
    return {"y": x * 2, "t": t + 1}

  x, t = np.arange(7.0)[:, None], np.arange(7)
  done = []
  out = batching.map_chunks(f, (x, t), size=3, progress=done.append)
  np.testing.assert_array_equal(out["y"], x * 2)
  np.testing.assert_array_equal(out["t"], t + 1)
  assert done == [3, 3, 1] and calls == [(3, 1)]


def test_map_chunks_folds_the_key_per_chunk():
  out = batching.map_chunks(lambda k, x: jax.random.uniform(k, x.shape), (np.zeros(4),), size=2,
                            key=jax.random.key(0))
  assert out[0] != out[2]


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "3"])
def test_bad_sizes_are_named(bad):
  with pytest.raises(ValueError, match="`size` must be a positive int"):
    batching.map_chunks(lambda x: x, (np.zeros(3),), size=bad)
  with pytest.raises(ValueError, match="`points_per_batch` must be a positive int or None"):
    batching.check_batch_size(bad, name="points_per_batch")


def test_empty_batch_is_an_error_not_a_crash():
  with pytest.raises(ValueError, match="empty batch"):
    batching.map_chunks(lambda x: x, (np.zeros((0, 2)),), size=4)


def test_activation_bytes_counts_intermediates_from_shapes():
  x = jax.ShapeDtypeStruct((2, 1000), jnp.float32)
  # sin, then cos: two (2, 1000) float32 intermediates = 16 kB
  assert batching.activation_bytes(lambda v: jnp.cos(jnp.sin(v)), x) == 2 * 2 * 1000 * 4
  assert batching.auto_batch_size(100, 50, budget=1000) == 10
  assert batching.auto_batch_size(10**9, 50, budget=1000) == 1


def test_shape_memo_traces_once_per_model_and_shape_and_never_mixes_models():
  traces = []

  def affine(params, x):
    traces.append(x.shape)
    return x @ params["w"] + params["b"][None]

  def other(params, x):  # same parameter shapes, another function: its own entry
    traces.append(("other", x.shape))
    return (x @ params["w"])[:, :1]

  params = {"w": jnp.ones((3, 5)), "b": jnp.zeros(5)}
  f, g = jax.tree_util.Partial(affine, params), jax.tree_util.Partial(other, params)
  x = jax.ShapeDtypeStruct((4, 3), jnp.float32)
  assert batching.eval_shape(f, x).shape == (4, 5)
  new_weights = jax.tree_util.Partial(affine, {"w": jnp.zeros((3, 5)), "b": jnp.ones(5)})
  assert batching.eval_shape(new_weights, x).shape == (4, 5)  # new values, same shapes: cached
  assert len(traces) == 1
  assert batching.eval_shape(g, x).shape == (4, 1)
  assert batching.eval_shape(f, jax.ShapeDtypeStruct((7, 3), jnp.float32)).shape == (7, 5)
  assert len(traces) == 3
  wider = jax.tree_util.Partial(affine, {"w": jnp.ones((3, 2)), "b": jnp.zeros(2)})
  assert batching.eval_shape(wider, x).shape == (4, 2)  # new weight shapes: traced again
  assert len(traces) == 4


def test_shape_memo_does_not_hold_closures_made_per_call():
  calls = []

  def make(k):
    return lambda x: (calls.append(k), x[:, :k])[1]

  for k in (1, 2):
    assert batching.eval_shape(make(k), jax.ShapeDtypeStruct((2, 3), jnp.float32)).shape == (2, k)
  assert batching.eval_shape(make(1), jax.ShapeDtypeStruct((2, 3), jnp.float32)).shape == (2, 1)
  assert calls == [1, 2, 1]  # a closure is never memoised, so it never answers for another


def test_default_budget_is_the_cpu_budget_here_and_used_by_auto_batch_size():
  assert jax.local_devices()[0].platform != "cpu" or \
      batching.default_budget() == batching.DEFAULT_BUDGET
  per_row = batching.default_budget() // 10
  assert batching.auto_batch_size(per_row, 1000) == 10
  assert batching.auto_batch_size(per_row, 1000, budget=per_row * 3) == 3
