"""Shared checks and the target gradient used by every attribution method."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxplain import batching
from jaxplain.models import Classifier, check_images, input_range


def as_forward(forward, *, name: str = "forward") -> jax.tree_util.Partial:
  """``forward`` as a pytree that passes through ``jax.jit`` as an argument.

  A :class:`~jaxplain.models.Classifier` gives its ``forward``; a ``Partial`` is kept (its
  bound weights are leaves, so new weights do not recompile); any other callable is wrapped in a
  ``Partial`` without arguments (it is then part of the compiled function's identity).
  """
  if isinstance(forward, Classifier):
    return forward.forward
  if isinstance(forward, jax.tree_util.Partial):
    return forward
  if not callable(forward):
    raise ValueError(f"`{name}` must be a function (N, H, W, C) -> (N, K) or a Classifier, "
                     f"got {type(forward).__name__}")
  return jax.tree_util.Partial(forward)


def num_classes(forward, inputs, *, name: str = "forward") -> int:
  """K of ``forward`` on ``inputs``, from its abstract evaluation (nothing is computed)."""
  try:
    out = batching.eval_shape(forward, jax.ShapeDtypeStruct(inputs.shape, inputs.dtype))
  except Exception as e:  # a forward that cannot take these inputs (shape, dtype, range)
    raise ValueError(f"`{name}` failed on `inputs` of shape {tuple(inputs.shape)} "
                     f"{inputs.dtype}: {e}") from e
  shape = getattr(out, "shape", None)
  if shape is None or len(shape) != 2 or shape[0] != inputs.shape[0]:
    raise ValueError(f"`{name}` must return logits (N, K) = ({inputs.shape[0]}, K), "
                     f"got {shape if shape is not None else type(out).__name__}")
  return int(shape[1])


def check_target(target, n: int, k: int, *, name: str = "target"):
  """``target`` (an int or (N,) ints in ``0..K-1``) as an int32 array (N,)."""
  if isinstance(target, (bool, np.bool_)):
    raise ValueError(f"`{name}` must be class indices, got {target!r}")
  if isinstance(target, (int, np.integer)):
    target = np.full((n,), int(target), np.int32)
  if not hasattr(target, "dtype"):
    target = np.asarray(target)
  if not jnp.issubdtype(target.dtype, jnp.integer):
    raise ValueError(f"`{name}` must be integer class indices, got dtype {target.dtype}")
  if target.ndim == 0:
    target = jnp.broadcast_to(target, (n,))
  if tuple(target.shape) != (n,):
    raise ValueError(f"`{name}` shape {tuple(target.shape)} != ({n},) (one class per image)")
  if not isinstance(target, jax.core.Tracer):
    t = np.asarray(target)
    if t.size and (t.min() < 0 or t.max() >= k):
      raise ValueError(f"`{name}` must lie in 0..{k - 1} (the forward has K={k} outputs), "
                       f"got values {t.min()}..{t.max()}")
  return jnp.asarray(target, jnp.int32)


def check_call(forward, inputs, target, *, shape=None):
  """Validates a ``method(forward, inputs, target)`` call; returns (forward, inputs, target)."""
  check_images(inputs, name="inputs", shape=shape, value_range=input_range(forward))
  forward = as_forward(forward)
  if inputs.shape[0] == 0:
    raise ValueError("`inputs` is an empty batch (N = 0): pass at least one image")
  inputs = jnp.asarray(inputs)
  k = num_classes(forward, inputs)
  return forward, inputs, check_target(target, inputs.shape[0], k)


def select(logits, target):
  """``logits[i, target[i]]`` for every row: (N,)."""
  return jnp.take_along_axis(logits, target[:, None], axis=1)[:, 0]


def target_grad(forward, inputs, target):
  """Gradient of each example's target logit with respect to its own input.

  Examples are independent (eval-mode networks), so one gradient of the summed target logits
  gives every per-example gradient, as Captum's ``compute_gradients`` does.
  """
  return jax.grad(lambda x: jnp.sum(select(forward(x), target)))(inputs)
