"""Modified backward passes for any forward: one jaxpr interpreter, one set of backward rules.

DeepLift, LRP, deconvolution and guided backprop differ from the gradient only in how a few kinds
of operations pass the signal backwards. :func:`modified` traces ``forward`` to a jaxpr (calls
inlined), finds those operations by their primitives, and evaluates the jaxpr with each of them
wrapped in a ``jax.custom_vjp`` implementing the rule a :class:`RuleSet` selects for it:

* activations: ``max(x, 0)`` (ReLU), ``logistic`` (sigmoid), ``tanh``;
* max pooling: ``reduce_window_max``;
* linear layers: a ``conv_general_dilated`` or ``dot_general`` with one input-dependent operand
  (``reduce_window_sum`` for average pooling) *followed by its chain of elementwise affine
  operations with input-independent operands* (bias, BatchNorm in eval mode: ``sub``, ``mul``,
  ``div``, ``add``). The chain is one affine map ``s ⊙ L(x, W) + c``, so a rule sees a layer
  with BatchNorm merged into it, as Zennit's ``MergeBatchNorm`` canonizers make it.

Everything else (reshapes, padding, global means, the input normalisation, BatchNorm without a
preceding linear layer) keeps its ordinary gradient. The forward values are the original
function's, bit for bit. Nothing is model-specific: jaxplain's Flax CNN, converted PyTorch
graphs and any JAX function built from these primitives work alike.

The LRP rules are Zennit's (:mod:`zennit.rules`), written for the affine map ``s ⊙ L(x, W) + c``
with per-output scale ``s``: the positive part of the effective weights ``s_j W_ji`` is
``s⁺ W⁺ + s⁻ W⁻``, so no weights are folded.

References:
  Shrikumar et al., "Learning Important Features Through Propagating Activation Differences",
  ICML 2017 (DeepLift). https://arxiv.org/abs/1704.02685
  Bach et al., "On Pixel-Wise Explanations for Non-Linear Classifier Decisions by Layer-Wise
  Relevance Propagation", PLoS ONE 2015; Montavon et al., "Layer-Wise Relevance Propagation: An
  Overview", 2019.
  Anders et al., "Software for Dataset-wide XAI: From Local Explanations to Global Insights with
  Zennit, CoRelAy, and ViRelAy", 2021 (Zennit).
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core as jex_core

__all__ = ["RuleSet", "Epsilon", "Gamma", "ZPlus", "AlphaBeta", "Flat", "WSquare", "ZBox",
           "Norm", "modified", "has_activation", "DECONVOLUTION", "GUIDED"]

# Captum's DeepLift threshold below which |x - x_ref| counts as zero (the gradient is used).
DEEPLIFT_EPS = 1e-10

_CALLS = ("pjit", "jit", "closed_call", "core_call", "remat", "checkpoint", "custom_jvp_call")
_LINEAR = ("conv_general_dilated", "dot_general", "reduce_window_sum")
_ACTIVATIONS = ("relu", "logistic", "tanh")


# ----------------------------------------------------------------------------------------------
# Rules
# ----------------------------------------------------------------------------------------------


def _stabilize(z, eps):
  """Zennit's ``stabilize``: ``z + eps · sign(z)``, with sign(0) = +1."""
  return z + eps * ((z == 0).astype(z.dtype) + jnp.sign(z))


@dataclasses.dataclass(frozen=True)
class Epsilon:
  """LRP-ε (Zennit ``Epsilon``): ``R_in = x ⊙ Wᵀ(R / stab(z))``."""
  epsilon: float = 1e-6


@dataclasses.dataclass(frozen=True)
class _Stabilized:
  """A rule whose only setting is the ``stabilizer`` added to its denominators (Zennit's)."""
  stabilizer: float = 1e-6


class Norm(_Stabilized):
  """Zennit ``Norm`` for average pooling: LRP-ε without weights, ``stabilizer`` as ε."""


class ZPlus(_Stabilized):
  """LRP-z⁺ (Zennit ``ZPlus``): positive weights on positive inputs, negative on negative."""


@dataclasses.dataclass(frozen=True)
class AlphaBeta:
  """LRP-αβ (Zennit ``AlphaBeta``), ``alpha - beta = 1``."""
  alpha: float = 2.0
  beta: float = 1.0
  stabilizer: float = 1e-6


@dataclasses.dataclass(frozen=True)
class Gamma:
  """LRP-γ (Zennit's generalised ``Gamma``): weights plus ``gamma`` times their positive part."""
  gamma: float = 0.25
  stabilizer: float = 1e-6


class Flat(_Stabilized):
  """LRP-flat (Zennit ``Flat``): unit weights and inputs, no bias."""


class WSquare(_Stabilized):
  """LRP-w² (Zennit ``WSquare``): squared weights (and bias), unit inputs."""


@dataclasses.dataclass(frozen=True)
class ZBox:
  """LRP-zᴮ (Zennit ``ZBox``) for inputs bounded by ``low`` and ``high``.

  ``low``/``high`` are in the units of the forward's *input* (jaxplain images: [0, 1]); they are
  mapped through whatever the forward computes before the layer (its normalisation, padding).
  """
  low: float = 0.0
  high: float = 1.0
  stabilizer: float = 1e-6


@dataclasses.dataclass(frozen=True)
class RuleSet:
  """Which backward rule each kind of operation uses.

  Attributes:
    relu: ``"gradient"``, ``"pass"`` (identity), ``"deconv"`` (``max(g, 0)``), ``"guided"``
      (``g`` where ``x > 0`` and ``g > 0``) or ``"rescale"`` (DeepLift; needs a reference).
    other_activations: rule of sigmoid and tanh: ``"gradient"``, ``"pass"`` or ``"rescale"``.
    max_pool: ``"gradient"`` or ``"deeplift"`` (Captum's DeepLift max-pool rule).
    layers: ``layers(kind, index, kind_index)`` → an LRP rule, or ``None`` for the gradient, of
      the linear layer of ``kind`` ``"conv"``, ``"dense"`` or ``"pool"`` (average pooling) that
      is number ``index`` among conv and dense layers (execution order, 0-based; -1 for pools)
      and number ``kind_index`` among layers of its kind. ``None``: gradient everywhere.
  """

  relu: str = "gradient"
  other_activations: str = "gradient"
  max_pool: str = "gradient"
  layers: Callable | None = None

  @property
  def needs_reference(self) -> bool:
    return "rescale" in (self.relu, self.other_activations) or self.max_pool == "deeplift"


DECONVOLUTION = RuleSet(relu="deconv")
GUIDED = RuleSet(relu="guided")


# ----------------------------------------------------------------------------------------------
# Tracing and analysis
# ----------------------------------------------------------------------------------------------


def _is_zero(v, consts) -> bool:
  if isinstance(v, jex_core.Literal):
    val = v.val
  elif v in consts:
    val = consts[v]
  else:
    return False
  try:
    return bool(np.all(np.asarray(val) == 0))
  except Exception:  # noqa: BLE001 - a tracer or not a number
    return False


def _sub_jaxpr(eqn):
  for name in ("jaxpr", "call_jaxpr"):
    j = eqn.params.get(name)
    if j is not None and (hasattr(j, "eqns") or hasattr(j, "jaxpr")):
      return j
  return None


def _split(j):
  return (j.jaxpr, j.consts) if hasattr(j, "consts") else (j, ())


def _holds_rule_op(jaxpr) -> bool:
  """Whether ``jaxpr`` holds an operation a rule may replace: an activation, a max pool or a
  linear layer (such as :func:`jaxplain.models.conv_nhwc`'s ``custom_jvp`` conv)."""
  for eqn in jaxpr.eqns:
    if eqn.primitive.name in ("max", "logistic", "tanh", "reduce_window_max") + _LINEAR:
      return True
    sub = _sub_jaxpr(eqn)
    if sub is not None and _holds_rule_op(_split(sub)[0]):
      return True
  return False


def _inline(jaxpr, consts, args):
  """Evaluates ``jaxpr``, inlining calls (and ``custom_jvp`` calls holding rule operations)."""
  env = {}

  def read(v):
    return v.val if isinstance(v, jex_core.Literal) else env[v]

  env.update(zip(jaxpr.constvars, consts))
  env.update(zip(jaxpr.invars, args))
  for eqn in jaxpr.eqns:
    sub = _sub_jaxpr(eqn)
    name = eqn.primitive.name
    if sub is not None and name in _CALLS and (name != "custom_jvp_call" or
                                               _holds_rule_op(_split(sub)[0])):
      inner, inner_consts = _split(sub)
      invals = [read(v) for v in eqn.invars]
      out = _inline(inner, inner_consts, invals[len(invals) - len(inner.invars):])
    else:
      params = eqn.primitive.get_bind_params(eqn.params)
      ans = eqn.primitive.bind(*[read(v) for v in eqn.invars], **params)
      out = ans if eqn.primitive.multiple_results else [ans]
    env.update(zip(eqn.outvars, out))
  return [read(v) for v in jaxpr.outvars]


@dataclasses.dataclass
class _Layer:
  kind: str  # "conv", "dense" or "pool"
  start: object  # the linear eqn
  pos: int  # which operand of ``start`` depends on the input
  chain: list  # [(eqn, data operand position)] of the affine ops after it
  index: int  # among conv and dense layers, execution order (-1 for pools)
  kind_index: int  # among the layers of its kind


@dataclasses.dataclass
class _Analysis:
  activations: dict  # eqn index -> (kind, operand var)
  max_pools: set  # eqn indices
  layers: dict  # eqn index of the layer's last op -> _Layer
  skip: set  # eqn indices evaluated as part of a layer


def _analyse(jaxpr, consts) -> _Analysis:
  consts = dict(zip(jaxpr.constvars, consts))
  data = set(jaxpr.invars[-1:])
  uses = collections.Counter()
  consumers = collections.defaultdict(list)
  index = {}
  for i, eqn in enumerate(jaxpr.eqns):
    index[id(eqn)] = i
    for v in eqn.invars:
      if not isinstance(v, jex_core.Literal):
        uses[v] += 1
        consumers[v].append(i)
    if any(not isinstance(v, jex_core.Literal) and v in data for v in eqn.invars):
      data.update(eqn.outvars)
  for v in jaxpr.outvars:
    if not isinstance(v, jex_core.Literal):
      uses[v] += 2

  def is_data(v):
    return not isinstance(v, jex_core.Literal) and v in data

  out = _Analysis({}, set(), {}, set())
  n_layers = 0
  n_kind = collections.Counter()
  for i, eqn in enumerate(jaxpr.eqns):
    name = eqn.primitive.name
    ins = eqn.invars
    if name == "max" and len(ins) == 2:
      for a, b in ((ins[0], ins[1]), (ins[1], ins[0])):
        if is_data(a) and _is_zero(b, consts):
          out.activations[i] = ("relu", a)
          break
    elif name in ("logistic", "tanh") and is_data(ins[0]):
      out.activations[i] = (name, ins[0])
    elif name == "reduce_window_max" and is_data(ins[0]):
      out.max_pools.add(i)
    elif name in _LINEAR and i not in out.skip:
      flags = [is_data(v) for v in ins]
      if sum(flags) != 1 or (name == "conv_general_dilated" and not flags[0]):
        continue
      if name == "reduce_window_sum":
        kind, idx = "pool", -1
      else:
        kind, idx = ("conv" if name == "conv_general_dilated" else "dense"), n_layers
        n_layers += 1
      layer = _Layer(kind, eqn, flags.index(True), [], idx, n_kind[kind])
      n_kind[kind] += 1
      v, last = eqn.outvars[0], i
      while uses[v] == 1:
        j = consumers[v][0]
        e = jaxpr.eqns[j]
        en = e.primitive.name
        if en in ("add", "sub", "mul", "div") and len(e.invars) == 2:
          p = 0 if e.invars[0] is v else 1
          other = e.invars[1 - p]
          if is_data(other) or e.invars[p] is not v or (en == "div" and p == 1) or \
              tuple(e.outvars[0].aval.shape) != tuple(v.aval.shape):
            break
        elif en == "neg":
          p = 0
        else:
          break
        layer.chain.append((e, p))
        out.skip.add(last)
        v, last = e.outvars[0], j
      out.layers[last] = layer
  return out


@dataclasses.dataclass(frozen=True)
class _Traced:
  jaxpr: object
  consts: list
  analysis: _Analysis
  out_tree: object


def _trace(forward, x) -> tuple[_Traced, list]:
  """``forward(x)`` as a flat jaxpr (calls inlined) with its analysis, and its argument leaves
  (``x`` last)."""
  flat, tree = jax.tree_util.tree_flatten((forward, x))

  def run(*leaves):
    f, x_ = jax.tree_util.tree_unflatten(tree, leaves)
    return f(x_)

  closed, out_shape = jax.make_jaxpr(run, return_shape=True)(*flat)
  inlined = jax.make_jaxpr(lambda *a: _inline(closed.jaxpr, closed.consts, a))(*flat)
  analysis = _analyse(inlined.jaxpr, inlined.consts)
  return _Traced(inlined.jaxpr, inlined.consts, analysis,
                 jax.tree_util.tree_structure(out_shape)), flat


def has_activation(forward, x, kinds=("relu",)) -> bool:
  """Whether ``forward`` applied to ``x`` (abstract is enough) has an activation of ``kinds``."""
  traced, _ = _trace(forward, jax.ShapeDtypeStruct(x.shape, x.dtype))
  return any(k in kinds for k, _ in traced.analysis.activations.values())


# ----------------------------------------------------------------------------------------------
# custom_vjp wrappers
# ----------------------------------------------------------------------------------------------


def _custom(fwd: Callable, bwd: Callable, *args):
  """``fwd(*args)`` whose VJP is ``bwd(args, out, g)`` (a tuple, one cotangent per arg)."""
  f = jax.custom_vjp(fwd)

  def f_fwd(*a):
    out = fwd(*a)
    return out, (a, out)

  def f_bwd(res, g):
    a, out = res
    return tuple(bwd(a, out, g))

  f.defvjp(f_fwd, f_bwd)
  return f(*args)


def _act_fn(kind):
  return {"relu": lambda x: jnp.maximum(x, 0), "logistic": jax.nn.sigmoid,
          "tanh": jnp.tanh}[kind]


def _act_grad(kind, x, y):
  if kind == "relu":
    return (x > 0).astype(x.dtype)
  if kind == "logistic":
    return y * (1 - y)
  return 1 - y * y


def _activation(kind, rule, x, ref, shape, dtype):
  """The activation ``kind`` on ``x`` (output ``shape``/``dtype``) with backward ``rule``."""
  act = _act_fn(kind)

  def fwd(x, *_):
    return jnp.broadcast_to(act(x), shape).astype(dtype)

  if rule == "pass":
    return _custom(fwd, lambda a, y, g: (g,), x)
  if rule == "deconv":
    return _custom(fwd, lambda a, y, g: (jnp.maximum(g, 0),), x)
  if rule == "guided":
    return _custom(fwd, lambda a, y, g: (jnp.where((a[0] > 0) & (g > 0), g,
                                                   jnp.zeros_like(g)),), x)
  if rule == "rescale":
    def bwd(a, y, g):
      x, r = a
      dx = x - r
      small = jnp.abs(dx) < DEEPLIFT_EPS
      dy = y - act(r)
      rescaled = g * dy / jnp.where(small, jnp.ones_like(dx), dx)
      return jnp.where(small, g * _act_grad(kind, x, y), rescaled), jnp.zeros_like(r)
    return _custom(fwd, bwd, x, ref)
  raise ValueError(f"unknown activation rule {rule!r}")


def _fast_pool(eqn):
  """For a max pool over non-overlapping windows: the same pool with a mask gradient
  (:func:`jaxplain.models.window_max`), since XLA's ``select_and_scatter`` is slow on CPU. A
  ``custom_jvp`` in the traced forward (``max_pool_2x2``) was inlined to find the pools, which
  would otherwise leave the rule-based methods with the slow gradient. None for other pools."""
  p = eqn.params
  window, strides = tuple(p["window_dimensions"]), tuple(p["window_strides"])
  if (window != strides or any(tuple(q) != (0, 0) for q in p["padding"])
      or any(d != 1 for d in (*p["base_dilation"], *p["window_dilation"]))):
    return None
  from jaxplain import models
  return lambda x: models.window_max(x, window)


def _max_pool_deeplift(eqn, x, ref):
  """Captum DeepLift's max-pool rule: the output difference routed to the larger pool's argmax
  and divided by the input difference there."""
  params = eqn.primitive.get_bind_params(eqn.params)
  fast = _fast_pool(eqn)

  def pool(a):
    return fast(a) if fast is not None else eqn.primitive.bind(a, **params)

  def bwd(a, y, g):
    x, r = a
    yr = pool(r)
    top = jnp.maximum(y, yr)
    _, back_x = jax.vjp(pool, x)
    _, back_r = jax.vjp(pool, r)
    routed = back_x(g * (top - yr))[0] + back_r(g * (y - top))[0]
    dx = x - r
    small = jnp.abs(dx) < DEEPLIFT_EPS
    return (jnp.where(small, back_x(g)[0], routed / jnp.where(small, jnp.ones_like(dx), dx)),
            jnp.zeros_like(r))

  return _custom(lambda x, r: pool(x), bwd, x, ref)


# ----------------------------------------------------------------------------------------------
# LRP on a layer s ⊙ L(x, W) + c
# ----------------------------------------------------------------------------------------------


def _affine(chain, others, dtype):
  """``(s, c)`` with the chain equal to ``y ↦ s ⊙ y + c`` (``None`` for 1 and 0)."""
  s = c = None
  for (eqn, p), k in zip(chain, others):
    name = eqn.primitive.name
    if name == "neg":
      s = -1 if s is None else -s
      c = None if c is None else -c
    elif name == "add":
      c = k if c is None else c + k
    elif name == "sub" and p == 0:
      c = -k if c is None else c - k
    elif name == "sub":
      s = -1 if s is None else -s
      c = k if c is None else k - c
    elif name == "mul":
      s = k if s is None else s * k
      c = None if c is None else c * k
    else:  # div, data on the left
      s = 1 / k if s is None else s / k
      c = None if c is None else c / k
  cast = lambda v: None if v is None else jnp.asarray(v, dtype)  # noqa: E731
  return cast(s), cast(c)


def _pos(v):
  return None if v is None else jnp.maximum(v, 0)


def _neg(v):
  return None if v is None else jnp.minimum(v, 0)


class _Linear:
  """The layer ``s ⊙ L(x, W) + c`` and weight modifications of its effective weights ``s W``."""

  def __init__(self, layer: _Layer, w, s, c):
    self.layer, self.w, self.s, self.c = layer, w, s, c
    self.params = layer.start.primitive.get_bind_params(layer.start.params)

  def lin(self, x, w):
    prim = self.layer.start.primitive
    if self.layer.kind == "pool":
      return prim.bind(x, **self.params)
    args = (x, w) if self.layer.pos == 0 else (w, x)
    return prim.bind(*args, **self.params)

  def terms(self, mod: str, gamma: float = 0.0):
    """``[(scale, weights)]`` with ``Σ scale ⊙ L(x, weights)`` the modified effective layer."""
    w, s = self.w, self.s
    if mod == "ones":
      return [(None, None if w is None else jnp.ones_like(w))]
    if mod == "square":
      return [(None if s is None else s * s, None if w is None else w * w)]
    pos = [(None, jnp.maximum(w, 0))] if s is None else \
        [(_pos(s), jnp.maximum(w, 0)), (_neg(s), jnp.minimum(w, 0))]
    neg = [(None, jnp.minimum(w, 0))] if s is None else \
        [(_pos(s), jnp.minimum(w, 0)), (_neg(s), jnp.maximum(w, 0))]
    base = [(s, w)]
    scaled = lambda ts: [(gamma if f is None else gamma * f, v) for f, v in ts]  # noqa: E731
    return {"id": base, "pos": pos, "neg": neg, "gamma_pos": base + scaled(pos),
            "gamma_neg": base + scaled(neg)}[mod]

  def apply(self, x, terms):
    """``Σ scale ⊙ L(x, weights)`` and its VJP in ``x``."""
    def f(x):
      out = 0
      for scale, w in terms:
        y = self.lin(x, w)
        out = out + (y if scale is None else scale * y)
      return out
    return jax.vjp(f, x)


def _relevance(rule, lin: _Linear, x, z, g, low=None, high=None):
  """Zennit's ``BasicHook.backward`` for ``rule`` on the layer ``lin`` at input ``x``."""
  c = lin.c
  zero = lambda: jnp.zeros((), z.dtype)  # noqa: E731
  bias = lambda v: zero() if v is None else v  # noqa: E731

  def stab(v, eps):
    return _stabilize(v, jnp.asarray(eps, v.dtype))

  if isinstance(rule, (Epsilon, Norm)):
    eps = rule.epsilon if isinstance(rule, Epsilon) else rule.stabilizer
    _, back = lin.apply(x, lin.terms("id"))
    return x * back(g / stab(z, eps))[0]
  if isinstance(rule, (Flat, WSquare)):
    ones = jnp.ones_like(x)
    mod, b = ("ones", zero()) if isinstance(rule, Flat) else \
        ("square", bias(None if c is None else c * c))
    y, back = lin.apply(ones, lin.terms(mod))
    return back(g / stab(y + b, rule.stabilizer))[0]
  xp, xn = jnp.maximum(x, 0), jnp.minimum(x, 0)
  if isinstance(rule, ZPlus):
    y1, b1 = lin.apply(xp, lin.terms("pos"))
    y2, b2 = lin.apply(xn, lin.terms("neg"))
    gz = g / stab(y1 + bias(_pos(c)) + y2, rule.stabilizer)
    return xp * b1(gz)[0] + xn * b2(gz)[0]
  if isinstance(rule, AlphaBeta):
    y1, b1 = lin.apply(xp, lin.terms("pos"))
    y2, b2 = lin.apply(xn, lin.terms("neg"))
    y3, b3 = lin.apply(xp, lin.terms("neg"))
    y4, b4 = lin.apply(xn, lin.terms("pos"))
    gp = g / stab(y1 + bias(_pos(c)) + y2, rule.stabilizer)
    gn = g / stab(y3 + bias(_neg(c)) + y4, rule.stabilizer)
    return (rule.alpha * (xp * b1(gp)[0] + xn * b2(gp)[0]) -
            rule.beta * (xp * b3(gn)[0] + xn * b4(gn)[0]))
  if isinstance(rule, Gamma):
    gm = rule.gamma
    y1, b1 = lin.apply(xp, lin.terms("gamma_pos", gm))
    y2, b2 = lin.apply(xn, lin.terms("gamma_neg", gm))
    y3, b3 = lin.apply(xp, lin.terms("gamma_neg", gm))
    y4, b4 = lin.apply(xn, lin.terms("gamma_pos", gm))
    cp = None if c is None else c + gm * jnp.maximum(c, 0)
    cn = None if c is None else c + gm * jnp.minimum(c, 0)
    g12 = jnp.where(z > 0, g, 0) / stab(y1 + bias(cp) + y2, rule.stabilizer)
    g34 = jnp.where(z < 0, g, 0) / stab(y3 + bias(cn) + y4, rule.stabilizer)
    return xp * b1(g12)[0] + xn * b2(g12)[0] + xp * b3(g34)[0] + xn * b4(g34)[0]
  if isinstance(rule, ZBox):
    lo, hi = low.astype(x.dtype), high.astype(x.dtype)
    y1, b1 = lin.apply(x, lin.terms("id"))
    y2, b2 = lin.apply(lo, lin.terms("pos"))
    y3, b3 = lin.apply(hi, lin.terms("neg"))
    den = (y1 + bias(c)) - (y2 + bias(_pos(c))) - (y3 + bias(_neg(c)))
    gz = g / stab(den, rule.stabilizer)
    return x * b1(gz)[0] - lo * b2(gz)[0] - hi * b3(gz)[0]
  raise ValueError(f"unknown LRP rule {rule!r}")


def _lrp_layer(layer: _Layer, rule, x, w, others, bounds):
  """The layer's original forward with the LRP ``rule`` as its backward."""
  params = layer.start.primitive.get_bind_params(layer.start.params)

  def fwd(x, w, others, bounds):
    del bounds
    if layer.kind == "pool":
      y = layer.start.primitive.bind(x, **params)
    else:
      y = layer.start.primitive.bind(*((x, w) if layer.pos == 0 else (w, x)), **params)
    for (eqn, p), k in zip(layer.chain, others):
      args = (y,) if eqn.primitive.name == "neg" else ((y, k) if p == 0 else (k, y))
      y = eqn.primitive.bind(*args, **eqn.primitive.get_bind_params(eqn.params))
    return y

  def bwd(a, z, g):
    x, w, others, bounds = a
    s, c = _affine(layer.chain, others, z.dtype)
    lin = _Linear(layer, w, s, c)
    r = _relevance(rule, lin, x, z, g, *bounds)
    return (r.astype(x.dtype), jax.tree.map(jnp.zeros_like, w),
            jax.tree.map(jnp.zeros_like, others), jax.tree.map(jnp.zeros_like, bounds))

  return _custom(fwd, bwd, x, w, others, bounds)


# ----------------------------------------------------------------------------------------------
# Evaluation
# ----------------------------------------------------------------------------------------------


def _evaluate(traced: _Traced, args, rules: RuleSet | None, *, ref_env=None, bounds=None,
              record=False):
  """Evaluates the traced jaxpr on ``args`` with ``rules`` (``None``: unchanged)."""
  jaxpr, an = traced.jaxpr, traced.analysis
  env = {}

  def read(v):
    return v.val if isinstance(v, jex_core.Literal) else env[v]

  env.update(zip(jaxpr.constvars, traced.consts))
  env.update(zip(jaxpr.invars, args))
  for i, eqn in enumerate(jaxpr.eqns):
    out = None
    if rules is not None:
      if i in an.skip:
        continue
      if i in an.activations:
        kind, operand = an.activations[i]
        rule = rules.relu if kind == "relu" else rules.other_activations
        if kind != "relu" and rule in ("deconv", "guided"):
          rule = "gradient"
        if rule != "gradient":
          aval = eqn.outvars[0].aval
          ref = ref_env[operand] if rule == "rescale" else None
          out = [_activation(kind, rule, read(operand), ref, aval.shape, aval.dtype)]
      elif i in an.max_pools and rules.max_pool == "deeplift":
        v = eqn.invars[0]
        out = [_max_pool_deeplift(eqn, read(v), ref_env[v])]
      elif i in an.max_pools and _fast_pool(eqn) is not None:
        out = [_fast_pool(eqn)(read(eqn.invars[0]))]
      elif i in an.layers:
        layer = an.layers[i]
        rule = None if rules.layers is None else \
            rules.layers(layer.kind, layer.index, layer.kind_index)
        if rule is None:  # ordinary gradient: run the skipped ops
          out = _plain(layer, read)
        else:
          start = layer.start
          x = read(start.invars[layer.pos])
          w = None if layer.kind == "pool" else read(start.invars[1 - layer.pos])
          others = [None if e.primitive.name == "neg" else read(e.invars[1 - p])
                    for e, p in layer.chain]
          b = ()
          if isinstance(rule, ZBox):
            b = bounds[start.invars[layer.pos]]
          out = [_lrp_layer(layer, rule, x, w, others, b)]
    if out is None:
      params = eqn.primitive.get_bind_params(eqn.params)
      ans = eqn.primitive.bind(*[read(v) for v in eqn.invars], **params)
      out = ans if eqn.primitive.multiple_results else [ans]
    env.update(zip(eqn.outvars, out))
  result = [read(v) for v in jaxpr.outvars]
  return (result, env) if record else result


def _plain(layer: _Layer, read):
  """The layer's ops, unchanged (for a layer whose rule is the gradient)."""
  start = layer.start
  y = start.primitive.bind(*[read(v) for v in start.invars],
                           **start.primitive.get_bind_params(start.params))
  for eqn, p in layer.chain:
    k = None if eqn.primitive.name == "neg" else read(eqn.invars[1 - p])
    args = (y,) if k is None else ((y, k) if p == 0 else (k, y))
    y = eqn.primitive.bind(*args, **eqn.primitive.get_bind_params(eqn.params))
  return [y]


def modified(forward, x, rules: RuleSet, *, reference=None):
  """``forward(x)`` with the backward pass of ``rules``: same values, modified VJP in ``x``.

  Args:
    forward: a function (or ``Partial``) of ``x``; traced here, so call this inside the
      function being differentiated (``jax.grad(lambda x: ... modified(forward, x, ...))``).
    x: the input array (differentiated).
    rules: the :class:`RuleSet`.
    reference: the DeepLift reference input (same shape as ``x``), for ``"rescale"`` and
      ``"deeplift"`` rules.

  Returns:
    ``forward(x)``.
  """
  traced, flat = _trace(forward, x)
  ref_env = None
  if rules.needs_reference:
    if reference is None:
      raise ValueError("these rules (DeepLift) need a `reference` input")
    _, ref_env = _evaluate(traced, flat[:-1] + [jax.lax.stop_gradient(reference)], None,
                           record=True)
  bounds = None
  if rules.layers is not None:
    bounds = {}
    for layer in traced.analysis.layers.values():
      rule = rules.layers(layer.kind, layer.index, layer.kind_index)
      if isinstance(rule, ZBox):  # the bounds as the layer sees them
        v = layer.start.invars[layer.pos]
        vals = []
        for level in (rule.low, rule.high):
          const = jnp.full(x.shape, level, x.dtype)
          _, env = _evaluate(traced, flat[:-1] + [const], None, record=True)
          vals.append(jax.lax.stop_gradient(env[v]))
        bounds[v] = tuple(vals)
  out = _evaluate(traced, flat[:-1] + [x], rules, ref_env=ref_env, bounds=bounds)
  return jax.tree_util.tree_unflatten(traced.out_tree, out)
