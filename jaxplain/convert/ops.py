"""PyTorch ops → :mod:`jaxplain.graph` ops: the leaf-module table and the functional table.

Two tables drive the conversion:

* :data:`SUPPORTED_MODULES`: ``torch.nn`` layers kept whole (they become taps, ``layer_names``),
  mapped by :func:`module_op` to an op kind, its parameters and the weights it reads.
* :func:`functional_table`: ``torch``/``torch.nn.functional`` functions, ``Tensor`` methods and
  Python operators, each with its argument spec and a converter that turns one fx node into
  ``(kind, input names, params)``.

Shapes are read from what the traced module really produced (on batches of 2 and 3), so
``view(x.size(0), -1)``, ``expand(n, -1, -1)``, ``chunk`` and ``split`` need no symbolic shape
arithmetic; a size that scales with the batch becomes ``("N", k)``.
"""

from __future__ import annotations

import operator

from jaxplain.convert._common import torch_module

REQUIRED = object()


# torch.nn layer class name → op kind. A subclass that keeps the layer's forward is converted as
# that layer; one that overrides forward is traced through.
SUPPORTED_MODULES = {
    "Conv1d": "conv", "Conv2d": "conv", "Conv3d": "conv", "ConvTranspose1d": "conv_transpose",
    "ConvTranspose2d": "conv_transpose", "ConvTranspose3d": "conv_transpose", "Linear": "linear",
    "BatchNorm1d": "batch_norm", "BatchNorm2d": "batch_norm", "BatchNorm3d": "batch_norm",
    "LayerNorm": "layer_norm", "GroupNorm": "group_norm", "InstanceNorm1d": "instance_norm",
    "InstanceNorm2d": "instance_norm", "InstanceNorm3d": "instance_norm",
    "LocalResponseNorm": "local_response_norm",
    "ReLU": "relu", "ReLU6": "relu6", "Hardtanh": "hardtanh",
    "LeakyReLU": "leaky_relu", "PReLU": "prelu", "ELU": "elu", "CELU": "celu", "SELU": "selu",
    "GELU": "gelu", "SiLU": "silu", "Mish": "mish", "Hardswish": "hardswish",
    "Hardsigmoid": "hardsigmoid", "Softplus": "softplus", "Sigmoid": "sigmoid",
    "LogSigmoid": "log_sigmoid", "Tanh": "tanh", "Softmax": "softmax", "Softmax2d": "softmax",
    "LogSoftmax": "log_softmax", "Softmin": "softmin", "MaxPool2d": "max_pool2d",
    "AvgPool2d": "avg_pool2d", "AdaptiveAvgPool1d": "adaptive_avg_pool2d",
    "AdaptiveAvgPool2d": "adaptive_avg_pool2d", "AdaptiveMaxPool2d": "adaptive_max_pool2d",
    "Dropout": "identity", "Dropout1d": "identity", "Dropout2d": "identity",
    "Dropout3d": "identity", "AlphaDropout": "identity", "FeatureAlphaDropout": "identity",
    "Identity": "identity", "Flatten": "view", "Unflatten": "view",
    "ReflectionPad1d": "pad", "ReflectionPad2d": "pad", "ReplicationPad1d": "pad",
    "ReplicationPad2d": "pad", "ZeroPad1d": "pad", "ZeroPad2d": "pad", "ConstantPad1d": "pad",
    "ConstantPad2d": "pad", "CircularPad1d": "pad", "CircularPad2d": "pad",
    "Upsample": "interpolate", "UpsamplingNearest2d": "interpolate",
    "UpsamplingBilinear2d": "interpolate", "ChannelShuffle": "channel_shuffle",
    "MultiheadAttention": "multi_head_attention",
}


def supported_base(m):
  """The torch.nn class in ``SUPPORTED_MODULES`` that ``m`` is, if it keeps that forward."""
  torch = torch_module()
  for cls in type(m).__mro__:
    if cls.__module__.startswith("torch.nn") and cls.__name__ in SUPPORTED_MODULES:
      return cls if type(m).forward is cls.forward else None
    if cls is torch.nn.Module:
      return None
  return None


def _tuple(v, n):
  return tuple(v) if isinstance(v, (tuple, list)) else (v,) * n


def _pair(v):
  return _tuple(v, 2)


def _conv_padding(padding, k, d, path):
  nd = len(k)
  if isinstance(padding, str):
    if padding == "valid":
      return tuple((0, 0) for _ in range(nd))
    if padding != "same":
      raise ValueError(f"unsupported padding {padding!r} of the conv at {path!r}")
    return tuple((d[i] * (k[i] - 1) // 2, d[i] * (k[i] - 1) - d[i] * (k[i] - 1) // 2)
                 for i in range(nd))
  return tuple((p, p) for p in _tuple(padding, nd))


def _conv_params(m, path):
  nd = m.weight.ndim - 2
  k, d = _tuple(m.kernel_size, nd), _tuple(m.dilation, nd)
  if m.padding_mode not in ("zeros", "reflect", "replicate", "circular"):
    raise ValueError(f"unsupported padding_mode {m.padding_mode!r} of the conv at {path!r}")
  return {"stride": _tuple(m.stride, nd), "padding": _conv_padding(m.padding, k, d, path),
          "dilation": d, "groups": m.groups, "padding_mode": m.padding_mode}


def pool_params(k, s, p, d=1, n=2):
  empty = s is None or (isinstance(s, (list, tuple)) and len(s) == 0)  # ATen's default: []
  return {"kernel": _tuple(k, n), "stride": _tuple(k if empty else s, n),
          "padding": _tuple(p, n), "dilation": _tuple(d, n)}


def _transpose_padding(in_shape, out_shape, stride, padding, dilation, kernel):
  """``output_padding`` from the recorded shapes (covers ``output_size=`` calls too)."""
  nd = len(kernel)
  return tuple(out_shape[2 + i] - ((in_shape[2 + i] - 1) * stride[i] - 2 * padding[i]
                                   + dilation[i] * (kernel[i] - 1) + 1) for i in range(nd))


def module_op(m, path, in_shape, out_shape):
  """``(kind, params, weight names)`` for a leaf module; ValueError if unsupported."""
  base = supported_base(m)
  if base is None:
    raise ValueError(f"unsupported layer {type(m).__name__} at {path!r}; jaxplain converts "
                     f"{sorted(SUPPORTED_MODULES)}, and the functional ops listed in "
                     "jaxplain.convert.SUPPORTED_FUNCTIONS")
  name, kind = base.__name__, SUPPORTED_MODULES[base.__name__]
  present = lambda *names: tuple(n for n in names if getattr(m, n, None) is not None)
  if kind == "conv":
    return kind, _conv_params(m, path), present("weight", "bias")
  if kind == "conv_transpose":
    nd = m.weight.ndim - 2
    if m.padding_mode != "zeros":
      raise ValueError(f"{name} at {path!r}: padding_mode {m.padding_mode!r} is not supported")
    s, p, d = _tuple(m.stride, nd), _tuple(m.padding, nd), _tuple(m.dilation, nd)
    k = _tuple(m.kernel_size, nd)
    return kind, {"stride": s, "padding": p, "dilation": d, "groups": m.groups,
                  "output_padding": _transpose_padding(in_shape, out_shape, s, p, d, k)
                  }, present("weight", "bias")
  if kind == "linear":
    return kind, {}, present("weight", "bias")
  if kind == "batch_norm":
    if m.running_mean is None:
      raise ValueError(f"{name} at {path!r} has track_running_stats=False: in eval mode it "
                       "normalises with batch statistics, which jaxplain does not convert")
    return kind, {"eps": float(m.eps)}, present("running_mean", "running_var", "weight", "bias")
  if kind == "layer_norm":
    return kind, {"dims": len(m.normalized_shape), "eps": float(m.eps)}, present("weight", "bias")
  if kind == "group_norm":
    return kind, {"groups": int(m.num_groups), "eps": float(m.eps)}, present("weight", "bias")
  if kind == "instance_norm":
    running = m.track_running_stats and m.running_mean is not None
    names = present("running_mean", "running_var", "weight", "bias") if running else \
        present("weight", "bias")
    return kind, {"eps": float(m.eps), "running": bool(running)}, names
  if kind == "local_response_norm":
    return kind, {"size": int(m.size), "alpha": float(m.alpha), "beta": float(m.beta),
                  "k": float(m.k)}, ()
  if kind in ("max_pool2d", "avg_pool2d"):
    if getattr(m, "return_indices", False):
      raise ValueError(f"{name} at {path!r}: return_indices=True is not supported")
    if kind == "max_pool2d":
      return kind, pool_params(m.kernel_size, m.stride, m.padding, m.dilation) | {
          "ceil_mode": bool(m.ceil_mode)}, ()
    return kind, pool_params(m.kernel_size, m.stride, m.padding) | {
        "ceil_mode": bool(m.ceil_mode), "count_include_pad": bool(m.count_include_pad),
        "divisor_override": m.divisor_override}, ()
  if kind.startswith("adaptive"):
    if getattr(m, "return_indices", False):
      raise ValueError(f"{name} at {path!r}: return_indices=True is not supported")
    n = 1 if name.endswith("1d") else 2
    return kind, {"output_size": tuple(out_shape[-n:])}, ()
  if kind == "pad":
    mode = ("reflect" if "Reflection" in name else "replicate" if "Replication" in name else
            "circular" if "Circular" in name else "constant")
    return kind, {"pads": tuple(m.padding), "mode": mode,
                  "value": float(getattr(m, "value", 0.0))}, ()
  if kind == "prelu":
    return kind, {}, ("weight",)
  if kind == "interpolate":
    mode = {"UpsamplingNearest2d": "nearest", "UpsamplingBilinear2d": "bilinear"}.get(name,
                                                                                      m.mode)
    align = True if name == "UpsamplingBilinear2d" else bool(m.align_corners)
    return kind, interpolate_params(m.size, m.scale_factor, mode, align,
                                    getattr(m, "recompute_scale_factor", None), out_shape,
                                    path), ()
  if kind == "channel_shuffle":
    return kind, {"groups": int(m.groups)}, ()
  if kind == "multi_head_attention":
    if m.dropout and m.training:
      raise ValueError(f"{name} at {path!r}: attention dropout in training mode")
    names = present("in_proj_weight", "in_proj_bias", "q_proj_weight", "k_proj_weight",
                    "v_proj_weight")
    if m.bias_k is not None or m.add_zero_attn:
      raise ValueError(f"{name} at {path!r}: add_bias_kv / add_zero_attn are not supported")
    return kind, {"num_heads": int(m.num_heads), "batch_first": bool(m.batch_first),
                  "need_weights": True}, names + ("out_proj.weight",) + (
                      ("out_proj.bias",) if m.out_proj.bias is not None else ())
  params = {"leaky_relu": lambda: {"negative_slope": float(m.negative_slope)},
            "elu": lambda: {"alpha": float(m.alpha)}, "celu": lambda: {"alpha": float(m.alpha)},
            "gelu": lambda: {"approximate": m.approximate},
            "hardtanh": lambda: {"min_val": float(m.min_val), "max_val": float(m.max_val)},
            "softplus": lambda: {"beta": float(m.beta), "threshold": float(m.threshold)},
            "softmax": lambda: {"dim": -3 if name == "Softmax2d" else m.dim},
            "softmin": lambda: {"dim": m.dim},
            "log_softmax": lambda: {"dim": m.dim}}.get(kind, dict)()
  if name == "ReLU6":
    params = {}
  return kind, params, ()


def interpolate_params(size, scale_factor, mode, align_corners, recompute, out_shape, path):
  del size
  n = len(out_shape) - 2
  if mode not in ("nearest", "nearest-exact", "linear", "bilinear", "bicubic", "trilinear"):
    raise ValueError(f"interpolate at {path!r}: mode {mode!r} is not supported")
  scales = None
  if scale_factor is not None and not recompute:
    scales = tuple(float(s) for s in _tuple(scale_factor, n))
  return {"mode": mode, "align_corners": bool(align_corners) if mode not in (
      "nearest", "nearest-exact") else False, "size": tuple(out_shape[2:]), "scales": scales}


def bind(args, kwargs, spec):
  """Binds a call's arguments to ``spec`` = ``(("name", default | REQUIRED), ...)``."""
  names = [n for n, _ in spec]
  if spec and spec[-1][0].startswith("*"):
    k = len(spec) - 1
    out = dict(zip(names[:k], args[:k]))
    out[names[-1]] = tuple(args[k:])
  else:
    out = dict(zip(names, args))
  for k, v in kwargs.items():
    out[k] = v
  for n, default in spec:
    if n not in out:
      out[n] = default
  return out


# --- converters: (args, c) -> (kind, inputs, params) -------------------------------------------


def _keep(kind, *names, floats=True):
  def conv(args, c):
    params = {k: c.static(args[k], k) for k in names}
    if floats:
      params = {k: (float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v)
                for k, v in params.items()}
    return kind, c.refs([args["input"]]), params
  return conv


def _identity(args, c):
  return "identity", c.refs([args["input"]]), {}


def _dropout(args, c):
  if c.static(args.get("training", False), "training"):
    raise ValueError(f"dropout {c.node.name!r} at {c.path!r} runs in training mode "
                     "(training=True): jaxplain converts eval-mode networks")
  return _identity(args, c)


def _stochastic_depth(args, c):
  if c.static(args["training"], "training") and c.static(args["p"], "p") > 0:
    raise ValueError(f"stochastic_depth at {c.path!r} runs in training mode")
  return _identity(args, c)


def _cast(args, c):
  src = c.input_value(args["input"])
  if src is not None and src.dtype == c.value.dtype:
    return "identity", c.refs([args["input"]]), {}
  return "cast", c.refs([args["input"]]), {"dtype": str(c.value.dtype).removeprefix("torch.")}


def _view(args, c):
  return "view", c.refs([args["input"]]), {"shape": c.shape_spec()}


def _expand(args, c):
  return "expand", c.refs([args["input"]]), {"shape": c.shape_spec()}


def _repeat(args, c):
  reps = args["*sizes"]
  if len(reps) == 1 and isinstance(reps[0], (list, tuple)):
    reps = reps[0]
  reps = c.static(tuple(reps), "repeats")
  if reps and reps[0] != 1 and len(reps) == c.value.ndim:
    raise ValueError(f"repeat {c.node.name!r} at {c.path!r} repeats the batch axis")
  return "repeat", c.refs([args["input"]]), {"repeats": tuple(reps)}


def _permute(args, c):
  dims = args.get("dims")
  if not isinstance(dims, (list, tuple)):
    dims = (dims,) + tuple(args["*dims"])
  dims = tuple(int(d) % c.value.ndim for d in c.static(tuple(dims), "dims"))
  return "permute", c.refs([args["input"]]), {"dims": dims}


def _transpose(args, c):
  dims = list(range(c.value.ndim))
  i, j = (int(c.static(args[k], k)) % c.value.ndim for k in ("dim0", "dim1"))
  dims[i], dims[j] = dims[j], dims[i]
  return "permute", c.refs([args["input"]]), {"dims": tuple(dims)}


def _t(args, c):
  dims = tuple(range(c.value.ndim))[::-1]
  return "permute", c.refs([args["input"]]), {"dims": dims}


def _cat(args, c):
  tensors = list(args["tensors"])
  ins = c.refs(tensors)
  if len(ins) != len(tensors):
    raise ValueError(f"{c.node.name!r} at {c.path!r}: every operand of cat/stack must be a "
                     "tensor")
  kind = "stack" if c.target_name in ("stack",) else "cat"
  return kind, ins, {"dim": int(c.static(args["dim"], "dim"))}


def _binary(kind):
  def conv(args, c):
    x, other = args["input"], args["other"]
    alpha = c.static(args.get("alpha", 1), "alpha")
    mode = c.static(args.get("rounding_mode"), "rounding_mode")
    k = kind
    if k == "div" and mode is not None:
      k = {"floor": "floordiv", "trunc": "truncdiv"}[mode]
    if k == "rsub":
      x, other, k = other, x, "sub"
      if alpha != 1:
        raise ValueError(f"rsub {c.node.name!r} at {c.path!r}: alpha is not supported")
    rx, ro = c.ref(x), c.ref(other)
    params = {} if alpha == 1 else {"alpha": float(alpha)}
    if rx is not None and ro is not None:
      return k, [rx, ro], params
    if rx is not None:
      return k, [rx], params | {"other": _scalar(c.static(other, "operand"))}
    if ro is None:
      raise ValueError(f"{kind} {c.node.name!r} at {c.path!r}: no tensor operand")
    return k, [ro], params | {"other": _scalar(c.static(x, "operand")), "reverse": True}
  return conv


def _scalar(v):
  if isinstance(v, bool):
    return v
  if isinstance(v, int):
    return int(v)
  return float(v)


def _dims_arg(dims):
  if dims is None:
    return None
  return tuple(int(d) for d in dims) if isinstance(dims, (list, tuple)) else (int(dims),)


def _reduce(kind):
  def conv(args, c):
    dims = _dims_arg(c.static(args["dim"], "dim"))
    return kind, c.refs([args["input"]]), {"dims": dims,
                                           "keepdim": bool(c.static(args["keepdim"], "keepdim"))}
  return conv


def _var(sqrt):
  def conv(args, c):
    dims = _dims_arg(c.static(args["dim"], "dim"))
    corr = c.static(args.get("correction"), "correction")
    unbiased = c.static(args.get("unbiased"), "unbiased")
    if corr is None:
      corr = 0 if unbiased is False else 1
    return "var", c.refs([args["input"]]), {
        "dims": dims, "keepdim": bool(c.static(args["keepdim"], "keepdim")),
        "correction": int(corr), "sqrt": sqrt}
  return conv


def _max_min(kind):
  """``max(x)``, ``max(x, dim[, keepdim])`` → (values, indices), ``max(x, y)`` elementwise."""
  def conv(args, c):
    x, dim = args["input"], args["dim"]
    if dim is None or dim is REQUIRED:
      return ("amax" if kind == "max" else "amin"), c.refs([x]), {"dims": None, "keepdim": False}
    if c.ref(dim) is not None:
      return ("maximum" if kind == "max" else "minimum"), c.refs([x, dim]), {}
    return f"{kind}_dim", c.refs([x]), {"dim": int(c.static(dim, "dim")),
                                        "keepdim": bool(c.static(args["keepdim"], "keepdim"))}
  return conv


def _arg(kind):
  def conv(args, c):
    dim = c.static(args["dim"], "dim")
    return kind, c.refs([args["input"]]), {"dim": None if dim is None else int(dim),
                                           "keepdim": bool(c.static(args["keepdim"], "k"))}
  return conv


def _split(args, c):
  """chunk / split / unbind / tensor_split: piece sizes read from what PyTorch produced."""
  dim = int(c.static(args.get("dim", 0), "dim"))
  x = args["input"]
  ndim = c.input_value(x).ndim
  if dim % ndim == 0 and c.batch_first(x):
    raise ValueError(f"{c.target_name} {c.node.name!r} at {c.path!r} splits the batch axis")
  squeeze = c.target_name == "unbind"
  sizes = tuple(1 if squeeze else int(t.shape[dim]) for t in c.value)
  return "split", c.refs([x]), {"dim": dim % ndim, "sizes": sizes, "squeeze": squeeze}


def _narrow(args, c):
  x = args["input"]
  ndim = c.input_value(x).ndim
  dim = int(c.static(args["dim"], "dim")) % ndim
  start = int(c.static(args["start"], "start"))
  length = int(c.static(args["length"], "length"))
  if dim == 0 and c.batch_first(x):
    raise ValueError(f"narrow {c.node.name!r} at {c.path!r} slices the batch axis")
  start %= c.input_value(x).shape[dim]
  items = [("s", None, None, None)] * dim + [("s", start, start + length, None)]
  return "getitem", c.refs([x]), {"items": tuple(items)}


def _getitem(args, c):
  x, index = args["input"], args["index"]
  xv = c.input_value(x)
  if isinstance(xv, (tuple, list)):
    return "getitem", c.refs([x]), {"index": int(c.static(index, "index"))}
  items, inputs = [], c.refs([x])
  for it in (index if isinstance(index, tuple) else (index,)):
    if it is None:
      items.append(("n",))
    elif it is Ellipsis:
      items.append(("e",))
    elif isinstance(it, slice):
      bounds = [c.static(b, "slice bound") for b in (it.start, it.stop, it.step)]
      items.append(("s",) + tuple(None if b is None else int(b) for b in bounds))
    elif c.ref(it) is not None:
      items.append(("t", len(inputs)))
      inputs.append(c.ref(it))
    else:
      v = c.static(it, "index")
      if isinstance(v, (list, tuple)):
        items.append(("l", tuple(int(i) for i in v)))
      else:
        items.append(("i", int(v)))
  if items and items[0][0] in ("i", "l", "t") and c.batch_first(x):
    raise ValueError(f"indexing {c.node.name!r} at {c.path!r} selects along the batch axis")
  return "getitem", inputs, {"items": tuple(items)}


def _getattr(args, c):
  name = c.static(args["name"], "name")
  if name not in ("values", "indices"):
    raise ValueError(f"attribute {name!r} of {c.node.name!r} at {c.path!r} is not supported")
  return "getitem", c.refs([args["input"]]), {"index": 0 if name == "values" else 1}


def _softmax(kind):
  def conv(args, c):
    dim = c.static(args["dim"], "dim")
    return kind, c.refs([args["input"]]), {"dim": None if dim is None else int(dim)}
  return conv


def _pool(kind):
  def conv(args, c):
    s = {k: c.static(v, k) for k, v in args.items() if k != "input"}
    if s.get("return_indices"):
      raise ValueError(f"{kind} {c.node.name!r} at {c.path!r}: return_indices is not supported")
    x = c.refs([args["input"]])
    if kind == "max_pool2d":
      return kind, x, pool_params(s["kernel_size"], s["stride"], s["padding"], s["dilation"]) | {
          "ceil_mode": bool(s["ceil_mode"])}
    n = {"1d": 1, "3d": 3}.get(c.target_name[-2:], 2)
    return kind, x, pool_params(s["kernel_size"], s["stride"], s["padding"], n=n) | {
        "ceil_mode": bool(s["ceil_mode"]), "count_include_pad": bool(s["count_include_pad"]),
        "divisor_override": s.get("divisor_override")}
  return conv


def _adaptive(kind):
  def conv(args, c):
    if c.static(args.get("return_indices", False), "return_indices"):
      raise ValueError(f"{kind} {c.node.name!r} at {c.path!r}: return_indices is not supported")
    n = 1 if c.target_name.endswith("1d") else 2
    out = c.value[0] if isinstance(c.value, tuple) else c.value  # ATen's (values, indices)
    return kind, c.refs([args["input"]]), {"output_size": tuple(out.shape[-n:])}
  return conv


def _pad(args, c):
  value = c.static(args["value"], "value")
  mode = c.static(args["mode"], "mode")
  if mode not in ("constant", "reflect", "replicate", "circular"):
    raise ValueError(f"pad {c.node.name!r} at {c.path!r}: mode {mode!r} is not supported")
  return "pad", c.refs([args["input"]]), {"pads": tuple(c.static(args["pad"], "pad")),
                                          "mode": mode,
                                          "value": 0.0 if value is None else float(value)}


def _conv(args, c):
  ins = c.refs([args["input"], args["weight"], args["bias"]])
  nd = c.value.ndim - 2
  stride = _tuple(c.static(args["stride"], "stride"), nd)
  dil = _tuple(c.static(args["dilation"], "dilation"), nd)
  k = tuple(c.input_value(args["weight"]).shape[2:])
  pads = _conv_padding(c.static(args["padding"], "padding"), k, dil, c.path)
  return "conv", ins, {"stride": stride, "padding": pads, "dilation": dil,
                       "groups": int(c.static(args["groups"], "groups")), "padding_mode": "zeros"}


def _conv_transpose(args, c):
  ins = c.refs([args["input"], args["weight"], args["bias"]])
  nd = c.value.ndim - 2
  s = _tuple(c.static(args["stride"], "stride"), nd)
  p = _tuple(c.static(args["padding"], "padding"), nd)
  d = _tuple(c.static(args["dilation"], "dilation"), nd)
  k = tuple(c.input_value(args["weight"]).shape[2:])
  op = _transpose_padding(c.input_value(args["input"]).shape, c.value.shape, s, p, d, k)
  return "conv_transpose", ins, {"stride": s, "padding": p, "dilation": d,
                                 "groups": int(c.static(args["groups"], "groups")),
                                 "output_padding": op}


def _linear(args, c):
  return "linear", c.refs([args["input"], args["weight"], args.get("bias")]), {}


def _prelu(args, c):
  return "prelu", c.refs([args["input"], args["weight"]]), {}


def _norm_inputs(c, x, weight, bias):
  ins = c.refs([x, weight, bias])
  no_weight = c.ref(weight) is None and c.ref(bias) is not None
  return ins, ({"no_weight": True} if no_weight else {})


def _layer_norm(args, c):
  shape = c.static(args["normalized_shape"], "normalized_shape")
  ins, extra = _norm_inputs(c, args["input"], args["weight"], args["bias"])
  return "layer_norm", ins, {"dims": len(_tuple(shape, 1)),
                             "eps": float(c.static(args["eps"], "eps"))} | extra


def _group_norm(args, c):
  ins, extra = _norm_inputs(c, args["input"], args["weight"], args["bias"])
  return "group_norm", ins, {"groups": int(c.static(args["num_groups"], "num_groups")),
                             "eps": float(c.static(args["eps"], "eps"))} | extra


def _batch_norm(args, c):
  if c.static(args["training"], "training") or c.ref(args["running_mean"]) is None:
    raise ValueError(f"batch_norm {c.node.name!r} at {c.path!r} uses batch statistics "
                     "(training=True or no running statistics)")
  ins = c.refs([args["input"], args["running_mean"], args["running_var"]])
  extra_ins, extra = _norm_inputs(c, None, args["weight"], args["bias"])
  return "batch_norm", ins + extra_ins, {"eps": float(c.static(args["eps"], "eps"))} | extra


def _instance_norm(args, c):
  eps = float(c.static(args["eps"], "eps"))
  if not c.static(args["use_input_stats"], "use_input_stats"):
    ins = c.refs([args["input"], args["running_mean"], args["running_var"]])
    extra_ins, extra = _norm_inputs(c, None, args["weight"], args["bias"])
    return "instance_norm", ins + extra_ins, {"eps": eps, "running": True} | extra
  ins = c.refs([args["input"]])
  params = {"eps": eps, "running": False}
  for name in ("weight", "bias"):
    if c.ref(args[name]) is not None:
      params[f"{name}_input"] = len(ins)
      ins.append(c.ref(args[name]))
  return "instance_norm", ins, params


def _interpolate(args, c):
  if c.static(args["antialias"], "antialias"):
    raise ValueError(f"interpolate {c.node.name!r} at {c.path!r}: antialias=True is not "
                     "supported")
  return "interpolate", c.refs([args["input"]]), interpolate_params(
      None, c.static(args["scale_factor"], "scale_factor"), c.static(args["mode"], "mode"),
      c.static(args["align_corners"], "align_corners"),
      c.static(args["recompute_scale_factor"], "recompute_scale_factor"),
      tuple(c.value.shape), c.path)


def _affine_grid(args, c):
  if c.value.ndim != 4:
    raise ValueError(f"affine_grid {c.node.name!r} at {c.path!r}: only 2-D grids are supported")
  return "affine_grid", c.refs([args["theta"]]), {
      "size": tuple(int(s) for s in c.value.shape[1:3]),
      "align_corners": bool(c.static(args["align_corners"], "align_corners"))}


def _grid_sample(args, c):
  mode = c.static(args["mode"], "mode")
  pad = c.static(args["padding_mode"], "padding_mode")
  if mode not in ("bilinear", "nearest") or pad not in ("zeros", "border", "reflection") or \
      c.value.ndim != 4:
    raise ValueError(f"grid_sample {c.node.name!r} at {c.path!r}: mode {mode!r}, padding_mode "
                     f"{pad!r} on {c.value.ndim - 2}-D input is not supported (2-D bilinear or "
                     "nearest with zeros, border or reflection padding is)")
  return "grid_sample", c.refs([args["input"], args["grid"]]), {
      "mode": mode, "padding_mode": pad,
      "align_corners": bool(c.static(args["align_corners"], "align_corners"))}


def _local_response_norm(args, c):
  return "local_response_norm", c.refs([args["input"]]), {
      k: (int if k == "size" else float)(c.static(args[k], k)) for k in ("size", "alpha", "beta",
                                                                           "k")}


def _channel_shuffle(args, c):
  return "channel_shuffle", c.refs([args["input"]]), {"groups": int(c.static(args["groups"],
                                                                              "groups"))}


def _matmul(args, c):
  ins = c.refs([args["input"], args["other"]])
  if len(ins) != 2:
    raise ValueError(f"matmul {c.node.name!r} at {c.path!r}: both operands must be tensors")
  return "matmul", ins, {}


def _einsum(args, c):
  ops = args["*operands"]
  if len(ops) == 1 and isinstance(ops[0], (list, tuple)):
    ops = ops[0]
  ins = c.refs(list(ops))
  if len(ins) != len(ops):
    raise ValueError(f"einsum {c.node.name!r} at {c.path!r}: every operand must be a tensor")
  return "einsum", ins, {"equation": c.static(args["equation"], "equation")}


def _clamp(args, c):
  lo, hi = c.static(args["min"], "min"), c.static(args["max"], "max")
  return "clamp", c.refs([args["input"]]), {"min": None if lo is None else float(lo),
                                            "max": None if hi is None else float(hi)}


def _where(args, c):
  ins = c.refs([args["condition"]])
  params = {}
  for name, key in (("input", "x"), ("other", "y")):
    r = c.ref(args[name])
    if r is None:
      params[key] = _scalar(c.static(args[name], name))
    else:
      ins.append(r)
  return "where", ins, params


def _roll(args, c):
  shifts, dims = c.static(args["shifts"], "shifts"), c.static(args["dims"], "dims")
  if dims is None or dims == ():
    raise ValueError(f"roll {c.node.name!r} at {c.path!r}: roll without dims is not supported")
  return "roll", c.refs([args["input"]]), {"shifts": _tuple(shifts, 1), "dims": _tuple(dims, 1)}


def _flip(args, c):
  dims = c.static(args["dims"], "dims")
  return "flip", c.refs([args["input"]]), {"dims": _tuple(dims, 1)}


def _gelu(args, c):
  return "gelu", c.refs([args["input"]]), {"approximate": c.static(args["approximate"], "a")}


def _pow(args, c):
  return _binary("pow")({"input": args["input"], "other": args["exponent"]}, c)


def _swin_attention(args, c):
  if c.static(args["training"], "training") and (c.static(args["attention_dropout"], "d") or
                                                 c.static(args["dropout"], "d")):
    raise ValueError(f"shifted_window_attention at {c.path!r} runs in training mode")
  ins = c.refs([args["input"], args["qkv_weight"], args["proj_weight"],
                args["relative_position_bias"]])
  if len(ins) != 4:
    raise ValueError(f"shifted_window_attention at {c.path!r}: tensor arguments expected")
  flags = {}
  for name in ("qkv_bias", "proj_bias", "logit_scale"):
    r = c.ref(args[name])
    flags[name] = r is not None
    if r is not None:
      ins.append(r)
  return "shifted_window_attention", ins, flags | {
      "window_size": tuple(int(v) for v in c.static(args["window_size"], "window_size")),
      "num_heads": int(c.static(args["num_heads"], "num_heads")),
      "shift_size": tuple(int(v) for v in c.static(args["shift_size"], "shift_size"))}


SUPPORTED_FUNCTIONS: list[str] = []


def functional_table():
  """fx call_function targets and call_method names → ``(argument spec, converter)``."""
  torch = torch_module()
  F = torch.nn.functional
  x = (("input", REQUIRED),)
  act = x + (("inplace", False),)
  softmax = x + (("dim", None), ("_stacklevel", 3), ("dtype", None))
  maxpool = x + (("kernel_size", REQUIRED), ("stride", None), ("padding", 0), ("dilation", 1),
                 ("ceil_mode", False), ("return_indices", False))
  avgpool = x + (("kernel_size", REQUIRED), ("stride", None), ("padding", 0),
                 ("ceil_mode", False), ("count_include_pad", True), ("divisor_override", None))
  binary = x + (("other", REQUIRED), ("alpha", 1), ("rounding_mode", None))
  reduce = x + (("dim", None), ("keepdim", False), ("dtype", None))
  var = x + (("dim", None), ("unbiased", None), ("keepdim", False), ("correction", None))
  maxmin = x + (("dim", REQUIRED), ("keepdim", False))
  arg = x + (("dim", None), ("keepdim", False))
  dropout = x + (("p", 0.5), ("training", False), ("inplace", False))
  anything = x + (("*rest", ()),)
  split = x + (("split_size", None), ("dim", 0))
  conv = x + (("weight", REQUIRED), ("bias", None), ("stride", 1), ("padding", 0),
              ("dilation", 1), ("groups", 1))
  conv_t = x + (("weight", REQUIRED), ("bias", None), ("stride", 1), ("padding", 0),
                ("output_padding", 0), ("groups", 1), ("dilation", 1))
  funcs, methods = {}, {}
  g = lambda mod, name: getattr(mod, name, None)

  def add(spec, converter, *targets, method=()):
    for t in targets:
      if t is not None:
        funcs[t] = (spec, converter)
        SUPPORTED_FUNCTIONS.append(getattr(t, "__name__", str(t)))
    for m in (method,) if isinstance(method, str) else method:
      methods[m] = (spec, converter)
      SUPPORTED_FUNCTIONS.append(f"Tensor.{m}")

  SUPPORTED_FUNCTIONS.clear()
  add(act, _keep("relu"), F.relu, torch.relu, torch.relu_, g(F, "relu_"), method=("relu", "relu_"))
  add(act, _keep("relu6"), F.relu6)
  add(x + (("min_val", -1.0), ("max_val", 1.0), ("inplace", False)),
      _keep("hardtanh", "min_val", "max_val"), F.hardtanh, g(F, "hardtanh_"))
  add(x + (("negative_slope", 0.01), ("inplace", False)), _keep("leaky_relu", "negative_slope"),
      F.leaky_relu, g(F, "leaky_relu_"))
  add(x + (("weight", REQUIRED),), _prelu, F.prelu, torch.prelu)
  add(x + (("alpha", 1.0), ("inplace", False)), _keep("elu", "alpha"), F.elu, g(F, "elu_"))
  add(x + (("alpha", 1.0), ("inplace", False)), _keep("celu", "alpha"), F.celu)
  add(act, _keep("selu"), F.selu, torch.selu)
  add(x + (("approximate", "none"),), _gelu, F.gelu)
  add(act, _keep("silu"), F.silu)
  add(act, _keep("mish"), F.mish)
  add(act, _keep("hardswish"), F.hardswish)
  add(act, _keep("hardsigmoid"), F.hardsigmoid)
  add(x + (("beta", 1.0), ("threshold", 20.0)), _keep("softplus", "beta", "threshold"),
      F.softplus)
  add(x, _keep("sigmoid"), torch.sigmoid, F.sigmoid, method=("sigmoid", "sigmoid_"))
  add(x, _keep("log_sigmoid"), F.logsigmoid)
  add(x, _keep("tanh"), torch.tanh, F.tanh, method=("tanh", "tanh_"))
  add(softmax, _softmax("softmax"), F.softmax, torch.softmax, method="softmax")
  add(softmax, _softmax("log_softmax"), F.log_softmax, torch.log_softmax, method="log_softmax")
  add(softmax, _softmax("softmin"), F.softmin)
  for name in ("exp", "log", "sqrt", "rsqrt", "abs", "sin", "cos", "erf", "reciprocal", "square",
               "floor", "ceil", "round", "sign", "neg", "logical_not"):
    add(x, _keep(name), g(torch, name), method=(name, name + "_"))
  add(x, _keep("neg"), operator.neg)
  add(x, _identity, operator.pos, torch.clone, torch.detach,
      method=("contiguous", "clone", "detach"))
  add(anything, _cast, method=("float", "double", "to", "type", "type_as", "half"))
  add(maxpool, _pool("max_pool2d"), F.max_pool2d, g(torch, "max_pool2d"))
  add(avgpool, _pool("avg_pool2d"), F.avg_pool2d, g(torch._C._nn, "avg_pool2d"), F.avg_pool1d,
      F.avg_pool3d)  # the "avg_pool2d" op pools the trailing 1, 2 or 3 axes
  add(x + (("output_size", REQUIRED),), _adaptive("adaptive_avg_pool2d"), F.adaptive_avg_pool2d,
      F.adaptive_avg_pool1d)
  add(x + (("output_size", REQUIRED), ("return_indices", False)), _adaptive(
      "adaptive_max_pool2d"), F.adaptive_max_pool2d)
  add(dropout, _dropout, F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout,
      F.feature_alpha_dropout, torch.dropout, g(torch, "feature_dropout"),
      g(torch, "alpha_dropout"), g(torch, "feature_alpha_dropout"))
  add(x + (("pad", REQUIRED), ("mode", "constant"), ("value", None)), _pad, F.pad)
  add(x + (("*shape", ()),), _view, torch.flatten, torch.reshape, torch.squeeze, torch.unsqueeze,
      g(torch, "unflatten"), torch.ravel,
      method=("view", "reshape", "flatten", "squeeze", "unsqueeze", "view_as", "reshape_as",
              "unflatten", "ravel", "squeeze_", "unsqueeze_"))
  add(x + (("*sizes", ()),), _expand, method=("expand", "expand_as"))
  add(x + (("*sizes", ()),), _repeat, method="repeat")
  for kind, targets in {"add": (operator.add, operator.iadd, torch.add),
                        "sub": (operator.sub, operator.isub, torch.sub, torch.subtract),
                        "mul": (operator.mul, operator.imul, torch.mul, torch.multiply),
                        "div": (operator.truediv, operator.itruediv, torch.div, torch.divide,
                                torch.true_divide),
                        "floordiv": (operator.floordiv, operator.ifloordiv,
                                     torch.floor_divide),
                        "remainder": (operator.mod, torch.remainder),
                        "maximum": (torch.maximum,), "minimum": (torch.minimum,),
                        "eq": (operator.eq, torch.eq), "ne": (operator.ne, torch.ne),
                        "lt": (operator.lt, torch.lt), "le": (operator.le, torch.le),
                        "gt": (operator.gt, torch.gt), "ge": (operator.ge, torch.ge),
                        "and": (operator.and_, torch.logical_and),
                        "or": (operator.or_, torch.logical_or),
                        "rsub": (torch.rsub,)}.items():
    add(binary, _binary(kind), *targets, method=() if kind == "rsub" else (kind, kind + "_"))
  methods["truediv"] = methods["div"]
  methods["floor_divide"] = (binary, _binary("floordiv"))
  add((("input", REQUIRED), ("exponent", REQUIRED)), _pow, operator.pow, torch.pow,
      method=("pow", "pow_"))
  add((("tensors", REQUIRED), ("dim", 0)), _cat, torch.cat, g(torch, "concat"),
      g(torch, "concatenate"), torch.stack)
  add(reduce, _reduce("mean"), torch.mean, method="mean")
  add(reduce, _reduce("sum"), torch.sum, method="sum")
  add(reduce, _reduce("prod"), torch.prod, method="prod")
  add(reduce, _reduce("amax"), torch.amax, method="amax")
  add(reduce, _reduce("amin"), torch.amin, method="amin")
  add(var, _var(False), torch.var, method="var")
  add(var, _var(True), torch.std, method="std")
  add(maxmin, _max_min("max"), torch.max, method="max")
  add(maxmin, _max_min("min"), torch.min, method="min")
  add(arg, _arg("argmax"), torch.argmax, method="argmax")
  add(arg, _arg("argmin"), torch.argmin, method="argmin")
  add(x + (("dims", None), ("*dims", ())), _permute, torch.permute, method="permute")
  add(x + (("dim0", REQUIRED), ("dim1", REQUIRED)), _transpose, torch.transpose, torch.swapaxes,
      method=("transpose", "swapaxes"))
  add(x, _t, torch.t, method="t")
  add(x + (("chunks", REQUIRED), ("dim", 0)), _split, torch.chunk, method="chunk")
  add(split, _split, torch.split, g(torch, "tensor_split"), method=("split", "tensor_split"))
  add(x + (("dim", 0),), _split, torch.unbind, method="unbind")
  add(x + (("dim", REQUIRED), ("start", REQUIRED), ("length", REQUIRED)), _narrow, torch.narrow,
      method="narrow")
  add((("input", REQUIRED), ("index", REQUIRED)), _getitem, operator.getitem)
  add((("input", REQUIRED), ("name", REQUIRED)), _getattr, getattr)
  add(conv, _conv, F.conv1d, F.conv2d, F.conv3d)
  add(conv_t, _conv_transpose, F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)
  add(x + (("weight", REQUIRED), ("bias", None)), _linear, F.linear)
  add(x + (("normalized_shape", REQUIRED), ("weight", None), ("bias", None), ("eps", 1e-5)),
      _layer_norm, F.layer_norm)
  add(x + (("num_groups", REQUIRED), ("weight", None), ("bias", None), ("eps", 1e-5)),
      _group_norm, F.group_norm)
  add(x + (("running_mean", REQUIRED), ("running_var", REQUIRED), ("weight", None),
           ("bias", None), ("training", False), ("momentum", 0.1), ("eps", 1e-5)),
      _batch_norm, F.batch_norm)
  add(x + (("running_mean", None), ("running_var", None), ("weight", None), ("bias", None),
           ("use_input_stats", True), ("momentum", 0.1), ("eps", 1e-5)),
      _instance_norm, F.instance_norm)
  add(x + (("size", REQUIRED), ("alpha", 1e-4), ("beta", 0.75), ("k", 1.0)),
      _local_response_norm, F.local_response_norm)
  add(x + (("size", None), ("scale_factor", None), ("mode", "nearest"), ("align_corners", None),
           ("recompute_scale_factor", None), ("antialias", False)),
      _interpolate, F.interpolate, g(F, "upsample"))
  add((("theta", REQUIRED), ("size", REQUIRED), ("align_corners", None)), _affine_grid,
      F.affine_grid)
  add(x + (("grid", REQUIRED), ("mode", "bilinear"), ("padding_mode", "zeros"),
           ("align_corners", None)), _grid_sample, F.grid_sample)
  add(x + (("groups", REQUIRED),), _channel_shuffle, g(F, "channel_shuffle"),
      g(torch, "channel_shuffle"), g(torch, "native_channel_shuffle"))
  add((("input", REQUIRED), ("other", REQUIRED)), _matmul, torch.matmul, torch.bmm, torch.mm,
      operator.matmul, method=("matmul", "bmm", "mm"))
  add((("equation", REQUIRED), ("*operands", ())), _einsum, torch.einsum)
  add(x + (("min", None), ("max", None)), _clamp, torch.clamp, torch.clip,
      method=("clamp", "clip", "clamp_", "clip_"))
  add((("condition", REQUIRED), ("input", REQUIRED), ("other", REQUIRED)), _where, torch.where)
  add(x + (("shifts", REQUIRED), ("dims", None)), _roll, torch.roll, method="roll")
  add(x + (("dims", REQUIRED),), _flip, torch.flip, method="flip")
  import sys  # torchvision's fx-wrapped functions, when torchvision is loaded
  tv_ops = sys.modules.get("torchvision.ops.stochastic_depth")
  if tv_ops is not None:  # EfficientNet, ConvNeXt, Swin, MaxViT
    add(x + (("p", REQUIRED), ("mode", REQUIRED), ("training", True)), _stochastic_depth,
        tv_ops.stochastic_depth)
  swin = sys.modules.get("torchvision.models.swin_transformer")
  if swin is not None:
    add(x + (("qkv_weight", REQUIRED), ("proj_weight", REQUIRED),
             ("relative_position_bias", REQUIRED), ("window_size", REQUIRED),
             ("num_heads", REQUIRED), ("shift_size", REQUIRED), ("attention_dropout", 0.0),
             ("dropout", 0.0), ("qkv_bias", None), ("proj_bias", None), ("logit_scale", None),
             ("training", True)), _swin_attention, swin.shifted_window_attention)
    add(x, lambda args, c: ("patch_merging_pad", c.refs([args["input"]]), {}),
        swin._patch_merging_pad)
  return funcs, methods
