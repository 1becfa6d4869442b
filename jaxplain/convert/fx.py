"""The torch.fx front end: trace a module, record every value, map each node to a graph op.

Leaf ``torch.nn`` layers listed in :data:`~jaxplain.convert.ops.SUPPORTED_MODULES` stay whole
(they become the classifier's taps); every other module, ``torch.nn`` ones included, is traced
through down to functional calls. The traced graph runs once on a batch of 2 and once on a batch
of 3 so that every shape is known and any size that follows the batch is recognised. Tensors that
do not depend on the input (parameters read with ``get_attr``, masks and index tables built in
``forward``) become constants of the converted graph.
"""

from __future__ import annotations

import numpy as np

from jaxplain.convert import ops as op_tables
from jaxplain.convert._common import is_tensor, to_numpy, torch_module
from jaxplain.graph import Op, TorchGraph, freeze


def node_path(node) -> str:
  stack = node.meta.get("nn_module_stack") or {}
  path = list(stack)[-1] if stack else ""
  return path or "<top level>"


def trace(module):
  """A ``torch.fx.GraphModule`` of ``module``; ValueError when fx cannot trace it."""
  torch = torch_module()

  class Tracer(torch.fx.Tracer):
    def is_leaf_module(self, m, qualname):
      return op_tables.supported_base(m) is not None

  try:
    graph = Tracer().trace(module)
  except Exception as e:  # fx raises TraceError, TypeError, ... on untraceable Python
    raise ValueError(f"cannot trace {type(module).__name__} with torch.fx ({type(e).__name__}: "
                     f"{str(e).splitlines()[0] if str(e) else ''}); jaxplain converts modules "
                     "whose forward has no data-dependent Python control flow") from None
  return torch.fx.GraphModule(module, graph)


_SMALL = 4096  # tensors up to this size are always copied (they may be read as constants)


def _snapshot(v, copy):
  if is_tensor(v):
    return v.detach().clone() if copy or v.numel() <= _SMALL else v.detach()
  if isinstance(v, (tuple, list)) and any(is_tensor(t) for t in v):
    return tuple(_snapshot(t, copy) for t in v)
  return v


def run(gm, x, *, copy: bool = False) -> dict:
  """Every node's value.

  With ``copy``, every tensor is cloned as it is produced, so later in-place ops cannot change
  it (needed to compare op by op); without, only small tensors are, and large ones serve for
  their shapes (and the output for its values).
  """
  torch = torch_module()
  values = {}

  class Recorder(torch.fx.Interpreter):
    def run_node(self, n):
      v = super().run_node(n)
      values[n.name] = _snapshot(v, copy)
      return v

  with torch.no_grad():
    Recorder(gm).run(x)
  return values


def run_shapes(gm, x) -> dict | None:
  """Every node's value with the input a FakeTensor: shapes without the arithmetic.

  Values that do not depend on the input (sizes, index tables, tensors computed from the
  parameters) are computed for real; those that do are FakeTensors, whose shapes are all the
  batch-size comparison needs. Returns None when some op has no fake implementation (then the
  caller runs the module for real).
  """
  try:
    from torch._subclasses.fake_tensor import FakeTensorMode
    mode = FakeTensorMode(allow_non_fake_inputs=True)
    return run(gm, mode.from_tensor(x))
  except Exception:  # noqa: BLE001 - any op fake mode cannot run: fall back to a real run
    return None


def is_fake(v) -> bool:
  return type(v).__name__ == "FakeTensor"


def _is_tensor_tuple(v) -> bool:
  return isinstance(v, (tuple, list)) and len(v) > 0 and all(is_tensor(t) or t is None
                                                              for t in v) and any(
      is_tensor(t) for t in v)


def _same(u, v) -> bool:
  if is_tensor(u) and is_tensor(v):
    if is_fake(u) or is_fake(v):  # a shapes-only run: compare what it knows
      return u.shape == v.shape and u.dtype == v.dtype
    return u.shape == v.shape and bool((u == v).all())
  if isinstance(u, (list, tuple)) and isinstance(v, (list, tuple)):
    return len(u) == len(v) and all(_same(a, b) for a, b in zip(u, v))
  try:
    return bool(u == v)
  except Exception:
    return False


def shape_spec(sa, sb, what):
  """Shape on batch 2 and 3 → spec with ``("N", k)`` for axes that scale with the batch."""
  if len(sa) != len(sb):
    raise ValueError(f"{what}: rank changes with the batch size ({tuple(sa)} vs {tuple(sb)})")
  spec = []
  for a, b in zip(sa, sb):
    if a == b:
      spec.append(int(a))
    elif a % 2 == 0 and b % 3 == 0 and a // 2 == b // 3:
      spec.append(("N", a // 2))
    else:
      raise ValueError(f"{what}: shape {tuple(sa)} for a batch of 2 and {tuple(sb)} for 3; "
                       "jaxplain needs sizes that are constant or proportional to the batch")
  return tuple(spec)


class NodeContext:
  """What a converter may ask about the fx node it converts."""

  def __init__(self, node, path, runs, emitted, target_name):
    self.node, self.path, self.target_name = node, path, target_name
    self._a, self._b, self._emitted = runs[2], runs[3], emitted
    self.value, self.value_b = self._a[node.name], self._b[node.name]

  def ref(self, v):
    """The graph name of ``v`` when it is a tensor in the graph, else None."""
    if hasattr(v, "name") and hasattr(v, "op") and v.name in self._emitted:
      return v.name
    return None

  def refs(self, args):
    return [r for r in (self.ref(v) for v in args) if r is not None]

  def input_value(self, v):
    return self._a.get(v.name) if hasattr(v, "name") and hasattr(v, "op") else v

  def batch_first(self, v) -> bool:
    a, b = self._a.get(v.name), self._b.get(v.name)
    return is_tensor(a) and a.ndim > 0 and a.shape[0] == 2 and b.shape[0] == 3

  def static(self, v, what):
    """Concrete value of an argument; refuses one that changes with the batch size."""
    if hasattr(v, "name") and hasattr(v, "op"):
      if v.name in self._emitted:
        raise ValueError(f"{what} of {self.node.name!r} at {self.path!r} must be a constant, got "
                         "a tensor")
      if not _same(self._a[v.name], self._b[v.name]):
        raise ValueError(f"{what} of {self.node.name!r} at {self.path!r} depends on the batch "
                         "size")
      value = self._a[v.name]
      return value.item() if is_tensor(value) and value.numel() == 1 else value
    if isinstance(v, (list, tuple)):
      return type(v)(self.static(x, what) for x in v)
    return v

  def shape_spec(self):
    return shape_spec(tuple(self.value.shape), tuple(self.value_b.shape),
                      f"{self.target_name} {self.node.name!r} at {self.path!r}")


def target_name(target) -> str:
  """``conv2d`` for ``F.conv2d`` and for ATen's ``aten.conv2d.default``."""
  schema = getattr(target, "_schema", None)
  if schema is not None:
    return schema.name.split("::")[-1]
  return getattr(target, "__name__", str(target))


def convert_graph(gm, runs, input_shape, mean, std, *, tables=None, path_of=node_path,
                  leaf_of=None):
  """torch.fx graph + recorded values (batch 2 and 3) → ``(TorchGraph, flat weights, paths)``.

  ``paths`` maps each op name to the module path it came from (for error messages). ``tables``
  (default: :func:`~jaxplain.convert.ops.functional_table`) maps call targets to converters,
  ``path_of`` gives a node's module path, and ``leaf_of``, for graphs without leaf-module calls
  (torch.export's), the leaf layer a node ran in: the last op of each call of a leaf layer
  becomes its tap.
  """
  funcs, methods = tables or op_tables.functional_table()
  a, b = runs[2], runs[3]
  modules = dict(gm.named_modules())
  ops, flat, names, calls, paths = [], {}, [], {}, {}
  emitted, dynamic = set(), set()
  output = None

  def depends(node):
    return any(getattr(i, "name", None) in dynamic for i in node.all_input_nodes)

  leaves = {}  # op name -> leaf layer path (torch.export graphs)
  for node in gm.graph.nodes:
    path = path_of(node)
    if node.op == "placeholder":
      if dynamic:
        raise ValueError(f"the module's forward takes more than one input ({node.name!r}); "
                         "jaxplain converts single-input classifiers")
      ops.append(Op(node.name, "input"))
      emitted.add(node.name)
      dynamic.add(node.name)
      continue
    if node.op == "output":
      out = node.args[0]
      if isinstance(out, (tuple, list)) and len(out) == 1:  # torch.export returns a tuple
        out = out[0]
      if not hasattr(out, "name") or out.name not in emitted or not is_tensor(a[out.name]):
        got = a.get(getattr(out, "name", ""), out)
        raise ValueError("the module must return one tensor (N, K), got "
                         f"{type(got).__name__}")
      output = out.name
      continue
    value = a[node.name]
    if node.op == "get_attr" or not depends(node):
      if is_tensor(value):
        if node.op != "get_attr" and not _same(value, b[node.name]):
          raise ValueError(f"{node.name!r} at {path!r} builds a tensor from the batch size "
                           f"({tuple(value.shape)} for a batch of 2); jaxplain cannot convert it")
        key = node.target if node.op == "get_attr" else f"_const.{node.name}"
        flat[key] = to_numpy(value)
        ops.append(Op(node.name, "param", weights=key))
        emitted.add(node.name)
        paths[node.name] = path
      continue
    dynamic.add(node.name)
    if node.op == "call_module" and value is None:
      continue  # torch.export's input guards
    if node.op == "call_module":
      m = modules[node.target]
      in_value = a.get(getattr(node.args[0], "name", None)) if node.args else None
      kind, params, wnames = op_tables.module_op(
          m, node.target, tuple(in_value.shape) if is_tensor(in_value) else (),
          tuple(value.shape) if is_tensor(value) else ())
      if kind == "view":
        params = {"shape": shape_spec(tuple(value.shape), tuple(b[node.name].shape),
                                      f"{type(m).__name__} at {node.target!r}")}
      inputs = node.args[:1]
      if kind == "multi_head_attention":
        args = op_tables.bind(node.args, node.kwargs, (
            ("query", None), ("key", None), ("value", None), ("key_padding_mask", None),
            ("need_weights", True), ("attn_mask", None), ("average_attn_weights", True),
            ("is_causal", False)))
        if args["key_padding_mask"] is not None or args["attn_mask"] is not None:
          raise ValueError(f"MultiheadAttention at {node.target!r}: masks are not supported")
        inputs = (args["query"], args["key"], args["value"])
        params = params | {"need_weights": bool(args["need_weights"])}
      refs = [x.name for x in inputs if getattr(x, "name", None) in emitted]
      if len(refs) != len(inputs):
        raise ValueError(f"{type(m).__name__} at {node.target!r}: its input must be a tensor "
                         "of the graph")
      for wn in wnames:
        flat[f"{node.target}.{wn}"] = to_numpy(m.get_parameter(wn) if wn in dict(
            m.named_parameters()) else m.get_buffer(wn))
      layer = None
      if is_tensor(value):
        calls[node.target] = calls.get(node.target, 0) + 1
        layer = node.target + (f"#{calls[node.target]}" if calls[node.target] > 1 else "")
        names.append(layer)
      ops.append(Op(node.name, kind, tuple(refs), freeze(params),
                    node.target if wnames else None, layer))
      emitted.add(node.name)
      paths[node.name] = node.target
      continue
    if not (is_tensor(value) or _is_tensor_tuple(value)):
      continue  # sizes, shapes, Python arithmetic: folded into the ops that use them
    if not node.users:
      continue  # a value nothing reads (a max pool's unused indices)
    target = node.target
    entry = funcs.get(target) if node.op == "call_function" else methods.get(target)
    what = target_name(target)
    if entry is None:
      raise ValueError(f"unsupported op {what!r} ({node.op}) at {path!r} (fx node "
                       f"{node.name!r}); see jaxplain.convert.SUPPORTED_FUNCTIONS for the "
                       "functions jaxplain converts")
    spec, converter = entry
    args = op_tables.bind(node.args, node.kwargs, spec)
    missing = [n for n, v in args.items() if v is op_tables.REQUIRED]
    if missing:
      raise ValueError(f"op {what!r} at {path!r}: cannot read arguments {missing}")
    ctx = NodeContext(node, path, runs, emitted, what)
    kind, inputs, params = converter(args, ctx)
    ops.append(Op(node.name, kind, tuple(inputs), freeze(params), None, None))
    emitted.add(node.name)
    paths[node.name] = path
    if leaf_of is not None and is_tensor(value) and leaf_of(node) is not None:
      leaves[node.name] = leaf_of(node)
  if leaves:
    ops, names = _leaf_taps(ops, leaves)
  if output is None:
    raise ValueError("the traced module has no output")
  used = {i for op in ops for i in op.inputs}  # drop tensors no op reads (BN's step counter)
  ops = [op for op in ops if op.kind != "param" or op.name in used]
  unused = set(flat) - {op.weights for op in ops if op.kind == "param"} - {
      k for k in flat if any(op.weights is not None and op.kind != "param" and
                             k.startswith(op.weights + ".") for op in ops)}
  flat = {k: v for k, v in flat.items() if k not in unused}
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
  return graph, flat, paths


def _leaf_taps(ops, leaves):
  """Marks the last op of each run of ops inside one leaf layer as that layer's tap."""
  calls, names, out = {}, [], list(ops)
  for i, op in enumerate(out):
    path = leaves.get(op.name)
    if path is None:
      continue
    nxt = next((o for o in out[i + 1:] if o.kind != "param"), None)
    if nxt is not None and leaves.get(nxt.name) == path and nxt.inputs and op.name in nxt.inputs:
      continue  # the layer's call goes on
    calls[path] = calls.get(path, 0) + 1
    layer = path + (f"#{calls[path]}" if calls[path] > 1 else "")
    out[i] = op._replace(layer=layer)
    names.append(layer)
  return out, names


def first_divergence(graph, variables, x, recorded, paths, tol):
  """``(op name, module path, kind, error)`` of the first op whose output differs from PyTorch.

  Runs the graph eagerly, op by op, and compares every tensor with the value PyTorch recorded.
  Returns None when every op agrees within ``tol`` (relative to the tensor's scale).
  """
  import jax.numpy as jnp
  values = graph.values(variables, jnp.asarray(x))
  for op in graph.ops:
    if op.kind in ("input", "param") or op.name not in recorded:
      continue
    want, got = recorded[op.name], values[op.name]
    pairs = zip(want, got) if isinstance(want, (tuple, list)) else [(want, got)]
    for w, g in pairs:
      if not is_tensor(w) or g is None:
        continue
      w = to_numpy(w).astype(np.float64)
      g = np.asarray(g, np.float64)
      if w.shape != g.shape:
        return op.name, paths.get(op.name, "?"), op.kind, f"shape {g.shape} != {w.shape}"
      if w.size == 0:
        continue
      err = float(np.max(np.abs(g - w)))
      if not err <= tol * (1 + float(np.max(np.abs(w)))):
        return op.name, paths.get(op.name, "?"), op.kind, f"max |diff| {err:.3g}"
  return None
