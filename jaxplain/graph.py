"""Converted PyTorch networks as data: the graph format and its JAX ops (no torch needed).

A :class:`TorchGraph` is a frozen, hashable-by-value description of a network (a tuple of
:class:`Op`) whose ``__call__`` is a jaxplain ``apply_fn`` (see :mod:`jaxplain.models`); the
weights live apart, as a nested dict keyed by PyTorch module path
(``variables["conv_2"]["1"]["weight"]``). :mod:`jaxplain.convert` builds graphs from PyTorch
modules; this module is all that a saved converted classifier needs to load and run
(:func:`build_from_meta`), so :mod:`jaxplain.checkpoint` depends on it and not on the converter.

The graph computes in PyTorch's NCHW layout, so flattening, ``cat``, indexing and reductions see
exactly PyTorch's element order. Inputs follow jaxplain's convention (``(N, H, W, C)`` in [0, 1]);
the graph normalises them with ``(x - mean) / std`` and transposes them to NCHW. A tapped 4-D
activation is returned (and its ``delta`` taken) in NHWC, like jaxplain's own CNN.

Shapes that scale with the batch are written ``("N", k)`` (``k`` times the batch size) in op
parameters, so one graph serves every batch size.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxplain import models

__all__ = ["Op", "TorchGraph", "build_from_meta", "KIND", "OPS", "FINAL_ACTIVATIONS"]

KIND = "torch_graph"
GRAPH_VERSION = 1
_HI = lax.Precision.HIGHEST  # PyTorch computes float32 convs and matmuls in full float32


class Op(NamedTuple):
  """One node of a converted graph.

  Attributes:
    name: the torch.fx node name (unique).
    kind: the JAX op (a key of ``OPS``, or ``"input"``).
    inputs: names of the nodes whose tensors this op takes, in order.
    params: static options as sorted ``(key, value)`` pairs (hashable).
    weights: the module path whose parameters the op reads from ``variables`` (or ``None``).
    layer: the tap name (a leaf module's path) or ``None`` for functional ops.
  """

  name: str
  kind: str
  inputs: tuple[str, ...] = ()
  params: tuple = ()
  weights: str | None = None
  layer: str | None = None


class Ctx(NamedTuple):
  """What an op may know beyond its inputs: guided ReLUs, and the batch size."""

  guided: bool
  n: int


def freeze(v):
  """Lists → tuples, dicts → sorted pairs, NumPy scalars → Python: hashable op parameters."""
  if isinstance(v, dict):
    return tuple(sorted((k, freeze(x)) for k, x in v.items()))
  if isinstance(v, (list, tuple)):
    return tuple(freeze(x) for x in v)
  if isinstance(v, (np.integer, np.floating, np.bool_)):
    return v.item()
  return v


def jsonable(v):
  if isinstance(v, tuple):
    return [jsonable(x) for x in v]
  return v


def _lookup(variables, path: str):
  for part in path.split("."):
    variables = variables[part]
  return variables


def _nchw_to_user(h):
  return jnp.transpose(h, (0, 2, 3, 1)) if h.ndim == 4 else h


def _user_to_nchw(h):
  return jnp.transpose(h, (0, 3, 1, 2)) if h.ndim == 4 else h


def nest(flat: dict[str, Any]) -> dict[str, Any]:
  """``{"a.b.weight": v}`` → ``{"a": {"b": {"weight": v}}}``."""
  tree: dict[str, Any] = {}
  for path, value in flat.items():
    node = tree
    *parents, leaf = path.split(".")
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = value
  return tree


@dataclasses.dataclass(frozen=True)
class TorchGraph:
  """A converted PyTorch network: a jaxplain ``apply_fn``, hashable by value.

  Attributes:
    ops: the graph, in execution order.
    output: the name of the op whose tensor is returned.
    input_shape: ``(C, H, W)`` the PyTorch module takes.
    mean, std: per-channel (or one-element) normalisation applied to [0, 1] images.
    squeeze: trailing singleton axes dropped from the output (``(N, 7, 1, 1)`` → ``(N, 7)``).
    layer_names: tap names (leaf module paths, execution order; a module called again is
      ``path#2``, ``path#3``, ...).
  """

  ops: tuple[Op, ...]
  output: str
  input_shape: tuple[int, int, int]
  mean: tuple[float, ...] = (0.0,)
  std: tuple[float, ...] = (1.0,)
  squeeze: int = 0
  layer_names: tuple[str, ...] = ()

  def __call__(self, variables, x, *, tap: str | None = None, delta=None, guided: bool = False):
    """Runs the network: ``x`` float ``(N, H, W, C)`` in [0, 1] → outputs ``(N, K)``.

    Args:
      variables: nested dict of parameters keyed by module path.
      x: images, NHWC in [0, 1]; their float dtype is kept (float parameters are cast to it).
      tap: a name in ``layer_names``; then returns ``(outputs, activation)``, a 4-D activation
        in NHWC.
      delta: added to the tapped activation (same shape and layout) before the rest runs.
      guided: every ReLU (module or functional) uses :func:`jaxplain.models.guided_relu`.
    """
    if tap is not None and tap not in self.layer_names:
      raise ValueError(f"unknown layer {tap!r}; valid layers: {list(self.layer_names)}")
    if delta is not None and tap is None:
      raise ValueError("`delta` needs `tap` naming the layer it is added to")
    env, tapped = self._run(variables, x, tap=tap, delta=delta, guided=guided)
    y = env[self.output]
    if self.squeeze:
      y = y.reshape(y.shape[:y.ndim - self.squeeze])
    return y if tap is None else (y, tapped)

  def prepare(self, variables):
    """``variables`` laid out as ``__call__`` runs them fastest; same outputs.

    Each ``nn.Linear``'s ``(out, in)`` weight becomes a row-major ``(in, out)`` ``weight_t``:
    XLA's CPU matrix product of activations with a transposed operand (PyTorch's ``x @ W.T``)
    runs 3-6x slower than with the weight laid out for it (NetworkV2's 9216 -> 256 layer, 32
    faces: 7.0 ms against 1.4 ms; ResNet's 2048 -> 1000: 6.6 against 1.1 ms), and a weight
    passed to a compiled function is transposed again at every call. ``Classifier.forward``
    holds these (computed once per classifier for concrete weights), ``Classifier.variables``
    keep PyTorch's layout; ``__call__`` takes either.
    """
    paths = {op.weights for op in self.ops if op.kind == "linear" and op.weights is not None}
    # a weight another op reads too (tied weights, ``F.linear(x, self.fc.weight)``) stays
    others = {op.weights for op in self.ops if op.kind != "linear" and op.weights is not None}
    paths = {q for q in paths if not any(o == q or o.startswith(q + ".") for o in others)}
    if not paths or any(isinstance(v, jax.ShapeDtypeStruct) for v in jax.tree.leaves(variables)):
      return variables

    def swap(tree, parts):
      if not parts:
        w = tree.get("weight") if isinstance(tree, dict) else None
        if w is None or jnp.ndim(w) != 2:
          return tree
        wt = np.ascontiguousarray(w.T) if isinstance(w, np.ndarray) else jnp.transpose(w)
        return {**{k: v for k, v in tree.items() if k != "weight"}, "weight_t": wt}
      head, rest = parts[0], parts[1:]
      if not isinstance(tree, dict) or head not in tree:
        return tree
      return {**tree, head: swap(tree[head], rest)}

    for path in sorted(paths):
      variables = swap(variables, path.split("."))
    return variables

  def values(self, variables, x) -> dict[str, Any]:
    """Every op's output (NCHW, as PyTorch has it) by node name: for finding a diverging op."""
    return self._run(variables, x, channels_last=False)[0]

  def _run(self, variables, x, *, tap=None, delta=None, guided=False, channels_last=True):
    """``(values by op name, tapped activation)``.

    With ``channels_last``, 4-D activations stay NHWC through the ops that allow it (see
    ``_runs_nhwc``) and are transposed to NCHW only for the ops that need PyTorch's layout;
    the returned values are then in whichever layout each op computed in.
    """
    c, h, w = self.input_shape
    models.check_images(x, name="x", shape=(h, w, c))
    dtype = x.dtype
    variables = jax.tree.map(
        lambda v: jnp.asarray(v).astype(dtype) if jnp.issubdtype(jnp.asarray(v).dtype,
                                                                 jnp.floating)
        else jnp.asarray(v), variables)
    mean = jnp.asarray(self.mean, dtype).reshape(1, 1, 1, -1)
    std = jnp.asarray(self.std, dtype).reshape(1, 1, 1, -1)
    ctx = Ctx(guided=guided, n=x.shape[0])
    env, nhwc, nchw_copies, tapped = {}, set(), {}, None

    def as_nchw(name):
      if name not in nhwc:
        return env[name]
      if name not in nchw_copies:
        nchw_copies[name] = _user_to_nchw(env[name])
      return nchw_copies[name]

    for op in self.ops:
      if op.kind == "input":
        env[op.name] = (x - mean) / std
        if channels_last:
          nhwc.add(op.name)
        else:
          env[op.name] = _user_to_nchw(env[op.name])
        continue
      weights = _lookup(variables, op.weights) if op.weights is not None else None
      params = dict(op.params)
      held = [env[i] for i in op.inputs]
      flags = [i in nhwc for i in op.inputs]
      if channels_last and _runs_nhwc(op, params, weights, held, flags):
        kind = op.kind
        out = (_OPS_NHWC[kind] if kind in _OPS_NHWC else OPS[kind])(held, params, weights, ctx)
        out_nhwc = _nhwc_output(kind, params) and jnp.ndim(out) == 4
      else:
        out = OPS[op.kind]([as_nchw(i) for i in op.inputs], params, weights, ctx)
        out_nhwc = False
      if op.layer is not None and op.layer == tap:
        tapped = out if out_nhwc else _nchw_to_user(out)
        if delta is not None:
          if tuple(delta.shape) != tuple(tapped.shape):
            raise ValueError(f"`delta` shape {tuple(delta.shape)} != activation shape "
                             f"{tuple(tapped.shape)} of layer {tap!r}")
          delta = jnp.asarray(delta, out.dtype)
          out = out + (delta if out_nhwc else _user_to_nchw(delta))
      env[op.name] = out
      if out_nhwc:
        nhwc.add(op.name)
    if self.output in nhwc:
      env[self.output] = as_nchw(self.output)
    return env, tapped

  def config(self) -> dict[str, Any]:
    """JSON-serialisable description (without the weights' values)."""
    return {"version": GRAPH_VERSION, "output": self.output, "input_shape": list(self.input_shape),
            "mean": list(self.mean), "std": list(self.std), "squeeze": self.squeeze,
            "layer_names": list(self.layer_names),
            "ops": [{"name": o.name, "kind": o.kind, "inputs": list(o.inputs),
                     "params": {k: jsonable(v) for k, v in o.params}, "weights": o.weights,
                     "layer": o.layer} for o in self.ops]}

  @classmethod
  def from_config(cls, config: dict[str, Any]) -> "TorchGraph":
    if config.get("version", 0) > GRAPH_VERSION:
      raise ValueError(f"converted graph version {config['version']} is newer than this "
                       f"jaxplain reads ({GRAPH_VERSION}); upgrade jaxplain")
    ops = []
    for o in config["ops"]:
      if o["kind"] != "input" and o["kind"] not in OPS:
        raise ValueError(f"converted graph names op {o['kind']!r} that this jaxplain lacks")
      ops.append(Op(o["name"], o["kind"], tuple(o["inputs"]), freeze(o["params"]),
                    o["weights"], o["layer"]))
    return cls(ops=tuple(ops), output=config["output"],
               input_shape=tuple(config["input_shape"]), mean=tuple(config["mean"]),
               std=tuple(config["std"]), squeeze=int(config["squeeze"]),
               layer_names=tuple(config["layer_names"]))


def build_from_meta(meta: dict[str, Any]):
  """``(apply_fn, abstract variables)`` of a saved converted classifier; needs no torch.

  Args:
    meta: the checkpoint metadata, ``{"kind": "torch_graph", "config": {...}}``.

  Returns:
    the :class:`TorchGraph` and a nested dict of ``jax.ShapeDtypeStruct`` of its weights.
  """
  config = meta["config"]
  graph = TorchGraph.from_config(config)
  abstract = nest({k: jax.ShapeDtypeStruct(tuple(shape), np.dtype(dtype))
                   for k, (shape, dtype) in config["variables"].items()})
  return graph, abstract


def apply_op(kind: str, inputs, params: dict, weights=None, *, guided: bool = False, n: int = 1):
  """Runs one op outside a graph (e.g. re-applying a stripped final activation)."""
  return OPS[kind](list(inputs), dict(params), weights, Ctx(guided, n))


# ----------------------------------------------------------------------------------------------
# JAX ops (PyTorch layout). Each takes (inputs, params, weights, ctx).
# ----------------------------------------------------------------------------------------------


def _shape(spec, n):
  """A shape with batch-scaled entries ``("N", k)`` resolved for batch size ``n``."""
  return tuple(n * int(s[1]) if isinstance(s, (tuple, list)) else int(s) for s in spec)


def _channel(v, ndim):
  """A per-channel vector shaped to broadcast over axis 1 of a rank-``ndim`` tensor."""
  return v.reshape((1, -1) + (1,) * (ndim - 2)) if ndim > 1 else v


def _match_rank(a, b):
  a_nd, b_nd = jnp.ndim(a), jnp.ndim(b)
  if a_nd < b_nd:
    a = jnp.reshape(a, (1,) * (b_nd - a_nd) + jnp.shape(a))
  elif b_nd < a_nd:
    b = jnp.reshape(b, (1,) * (a_nd - b_nd) + jnp.shape(b))
  return a, b


def _pad_nd(x, pads, mode, value=0.0):
  """``F.pad`` semantics: ``pads`` pairs apply from the last axis backwards."""
  width = [(0, 0)] * x.ndim
  for i in range(len(pads) // 2):
    width[x.ndim - 1 - i] = (pads[2 * i], pads[2 * i + 1])
  if mode == "constant":
    if any(a < 0 or b < 0 for a, b in width):
      return lax.pad(x, jnp.asarray(value, x.dtype), [(a, b, 0) for a, b in width])
    return jnp.pad(x, width, mode="constant", constant_values=value)
  return jnp.pad(x, width, mode={"reflect": "reflect", "replicate": "edge",
                                 "circular": "wrap"}[mode])


def _dims(nd):
  sp = "DHW"[3 - nd:]
  return ("NC" + sp, "OI" + sp, "NC" + sp)


def _conv(a, p, w, ctx):
  del ctx
  x = a[0]
  weight, bias = (w["weight"], w.get("bias")) if w is not None else (a[1], a[2] if len(a) > 2
                                                                    else None)
  nd = weight.ndim - 2
  pads = [tuple(q) for q in p["padding"]]
  if p["padding_mode"] != "zeros":
    flat = []
    for lo, hi in reversed(pads):
      flat += [lo, hi]
    x = _pad_nd(x, flat, p["padding_mode"])
    pads = [(0, 0)] * nd
  y = lax.conv_general_dilated(x, weight, window_strides=p["stride"], padding=pads,
                               rhs_dilation=p["dilation"], dimension_numbers=_dims(nd),
                               feature_group_count=p["groups"], precision=_HI)
  return y if bias is None else y + _channel(bias, y.ndim)


def _conv_transpose(a, p, w, ctx):
  """``ConvTranspose{1,2,3}d``: the gradient of a conv, as a conv over the dilated input."""
  del ctx
  x = a[0]
  weight, bias = (w["weight"], w.get("bias")) if w is not None else (a[1], a[2] if len(a) > 2
                                                                    else None)
  g, nd = p["groups"], weight.ndim - 2
  cin, cout_g, k = weight.shape[0], weight.shape[1], weight.shape[2:]
  kern = weight.reshape((g, cin // g, cout_g) + k)
  kern = jnp.swapaxes(kern, 1, 2).reshape((g * cout_g, cin // g) + k)
  kern = jnp.flip(kern, axis=tuple(range(2, 2 + nd)))
  pads, crops = [], []
  for i in range(nd):
    lo = p["dilation"][i] * (k[i] - 1) - p["padding"][i]
    hi = lo + p["output_padding"][i]
    pads.append((max(lo, 0), max(hi, 0)))
    crops.append((max(-lo, 0), max(-hi, 0)))
  y = lax.conv_general_dilated(x, kern, window_strides=(1,) * nd, padding=pads,
                               lhs_dilation=p["stride"], rhs_dilation=p["dilation"],
                               dimension_numbers=_dims(nd), feature_group_count=g, precision=_HI)
  if any(c != (0, 0) for c in crops):
    y = y[(slice(None), slice(None)) + tuple(slice(lo, y.shape[2 + i] - hi)
                                             for i, (lo, hi) in enumerate(crops))]
  return y if bias is None else y + _channel(bias, y.ndim)


def _linear(a, p, w, ctx):
  del p, ctx
  x = a[0]
  if w is not None and "weight_t" in w:  # TorchGraph.prepare's (in, out) copy
    y, bias = jnp.matmul(x, w["weight_t"], precision=_HI), w.get("bias")
  else:
    weight, bias = (w["weight"], w.get("bias")) if w is not None else (a[1], a[2] if len(a) > 2
                                                                      else None)
    y = jnp.matmul(x, weight.T, precision=_HI)
  return y if bias is None else y + bias.reshape((1,) * (y.ndim - 1) + (-1,))


def _affine_weights(a, p, w, start):
  """(weight, bias) of a norm layer: from the module's variables or the functional inputs."""
  if w is not None:
    return w.get("weight"), w.get("bias")
  rest = a[start:]
  if p.get("no_weight"):
    return None, (rest[0] if rest else None)
  return (rest[0] if len(rest) > 0 else None), (rest[1] if len(rest) > 1 else None)


def _affine(y, weight, bias, shape):
  """``y · weight + bias``, each reshaped by ``shape`` to broadcast (``None``: left out)."""
  if weight is not None:
    y = y * shape(weight)
  if bias is not None:
    y = y + shape(bias)
  return y


def _standardize(x, axes, eps):
  """``(x − mean) / sqrt(var + eps)`` over ``axes`` (biased variance, as torch's norms)."""
  mean = jnp.mean(x, axis=axes, keepdims=True)
  var = jnp.mean(jnp.square(x - mean), axis=axes, keepdims=True)
  return (x - mean) * lax.rsqrt(var + eps)


def _batch_norm(a, p, w, ctx):
  del ctx
  x = a[0]
  if w is not None:
    rm, rv = w["running_mean"], w["running_var"]
  else:
    rm, rv = a[1], a[2]
  weight, bias = _affine_weights(a, p, w, 3)
  y = (x - _channel(rm, x.ndim)) * lax.rsqrt(_channel(rv, x.ndim) + p["eps"])
  return _affine(y, weight, bias, lambda v: _channel(v, x.ndim))


def _layer_norm(a, p, w, ctx):
  del ctx
  x = a[0]
  y = _standardize(x, tuple(range(x.ndim - p["dims"], x.ndim)), p["eps"])
  weight, bias = _affine_weights(a, p, w, 1)
  return _affine(y, weight, bias, lambda v: v.reshape((1,) * (x.ndim - v.ndim) + v.shape))


def _group_norm(a, p, w, ctx):
  del ctx
  x = a[0]
  y = _standardize(x.reshape((x.shape[0], p["groups"], -1)), 2, p["eps"]).reshape(x.shape)
  weight, bias = _affine_weights(a, p, w, 1)
  return _affine(y, weight, bias, lambda v: _channel(v, x.ndim))


def _instance_norm(a, p, w, ctx):
  """Per-sample, per-channel statistics (or the running ones when the module tracks them)."""
  del ctx
  x = a[0]
  if p.get("running"):
    return _batch_norm(a, p, w, None)
  y = _standardize(x, tuple(range(2, x.ndim)), p["eps"])
  weight, bias = (w.get("weight"), w.get("bias")) if w is not None else (None, None)
  if w is None and p.get("weight_input") is not None:
    weight = a[p["weight_input"]]
  if w is None and p.get("bias_input") is not None:
    bias = a[p["bias_input"]]
  return _affine(y, weight, bias, lambda v: _channel(v, x.ndim))


def _local_response_norm(a, p, w, ctx):
  """``F.local_response_norm``: the mean of squares over a window of channels (zero padded)."""
  del w, ctx
  x = a[0]
  size = p["size"]
  sq = jnp.square(x)
  window = (1, size) + (1,) * (x.ndim - 2)
  pads = ((0, 0), (size // 2, (size - 1) // 2)) + ((0, 0),) * (x.ndim - 2)
  div = lax.reduce_window(sq, jnp.asarray(0, x.dtype), lax.add, window, (1,) * x.ndim, pads)
  div = (div / size * p["alpha"] + p["k"]) ** p["beta"]
  return x / div


def _pool_size(size, k, s, p, d, ceil):
  """PyTorch's ``pooling_output_shape`` and the extra right padding ``ceil_mode`` needs."""
  num = size + 2 * p - d * (k - 1) - 1
  out = (num + (s - 1 if ceil else 0)) // s + 1
  if ceil and (out - 1) * s >= size + p:
    out -= 1
  return out, max(0, (out - 1) * s + d * (k - 1) + 1 - (size + 2 * p))


def _max_pool(a, p, w, ctx):
  del w, ctx
  return _max_pool_on(a[0], p, 2)


def _max_pool_on(x, p, h_axis):
  """2-D max pooling (PyTorch's rules) over axes ``h_axis`` and ``h_axis + 1`` of a 4-D ``x``."""
  (kh, kw), (sh, sw), (ph, pw), (dh, dw) = p["kernel"], p["stride"], p["padding"], p["dilation"]
  _, eh = _pool_size(x.shape[h_axis], kh, sh, ph, dh, p["ceil_mode"])
  _, ew = _pool_size(x.shape[h_axis + 1], kw, sw, pw, dw, p["ceil_mode"])

  def spatial(h, w, other):
    dims = [other] * 4
    dims[h_axis], dims[h_axis + 1] = h, w
    return tuple(dims)
  return lax.reduce_window(x, -jnp.inf, lax.max, spatial(kh, kw, 1), spatial(sh, sw, 1),
                           spatial((ph, ph + eh), (pw, pw + ew), (0, 0)),
                           window_dilation=spatial(dh, dw, 1))


def _avg_divisor(size, k, s, p, out, include_pad):
  starts = np.arange(out) * s - p
  ends = np.minimum(starts + k, size + p)
  full = ends - starts
  clipped = np.minimum(ends, size) - np.maximum(starts, 0)
  return full if include_pad else clipped


def _avg_pool(a, p, w, ctx):
  """``avg_pool{1,2,3}d`` over the trailing ``len(kernel)`` axes (padding counted or not)."""
  del w, ctx
  return _avg_pool_on(a[0], p, a[0].ndim - len(p["kernel"]))


def _avg_pool_on(x, p, lead):
  """Average pooling over the ``len(kernel)`` axes from axis ``lead`` on (PyTorch's rules)."""
  nd = len(p["kernel"])
  tail = x.ndim - lead - nd
  sizes = [_pool_size(x.shape[lead + i], p["kernel"][i], p["stride"][i], p["padding"][i], 1,
                      p["ceil_mode"]) for i in range(nd)]
  total = lax.reduce_window(x, 0.0, lax.add, (1,) * lead + tuple(p["kernel"]) + (1,) * tail,
                            (1,) * lead + tuple(p["stride"]) + (1,) * tail,
                            ((0, 0),) * lead + tuple((q, q + e) for q, (_, e) in
                                                     zip(p["padding"], sizes)) + ((0, 0),) * tail)
  if p["divisor_override"]:
    return total / p["divisor_override"]
  div = np.ones(())
  for i, (out, _) in enumerate(sizes):
    div = np.multiply.outer(div, _avg_divisor(x.shape[lead + i], p["kernel"][i], p["stride"][i],
                                              p["padding"][i], out, p["count_include_pad"]))
  return total / jnp.asarray(div, x.dtype).reshape((1,) * lead + div.shape + (1,) * tail)


def _adaptive(reduce, *, channels_last: bool = False):
  """Adaptive pooling over the trailing spatial axes (or, ``channels_last``, those before C)."""
  def pool(a, p, w, ctx):
    del w, ctx
    x = a[0]
    sizes = p["output_size"]
    end = x.ndim - 1 if channels_last else x.ndim
    for axis, out in zip(range(end - len(sizes), end), sizes):
      size = x.shape[axis]
      if size % out == 0:
        k = size // out
        shape = x.shape[:axis] + (out, k) + x.shape[axis + 1:]
        x = reduce(x.reshape(shape), axis=axis + 1)
      else:
        parts = [reduce(lax.slice_in_dim(x, (i * size) // out, -(-((i + 1) * size) // out),
                                         axis=axis), axis=axis, keepdims=True)
                 for i in range(out)]
        x = jnp.concatenate(parts, axis=axis)
    return x
  return pool


def _relu(a, p, w, ctx):
  del p, w
  return models.guided_relu(a[0]) if ctx.guided else jax.nn.relu(a[0])


def _unary(fn):
  def op(a, p, w, ctx):
    del w, ctx
    return fn(a[0], **p)
  return op


def _prelu(a, p, w, ctx):
  del p, ctx
  x = a[0]
  slope = w["weight"] if w is not None else a[1]
  slope = _channel(slope, x.ndim) if slope.size > 1 else slope.reshape(())
  return jnp.where(x > 0, x, slope * x)


def _softmax_dim(dim, ndim):
  if dim is None:  # PyTorch's legacy implicit dim
    return 0 if ndim in (0, 1, 3) else 1
  return dim


def _floor_div(x, y):
  return jnp.floor_divide(x, y) if jnp.issubdtype(jnp.result_type(x, y), jnp.integer) else \
      jnp.floor(x / y)


def _trunc_div(x, y):
  if jnp.issubdtype(jnp.result_type(x, y), jnp.integer):
    q = jnp.abs(x) // jnp.abs(y)
    return jnp.where((x < 0) != (y < 0), -q, q)
  return jnp.trunc(x / y)


def _remainder(x, y):  # Python's sign rule (torch.remainder)
  return x - _floor_div(x, y) * y


_BINARY = {"add": jnp.add, "sub": jnp.subtract, "mul": jnp.multiply, "div": jnp.divide,
           "floordiv": _floor_div, "truncdiv": _trunc_div, "remainder": _remainder,
           "pow": jnp.power, "maximum": jnp.maximum, "minimum": jnp.minimum,
           "eq": jnp.equal, "ne": jnp.not_equal, "lt": jnp.less, "le": jnp.less_equal,
           "gt": jnp.greater, "ge": jnp.greater_equal, "and": jnp.logical_and,
           "or": jnp.logical_or}


def _binary(name):
  fn = _BINARY[name]

  def op(a, p, w, ctx):
    del w, ctx
    if "other" in p:
      x, y = a[0], p["other"]
      if p.get("reverse"):
        x, y = y, x
    else:
      x, y = _match_rank(a[0], a[1])
    if p.get("alpha", 1) != 1:
      y = y * p["alpha"]
    return fn(x, y)
  return op


def _reduce(fn):
  def op(a, p, w, ctx):
    del w, ctx
    return fn(a[0], axis=p["dims"], keepdims=p["keepdim"])
  return op


def _reduce_with_index(fn, arg):
  """``torch.max(x, dim)`` / ``torch.min(x, dim)``: a ``(values, indices)`` pair."""
  def op(a, p, w, ctx):
    del w, ctx
    x, d, keep = a[0], p["dim"], p["keepdim"]
    return (fn(x, axis=d, keepdims=keep), arg(x, axis=d, keepdims=keep))
  return op


def _arg(fn):
  def op(a, p, w, ctx):
    del w, ctx
    x = a[0]
    if p["dim"] is None:
      out = fn(x.reshape(-1))
      return out.reshape((1,) * x.ndim) if p["keepdim"] else out
    return fn(x, axis=p["dim"], keepdims=p["keepdim"])
  return op


def _var(a, p, w, ctx):
  del w, ctx
  x = a[0]
  v = jnp.var(x, axis=p["dims"], keepdims=p["keepdim"], ddof=p["correction"])
  return jnp.sqrt(v) if p["sqrt"] else v


def _reshape(a, p, w, ctx):
  """Batch-preserving reshape (graphs written before ``view``): ``shape`` excludes axis 0."""
  del w, ctx
  return a[0].reshape((a[0].shape[0],) + tuple(p["shape"]))


def _view(a, p, w, ctx):
  del w
  return a[0].reshape(_shape(p["shape"], ctx.n))


def _expand(a, p, w, ctx):
  del w
  shape = _shape(p["shape"], ctx.n)
  x = a[0]
  x = x.reshape((1,) * (len(shape) - x.ndim) + x.shape)
  return jnp.broadcast_to(x, shape)


def _repeat(a, p, w, ctx):
  del w, ctx
  x = a[0]
  reps = tuple(p["repeats"])
  x = x.reshape((1,) * (len(reps) - x.ndim) + x.shape)
  return jnp.tile(x, reps)


def _index(items, inputs, n):
  out = []
  for item in items:
    tag = item[0]
    if tag == "i":
      out.append(int(item[1]))
    elif tag == "s":
      out.append(slice(*(_shape((b,), n)[0] if b is not None else None for b in item[1:])))
    elif tag == "n":
      out.append(None)
    elif tag == "e":
      out.append(Ellipsis)
    elif tag == "t":
      out.append(inputs[item[1]])
    elif tag == "l":
      out.append(np.asarray(item[1]))
    else:
      raise ValueError(f"unknown index item {item!r}")
  return tuple(out)


def _getitem(a, p, w, ctx):
  """``x[...]`` with ints, slices, ``None``, ``...`` and index tensors (NumPy rules = torch's)."""
  del w
  x = a[0]
  if isinstance(x, (tuple, list)):
    return x[p["index"]]
  return x[_index(p["items"], a, ctx.n)]


def _split(a, p, w, ctx):
  """``chunk``/``split``/``unbind``: consecutive pieces of ``sizes`` along ``dim``."""
  del w, ctx
  x, d = a[0], p["dim"]
  out, start = [], 0
  for s in p["sizes"]:
    piece = lax.slice_in_dim(x, start, start + s, axis=d)
    out.append(jnp.squeeze(piece, d) if p.get("squeeze") else piece)
    start += s
  return tuple(out)


def _channel_shuffle(a, p, w, ctx):
  del w, ctx
  x, g = a[0], p["groups"]
  n, c = x.shape[:2]
  h = x.reshape((n, g, c // g) + x.shape[2:])
  return jnp.swapaxes(h, 1, 2).reshape(x.shape)


def _matmul(a, p, w, ctx):
  del p, w, ctx
  x, y = a
  if x.ndim > 2 and y.ndim > 2 and x.ndim != y.ndim:
    x, y = (x.reshape((1,) * (y.ndim - x.ndim) + x.shape), y) if x.ndim < y.ndim else \
        (x, y.reshape((1,) * (x.ndim - y.ndim) + y.shape))
  return jnp.matmul(x, y, precision=_HI)


def _einsum(a, p, w, ctx):
  del w, ctx
  return jnp.einsum(p["equation"], *a, precision=_HI)


def _clamp(a, p, w, ctx):
  del w, ctx
  x = a[0]
  if p.get("min") is not None:
    x = jnp.maximum(x, jnp.asarray(p["min"], x.dtype))
  if p.get("max") is not None:
    x = jnp.minimum(x, jnp.asarray(p["max"], x.dtype))
  return x


def _where(a, p, w, ctx):
  del w, ctx
  vals = list(a)
  cond = vals.pop(0)
  x = vals.pop(0) if p.get("x") is None else p["x"]
  y = vals.pop(0) if p.get("y") is None else p["y"]
  shape = jnp.broadcast_shapes(jnp.shape(cond), jnp.shape(x), jnp.shape(y))
  lift = lambda v: jnp.reshape(v, (1,) * (len(shape) - jnp.ndim(v)) + jnp.shape(v))
  return jnp.where(lift(cond), lift(x), lift(y))


def _stack(a, p, w, ctx):
  del w, ctx
  return jnp.stack(a, axis=p["dim"])


def _cast(a, p, w, ctx):
  del w, ctx
  return a[0].astype(p["dtype"]) if p.get("dtype") else a[0]


# --- resampling: interpolate, affine_grid, grid_sample ---------------------------------------

_CUBIC_A = -0.75  # PyTorch's bicubic coefficient


def _cubic_weights(t):
  a = _CUBIC_A
  w0 = ((a * (t + 1) - 5 * a) * (t + 1) + 8 * a) * (t + 1) - 4 * a
  w1 = ((a + 2) * t - (a + 3)) * t * t + 1
  w2 = ((a + 2) * (1 - t) - (a + 3)) * (1 - t) * (1 - t) + 1
  w3 = ((a * (2 - t) - 5 * a) * (2 - t) + 8 * a) * (2 - t) - 4 * a
  return np.stack([w0, w1, w2, w3])


def _resize_axis(size_in, size_out, mode, align_corners, scale_factor):
  """``(indices, weights)``, each ``(taps, size_out)``: PyTorch's source index for each output.

  Mirrors ATen's ``area_pixel_compute_scale``/``area_pixel_compute_source_index`` and
  ``nearest_idx`` (``UpSample.h``), including the use of a given ``scale_factor`` (not the size
  ratio) to place source pixels.
  """
  dst = np.arange(size_out, dtype=np.float64)
  if mode in ("nearest", "nearest-exact"):
    scale = np.float32(1.0 / scale_factor if scale_factor else size_in / size_out)
    if size_in == size_out:
      idx = np.arange(size_out)
    elif mode == "nearest":
      idx = np.floor(dst.astype(np.float32) * scale).astype(np.int64)
    else:
      idx = np.floor((dst.astype(np.float32) + np.float32(0.5)) * scale).astype(np.int64)
    return np.minimum(idx, size_in - 1)[None], np.ones((1, size_out))
  if align_corners:
    scale = (size_in - 1) / (size_out - 1) if size_out > 1 else 0.0
    src = dst * scale
  else:
    scale = 1.0 / scale_factor if scale_factor else size_in / size_out
    src = scale * (dst + 0.5) - 0.5
  if mode == "linear":
    if not align_corners:
      src = np.maximum(src, 0.0)
    i0 = np.floor(src).astype(np.int64)
    i0 = np.minimum(i0, size_in - 1)
    i1 = np.minimum(i0 + 1, size_in - 1)
    lam = src - i0
    return np.stack([i0, i1]), np.stack([1 - lam, lam])
  if mode == "cubic":
    i = np.floor(src).astype(np.int64)
    t = src - i
    idx = np.stack([np.clip(i + k, 0, size_in - 1) for k in (-1, 0, 1, 2)])
    return idx, _cubic_weights(t)
  raise ValueError(f"unsupported interpolation mode {mode!r}")


def _interpolate(a, p, w, ctx):
  """``F.interpolate`` / ``nn.Upsample``: separable resampling of the trailing axes."""
  del w, ctx
  x = a[0]
  mode = {"bilinear": "linear", "trilinear": "linear", "bicubic": "cubic"}.get(p["mode"],
                                                                               p["mode"])
  sizes = p["size"]
  scales = p["scales"] or (None,) * len(sizes)
  for i, (out, sf) in enumerate(zip(sizes, scales)):
    axis = x.ndim - len(sizes) + i
    idx, wts = _resize_axis(x.shape[axis], out, mode, p["align_corners"], sf)
    shape = [1] * x.ndim
    shape[axis] = out
    y = 0
    for k in range(idx.shape[0]):
      term = jnp.take(x, jnp.asarray(idx[k]), axis=axis)
      y = y + term * jnp.asarray(wts[k], x.dtype).reshape(shape) if idx.shape[0] > 1 else term
    x = y
  return x


def _linspace_neg1_1(steps, align_corners, dtype):
  if steps <= 1:
    return np.zeros(steps, dtype)
  r = np.linspace(-1.0, 1.0, steps)
  return (r if align_corners else r * (steps - 1) / steps).astype(dtype)


def _affine_grid(a, p, w, ctx):
  """``F.affine_grid`` (2-D): ``theta`` ``(N, 2, 3)`` → sampling grid ``(N, H, W, 2)``."""
  del w, ctx
  theta = a[0]
  h, w_ = p["size"]
  xs = _linspace_neg1_1(w_, p["align_corners"], np.float64)
  ys = _linspace_neg1_1(h, p["align_corners"], np.float64)
  base = np.stack([np.broadcast_to(xs[None, :], (h, w_)), np.broadcast_to(ys[:, None], (h, w_)),
                   np.ones((h, w_))], axis=-1)
  return jnp.einsum("hwk,njk->nhwj", jnp.asarray(base, theta.dtype), theta, precision=_HI)


def _reflect(coord, twice_low, twice_high):
  if twice_low == twice_high:
    return jnp.zeros_like(coord)
  low = twice_low / 2
  span = (twice_high - twice_low) / 2
  c = jnp.abs(coord - low)
  extra = jnp.fmod(c, span)
  flips = jnp.floor(c / span)
  return jnp.where(jnp.fmod(flips, 2) == 0, extra + low, span - extra + low)


def _source_coord(g, size, padding_mode, align_corners):
  """ATen's ``grid_sampler_compute_source_index``: normalised [-1, 1] → pixel coordinates."""
  c = (g + 1) / 2 * (size - 1) if align_corners else ((g + 1) * size - 1) / 2
  if padding_mode == "border":
    c = jnp.clip(c, 0, size - 1)
  elif padding_mode == "reflection":
    c = _reflect(c, 0, 2 * (size - 1)) if align_corners else _reflect(c, -1, 2 * size - 1)
    c = jnp.clip(c, 0, size - 1)
  return c


def _grid_sample(a, p, w, ctx):
  """``F.grid_sample`` (2-D; bilinear or nearest; zeros, border or reflection padding)."""
  del w, ctx
  x, grid = a[0], a[1]
  n, c, h, w_ = x.shape
  ho, wo = grid.shape[1:3]
  ix = _source_coord(grid[..., 0], w_, p["padding_mode"], p["align_corners"])
  iy = _source_coord(grid[..., 1], h, p["padding_mode"], p["align_corners"])
  flat = x.reshape(n, c, h * w_)

  def gather(yy, xx):
    valid = (xx >= 0) & (xx <= w_ - 1) & (yy >= 0) & (yy <= h - 1)
    idx = (jnp.clip(yy, 0, h - 1) * w_ + jnp.clip(xx, 0, w_ - 1)).astype(jnp.int32)
    idx = jnp.broadcast_to(idx.reshape(n, 1, ho * wo), (n, c, ho * wo))
    vals = jnp.take_along_axis(flat, idx, axis=2).reshape(n, c, ho, wo)
    return jnp.where(valid[:, None], vals, jnp.zeros((), x.dtype))

  if p["mode"] == "nearest":
    return gather(jnp.round(iy), jnp.round(ix))
  if p["mode"] != "bilinear":
    raise ValueError(f"unsupported grid_sample mode {p['mode']!r}")
  x0, y0 = jnp.floor(ix), jnp.floor(iy)
  x1, y1 = x0 + 1, y0 + 1
  wx1, wy1 = ix - x0, iy - y0
  wx0, wy0 = 1 - wx1, 1 - wy1
  out = (gather(y0, x0) * (wy0 * wx0)[:, None] + gather(y0, x1) * (wy0 * wx1)[:, None]
         + gather(y1, x0) * (wy1 * wx0)[:, None] + gather(y1, x1) * (wy1 * wx1)[:, None])
  return out


# --- attention (torchvision ViT) -------------------------------------------------------------


def _last_axis(v, ndim):
  """A bias vector shaped to broadcast over the last axis (explicit ranks, no rank promotion)."""
  return v.reshape((1,) * (ndim - 1) + (-1,))


def _multi_head_attention(a, p, w, ctx):
  """``nn.MultiheadAttention`` (no masks): returns ``(output, averaged attention weights)``."""
  del ctx
  q, k, v = a[0], a[1], a[2]
  if not p["batch_first"]:
    q, k, v = (jnp.swapaxes(t, 0, 1) for t in (q, k, v))
  e, heads = q.shape[-1], p["num_heads"]
  if "in_proj_weight" in w:
    wq, wk, wv = jnp.split(w["in_proj_weight"], 3, axis=0)
  else:
    wq, wk, wv = w["q_proj_weight"], w["k_proj_weight"], w["v_proj_weight"]
  bq = bk = bv = None
  if "in_proj_bias" in w:
    bq, bk, bv = jnp.split(w["in_proj_bias"], 3, axis=0)

  def proj(t, wt, b):
    y = jnp.matmul(t, wt.T, precision=_HI)
    return y if b is None else y + _last_axis(b, y.ndim)

  n, lq, lk = q.shape[0], q.shape[1], k.shape[1]
  dh = e // heads
  qh = proj(q, wq, bq).reshape(n, lq, heads, dh)
  kh = proj(k, wk, bk).reshape(n, lk, heads, -1)
  vh = proj(v, wv, bv).reshape(n, lk, heads, -1)
  scores = jnp.einsum("nqhd,nkhd->nhqk", qh * (1.0 / np.sqrt(dh)), kh, precision=_HI)
  attn = jax.nn.softmax(scores, axis=-1)
  out = jnp.einsum("nhqk,nkhd->nqhd", attn, vh, precision=_HI).reshape(n, lq, -1)
  out = jnp.matmul(out, w["out_proj"]["weight"].T, precision=_HI)
  if "bias" in w["out_proj"]:
    out = out + _last_axis(w["out_proj"]["bias"], out.ndim)
  if not p["batch_first"]:
    out = jnp.swapaxes(out, 0, 1)
  return (out, jnp.mean(attn, axis=1) if p["need_weights"] else None)


def _shifted_window_attention(a, p, w, ctx):
  """torchvision's ``shifted_window_attention`` (Swin v1 and v2), eval mode."""
  del w, ctx
  x, qkv_w, proj_w, rpb = a[:4]
  rest = list(a[4:])
  qkv_b = rest.pop(0) if p["qkv_bias"] else None
  proj_b = rest.pop(0) if p["proj_bias"] else None
  logit_scale = rest.pop(0) if p["logit_scale"] else None
  b, h, w_, c = x.shape
  (wh, ww), heads, shift = p["window_size"], p["num_heads"], list(p["shift_size"])
  pad_r, pad_b = (ww - w_ % ww) % ww, (wh - h % wh) % wh
  x = jnp.pad(x, ((0, 0), (0, pad_b), (0, pad_r), (0, 0)))
  ph, pw = x.shape[1:3]
  if wh >= ph:
    shift[0] = 0
  if ww >= pw:
    shift[1] = 0
  if sum(shift) > 0:
    x = jnp.roll(x, (-shift[0], -shift[1]), (1, 2))
  nw, t = (ph // wh) * (pw // ww), wh * ww
  x = x.reshape(b, ph // wh, wh, pw // ww, ww, c).transpose(0, 1, 3, 2, 4, 5).reshape(b * nw, t, c)
  if logit_scale is not None and qkv_b is not None:
    n3 = qkv_b.shape[0] // 3
    qkv_b = qkv_b.at[n3:2 * n3].set(0)
  qkv = jnp.matmul(x, qkv_w.T, precision=_HI)
  if qkv_b is not None:
    qkv = qkv + _last_axis(qkv_b, qkv.ndim)
  qkv = qkv.reshape(b * nw, t, 3, heads, c // heads).transpose(2, 0, 3, 1, 4)
  q, k, v = qkv[0], qkv[1], qkv[2]
  if logit_scale is not None:
    unit = lambda u: u / jnp.maximum(jnp.linalg.norm(u, axis=-1, keepdims=True), 1e-12)
    attn = jnp.matmul(unit(q), jnp.swapaxes(unit(k), -2, -1), precision=_HI)
    scale = jnp.exp(jnp.minimum(logit_scale, np.log(100.0)))
    attn = attn * scale.reshape((1,) * (attn.ndim - scale.ndim) + scale.shape)
  else:
    attn = jnp.matmul(q * (c // heads) ** -0.5, jnp.swapaxes(k, -2, -1), precision=_HI)
  attn = attn + rpb.reshape((1,) * (attn.ndim - rpb.ndim) + rpb.shape)
  if sum(shift) > 0:
    mask = np.zeros((ph, pw))
    count = 0
    for hs in ((0, -wh), (-wh, -shift[0]), (-shift[0], None)):
      for ws in ((0, -ww), (-ww, -shift[1]), (-shift[1], None)):
        mask[hs[0]:hs[1], ws[0]:ws[1]] = count
        count += 1
    mask = mask.reshape(ph // wh, wh, pw // ww, ww).transpose(0, 2, 1, 3).reshape(nw, t)
    mask = mask[:, None, :] - mask[:, :, None]
    mask = np.where(mask != 0, -100.0, 0.0)
    attn = attn.reshape(b, nw, heads, t, t) + jnp.asarray(mask[None, :, None], attn.dtype)
    attn = attn.reshape(-1, heads, t, t)
  attn = jax.nn.softmax(attn, axis=-1)
  x = jnp.matmul(attn, v, precision=_HI).transpose(0, 2, 1, 3).reshape(b * nw, t, c)
  x = jnp.matmul(x, proj_w.T, precision=_HI)
  if proj_b is not None:
    x = x + _last_axis(proj_b, x.ndim)
  x = x.reshape(b, ph // wh, pw // ww, wh, ww, c).transpose(0, 1, 3, 2, 4, 5).reshape(b, ph, pw, c)
  if sum(shift) > 0:
    x = jnp.roll(x, (shift[0], shift[1]), (1, 2))
  return x[:, :h, :w_, :]


def _patch_merging_pad(a, p, w, ctx):
  """torchvision Swin's ``_patch_merging_pad``: 2×2 neighbours stacked on channels."""
  del p, w, ctx
  x = a[0]
  h, w_ = x.shape[-3:-1]
  x = jnp.pad(x, ((0, 0),) * (x.ndim - 3) + ((0, h % 2), (0, w_ % 2), (0, 0)))
  parts = [x[..., 0::2, 0::2, :], x[..., 1::2, 0::2, :], x[..., 0::2, 1::2, :],
           x[..., 1::2, 1::2, :]]
  return jnp.concatenate(parts, axis=-1)


OPS = {
    "identity": lambda a, p, w, c: a[0],
    "param": lambda a, p, w, c: w,
    "conv2d": _conv,            # graphs written before the N-d conv
    "conv": _conv,
    "conv_transpose": _conv_transpose,
    "linear": _linear,
    "batch_norm": _batch_norm,
    "layer_norm": _layer_norm,
    "group_norm": _group_norm,
    "instance_norm": _instance_norm,
    "local_response_norm": _local_response_norm,
    "relu": _relu,
    "relu6": _unary(lambda x: jnp.minimum(jnp.maximum(x, 0), 6)),
    "hardtanh": _unary(lambda x, min_val, max_val: jnp.clip(x, min_val, max_val)),
    "leaky_relu": _unary(lambda x, negative_slope: jnp.where(x > 0, x, x * negative_slope)),
    "prelu": _prelu,
    "elu": _unary(lambda x, alpha: jax.nn.elu(x, alpha)),
    "celu": _unary(lambda x, alpha: jax.nn.celu(x, alpha)),
    "selu": _unary(jax.nn.selu),
    "gelu": _unary(lambda x, approximate: jax.nn.gelu(x, approximate=approximate == "tanh")),
    "silu": _unary(jax.nn.silu),
    "mish": _unary(lambda x: x * jnp.tanh(jax.nn.softplus(x))),
    "hardswish": _unary(lambda x: x * jnp.clip(x + 3, 0, 6) / 6),
    "hardsigmoid": _unary(lambda x: jnp.clip(x + 3, 0, 6) / 6),
    "softplus": _unary(lambda x, beta, threshold: jnp.where(
        x * beta > threshold, x, jnp.logaddexp(x * beta, 0) / beta)),
    "sigmoid": _unary(jax.nn.sigmoid),
    "log_sigmoid": _unary(jax.nn.log_sigmoid),
    "tanh": _unary(jnp.tanh),
    "softmax": _unary(lambda x, dim: jax.nn.softmax(x, axis=_softmax_dim(dim, x.ndim))),
    "log_softmax": _unary(lambda x, dim: jax.nn.log_softmax(x, axis=_softmax_dim(dim, x.ndim))),
    "softmin": _unary(lambda x, dim: jax.nn.softmax(-x, axis=_softmax_dim(dim, x.ndim))),
    "neg": _unary(jnp.negative),
    "exp": _unary(jnp.exp),
    "log": _unary(jnp.log),
    "sqrt": _unary(jnp.sqrt),
    "rsqrt": _unary(lax.rsqrt),
    "abs": _unary(jnp.abs),
    "sin": _unary(jnp.sin),
    "cos": _unary(jnp.cos),
    "erf": _unary(jax.scipy.special.erf),
    "reciprocal": _unary(jnp.reciprocal),
    "square": _unary(jnp.square),
    "floor": _unary(jnp.floor),
    "ceil": _unary(jnp.ceil),
    "round": _unary(jnp.round),
    "sign": _unary(jnp.sign),
    "logical_not": _unary(jnp.logical_not),
    "clamp": _clamp,
    "where": _where,
    "cast": _cast,
    "max_pool2d": _max_pool,
    "avg_pool2d": _avg_pool,
    "adaptive_avg_pool2d": _adaptive(jnp.mean),
    "adaptive_max_pool2d": _adaptive(jnp.max),
    "pad": _unary(lambda x, pads, mode, value: _pad_nd(x, pads, mode, value)),
    "reshape": _reshape,
    "view": _view,
    "expand": _expand,
    "repeat": _repeat,
    "permute": _unary(lambda x, dims: jnp.transpose(x, dims)),
    "flip": _unary(lambda x, dims: jnp.flip(x, dims)),
    "roll": _unary(lambda x, shifts, dims: jnp.roll(x, shifts, dims)),
    "getitem": _getitem,
    "split": _split,
    "channel_shuffle": _channel_shuffle,
    "cat": lambda a, p, w, c: jnp.concatenate(a, axis=p["dim"]),
    "stack": _stack,
    "matmul": _matmul,
    "einsum": _einsum,
    "mean": _reduce(jnp.mean),
    "sum": _reduce(jnp.sum),
    "prod": _reduce(jnp.prod),
    "amax": _reduce(jnp.max),
    "amin": _reduce(jnp.min),
    "var": _var,
    "max_dim": _reduce_with_index(jnp.max, jnp.argmax),
    "min_dim": _reduce_with_index(jnp.min, jnp.argmin),
    "argmax": _arg(jnp.argmax),
    "argmin": _arg(jnp.argmin),
    "interpolate": _interpolate,
    "affine_grid": _affine_grid,
    "grid_sample": _grid_sample,
    "multi_head_attention": _multi_head_attention,
    "shifted_window_attention": _shifted_window_attention,
    "patch_merging_pad": _patch_merging_pad,
    **{name: _binary(name) for name in _BINARY},
}

FINAL_ACTIVATIONS = ("sigmoid", "softmax", "log_softmax")

# ----------------------------------------------------------------------------------------------
# Channels-last execution. XLA's CPU and GPU convolutions want NHWC; a converted graph run in
# PyTorch's NCHW pays a transpose before and after every convolution (on the 2-core CPU, 7 ms of
# NetworkV2's 79 ms input gradient for 32 faces was one of them). So _run keeps a 4-D activation
# in NHWC from the input on, as long as the ops reading it are among these, and transposes to
# NCHW only for an op that needs PyTorch's layout (flatten, view, indexing, ...). Each function
# takes NHWC inputs and returns NHWC (or, for reductions, the tensor PyTorch's layout gives).
# ----------------------------------------------------------------------------------------------

_NCHW_TO_NHWC_AXIS = (0, 3, 1, 2)  # NCHW axis i lives at NHWC axis _NCHW_TO_NHWC_AXIS[i]

_ELEMENTWISE = frozenset({
    "identity", "relu", "relu6", "hardtanh", "leaky_relu", "elu", "celu", "selu", "gelu", "silu",
    "mish", "hardswish", "hardsigmoid", "softplus", "sigmoid", "log_sigmoid", "tanh", "neg", "exp",
    "log", "sqrt", "rsqrt", "abs", "sin", "cos", "erf", "reciprocal", "square", "floor", "ceil",
    "round", "sign", "cast"})
_BINARY_NHWC = frozenset({"add", "sub", "mul", "div", "maximum", "minimum"})
_REDUCE_NHWC = frozenset({"mean", "sum", "amax", "amin"})
_SPATIAL_PAD = {"reflect": "reflect", "replicate": "edge", "circular": "wrap"}


def _conv_nhwc(a, p, w, ctx):
  del ctx
  x = a[0]
  weight, bias = (w["weight"], w.get("bias")) if w is not None else (a[1], a[2] if len(a) > 2
                                                                    else None)
  pads = [tuple(q) for q in p["padding"]]
  if p["padding_mode"] != "zeros":
    x = jnp.pad(x, [(0, 0), *pads, (0, 0)], mode=_SPATIAL_PAD[p["padding_mode"]])
    pads = [(0, 0)] * 2
  if p["groups"] == 1 and np.prod(weight.shape[1:]) <= models.IM2COL_MAX_FEATURES:
    # a stem conv on grayscale or RGB: its input gradient through patches (models.conv_nhwc)
    y = models.conv_nhwc(x, jnp.transpose(weight, (2, 3, 1, 0)), strides=p["stride"],
                         padding=pads, dilation=p["dilation"], precision=_HI)
  else:
    y = lax.conv_general_dilated(x, weight, window_strides=p["stride"], padding=pads,
                                 rhs_dilation=p["dilation"],
                                 dimension_numbers=("NHWC", "OIHW", "NHWC"),
                                 feature_group_count=p["groups"], precision=_HI)
  return y if bias is None else y + _last(bias)


def _last(v):
  """A per-channel vector shaped to broadcast over the last axis of an NHWC tensor."""
  return v.reshape(1, 1, 1, -1)


def _batch_norm_nhwc(a, p, w, ctx):
  del ctx
  x = a[0]
  rm, rv = (w["running_mean"], w["running_var"]) if w is not None else (a[1], a[2])
  weight, bias = _affine_weights(a, p, w, 3)
  return _affine((x - _last(rm)) * lax.rsqrt(_last(rv) + p["eps"]), weight, bias, _last)


def _pad_nhwc(a, p, w, ctx):
  del w, ctx
  pads = list(p["pads"]) + [0] * (4 - len(p["pads"]))  # (W lo, W hi, H lo, H hi)
  width = [(0, 0), (pads[2], pads[3]), (pads[0], pads[1]), (0, 0)]
  if p["mode"] == "constant":  # lax.pad: negative widths crop, as in F.pad
    return lax.pad(a[0], jnp.asarray(p["value"], a[0].dtype), [(lo, hi, 0) for lo, hi in width])
  return jnp.pad(a[0], width, mode=_SPATIAL_PAD[p["mode"]])


def _nhwc_dims(dims):
  return None if dims is None else tuple(_NCHW_TO_NHWC_AXIS[d % 4] for d in (
      dims if isinstance(dims, (tuple, list)) else (dims,)))


_OPS_NHWC = {
    "conv": _conv_nhwc,
    "conv2d": _conv_nhwc,
    "batch_norm": _batch_norm_nhwc,
    "max_pool2d": lambda a, p, w, c: _max_pool_on(a[0], p, 1),
    "avg_pool2d": lambda a, p, w, c: _avg_pool_on(a[0], p, 1),
    "adaptive_avg_pool2d": _adaptive(jnp.mean, channels_last=True),
    "adaptive_max_pool2d": _adaptive(jnp.max, channels_last=True),
    "pad": _pad_nhwc,
    "cat": lambda a, p, w, c: jnp.concatenate(a, axis=_NCHW_TO_NHWC_AXIS[p["dim"] % 4]),
} | {k: (lambda kind: lambda a, p, w, c: OPS[kind](
    a, p | {"dims": _nhwc_dims(p["dims"])}, w, c))(k) for k in _REDUCE_NHWC}


def _runs_nhwc(op, params, weights, inputs, nhwc) -> bool:
  """Whether ``op`` can compute on its inputs held channels-last (``nhwc``: per input)."""
  kind = op.kind
  if not inputs or not nhwc[0]:
    return False
  if kind in _ELEMENTWISE:
    return len(inputs) == 1
  if kind in _BINARY_NHWC:
    if "other" in params:
      return len(inputs) == 1 and isinstance(params["other"], (int, float, bool))
    return len(inputs) == 2 and all(nhwc) and inputs[0].shape == inputs[1].shape
  if kind in ("conv", "conv2d"):
    weight = weights["weight"] if weights is not None else (inputs[1] if len(inputs) > 1
                                                             else None)
    return weight is not None and weight.ndim == 4 and not any(nhwc[1:])
  if kind == "batch_norm":
    return not any(nhwc[1:])
  if kind in ("max_pool2d", "avg_pool2d", "adaptive_avg_pool2d", "adaptive_max_pool2d"):
    return len(inputs) == 1 and len(params.get("kernel", params.get("output_size", ()))) == 2
  if kind == "pad":
    return len(params["pads"]) <= 4 and (params["mode"] == "constant"
                                         or params["mode"] in _SPATIAL_PAD)
  if kind == "cat":
    return all(nhwc)
  if kind in _REDUCE_NHWC:
    dims = params["dims"]
    if dims is None or params["keepdim"]:
      return True
    dims = {d % 4 for d in (dims if isinstance(dims, (tuple, list)) else (dims,))}
    return 1 in dims or {2, 3} <= dims  # then both layouts leave the kept axes in one order
  return False


def _nhwc_output(kind, params) -> bool:
  """Whether an op run channels-last returns an NHWC 4-D tensor (not a reduced one)."""
  return kind not in _REDUCE_NHWC or params["dims"] is None or bool(params["keepdim"])
