"""The torch.export front end: for modules torch.fx cannot trace symbolically.

``torch.export.export`` runs the module's Python (data-dependent ``if``s on shapes, calls fx
cannot proxy) and records the ATen ops it reaches, with the batch axis kept symbolic
(``Dim.AUTO``). The unlifted graph (:meth:`ExportedProgram.module`, parameters read by module
path with ``get_attr``) is converted by the same :func:`jaxplain.convert.fx.convert_graph` as an
fx graph; :func:`aten_table` maps the ATen ops onto the converters of the functional table,
binding their arguments by the ATen schema's names. Each ATen node carries the module stack it
ran in (``nn_module_stack``), so ops keep their module paths, and the last op that a leaf
``torch.nn`` layer (one of ``SUPPORTED_MODULES``) runs becomes that layer's tap, named by its
path as in the fx front end.
"""

from __future__ import annotations

from jaxplain.convert import ops as op_tables
from jaxplain.convert._common import torch_module


def export_graph(module, example):
  """The unlifted ATen graph of ``module`` on ``example`` (batch axis symbolic).

  Raises:
    ValueError: torch.export cannot capture the module (its first message line named).
  """
  torch = torch_module()
  try:
    try:
      ep = torch.export.export(module, (example,),
                               dynamic_shapes=({0: torch.export.Dim.AUTO},))
    except Exception:  # noqa: BLE001 - some modules export only with every size fixed
      ep = torch.export.export(module, (example,))
  except Exception as e:  # noqa: BLE001 - torch.export raises many types
    text = str(e).strip().splitlines()
    raise ValueError(f"torch.export cannot capture {type(module).__name__} "
                     f"({type(e).__name__}: {text[0] if text else ''})") from None
  return ep.module()


def node_path(node) -> str:
  """The module path of the innermost module an exported node ran in."""
  stack = node.meta.get("nn_module_stack") or {}
  if not stack:
    return "<top level>"
  path = list(stack.values())[-1]
  path = path[0] if isinstance(path, (tuple, list)) else str(path)
  return path or "<top level>"


def leaf_paths(module):
  """``node -> leaf layer path or None``: the supported torch.nn layer an exported op ran in."""
  leaves = {name for name, m in module.named_modules() if name and
            op_tables.supported_base(m) is not None}

  def leaf(node):
    path = node_path(node)
    return path if path in leaves else None
  return leaf


def _schema_spec(op, rename):
  """``(("name", default), ...)`` of an ATen overload, its names passed through ``rename``."""
  spec = []
  for a in op._schema.arguments:
    default = a.default_value if a.has_default_value() else (
        None if "Optional" in str(a.type) or str(a.type).endswith("?") else op_tables.REQUIRED)
    spec.append((rename.get(a.name, a.name), default))
  return tuple(spec)


_RENAME = {"self": "input", "train": "training", "mat2": "other"}

_MODES = {"upsample_nearest1d": "nearest", "upsample_nearest2d": "nearest",
          "upsample_nearest3d": "nearest", "_upsample_nearest_exact1d": "nearest-exact",
          "_upsample_nearest_exact2d": "nearest-exact", "upsample_linear1d": "linear",
          "upsample_bilinear2d": "bilinear", "upsample_bicubic2d": "bicubic",
          "upsample_trilinear3d": "trilinear"}


def _upsample(args, c):
  mode = _MODES[c.target_name]
  scales = c.static(args.get("scale_factors"), "scale_factors")
  align = c.static(args.get("align_corners"), "align_corners")
  return "interpolate", c.refs([args["input"]]), op_tables.interpolate_params(
      None, tuple(scales) if scales else None, mode, bool(align), False, tuple(c.value.shape),
      c.path)


def _slice(args, c):
  x = args["input"]
  xv = c.input_value(x)
  dim = int(c.static(args["dim"], "dim")) % xv.ndim
  start, end = c.static(args["start"], "start"), c.static(args["end"], "end")
  step = int(c.static(args["step"], "step") or 1)
  size = xv.shape[dim]
  whole = (start in (None, 0)) and (end is None or end >= size) and step == 1
  if whole:
    return "identity", c.refs([x]), {}
  if dim == 0 and c.batch_first(x):
    raise ValueError(f"slice {c.node.name!r} at {c.path!r} slices the batch axis")
  clip = lambda b: None if b is None else int(max(min(b, size), -size))
  items = [("s", None, None, None)] * dim + [("s", clip(start), clip(end), step)]
  return "getitem", c.refs([x]), {"items": tuple(items)}


def _select(args, c):
  x = args["input"]
  dim = int(c.static(args["dim"], "dim")) % c.input_value(x).ndim
  if dim == 0 and c.batch_first(x):
    raise ValueError(f"select {c.node.name!r} at {c.path!r} selects along the batch axis")
  items = [("s", None, None, None)] * dim + [("i", int(c.static(args["index"], "index")))]
  return "getitem", c.refs([x]), {"items": tuple(items)}


def _index(args, c):
  """``aten.index``: ``x[:, idx]``-style advanced indexing (``None`` entries are full slices)."""
  x = args["input"]
  items, inputs = [], c.refs([x])
  for it in args["indices"]:
    if it is None:
      items.append(("s", None, None, None))
    elif c.ref(it) is not None:
      items.append(("t", len(inputs)))
      inputs.append(c.ref(it))
    else:
      v = c.static(it, "index")
      if getattr(v, "dtype", None) is not None and str(v.dtype) == "torch.bool":
        raise ValueError(f"index {c.node.name!r} at {c.path!r}: boolean masks are not supported")
      v = v.tolist() if hasattr(v, "tolist") else v
      items.append(("l", v) if isinstance(v, (list, tuple)) else ("i", int(v)))
  if items and items[0][0] in ("i", "l", "t") and c.batch_first(x):
    raise ValueError(f"index {c.node.name!r} at {c.path!r} selects along the batch axis")
  return "getitem", inputs, {"items": tuple(items)}


# ATen ops returning (values, indices) where the functional form returns the values alone.
_WITH_INDICES = ("adaptive_max_pool2d", "max_pool2d_with_indices")


def _getitem(convert):
  """``getitem`` of a values-and-indices pair: the values are the op itself."""
  def conv(args, c):
    src = args["input"]
    if getattr(src, "op", None) == "call_function" and \
        getattr(src.target, "_schema", None) is not None and \
        src.target._schema.name.split("::")[-1] in _WITH_INDICES:
      if c.static(args["index"], "index") != 0:
        raise ValueError(f"{c.node.name!r} at {c.path!r} uses the indices of a max pool, "
                         "which jaxplain does not convert")
      return "identity", c.refs([src]), {}
    return convert(args, c)
  return conv


def _grid_sampler(convert):
  def conv(args, c):
    args = dict(args)
    args["mode"] = {0: "bilinear", 1: "nearest", 2: "bicubic"}[
        int(c.static(args.pop("interpolation_mode"), "interpolation_mode"))]
    args["padding_mode"] = {0: "zeros", 1: "border", 2: "reflection"}[
        int(c.static(args["padding_mode"], "padding_mode"))]
    return convert(args, c)
  return conv


def _renamed(convert, **moves):
  """A converter reading some arguments under other names (``new="old"``)."""
  def conv(args, c):
    args = dict(args)
    for new, old in moves.items():
      args[new] = args.pop(old, op_tables.REQUIRED)
    return convert(args, c)
  return conv


def _defaults(convert, **defaults):
  """A converter that reads arguments some overloads lack (``mean.default`` has no ``dim``)."""
  def conv(args, c):
    return convert(defaults | {k: v for k, v in args.items() if v is not None or k not in
                               defaults}, c)
  return conv


def aten_table():
  """ATen overloads → ``(argument spec, converter)``, reusing the functional converters."""
  torch = torch_module()
  F, aten = torch.nn.functional, torch.ops.aten
  funcs, methods = op_tables.functional_table()
  by_fn = lambda f: funcs[f][1]
  table = {}

  def add(convert, *names):
    for name in names:
      packet = getattr(aten, name, None)
      if packet is None:
        continue
      for overload in packet.overloads():
        op = getattr(packet, overload)
        table[op] = (_schema_spec(op, _RENAME), convert)

  unary = {"relu": F.relu, "relu6": F.relu6, "hardtanh": F.hardtanh, "leaky_relu": F.leaky_relu,
           "elu": F.elu, "celu": F.celu, "selu": F.selu, "gelu": F.gelu, "silu": F.silu,
           "mish": F.mish, "hardswish": F.hardswish, "hardsigmoid": F.hardsigmoid,
           "softplus": F.softplus, "sigmoid": torch.sigmoid, "tanh": torch.tanh,
           "log_sigmoid": F.logsigmoid}
  for name, fn in unary.items():
    add(by_fn(fn), name, name + "_")
  for name in ("exp", "log", "sqrt", "rsqrt", "abs", "sin", "cos", "erf", "reciprocal",
               "square", "floor", "ceil", "round", "sign", "neg", "logical_not"):
    add(by_fn(getattr(torch, name)), name, name + "_")
  add(by_fn(F.prelu), "prelu", "_prelu_kernel")
  add(by_fn(F.softmax), "softmax", "_softmax")
  add(by_fn(F.log_softmax), "log_softmax", "_log_softmax")
  add(by_fn(torch.clone), "clone", "contiguous", "alias", "detach", "lift_fresh_copy")
  add(methods["to"][1], "_to_copy", "to", "type_as")
  add(by_fn(F.conv2d), "conv1d", "conv2d", "conv3d")
  add(by_fn(F.conv_transpose2d), "conv_transpose1d", "conv_transpose2d", "conv_transpose3d")
  add(by_fn(F.linear), "linear")
  add(by_fn(F.batch_norm), "batch_norm")
  add(by_fn(F.layer_norm), "layer_norm")
  add(by_fn(F.group_norm), "group_norm")
  add(by_fn(F.instance_norm), "instance_norm")
  add(by_fn(F.max_pool2d), "max_pool2d")
  add(_defaults(by_fn(F.avg_pool2d), divisor_override=None), "avg_pool1d", "avg_pool2d",
      "avg_pool3d")
  add(by_fn(F.adaptive_avg_pool2d), "adaptive_avg_pool2d", "adaptive_avg_pool1d")
  add(by_fn(F.dropout), "dropout", "dropout_", "feature_dropout", "feature_dropout_",
      "alpha_dropout", "alpha_dropout_", "feature_alpha_dropout", "feature_alpha_dropout_")
  add(_defaults(by_fn(F.pad), mode="constant", value=None), "pad", "constant_pad_nd")
  add(by_fn(torch.reshape), "view", "reshape", "_unsafe_view", "flatten", "unflatten",
      "squeeze", "squeeze_", "unsqueeze", "unsqueeze_", "view_as", "reshape_as")
  add(methods["expand"][1], "expand", "expand_as")
  add(_renamed(methods["repeat"][1], **{"*sizes": "repeats"}), "repeat")
  for name, fn in {"add": torch.add, "sub": torch.sub, "mul": torch.mul, "div": torch.div,
                   "floor_divide": torch.floor_divide, "remainder": torch.remainder,
                   "maximum": torch.maximum, "minimum": torch.minimum, "eq": torch.eq,
                   "ne": torch.ne, "lt": torch.lt, "le": torch.le, "gt": torch.gt,
                   "ge": torch.ge, "logical_and": torch.logical_and,
                   "logical_or": torch.logical_or}.items():
    add(by_fn(fn), name, name + "_")
  add(by_fn(torch.rsub), "rsub")
  add(by_fn(torch.pow), "pow", "pow_")
  add(by_fn(torch.cat), "cat", "concat", "concatenate")
  add(by_fn(torch.stack), "stack")
  for name in ("mean", "sum", "prod", "amax", "amin", "var", "std", "argmax", "argmin"):
    add(_defaults(by_fn(getattr(torch, name)), dim=None, keepdim=False), name)
  for name in ("max", "min"):
    packet = getattr(aten, name)
    for overload in packet.overloads():
      op = getattr(packet, overload)
      spec = _schema_spec(op, _RENAME | {"other": "dim"})
      if not any(n == "dim" for n, _ in spec):
        spec = spec + (("dim", None),)
      if not any(n == "keepdim" for n, _ in spec):
        spec = spec + (("keepdim", False),)
      table[op] = (spec, by_fn(getattr(torch, name)))
  add(by_fn(torch.permute), "permute")
  add(by_fn(torch.transpose), "transpose", "swapaxes")
  add(by_fn(torch.t), "t")
  add(by_fn(torch.chunk), "chunk")
  add(by_fn(torch.split), "split", "split_with_sizes")
  add(by_fn(torch.unbind), "unbind")
  add(by_fn(torch.narrow), "narrow")
  add(_slice, "slice")
  add(_select, "select")
  add(_index, "index")
  add(by_fn(torch.matmul), "matmul", "bmm", "mm")
  add(_renamed(by_fn(torch.einsum), **{"*operands": "tensors"}), "einsum")
  add(by_fn(torch.clamp), "clamp", "clamp_", "clip", "clip_")
  add(by_fn(torch.where), "where")
  add(by_fn(torch.roll), "roll")
  add(by_fn(torch.flip), "flip")
  add(by_fn(torch.channel_shuffle), "channel_shuffle", "native_channel_shuffle")
  add(_upsample, *_MODES)
  add(by_fn(F.affine_grid), "affine_grid_generator")
  add(_grid_sampler(by_fn(F.grid_sample)), "grid_sampler", "grid_sampler_2d")
  add(by_fn(F.adaptive_max_pool2d), "adaptive_max_pool2d")
  add(by_fn(F.max_pool2d), "max_pool2d_with_indices")
  import operator
  spec, convert = funcs[operator.getitem]
  table[operator.getitem] = (spec, _getitem(convert))
  return table, {}
