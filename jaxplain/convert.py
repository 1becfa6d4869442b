"""PyTorch CNNs → jaxplain classifiers (torch imported lazily, only to convert).

:func:`from_torch` traces a ``torch.nn.Module`` with ``torch.fx`` (leaf ``torch.nn`` layers stay
whole, custom submodules are traced through), runs the traced graph once on example inputs to
learn every shape, and maps each node to a JAX op. The result is a :class:`TorchGraph`: a frozen,
hashable-by-value description of the network (tuples of ops) whose ``__call__`` is a jaxplain
``apply_fn`` (see :mod:`jaxplain.models`), with the weights kept apart as a nested dict keyed by
PyTorch module path (``variables["conv_2"]["1"]["weight"]``).

The converted network computes in PyTorch's NCHW layout, so flattening, ``cat`` and reductions
see exactly PyTorch's element order. Inputs follow jaxplain's convention (``(N, H, W, C)`` in
[0, 1]); the classifier normalises them with ``(x - mean) / std`` and transposes them to NCHW.
Layer names are PyTorch module paths (``conv_2.1``); a tapped 4-D activation is returned (and its
``delta`` taken) in NHWC, like jaxplain's own CNN, other activations as PyTorch shapes them.

A converted classifier saves with :func:`jaxplain.save_classifier` (metadata kind
``"torch_graph"``, the graph as JSON) and loads with :func:`jaxplain.load_classifier` without
torch (:func:`build_from_meta`).
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import operator
import pathlib
import sys
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxplain import models
from jaxplain.data import CLASS_NAMES

__all__ = ["from_torch", "load_torch_weights", "import_class", "build_from_meta", "TorchGraph",
           "torch_difference", "SUPPORTED_MODULES"]

KIND = "torch_graph"
GRAPH_VERSION = 1
_HI = lax.Precision.HIGHEST  # PyTorch computes float32 convs and matmuls in full float32


# ----------------------------------------------------------------------------------------------
# The graph and its evaluation (numpy/JAX only)
# ----------------------------------------------------------------------------------------------


class Op(NamedTuple):
  """One node of a converted graph.

  Attributes:
    name: the torch.fx node name (unique).
    kind: the JAX op (a key of ``_OPS``, or ``"input"``).
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


def _freeze(v):
  if isinstance(v, dict):
    return tuple(sorted((k, _freeze(x)) for k, x in v.items()))
  if isinstance(v, (list, tuple)):
    return tuple(_freeze(x) for x in v)
  if isinstance(v, (np.integer, np.floating, np.bool_)):
    return v.item()
  return v


def _lookup(variables, path: str):
  for part in path.split("."):
    variables = variables[part]
  return variables


def _nchw_to_user(h):
  return jnp.transpose(h, (0, 2, 3, 1)) if h.ndim == 4 else h


def _user_to_nchw(h):
  return jnp.transpose(h, (0, 3, 1, 2)) if h.ndim == 4 else h


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
      x: images, NHWC in [0, 1]; their float dtype is kept (parameters are cast to it).
      tap: a name in ``layer_names``; then returns ``(outputs, activation)``, a 4-D activation
        in NHWC.
      delta: added to the tapped activation (same shape and layout) before the rest runs.
      guided: every ReLU (module or functional) uses :func:`jaxplain.models.guided_relu`.
    """
    c, h, w = self.input_shape
    models.check_images(x, name="x", shape=(h, w, c))
    if tap is not None and tap not in self.layer_names:
      raise ValueError(f"unknown layer {tap!r}; valid layers: {list(self.layer_names)}")
    if delta is not None and tap is None:
      raise ValueError("`delta` needs `tap` naming the layer it is added to")
    dtype = x.dtype
    variables = jax.tree.map(lambda v: jnp.asarray(v).astype(dtype), variables)
    mean = jnp.asarray(self.mean, dtype).reshape(1, 1, 1, -1)
    std = jnp.asarray(self.std, dtype).reshape(1, 1, 1, -1)
    env, tapped = {}, None
    for op in self.ops:
      if op.kind == "input":
        env[op.name] = jnp.transpose((x - mean) / std, (0, 3, 1, 2))
        continue
      weights = _lookup(variables, op.weights) if op.weights is not None else None
      out = _OPS[op.kind]([env[i] for i in op.inputs], dict(op.params), weights, guided)
      if op.layer is not None and op.layer == tap:
        tapped = _nchw_to_user(out)
        if delta is not None:
          if tuple(delta.shape) != tuple(tapped.shape):
            raise ValueError(f"`delta` shape {tuple(delta.shape)} != activation shape "
                             f"{tuple(tapped.shape)} of layer {tap!r}")
          out = out + _user_to_nchw(jnp.asarray(delta, out.dtype))
      env[op.name] = out
    y = env[self.output]
    if self.squeeze:
      y = y.reshape(y.shape[:y.ndim - self.squeeze])
    return y if tap is None else (y, tapped)

  def config(self) -> dict[str, Any]:
    """JSON-serialisable description (without the weights' values)."""
    return {"version": GRAPH_VERSION, "output": self.output, "input_shape": list(self.input_shape),
            "mean": list(self.mean), "std": list(self.std), "squeeze": self.squeeze,
            "layer_names": list(self.layer_names),
            "ops": [{"name": o.name, "kind": o.kind, "inputs": list(o.inputs),
                     "params": {k: _jsonable(v) for k, v in o.params}, "weights": o.weights,
                     "layer": o.layer} for o in self.ops]}

  @classmethod
  def from_config(cls, config: dict[str, Any]) -> "TorchGraph":
    if config.get("version", 0) > GRAPH_VERSION:
      raise ValueError(f"converted graph version {config['version']} is newer than this "
                       f"jaxplain reads ({GRAPH_VERSION}); upgrade jaxplain")
    ops = []
    for o in config["ops"]:
      if o["kind"] != "input" and o["kind"] not in _OPS:
        raise ValueError(f"converted graph names op {o['kind']!r} that this jaxplain lacks")
      ops.append(Op(o["name"], o["kind"], tuple(o["inputs"]), _freeze(o["params"]),
                    o["weights"], o["layer"]))
    return cls(ops=tuple(ops), output=config["output"],
               input_shape=tuple(config["input_shape"]), mean=tuple(config["mean"]),
               std=tuple(config["std"]), squeeze=int(config["squeeze"]),
               layer_names=tuple(config["layer_names"]))


def _jsonable(v):
  if isinstance(v, tuple):
    return [_jsonable(x) for x in v]
  return v


def _nest(flat: dict[str, Any]) -> dict[str, Any]:
  tree: dict[str, Any] = {}
  for path, value in flat.items():
    node = tree
    *parents, leaf = path.split(".")
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = value
  return tree


def build_from_meta(meta: dict[str, Any]):
  """``(apply_fn, abstract variables)`` of a saved converted classifier; needs no torch.

  Args:
    meta: the checkpoint metadata, ``{"kind": "torch_graph", "config": {...}}``.

  Returns:
    the :class:`TorchGraph` and a nested dict of ``jax.ShapeDtypeStruct`` of its weights.
  """
  config = meta["config"]
  graph = TorchGraph.from_config(config)
  abstract = _nest({k: jax.ShapeDtypeStruct(tuple(shape), np.dtype(dtype))
                    for k, (shape, dtype) in config["variables"].items()})
  return graph, abstract


# ----------------------------------------------------------------------------------------------
# JAX ops (NCHW). Each takes (inputs, params, weights, guided).
# ----------------------------------------------------------------------------------------------


def _channel(v, ndim):
  """A per-channel vector shaped to broadcast over axis 1 of a rank-``ndim`` tensor."""
  return v.reshape((1, -1) + (1,) * (ndim - 2)) if ndim > 1 else v


def _match_rank(a, b):
  if isinstance(a, (int, float)) or isinstance(b, (int, float)):
    return a, b
  if a.ndim < b.ndim:
    a = a.reshape((1,) * (b.ndim - a.ndim) + a.shape)
  elif b.ndim < a.ndim:
    b = b.reshape((1,) * (a.ndim - b.ndim) + b.shape)
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


def _conv2d(a, p, w, guided):
  del guided
  x = a[0]
  weight, bias = (w["weight"], w.get("bias")) if w is not None else (a[1], a[2] if len(a) > 2
                                                                    else None)
  (pt, pb), (pl, pr) = p["padding"]
  if p["padding_mode"] != "zeros":
    x = _pad_nd(x, (pl, pr, pt, pb), p["padding_mode"])
    pt = pb = pl = pr = 0
  y = lax.conv_general_dilated(x, weight, window_strides=p["stride"],
                               padding=((pt, pb), (pl, pr)), rhs_dilation=p["dilation"],
                               dimension_numbers=("NCHW", "OIHW", "NCHW"),
                               feature_group_count=p["groups"], precision=_HI)
  return y if bias is None else y + _channel(bias, 4)


def _linear(a, p, w, guided):
  del p, guided
  x = a[0]
  weight, bias = (w["weight"], w.get("bias")) if w is not None else (a[1], a[2] if len(a) > 2
                                                                    else None)
  y = jnp.matmul(x, weight.T, precision=_HI)
  return y if bias is None else y + bias.reshape((1,) * (y.ndim - 1) + (-1,))


def _batch_norm(a, p, w, guided):
  del guided
  x = a[0]
  inv = lax.rsqrt(_channel(w["running_var"], x.ndim) + p["eps"])
  y = (x - _channel(w["running_mean"], x.ndim)) * inv
  if "weight" in w:
    y = y * _channel(w["weight"], x.ndim) + _channel(w["bias"], x.ndim)
  return y


def _pool_size(size, k, s, p, d, ceil):
  """PyTorch's ``pooling_output_shape`` and the extra right padding ``ceil_mode`` needs."""
  num = size + 2 * p - d * (k - 1) - 1
  out = (num + (s - 1 if ceil else 0)) // s + 1
  if ceil and (out - 1) * s >= size + p:
    out -= 1
  return out, max(0, (out - 1) * s + d * (k - 1) + 1 - (size + 2 * p))


def _max_pool(a, p, w, guided):
  del w, guided
  x = a[0]
  (kh, kw), (sh, sw), (ph, pw), (dh, dw) = p["kernel"], p["stride"], p["padding"], p["dilation"]
  _, eh = _pool_size(x.shape[2], kh, sh, ph, dh, p["ceil_mode"])
  _, ew = _pool_size(x.shape[3], kw, sw, pw, dw, p["ceil_mode"])
  return lax.reduce_window(x, -jnp.inf, lax.max, (1, 1, kh, kw),
                           (1, 1, sh, sw), ((0, 0), (0, 0), (ph, ph + eh), (pw, pw + ew)),
                           window_dilation=(1, 1, dh, dw))


def _avg_divisor(size, k, s, p, out, include_pad):
  starts = np.arange(out) * s - p
  ends = np.minimum(starts + k, size + p)
  full = ends - starts
  clipped = np.minimum(ends, size) - np.maximum(starts, 0)
  return full if include_pad else clipped


def _avg_pool(a, p, w, guided):
  del w, guided
  x = a[0]
  (kh, kw), (sh, sw), (ph, pw) = p["kernel"], p["stride"], p["padding"]
  oh, eh = _pool_size(x.shape[2], kh, sh, ph, 1, p["ceil_mode"])
  ow, ew = _pool_size(x.shape[3], kw, sw, pw, 1, p["ceil_mode"])
  total = lax.reduce_window(x, 0.0, lax.add, (1, 1, kh, kw), (1, 1, sh, sw),
                            ((0, 0), (0, 0), (ph, ph + eh), (pw, pw + ew)))
  if p["divisor_override"]:
    return total / p["divisor_override"]
  div = np.outer(_avg_divisor(x.shape[2], kh, sh, ph, oh, p["count_include_pad"]),
                 _avg_divisor(x.shape[3], kw, sw, pw, ow, p["count_include_pad"]))
  return total / jnp.asarray(div, x.dtype).reshape(1, 1, oh, ow)


def _adaptive(reduce):
  def pool(a, p, w, guided):
    del w, guided
    x = a[0]
    for axis, out in zip((x.ndim - 2, x.ndim - 1), p["output_size"]):
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


def _relu(a, p, w, guided):
  del p, w
  return models.guided_relu(a[0]) if guided else jax.nn.relu(a[0])


def _unary(fn):
  def op(a, p, w, guided):
    del w, guided
    return fn(a[0], **p)
  return op


def _prelu(a, p, w, guided):
  del p, guided
  x = a[0]
  slope = w["weight"] if w is not None else a[1]
  slope = _channel(slope, x.ndim) if slope.size > 1 else slope.reshape(())
  return jnp.where(x > 0, x, slope * x)


def _softmax_dim(dim, ndim):
  if dim is None:  # PyTorch's legacy implicit dim
    return 0 if ndim in (0, 1, 3) else 1
  return dim


def _binary(fn):
  def op(a, p, w, guided):
    del w, guided
    if "other" in p:
      x, y = a[0], p["other"]
      if p.get("reverse"):
        x, y = y, x
    else:
      x, y = _match_rank(a[0], a[1])
    return fn(x, y)
  return op


def _reduce(fn):
  def op(a, p, w, guided):
    del w, guided
    return fn(a[0], axis=p["dims"], keepdims=p["keepdim"])
  return op


def _reshape(a, p, w, guided):
  del w, guided
  return a[0].reshape((a[0].shape[0],) + tuple(p["shape"]))


_OPS = {
    "identity": lambda a, p, w, g: a[0],
    "param": lambda a, p, w, g: w,
    "conv2d": _conv2d,
    "linear": _linear,
    "batch_norm": _batch_norm,
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
    "neg": _unary(jnp.negative),
    "max_pool2d": _max_pool,
    "avg_pool2d": _avg_pool,
    "adaptive_avg_pool2d": _adaptive(jnp.mean),
    "adaptive_max_pool2d": _adaptive(jnp.max),
    "pad": _unary(lambda x, pads, mode, value: _pad_nd(x, pads, mode, value)),
    "reshape": _reshape,
    "permute": _unary(lambda x, dims: jnp.transpose(x, dims)),
    "add": _binary(jnp.add),
    "sub": _binary(jnp.subtract),
    "mul": _binary(jnp.multiply),
    "div": _binary(jnp.divide),
    "cat": lambda a, p, w, g: jnp.concatenate(a, axis=p["dim"]),
    "mean": _reduce(jnp.mean),
    "sum": _reduce(jnp.sum),
    "amax": _reduce(jnp.max),
}

_FINAL_ACTIVATIONS = ("sigmoid", "softmax", "log_softmax")


# ----------------------------------------------------------------------------------------------
# Conversion (needs torch; imported inside the functions)
# ----------------------------------------------------------------------------------------------

# torch.nn layer class name → op kind. A subclass that keeps the layer's forward is converted as
# that layer; one that overrides forward is traced through.
SUPPORTED_MODULES = {
    "Conv2d": "conv2d", "Linear": "linear", "BatchNorm1d": "batch_norm",
    "BatchNorm2d": "batch_norm", "ReLU": "relu", "ReLU6": "relu6", "Hardtanh": "hardtanh",
    "LeakyReLU": "leaky_relu", "PReLU": "prelu", "ELU": "elu", "CELU": "celu", "SELU": "selu",
    "GELU": "gelu", "SiLU": "silu", "Mish": "mish", "Hardswish": "hardswish",
    "Hardsigmoid": "hardsigmoid", "Softplus": "softplus", "Sigmoid": "sigmoid",
    "LogSigmoid": "log_sigmoid", "Tanh": "tanh", "Softmax": "softmax", "Softmax2d": "softmax",
    "LogSoftmax": "log_softmax", "MaxPool2d": "max_pool2d", "AvgPool2d": "avg_pool2d",
    "AdaptiveAvgPool2d": "adaptive_avg_pool2d", "AdaptiveMaxPool2d": "adaptive_max_pool2d",
    "Dropout": "identity", "Dropout1d": "identity", "Dropout2d": "identity",
    "AlphaDropout": "identity", "Identity": "identity", "Flatten": "reshape",
    "Unflatten": "reshape", "ReflectionPad2d": "pad", "ReplicationPad2d": "pad",
    "ZeroPad2d": "pad", "ConstantPad2d": "pad", "CircularPad2d": "pad",
}


def _torch():
  try:
    import torch
    import torch.fx  # noqa: F401
  except ImportError:
    raise ImportError("converting PyTorch models needs torch: pip install 'jaxplain[torch]' "
                      "(loading a converted checkpoint does not)") from None
  return torch


def _supported_base(m):
  """The torch.nn class in ``SUPPORTED_MODULES`` that ``m`` is, if it keeps that forward."""
  torch = _torch()
  for cls in type(m).__mro__:
    if cls.__module__.startswith("torch.nn") and cls.__name__ in SUPPORTED_MODULES:
      return cls if type(m).forward is cls.forward else None
    if cls is torch.nn.Module:
      return None
  return None


def _pair(v):
  return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


def _conv_params(m, path):
  k, d = _pair(m.kernel_size), _pair(m.dilation)
  if isinstance(m.padding, str):
    if m.padding == "valid":
      pads = ((0, 0), (0, 0))
    else:
      pads = tuple((d[i] * (k[i] - 1) // 2, d[i] * (k[i] - 1) - d[i] * (k[i] - 1) // 2)
                   for i in range(2))
  else:
    pads = tuple((p, p) for p in _pair(m.padding))
  if m.padding_mode not in ("zeros", "reflect", "replicate", "circular"):
    raise ValueError(f"unsupported padding_mode {m.padding_mode!r} of Conv2d at {path!r}")
  return {"stride": _pair(m.stride), "padding": pads, "dilation": d, "groups": m.groups,
          "padding_mode": m.padding_mode}


def _pool_params(k, s, p, d=1):
  return {"kernel": _pair(k), "stride": _pair(s if s not in (None, ()) else k),
          "padding": _pair(p), "dilation": _pair(d)}


def _module_op(m, path, out_shape):
  """``(kind, params, weight names)`` for a leaf module; ValueError if unsupported."""
  base = _supported_base(m)
  if base is None:
    raise ValueError(f"unsupported layer {type(m).__name__} at {path!r}; jaxplain converts "
                     f"{sorted(SUPPORTED_MODULES)}, functional forms of the activations and "
                     "pools, reshapes, +, -, *, /, cat and mean")
  name, kind = base.__name__, SUPPORTED_MODULES[base.__name__]
  present = lambda *names: tuple(n for n in names if getattr(m, n, None) is not None)
  if kind == "conv2d":
    return kind, _conv_params(m, path), present("weight", "bias")
  if kind == "linear":
    return kind, {}, present("weight", "bias")
  if kind == "batch_norm":
    if m.running_mean is None:
      raise ValueError(f"{name} at {path!r} has track_running_stats=False: in eval mode it "
                       "normalises with batch statistics, which jaxplain does not convert")
    return kind, {"eps": float(m.eps)}, present("running_mean", "running_var", "weight", "bias")
  if kind in ("max_pool2d", "avg_pool2d"):
    if getattr(m, "return_indices", False):
      raise ValueError(f"{name} at {path!r}: return_indices=True is not supported")
    if kind == "max_pool2d":
      return kind, _pool_params(m.kernel_size, m.stride, m.padding, m.dilation) | {
          "ceil_mode": bool(m.ceil_mode)}, ()
    return kind, _pool_params(m.kernel_size, m.stride, m.padding) | {
        "ceil_mode": bool(m.ceil_mode), "count_include_pad": bool(m.count_include_pad),
        "divisor_override": m.divisor_override}, ()
  if kind.startswith("adaptive"):
    if getattr(m, "return_indices", False):
      raise ValueError(f"{name} at {path!r}: return_indices=True is not supported")
    return kind, {"output_size": tuple(out_shape[-2:])}, ()
  if kind == "reshape":
    return kind, {"shape": tuple(out_shape[1:])}, ()
  if kind == "pad":
    mode = {"ReflectionPad2d": "reflect", "ReplicationPad2d": "replicate",
            "CircularPad2d": "circular"}.get(name, "constant")
    return kind, {"pads": tuple(m.padding), "mode": mode,
                  "value": float(getattr(m, "value", 0.0))}, ()
  if kind == "prelu":
    return kind, {}, ("weight",)
  params = {"leaky_relu": lambda: {"negative_slope": float(m.negative_slope)},
            "elu": lambda: {"alpha": float(m.alpha)}, "celu": lambda: {"alpha": float(m.alpha)},
            "gelu": lambda: {"approximate": m.approximate},
            "hardtanh": lambda: {"min_val": float(m.min_val), "max_val": float(m.max_val)},
            "softplus": lambda: {"beta": float(m.beta), "threshold": float(m.threshold)},
            "softmax": lambda: {"dim": -3 if name == "Softmax2d" else m.dim},
            "log_softmax": lambda: {"dim": m.dim}}.get(kind, dict)()
  if name == "ReLU6":
    params = {}
  return kind, params, ()


def _bind(args, kwargs, spec):
  """Binds a call's arguments to ``spec`` = ``(("name", default | _REQUIRED), ...)``."""
  out = dict(zip([n for n, _ in spec], args))
  for k, v in kwargs.items():
    out[k] = v
  for n, default in spec:
    if n not in out:
      out[n] = default
  return out


_REQ = object()


def _functional_table():
  """fx call_function targets and call_method names → ``(kind, argument spec)``."""
  torch = _torch()
  F = torch.nn.functional
  x = (("input", _REQ),)
  act = x + (("inplace", False),)
  softmax = x + (("dim", None), ("_stacklevel", 3), ("dtype", None))
  maxpool = x + (("kernel_size", _REQ), ("stride", None), ("padding", 0), ("dilation", 1),
                 ("ceil_mode", False), ("return_indices", False))
  avgpool = x + (("kernel_size", _REQ), ("stride", None), ("padding", 0), ("ceil_mode", False),
                 ("count_include_pad", True), ("divisor_override", None))
  binary = x + (("other", _REQ), ("alpha", 1), ("rounding_mode", None))
  reduce = x + (("dim", None), ("keepdim", False), ("dtype", None))
  shape = x + (("a", None), ("b", None), ("c", None))
  funcs = {}

  def add(kind, spec, *targets):
    for t in targets:
      if t is not None:
        funcs[t] = (kind, spec)
  g = lambda mod, name: getattr(mod, name, None)
  add("relu", act, F.relu, torch.relu, torch.relu_, g(F, "relu_"))
  add("relu6", act, F.relu6)
  add("hardtanh", x + (("min_val", -1.0), ("max_val", 1.0), ("inplace", False)), F.hardtanh)
  add("leaky_relu", x + (("negative_slope", 0.01), ("inplace", False)), F.leaky_relu)
  add("prelu", x + (("weight", _REQ),), F.prelu, torch.prelu)
  add("elu", x + (("alpha", 1.0), ("inplace", False)), F.elu)
  add("celu", x + (("alpha", 1.0), ("inplace", False)), F.celu)
  add("selu", act, F.selu, torch.selu)
  add("gelu", x + (("approximate", "none"),), F.gelu)
  add("silu", act, F.silu)
  add("mish", act, F.mish)
  add("hardswish", act, F.hardswish)
  add("hardsigmoid", act, F.hardsigmoid)
  add("softplus", x + (("beta", 1.0), ("threshold", 20.0)), F.softplus)
  add("sigmoid", x, torch.sigmoid, F.sigmoid)
  add("log_sigmoid", x, F.logsigmoid)
  add("tanh", x, torch.tanh, F.tanh)
  add("softmax", softmax, F.softmax, torch.softmax)
  add("log_softmax", softmax, F.log_softmax, torch.log_softmax)
  add("neg", x, operator.neg, torch.neg)
  add("max_pool2d", maxpool, F.max_pool2d, g(torch, "max_pool2d"))
  add("avg_pool2d", avgpool, F.avg_pool2d, g(torch._C._nn, "avg_pool2d"))
  add("adaptive_avg_pool2d", x + (("output_size", _REQ),), F.adaptive_avg_pool2d)
  add("adaptive_max_pool2d", x + (("output_size", _REQ), ("return_indices", False)),
      F.adaptive_max_pool2d)
  add("identity", x + (("p", 0.5), ("training", False), ("inplace", False)), F.dropout,
      F.dropout1d, F.dropout2d, F.alpha_dropout, torch.dropout)
  add("pad", x + (("pad", _REQ), ("mode", "constant"), ("value", None)), F.pad)
  add("reshape", shape, torch.flatten, torch.reshape, torch.squeeze, torch.unsqueeze)
  for kind, ops in {"add": (operator.add, operator.iadd, torch.add),
                    "sub": (operator.sub, operator.isub, torch.sub),
                    "mul": (operator.mul, operator.imul, torch.mul),
                    "div": (operator.truediv, operator.itruediv, torch.div)}.items():
    add(kind, binary, *ops)
  add("cat", (("tensors", _REQ), ("dim", 0)), torch.cat, g(torch, "concat"),
      g(torch, "concatenate"))
  add("mean", reduce, torch.mean)
  add("sum", reduce, torch.sum)
  add("amax", reduce, torch.amax)
  add("permute", x + (("dims", _REQ),), torch.permute)
  add("transpose", x + (("dim0", _REQ), ("dim1", _REQ)), torch.transpose)
  add("conv2d", x + (("weight", _REQ), ("bias", None), ("stride", 1), ("padding", 0),
                     ("dilation", 1), ("groups", 1)), F.conv2d)
  add("linear", x + (("weight", _REQ), ("bias", None)), F.linear)
  methods = {"relu": ("relu", act), "relu_": ("relu", act), "sigmoid": ("sigmoid", x),
             "sigmoid_": ("sigmoid", x), "tanh": ("tanh", x), "tanh_": ("tanh", x),
             "softmax": ("softmax", softmax), "log_softmax": ("log_softmax", softmax),
             "neg": ("neg", x), "mean": ("mean", reduce), "sum": ("sum", reduce),
             "amax": ("amax", reduce), "contiguous": ("identity", x + (("memory_format", None),)),
             "permute": ("permute", x + (("dims", _REQ),)),
             "transpose": ("transpose", x + (("dim0", _REQ), ("dim1", _REQ)))}
  for name in ("view", "reshape", "flatten", "squeeze", "unsqueeze", "view_as", "reshape_as"):
    methods[name] = ("reshape", shape)
  for kind in ("add", "sub", "mul", "div"):
    methods[kind] = methods[kind + "_"] = (kind, binary)
  return funcs, methods


def _node_path(node) -> str:
  stack = node.meta.get("nn_module_stack") or {}
  path = list(stack)[-1] if stack else ""
  return path or "<top level>"


def _is_tensor(v) -> bool:
  return type(v).__module__.startswith("torch") and hasattr(v, "dtype") and hasattr(v, "shape")


def _trace(module):
  torch = _torch()

  class Tracer(torch.fx.Tracer):
    def is_leaf_module(self, m, qualname):
      if _supported_base(m) is not None:
        return True
      return super().is_leaf_module(m, qualname)

  try:
    graph = Tracer().trace(module)
  except Exception as e:  # fx raises TraceError, TypeError, ... on untraceable Python
    raise ValueError(f"cannot trace {type(module).__name__} with torch.fx ({type(e).__name__}: "
                     f"{e}); jaxplain converts modules whose forward has no data-dependent "
                     "Python control flow") from None
  return torch.fx.GraphModule(module, graph)


def _run(gm, x):
  torch = _torch()
  values = {}

  class Recorder(torch.fx.Interpreter):
    def run_node(self, n):
      v = super().run_node(n)
      values[n.name] = v.clone() if _is_tensor(v) else v
      return v

  with torch.no_grad():
    Recorder(gm).run(x)
  return values


def _to_torch(array, dtype, device):
  """A torch tensor with standard (row-major) strides, as a DataLoader would give.

  ``torch.as_tensor`` keeps NumPy's strides, and a transposed (N, 1, H, W) array looks
  channels-last to PyTorch, whose convs then return channels-last tensors that ``view`` rejects.
  """
  torch = _torch()
  return torch.empty(array.shape, dtype=dtype, device=device).copy_(
      torch.from_numpy(np.asarray(array)))


def _norm(v, name: str, channels: int) -> tuple[float, ...]:
  arr = np.asarray(v, np.float64).reshape(-1)
  if arr.size not in (1, channels):
    raise ValueError(f"`{name}` must be a scalar or {channels} per-channel values, got "
                     f"{arr.size} values")
  if name == "std" and (arr <= 0).any():
    raise ValueError(f"`std` must be positive, got {arr.tolist()}")
  return tuple(float(a) for a in arr)


def from_torch(module, *, input_shape: Sequence[int] = (1, 48, 48), mean=0.0, std=1.0,
               output_activation: str = "keep", class_names: Sequence[str] | None = None,
               check: bool = True) -> models.Classifier:
  """Converts a PyTorch CNN into a jaxplain :class:`~jaxplain.models.Classifier`.

  The module is traced with ``torch.fx`` in eval mode (its mode is restored afterwards) and run
  on example inputs to fix every shape; each node maps to a JAX op computing in NCHW.

  Args:
    module: a ``torch.nn.Module`` taking ``(N, C, H, W)``; its parameters' dtype is kept.
    input_shape: ``(C, H, W)`` the module takes.
    mean, std: scalars or per-channel sequences; the classifier applies ``(x - mean) / std`` to
      its [0, 1] input, as the PyTorch pipeline's ``Normalize`` did.
    output_activation: ``"keep"`` PyTorch's outputs, or ``"strip"`` a final Sigmoid, Softmax or
      LogSoftmax (module or functional) so explanations see logits.
    class_names: the K class names (default: FER2013's seven when K = 7, else ``"0"``...).
    check: compare with PyTorch on random example inputs and raise if they differ.

  Returns:
    a classifier taking ``(N, H, W, C)`` float in [0, 1], returning ``(N, K)``; its
    ``layer_names`` are PyTorch module paths of the leaf modules, in execution order.

  Raises:
    ValueError: an op or layer jaxplain does not convert (named with its module path), a
      module torch.fx cannot trace, or outputs that are not ``(N, K)``.
  """
  torch = _torch()
  if output_activation not in ("keep", "strip"):
    raise ValueError(f"`output_activation` must be 'keep' or 'strip', got {output_activation!r}")
  if len(tuple(input_shape)) != 3:
    raise ValueError(f"`input_shape` must be (C, H, W), got {tuple(input_shape)}")
  c, h, w = (int(s) for s in input_shape)
  mean_t, std_t = _norm(mean, "mean", c), _norm(std, "std", c)
  tensors = list(module.parameters()) + list(module.buffers())
  floats = [t for t in tensors if t.is_floating_point()]
  tdtype = floats[0].dtype if floats else torch.float32
  device = tensors[0].device if tensors else "cpu"
  was_training = module.training
  module.eval()
  try:
    gm = _trace(module)
    rng = np.random.default_rng(0)
    images = {n: rng.uniform(size=(n, h, w, c)) for n in (2, 3)}
    mean_a, std_a = np.asarray(mean_t), np.asarray(std_t)
    example = {n: _to_torch(((im - mean_a) / std_a).transpose(0, 3, 1, 2), tdtype, device)
               for n, im in images.items()}
    try:
      runs = {n: _run(gm, example[n]) for n in (2, 3)}
    except Exception as e:  # the module's own error, e.g. a Linear that wants another size
      raise ValueError(f"{type(module).__name__} fails on inputs of `input_shape` {(c, h, w)} "
                       f"(N, C, H, W): {type(e).__name__}: {str(e).splitlines()[0]}") from None
    graph, flat, out_name = _convert_graph(gm, runs, (c, h, w), mean_t, std_t)
  finally:
    module.train(was_training)
  variables = jax.tree.map(jnp.asarray, _nest(flat))
  reference = runs[2][out_name]
  if check:
    got = np.asarray(jax.jit(graph)(variables, jnp.asarray(images[2], jnp.asarray(
        jax.tree.leaves(variables)[0] if flat else np.float32(0)).dtype)), np.float64)
    want = reference.detach().cpu().double().numpy().reshape(got.shape)
    tol = (1e-8 if got.dtype == np.float64 and tdtype == torch.float64 else 1e-3)
    err = float(np.max(np.abs(got - want))) if got.size else 0.0
    if not err <= tol * (1 + float(np.max(np.abs(want)))):
      raise ValueError(f"converted {type(module).__name__} differs from PyTorch by {err:.3g} on "
                       "example inputs; the module probably mutates a tensor in place that it "
                       "uses again, or relies on an op jaxplain maps differently")
  stripped = None
  if output_activation == "strip":
    last = next(o for o in graph.ops if o.name == graph.output)
    if last.kind in _FINAL_ACTIVATIONS:
      stripped = {"kind": last.kind, "params": {k_: _jsonable(v) for k_, v in last.params}}
      ops = tuple(o for o in graph.ops if o.name != last.name)
      graph = dataclasses.replace(graph, ops=ops, output=last.inputs[0], layer_names=tuple(
          n for n in graph.layer_names if n != last.layer))
  k = int(np.prod(reference.shape[1:]))
  names = tuple(class_names) if class_names is not None else (
      CLASS_NAMES if k == len(CLASS_NAMES) else tuple(str(i) for i in range(k)))
  if len(names) != k:
    raise ValueError(f"`class_names` has {len(names)} names, the model has {k} outputs")
  config = graph.config() | {
      "variables": {p: [list(a.shape), str(a.dtype)] for p, a in flat.items()},
      "stripped": stripped}
  meta = {"kind": KIND, "config": config,
          "source": f"{type(module).__module__}.{type(module).__qualname__}"}
  return models.Classifier(apply_fn=graph, variables=variables, class_names=names,
                           input_shape=(h, w, c), layer_names=graph.layer_names, metadata=meta)


def _convert_graph(gm, runs, input_shape, mean, std):
  """torch.fx graph + recorded values (batch 2 and 3) → ``(TorchGraph, flat weights, out)``."""
  funcs, methods = _functional_table()
  a, b = runs[2], runs[3]
  modules = dict(gm.named_modules())
  ops, flat, names, calls = [], {}, [], {}
  emitted = set()
  output = None
  for node in gm.graph.nodes:
    path = _node_path(node)
    if node.op == "placeholder":
      if emitted:
        raise ValueError(f"the module's forward takes more than one input ({node.name!r}); "
                         "jaxplain converts single-input classifiers")
      ops.append(Op(node.name, "input"))
      emitted.add(node.name)
      continue
    if node.op == "output":
      out = node.args[0]
      if not hasattr(out, "name") or out.name not in emitted:
        raise ValueError("the module must return one tensor (N, K), got "
                         f"{type(a.get(getattr(out, 'name', ''), out)).__name__}")
      output = out.name
      continue
    value = a[node.name]
    if node.op == "get_attr":
      if _is_tensor(value):
        flat[node.target] = value.detach().cpu().numpy()
        ops.append(Op(node.name, "param", weights=node.target))
        emitted.add(node.name)
      continue

    def refs(args):
      return [x.name for x in args if hasattr(x, "name") and x.name in emitted]

    def static(v, what):
      """Concrete value of an argument; refuses one that changes with the batch size."""
      if hasattr(v, "name") and hasattr(v, "op"):
        if v.name in emitted:
          raise ValueError(f"{what} of {node.name!r} at {path!r} must be a constant, got a tensor")
        if not _same(a[v.name], b[v.name]):
          raise ValueError(f"{what} of {node.name!r} at {path!r} depends on the batch size")
        return a[v.name]
      if isinstance(v, (list, tuple)):
        return type(v)(static(x, what) for x in v)
      return v

    if node.op == "call_module":
      m = modules[node.target]
      kind, params, wnames = _module_op(m, node.target, tuple(value.shape))
      if kind == "reshape":
        _check_batch(node, path, value, b[node.name])
      for wn in wnames:
        flat[f"{node.target}.{wn}"] = getattr(m, wn).detach().cpu().numpy()
      calls[node.target] = calls.get(node.target, 0) + 1
      layer = node.target + (f"#{calls[node.target]}" if calls[node.target] > 1 else "")
      names.append(layer)
      ops.append(Op(node.name, kind, tuple(refs(node.args[:1])), _freeze(params),
                    node.target if wnames else None, layer))
      emitted.add(node.name)
      continue
    if not _is_tensor(value):
      continue  # sizes, shapes, Python arithmetic: folded into the ops that use them
    target = node.target
    entry = funcs.get(target) if node.op == "call_function" else methods.get(target)
    what = getattr(target, "__name__", str(target))
    if entry is None:
      kinds = sorted({k for k, _ in funcs.values()})
      raise ValueError(f"unsupported op {what!r} ({node.op}) at {path!r} (fx node "
                       f"{node.name!r}); jaxplain converts {kinds}")
    kind, spec = entry
    if kind == "permute" and node.op == "call_method":
      dims = node.args[1:] if not isinstance(node.args[1], (list, tuple)) else node.args[1]
      args = _bind((node.args[0], tuple(dims)), node.kwargs, spec)
    else:
      args = _bind(node.args, node.kwargs, spec)
    missing = [n for n, v in args.items() if v is _REQ]
    if missing:
      raise ValueError(f"op {what!r} at {path!r}: cannot read arguments {missing}")
    inputs, params = _functional_op(kind, args, node, path, value, b[node.name], refs, static)
    ops.append(Op(node.name, "permute" if kind == "transpose" else kind, tuple(inputs),
                  _freeze(params), None, None))
    emitted.add(node.name)
  if output is None:
    raise ValueError("the traced module has no output")
  out_shape = tuple(a[output].shape)
  if out_shape[:1] != (2,) or tuple(b[output].shape)[:1] != (3,):
    raise ValueError(f"the module's output has shape {out_shape} for a batch of 2; the first "
                     "axis must be the batch")
  squeeze = 0
  while len(out_shape) - squeeze > 2 and out_shape[len(out_shape) - squeeze - 1] == 1:
    squeeze += 1
  if len(out_shape) - squeeze != 2:
    raise ValueError(f"the module returns shape {out_shape}; a classifier must return (N, K) "
                     "(trailing singleton axes are dropped)")
  graph = TorchGraph(ops=tuple(ops), output=output, input_shape=input_shape, mean=mean, std=std,
                     squeeze=squeeze, layer_names=tuple(names))
  return graph, flat, output


def _same(u, v) -> bool:
  try:
    return bool(u == v)
  except Exception:
    return False


def _check_batch(node, path, va, vb):
  if va.shape[:1] != (2,) or vb.shape[:1] != (3,) or va.shape[1:] != vb.shape[1:]:
    raise ValueError(f"reshape {node.name!r} at {path!r} changes the batch axis (shape "
                     f"{tuple(va.shape)} for a batch of 2); jaxplain keeps axis 0 as the batch")


def _functional_op(kind, args, node, path, value, value_b, refs, static):
  """``(input names, params)`` of a call_function / call_method node."""
  x = args.get("input")
  if kind == "reshape":
    _check_batch(node, path, value, value_b)
    return refs([x]), {"shape": tuple(value.shape[1:])}
  if kind == "cat":
    tensors = list(args["tensors"])
    if len(refs(tensors)) != len(tensors):
      raise ValueError(f"cat {node.name!r} at {path!r}: every operand must be a traced tensor")
    return refs(tensors), {"dim": static(args["dim"], "dim")}
  if kind in ("add", "sub", "mul", "div"):
    if static(args["alpha"], "alpha") != 1 or args["rounding_mode"] is not None:
      raise ValueError(f"{kind} {node.name!r} at {path!r}: alpha/rounding_mode are not supported")
    ins = refs([x, args["other"]])
    if len(ins) == 2:
      return ins, {}
    if refs([x]):
      return ins, {"other": float(static(args["other"], "operand"))}
    return ins, {"other": float(static(x, "operand")), "reverse": True}
  if kind in ("mean", "sum", "amax"):
    dims = static(args["dim"], "dim")
    dims = None if dims is None else tuple(dims) if isinstance(dims, (list, tuple)) else (dims,)
    return refs([x]), {"dims": dims, "keepdim": bool(static(args["keepdim"], "keepdim"))}
  if kind == "permute":
    return refs([x]), {"dims": tuple(static(args["dims"], "dims"))}
  if kind == "transpose":
    dims = list(range(value.ndim))
    i, j = (int(static(args[k], k)) % value.ndim for k in ("dim0", "dim1"))
    dims[i], dims[j] = dims[j], dims[i]
    return refs([x]), {"dims": tuple(dims)}
  if kind in ("max_pool2d", "avg_pool2d"):
    s = {k: static(v, k) for k, v in args.items() if k != "input"}
    if s.get("return_indices"):
      raise ValueError(f"max_pool2d {node.name!r} at {path!r}: return_indices is not supported")
    if kind == "max_pool2d":
      return refs([x]), _pool_params(s["kernel_size"], s["stride"], s["padding"],
                                     s["dilation"]) | {"ceil_mode": bool(s["ceil_mode"])}
    return refs([x]), _pool_params(s["kernel_size"], s["stride"], s["padding"]) | {
        "ceil_mode": bool(s["ceil_mode"]), "count_include_pad": bool(s["count_include_pad"]),
        "divisor_override": s["divisor_override"]}
  if kind.startswith("adaptive"):
    if static(args.get("return_indices", False), "return_indices"):
      raise ValueError(f"{kind} {node.name!r} at {path!r}: return_indices is not supported")
    return refs([x]), {"output_size": tuple(value.shape[-2:])}
  if kind == "pad":
    value_ = static(args["value"], "value")
    return refs([x]), {"pads": tuple(static(args["pad"], "pad")),
                       "mode": static(args["mode"], "mode"),
                       "value": 0.0 if value_ is None else float(value_)}
  if kind in ("softmax", "log_softmax"):
    return refs([x]), {"dim": static(args["dim"], "dim")}
  if kind == "conv2d":
    ins = refs([x, args["weight"], args["bias"]])
    pad = static(args["padding"], "padding")
    stride, dil = _pair(static(args["stride"], "stride")), _pair(static(args["dilation"], "d"))
    if isinstance(pad, str):
      raise ValueError(f"conv2d {node.name!r} at {path!r}: string padding is supported on "
                       "nn.Conv2d, not F.conv2d")
    return ins, {"stride": stride, "padding": tuple((p, p) for p in _pair(pad)),
                 "dilation": dil, "groups": int(static(args["groups"], "groups")),
                 "padding_mode": "zeros"}
  if kind in ("linear", "prelu"):
    return refs([x, args["weight"], args.get("bias")]), {}
  keep = {"leaky_relu": ("negative_slope",), "elu": ("alpha",), "celu": ("alpha",),
          "gelu": ("approximate",), "hardtanh": ("min_val", "max_val"),
          "softplus": ("beta", "threshold")}.get(kind, ())
  params = {k: static(args[k], k) for k in keep}
  params = {k: (float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v)
            for k, v in params.items()}
  return refs([x]), params


# ----------------------------------------------------------------------------------------------
# Loading PyTorch code and weights
# ----------------------------------------------------------------------------------------------


def import_class(spec: str):
  """The class named by ``"pkg.module:ClassName"`` or ``"path/to/file.py:ClassName"``.

  A file is loaded by path (its package's ``__init__`` is not run).
  """
  if ":" not in spec:
    raise ValueError(f"`model` must be 'pkg.module:ClassName' or 'file.py:ClassName', got "
                     f"{spec!r}")
  where, name = spec.rsplit(":", 1)
  if where.endswith(".py") or pathlib.Path(where).is_file():
    path = pathlib.Path(where).expanduser().resolve()
    if not path.is_file():
      raise ValueError(f"`model`: no such file {path}")
    mod_name = f"_jaxplain_user_{path.stem}_{abs(hash(str(path)))}"
    spec_ = importlib.util.spec_from_file_location(mod_name, path)
    mod = importlib.util.module_from_spec(spec_)
    sys.modules[mod_name] = mod
    spec_.loader.exec_module(mod)
  else:
    try:
      mod = importlib.import_module(where)
    except ImportError as e:
      raise ValueError(f"`model`: cannot import {where!r} ({e})") from None
  if not hasattr(mod, name):
    raise ValueError(f"`model`: {where!r} has no {name!r}; it defines "
                     f"{sorted(n for n in vars(mod) if not n.startswith('_'))}")
  return getattr(mod, name)


def load_torch_weights(module, path, *, key: str | None = None, trusted: bool = False):
  """Loads a state dict from ``path`` into ``module`` (in place) and returns the module.

  Args:
    module: the ``torch.nn.Module`` to fill.
    path: a file written by ``torch.save``: a state dict, a dict holding one under ``key``, or
      (``trusted`` only) a pickled module.
    key: the entry of a checkpoint dict that holds the state dict (e.g. ``"network"``).
    trusted: allow pickled Python objects (``torch.load(weights_only=False)``), which can run
      arbitrary code: only for files you trust.

  Raises:
    ValueError: the file holds pickled code and ``trusted`` is False; ``key`` is absent; or the
      state dict does not fit (missing, unexpected and wrong-shape keys are listed).
  """
  torch = _torch()
  import pickle
  try:
    obj = torch.load(path, map_location="cpu", weights_only=not trusted)
  except pickle.UnpicklingError as e:
    raise ValueError(f"{path} holds pickled Python objects, which torch.load(weights_only=True) "
                     f"refuses ({str(e).splitlines()[0][:200]}); if you trust the file, pass "
                     "trusted=True (CLI: --trusted) to run its pickle") from None
  except (FileNotFoundError, IsADirectoryError):
    raise ValueError(f"`weights`: no such file {path}") from None
  if key is not None:
    if not isinstance(obj, dict) or key not in obj:
      keys = sorted(obj) if isinstance(obj, dict) else type(obj).__name__
      raise ValueError(f"{path} has no entry {key!r}; it holds {keys}")
    obj = obj[key]
  if isinstance(obj, torch.nn.Module):
    obj = obj.state_dict()
  if not isinstance(obj, dict):
    raise ValueError(f"{path} holds a {type(obj).__name__}, not a state dict")
  if key is None and not any(_is_tensor(v) for v in obj.values()):
    raise ValueError(f"{path} holds a dict without tensors (keys {sorted(obj)[:10]}); name the "
                     "entry with the state dict with key=... (CLI: --key)")
  obj = {k.removeprefix("module."): v for k, v in obj.items()}  # saved from DataParallel
  want = module.state_dict()
  missing = sorted(want.keys() - obj.keys())
  unexpected = sorted(obj.keys() - want.keys())
  shapes = [f"{k}: file {tuple(obj[k].shape)} != module {tuple(want[k].shape)}"
            for k in sorted(want.keys() & obj.keys())
            if _is_tensor(obj[k]) and tuple(obj[k].shape) != tuple(want[k].shape)]
  if missing or unexpected or shapes:
    raise ValueError(f"the weights in {path} do not fit {type(module).__name__}: missing keys "
                     f"{missing}, unexpected keys {unexpected}, wrong shapes {shapes}")
  module.load_state_dict(obj)
  return module


def torch_difference(module, clf: models.Classifier, images) -> dict[str, Any]:
  """Compares a converted classifier with its PyTorch module on ``images``.

  Args:
    module: the PyTorch module ``clf`` was converted from (run in eval mode).
    clf: the converted classifier.
    images: float ``(N, H, W, C)`` in [0, 1].

  Returns:
    ``{"max_abs_diff", "argmax_agree", "n"}``; outputs are compared after the activation that
    ``output_activation="strip"`` removed, so both sides are PyTorch's outputs.
  """
  torch = _torch()
  config = clf.metadata["config"]
  images = np.asarray(images)
  mean = np.asarray(config["mean"]).reshape(1, 1, 1, -1)
  std = np.asarray(config["std"]).reshape(1, 1, 1, -1)
  ref = next(iter(module.parameters()))
  was_training = module.training
  module.eval()
  try:
    with torch.no_grad():
      want = module(_to_torch(((images - mean) / std).transpose(0, 3, 1, 2), ref.dtype,
                              ref.device))
  finally:
    module.train(was_training)
  want = want.detach().cpu().double().numpy().reshape(len(images), -1)
  got = clf.forward(jnp.asarray(images, jax.tree.leaves(clf.variables)[0].dtype))
  if config.get("stripped"):
    s = config["stripped"]
    got = _OPS[s["kind"]]([got], dict(s["params"]), None, False)
  got = np.asarray(got, np.float64).reshape(len(images), -1)
  return {"max_abs_diff": float(np.max(np.abs(got - want))),
          "argmax_agree": int((got.argmax(1) == want.argmax(1)).sum()), "n": len(images)}
