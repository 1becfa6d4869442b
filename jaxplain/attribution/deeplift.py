"""DeepLift (rescale rule) and DeepLiftShap, through the shared backward rules.

References:
  Shrikumar et al., "Learning Important Features Through Propagating Activation Differences",
  ICML 2017. https://arxiv.org/abs/1704.02685
  Lundberg & Lee, "A Unified Approach to Interpreting Model Predictions", NeurIPS 2017 (SHAP).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jaxplain import batching
from jaxplain.attribution import rules
from jaxplain.attribution._common import check_call, select
from jaxplain.attribution.baselines import make_baselines
from jaxplain.attribution.registry import register

__all__ = ["deep_lift", "deep_lift_shap", "shap_baselines"]

# The default background of the SHAP methods: flat images from black to white.
_LEVELS = (0.0, 0.25, 0.5, 0.75, 1.0)


MAX_POOL_RULES = ("deeplift", "gradient")


def _ruleset(max_pool_rule: str) -> rules.RuleSet:
  if max_pool_rule not in MAX_POOL_RULES:
    raise ValueError(f"`max_pool_rule` must be one of {MAX_POOL_RULES}, got {max_pool_rule!r}")
  return rules.RuleSet(relu="rescale", other_activations="rescale", max_pool=max_pool_rule)


def _multipliers(forward, inputs, target, reference, ruleset):
  """DeepLift's multipliers ``∂^DL f_t / ∂x`` (the rescale rule's modified gradient)."""
  def total(x):
    out = rules.modified(forward, x, ruleset, reference=reference)
    return jnp.sum(select(out, target))
  return jax.grad(total)(inputs)


@functools.partial(jax.jit, static_argnames=("ruleset",))
def _deep_lift(forward, inputs, target, baselines, *, ruleset):
  _check_forward(forward, inputs)  # at trace time: once per compilation
  return (inputs - baselines) * _multipliers(forward, inputs, target, baselines, ruleset)


def _check_forward(forward, inputs):
  if not rules.has_activation(forward, inputs, ("relu", "logistic", "tanh")):
    raise ValueError("`forward` has no ReLU, sigmoid or tanh for DeepLift to rescale; "
                     "its attributions would equal input × gradient")


@register("deep_lift", kind="modified-backward", signed=True, label="DeepLift")
def deep_lift(forward, inputs, target, *, baselines=None, max_pool_rule: str = "deeplift",
              key=None):
  """DeepLift with the rescale rule (Captum ``DeepLift``, ``multiply_by_inputs=True``).

  ``(x − b) ⊙ m`` where the multipliers ``m`` are the gradient with every activation's
  derivative replaced by ``(f(x) − f(b)) / (x − b)`` (ReLU, sigmoid, tanh; the gradient where
  ``|x − b| < 1e-10``) and every max pool by DeepLift's max-pool rule (Captum's ``maxpool``:
  the output difference goes to the argmax of the larger of the two pools, divided by the input
  difference there); linear layers, BatchNorm and pooling by average keep their gradient
  (:mod:`jaxplain.attribution.rules`). On a network of ReLUs, max pools and affine layers the
  attributions sum to ``f_t(x) − f_t(b)`` (summation-to-delta).

  Captum 0.9 equals ``max_pool_rule="gradient"`` where a max pool follows a ReLU module (the
  ReLU's hook reads the pool's unmodified output gradient), and so misses summation-to-delta on
  such networks; elsewhere (no max pool) both rules give Captum's numbers.

  Args:
    forward: ``(N, H, W, C) -> (N, K)`` logits (a ``Classifier``, ``classifier.forward``, a
      converted PyTorch model's forward or any function of those primitives).
    inputs: float images ``(N, H, W, C)``.
    target: int or ``(N,)`` ints.
    baselines: the reference input: ``None``/``"black"`` (zeros, Captum's default), a number,
      ``"blur"``, ``"uniform"`` (needs ``key``) or an array (see
      :func:`jaxplain.attribution.baselines.make_baselines`).
    max_pool_rule: ``"deeplift"`` (default) or ``"gradient"`` (Captum 0.9's effective rule,
      see above). Static.
    key: a ``jax.random`` key for ``baselines="uniform"``.

  Returns:
    Attributions of the shape and dtype of ``inputs``.
  """
  forward, inputs, target = check_call(forward, inputs, target)
  ruleset = _ruleset(max_pool_rule)
  b = make_baselines(inputs, baselines, key=key)
  return _deep_lift(forward, inputs, target, b, ruleset=ruleset)


def shap_baselines(inputs, baselines):
  """The background distribution ``(B, H, W, C)`` of the SHAP methods (in ``inputs``' dtype).

  ``None``: five flat images, black to white (0, 0.25, 0.5, 0.75, 1). An array ``(B, H, W, C)``
  is used as given (Captum requires one with ``B ≥ 1``; one image of shape ``(H, W, C)`` is a
  distribution of one).
  """
  shape = tuple(inputs.shape[1:])
  if baselines is None:
    return jnp.broadcast_to(jnp.asarray(_LEVELS, inputs.dtype)[:, None, None, None],
                            (len(_LEVELS),) + shape)
  if not hasattr(baselines, "shape"):
    raise ValueError(f"`baselines` must be an array (B, H, W, C) of background images, got "
                     f"{type(baselines).__name__}")
  b = jnp.asarray(baselines, inputs.dtype)
  if b.ndim == 3:
    b = b[None]
  if b.ndim != 4 or tuple(b.shape[1:]) != shape or b.shape[0] < 1:
    raise ValueError(f"`baselines` shape {tuple(baselines.shape)} must be (B, "
                     f"{', '.join(map(str, shape))}) with B >= 1 background images")
  return b


@functools.partial(jax.jit, static_argnames=("ruleset", "batch_size"))
def _deep_lift_shap(forward, inputs, target, background, *, ruleset, batch_size):
  def one(b):
    b = jnp.broadcast_to(b, inputs.shape)
    return _deep_lift(forward, inputs, target, b, ruleset=ruleset)
  return jnp.mean(batching.chunked_map(one, background, batch_size=batch_size), axis=0)


@register("deep_lift_shap", kind="modified-backward", signed=True, label="DeepLiftShap")
def deep_lift_shap(forward, inputs, target, *, baselines=None, max_pool_rule: str = "deeplift",
                   batch_size: int | None = None):
  """DeepLiftShap: DeepLift averaged over a background distribution (Captum ``DeepLiftShap``).

  Each input's DeepLift attributions against every background image, averaged; SHAP values of
  the linearised network (Lundberg & Lee, 2017).

  Args:
    forward, inputs, target: as for :func:`deep_lift`.
    baselines: background images ``(B, H, W, C)`` (see :func:`shap_baselines`; ``None``: five
      flat images, black to white).
    max_pool_rule: as for :func:`deep_lift`. Static.
    batch_size: background images evaluated at once (each over all N inputs); ``None``: all.
      Static.

  Returns:
    Attributions of the shape and dtype of ``inputs``.
  """
  forward, inputs, target = check_call(forward, inputs, target)
  ruleset = _ruleset(max_pool_rule)
  background = shap_baselines(inputs, baselines)
  batch_size = batching.check_batch_size(batch_size)
  return _deep_lift_shap(forward, inputs, target, background, ruleset=ruleset,
                         batch_size=batch_size)
