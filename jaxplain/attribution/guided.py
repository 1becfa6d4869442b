"""Guided backpropagation: gradients through ReLUs that pass only positive signals.

References:
  Springenberg et al., "Striving for Simplicity: The All Convolutional Net", ICLR 2015.
  https://arxiv.org/abs/1412.6806
"""

from __future__ import annotations

import dataclasses
import inspect

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from jax.extend import core as jex_core

from jaxplain.attribution._common import check_call, target_grad
from jaxplain.models import Classifier, _Bound, guided_relu
from jaxplain.attribution.registry import register

__all__ = ["guided_backprop", "guided"]


def _is_zero_literal(v) -> bool:
  if not isinstance(v, jex_core.Literal):
    return False
  try:
    return bool(np.all(np.asarray(v.val) == 0))
  except Exception:  # noqa: BLE001 - not a number
    return False


def _relu_operand(eqn):
  """The operand ``x`` when ``eqn`` is ``max(x, 0)`` (either order), else None."""
  if eqn.primitive.name != "max" or len(eqn.invars) != 2:
    return None
  a, b = eqn.invars
  if _is_zero_literal(b) and not isinstance(a, jex_core.Literal):
    return a
  if _is_zero_literal(a) and not isinstance(b, jex_core.Literal):
    return b
  return None


def _sub_jaxpr(eqn):
  """An inner (closed) jaxpr that ``eqn`` calls inline (jit, custom_jvp_call, ...), if any."""
  for name in ("jaxpr", "call_jaxpr"):
    j = eqn.params.get(name)
    if j is not None and (hasattr(j, "eqns") or hasattr(j, "jaxpr")):
      return j
  return None


def _split(j):
  return (j.jaxpr, j.consts) if hasattr(j, "consts") else (j, ())


def _has_relu(jaxpr) -> bool:
  for eqn in jaxpr.eqns:
    if _relu_operand(eqn) is not None:
      return True
    sub = _sub_jaxpr(eqn)
    if sub is not None and eqn.primitive.name not in ("custom_vjp_call",) and \
        _has_relu(_split(sub)[0]):
      return True
  return False


def _eval_guided(jaxpr, consts, *args):
  """Evaluates ``jaxpr`` with every ``max(x, 0)`` replaced by :func:`guided_relu`.

  Calls (``jit``, ``custom_jvp_call``, ...) whose body holds a ReLU are inlined and rewritten;
  everything else is bound unchanged, so outputs are bit-identical to the original function.
  """
  env = {}

  def read(v):
    return v.val if isinstance(v, jex_core.Literal) else env[v]

  for v, x in zip(jaxpr.constvars, consts):
    env[v] = x
  for v, x in zip(jaxpr.invars, args):
    env[v] = x
  for eqn in jaxpr.eqns:
    operand = _relu_operand(eqn)
    sub = _sub_jaxpr(eqn)
    if operand is not None:
      x = read(operand)
      out = [guided_relu(jnp.broadcast_to(x, eqn.outvars[0].aval.shape)).astype(
          eqn.outvars[0].aval.dtype)]
    elif sub is not None and eqn.primitive.name in ("jit", "pjit", "closed_call", "core_call",
                                                   "custom_jvp_call", "checkpoint", "remat") \
        and _has_relu(_split(sub)[0]):
      inner, inner_consts = _split(sub)
      invals = [read(v) for v in eqn.invars]
      if eqn.primitive.name == "custom_jvp_call":
        invals = invals[len(invals) - len(inner.invars):]
      out = _eval_guided(inner, inner_consts, *invals)
    else:
      params = eqn.primitive.get_bind_params(eqn.params)
      ans = eqn.primitive.bind(*[read(v) for v in eqn.invars], **params)
      out = ans if eqn.primitive.multiple_results else [ans]
    for v, x in zip(eqn.outvars, out):
      env[v] = x
  return [read(v) for v in jaxpr.outvars]


@dataclasses.dataclass(frozen=True)
class _Rewritten:
  """``forward`` traced to a jaxpr with its ReLUs swapped for :func:`guided_relu`."""

  func: object

  def __call__(self, *args):
    *bound, x = args
    flat, tree = jax.tree_util.tree_flatten((bound, x))

    def run(*leaves):
      bound_, x_ = jax.tree_util.tree_unflatten(tree, leaves)
      return self.func(*bound_, x_)

    closed, out_shape = jax.make_jaxpr(run, return_shape=True)(*flat)
    if not _has_relu(closed.jaxpr):
      raise ValueError("`forward` has no ReLU (max(x, 0)) to make guided; pass a jaxplain "
                       "Classifier, its guided_forward, or a function that uses jax.nn.relu")
    out = _eval_guided(closed.jaxpr, closed.consts, *flat)
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(out_shape), out)


def _accepts_guided(func) -> bool:
  """Whether ``func`` follows the classifier protocol ``apply_fn(variables, x, *, guided)``."""
  module = getattr(func, "__self__", None)
  target = type(module).__call__ if isinstance(module, nn.Module) else func
  try:
    return "guided" in inspect.signature(target).parameters
  except (TypeError, ValueError):
    return False


def guided(forward):
  """The guided-backprop version of ``forward`` (same outputs, guided ReLU gradients).

  A :class:`~jaxplain.models.Classifier` gives its ``guided_forward``; a ``Partial`` of a
  classifier's ``apply_fn`` (``classifier.forward``) is rebound with ``guided=True``; any other
  function is traced and every ``max(x, 0)`` in it (``jax.nn.relu``, ``flax.linen.relu``,
  ``jnp.maximum(x, 0)``) becomes :func:`jaxplain.models.guided_relu`.
  """
  if isinstance(forward, Classifier):
    return forward.guided_forward
  if isinstance(forward, jax.tree_util.Partial):
    func = forward.func
    if isinstance(func, _Bound):
      return jax.tree_util.Partial(dataclasses.replace(func, guided=True), *forward.args,
                                   **forward.keywords)
    if isinstance(func, _Rewritten):
      return forward
    if _accepts_guided(func):
      return jax.tree_util.Partial(_Bound(func, guided=True), *forward.args, **forward.keywords)
    return jax.tree_util.Partial(_Rewritten(func), *forward.args, **forward.keywords)
  if not callable(forward):
    raise ValueError(f"`forward` must be a function or a Classifier, got "
                     f"{type(forward).__name__}")
  return jax.tree_util.Partial(_Rewritten(forward))


@jax.jit
def _guided_backprop(forward, inputs, target):
  return target_grad(forward, inputs, target)


@register("guided_backprop", kind="modified-backward", signed=False,
          label="guided backprop", aliases=("guided",))
def guided_backprop(forward, inputs, target):
  """Gradient of the target logit through guided ReLUs (Captum ``GuidedBackprop``).

  At every ReLU the backward pass keeps a gradient only where both the ReLU's input and the
  incoming gradient are positive (:func:`jaxplain.models.guided_relu`, a ``jax.custom_vjp``).

  Args:
    forward: a ``Classifier``, ``classifier.forward`` (a converted PyTorch model's too), or any
      ``(N, H, W, C) -> (N, K)`` function whose ReLUs are ``max(x, 0)`` (see :func:`guided`).
    inputs: float images ``(N, H, W, C)``.
    target: int or ``(N,)`` ints.

  Returns:
    Attributions of the shape and dtype of ``inputs``.

  Raises:
    ValueError: bad inputs or target, or a ``forward`` without any ReLU.
  """
  forward = guided(forward)
  forward, inputs, target = check_call(forward, inputs, target)
  return _guided_backprop(forward, inputs, target)
