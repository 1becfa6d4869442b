"""PyTorch CNNs → jaxplain classifiers (torch imported lazily, only to convert).

:func:`from_torch` traces a ``torch.nn.Module`` with ``torch.fx`` (:mod:`.fx`; leaf ``torch.nn``
layers stay whole, everything else is traced through), or, where fx cannot trace or convert it,
captures it with ``torch.export`` (:mod:`.export`, ATen ops), runs the graph on example inputs
to learn every shape, and maps each node to a JAX op (:mod:`.ops`). The result is a
:class:`jaxplain.graph.TorchGraph`, the torch-free format that :func:`jaxplain.save_classifier`
stores (metadata kind ``"torch_graph"``) and :func:`jaxplain.load_classifier` reads without
torch. :mod:`.weights` reads PyTorch weight files (``torch.save`` files and ``.safetensors``).

Layer names are PyTorch module paths (``conv_2.1``); a tapped 4-D activation is returned (and its
``delta`` taken) in NHWC, like jaxplain's own CNN, other activations as PyTorch shapes them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxplain import models
from jaxplain.convert._common import is_tensor, to_torch, torch_module
from jaxplain.convert.ops import SUPPORTED_FUNCTIONS, SUPPORTED_MODULES
from jaxplain.convert.weights import build_module, import_class, load_torch_weights, nonfinite
from jaxplain.data import CLASS_NAMES
from jaxplain.graph import (FINAL_ACTIVATIONS, KIND, OPS, TorchGraph, apply_op, build_from_meta,
                            jsonable, nest)

__all__ = ["from_torch", "FRONTENDS", "load_torch_weights", "import_class", "build_module",
           "build_from_meta", "TorchGraph", "torch_difference", "SUPPORTED_MODULES",
           "SUPPORTED_FUNCTIONS"]

# Names kept for code written against the single-file converter.
_to_torch = to_torch
_torch = torch_module
_is_tensor = is_tensor
_OPS = OPS


def _norm(v, name: str, channels: int) -> tuple[float, ...]:
  arr = np.asarray(v, np.float64).reshape(-1)
  if arr.size not in (1, channels):
    raise ValueError(f"`{name}` must be a scalar or {channels} per-channel values, got "
                     f"{arr.size} values")
  if name == "std" and (arr <= 0).any():
    raise ValueError(f"`std` must be positive, got {arr.tolist()}")
  return tuple(float(a) for a in arr)


FRONTENDS = ("auto", "fx", "export")


def _front_end(front, module, example, shape, mean, std):
  """``(graph module, recorded values, convert_graph's result)`` from one front end."""
  from jaxplain.convert import export, fx
  if front == "fx":
    gm = fx.trace(module)
    options = {}
  else:
    gm = export.export_graph(module, example[2])
    options = {"tables": export.aten_table(), "path_of": export.node_path,
               "leaf_of": export.leaf_paths(module)}
  try:
    runs = {2: fx.run(gm, example[2])}
    runs[3] = fx.run_shapes(gm, example[3]) or fx.run(gm, example[3])
  except Exception as e:  # the module's own error, e.g. a Linear that wants another size
    raise ValueError(f"{type(module).__name__} fails on inputs of `input_shape` {shape} "
                     f"(N, C, H, W): {type(e).__name__}: {str(e).splitlines()[0]}") from None
  return gm, runs, fx.convert_graph(gm, runs, shape, mean, std, **options)


def from_torch(module, *, input_shape: Sequence[int] = (1, 48, 48), mean=0.0, std=1.0,
               output_activation: str = "keep", class_names: Sequence[str] | None = None,
               check: bool = True, frontend: str = "auto") -> models.Classifier:
  """Converts a PyTorch CNN into a jaxplain :class:`~jaxplain.models.Classifier`.

  The module is traced with ``torch.fx`` in eval mode (its mode is restored afterwards), or,
  where fx cannot trace or convert it, captured with ``torch.export`` (ATen ops); the graph runs
  on example inputs to fix every shape (a batch of 2 for real, a batch of 3 with FakeTensors for
  the shapes alone), and each node maps to a JAX op computing in PyTorch's layout.

  Args:
    module: a ``torch.nn.Module`` taking ``(N, C, H, W)``; its parameters' dtype is kept.
    input_shape: ``(C, H, W)`` the module takes.
    mean, std: scalars or per-channel sequences; the classifier applies ``(x - mean) / std`` to
      its [0, 1] input, as the PyTorch pipeline's ``Normalize`` did.
    output_activation: ``"keep"`` PyTorch's outputs, or ``"strip"`` a final Sigmoid, Softmax or
      LogSoftmax (module or functional) so explanations see logits.
    class_names: the K class names (default: FER2013's seven when K = 7, else ``"0"``...).
    check: compare with PyTorch on random example inputs and raise, naming the first op that
      diverges, if they differ.
    frontend: ``"fx"`` (torch.fx symbolic tracing; leaf layers stay whole), ``"export"``
      (``torch.export``: data-dependent Python on shapes, calls fx cannot proxy; taps are the
      leaf layers' last ops, named by module path) or ``"auto"``: fx, and export where fx
      cannot trace or convert the module. A failed numeric check does not switch front ends.

  Returns:
    a classifier taking ``(N, H, W, C)`` float in [0, 1], returning ``(N, K)``; its
    ``layer_names`` are PyTorch module paths of the leaf modules, in execution order.

  Raises:
    ValueError: an op or layer jaxplain does not convert (named with its module path), a
      module neither torch.fx nor torch.export can capture (both reasons given), NaN or
      infinite weights (named), outputs that are not ``(N, K)``, or a converted model that
      differs from PyTorch (the first diverging op named).
  """
  from jaxplain.convert import fx
  torch = torch_module()
  if frontend not in FRONTENDS:
    raise ValueError(f"`frontend` must be one of {FRONTENDS}, got {frontend!r}")
  if output_activation not in ("keep", "strip"):
    raise ValueError(f"`output_activation` must be 'keep' or 'strip', got {output_activation!r}")
  if len(tuple(input_shape)) != 3:
    raise ValueError(f"`input_shape` must be (C, H, W), got {tuple(input_shape)}")
  c, h, w = (int(s) for s in input_shape)
  mean_t, std_t = _norm(mean, "mean", c), _norm(std, "std", c)
  bad = nonfinite(dict(module.named_parameters()) | dict(module.named_buffers()))
  if bad:
    raise ValueError(f"{type(module).__name__} holds NaN or infinite weights: {bad}")
  tensors = list(module.parameters()) + list(module.buffers())
  floats = [t for t in tensors if t.is_floating_point()]
  tdtype = floats[0].dtype if floats else torch.float32
  device = tensors[0].device if tensors else "cpu"
  was_training = module.training
  module.eval()
  try:
    rng = np.random.default_rng(0)
    images = {n: rng.uniform(size=(n, h, w, c)) for n in (2, 3)}
    mean_a, std_a = np.asarray(mean_t), np.asarray(std_t)
    example = {n: to_torch(((im - mean_a) / std_a).transpose(0, 3, 1, 2), tdtype, device)
               for n, im in images.items()}
    fronts = ("fx", "export") if frontend == "auto" else (frontend,)
    failures = []
    for front in fronts:
      try:
        gm, runs, (graph, flat, paths) = _front_end(front, module, example, (c, h, w), mean_t,
                                                    std_t)
        break
      except ValueError as e:
        failures.append(str(e) if not failures else f"torch.export front end: {e}")
    else:
      raise ValueError("; ".join(failures))
  finally:
    module.train(was_training)
  variables = jax.tree.map(jnp.asarray, nest(flat))
  reference = runs[2][graph.output]
  jdtype = jnp.asarray(np.zeros((), tdtype_to_numpy(tdtype))).dtype
  if check:
    x2 = jnp.asarray(images[2], jdtype)
    got = np.asarray(jax.jit(graph)(variables, x2), np.float64)
    want = reference.detach().cpu().double().numpy().reshape(got.shape)
    tol = 1e-8 if got.dtype == np.float64 and jdtype == jnp.float64 else 1e-4
    err = float(np.max(np.abs(got - want))) if got.size else 0.0
    if not err <= tol * (1 + float(np.max(np.abs(want)))):
      was_training = module.training
      module.eval()
      try:
        recorded = fx.run(gm, example[2], copy=True)
      finally:
        module.train(was_training)
      where = fx.first_divergence(graph, variables, x2, recorded, paths, tol)
      if where is not None:
        name, path, kind, detail = where
        cause = (f"the first op that differs is {kind!r} (fx node {name!r}) at {path!r}: "
                 f"{detail} (jaxplain maps it differently, or PyTorch changed one of its "
                 "inputs in place after computing it: inplace=True, +=, relu_)")
      else:
        cause = ("every op agrees when run one by one, so the module probably mutates a tensor "
                 "in place that it uses again")
      raise ValueError(f"converted {type(module).__name__} differs from PyTorch by {err:.3g} on "
                       f"example inputs; {cause}")
  stripped = None
  if output_activation == "strip":
    last = next(o for o in graph.ops if o.name == graph.output)
    if last.kind in FINAL_ACTIVATIONS:
      stripped = {"kind": last.kind, "params": {k_: jsonable(v) for k_, v in last.params}}
      ops = tuple(o for o in graph.ops if o.name != last.name)
      graph = dataclasses.replace(graph, ops=ops, output=last.inputs[0], layer_names=tuple(
          n for n in graph.layer_names if n != last.layer))
  k = int(np.prod(reference.shape[1:]))
  names = tuple(class_names) if class_names is not None else (
      CLASS_NAMES if k == len(CLASS_NAMES) else tuple(str(i) for i in range(k)))
  if len(names) != k:
    raise ValueError(f"`class_names` has {len(names)} names, the model has {k} outputs")
  config = graph.config() | {
      "variables": {p: [list(a.shape), str(jnp.asarray(a).dtype)] for p, a in flat.items()},
      "stripped": stripped}
  meta = {"kind": KIND, "config": config, "frontend": front,
          "source": f"{type(module).__module__}.{type(module).__qualname__}"}
  return models.Classifier(apply_fn=graph, variables=variables, class_names=names,
                           input_shape=(h, w, c), layer_names=graph.layer_names, metadata=meta)


def tdtype_to_numpy(tdtype):
  return {"torch.float64": np.float64, "torch.float16": np.float16}.get(str(tdtype), np.float32)


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
  torch = torch_module()
  config = clf.metadata["config"]
  images = np.asarray(images)
  mean = np.asarray(config["mean"]).reshape(1, 1, 1, -1)
  std = np.asarray(config["std"]).reshape(1, 1, 1, -1)
  ref = next(iter(module.parameters()))
  was_training = module.training
  module.eval()
  try:
    with torch.no_grad():
      want = module(to_torch(((images - mean) / std).transpose(0, 3, 1, 2), ref.dtype,
                             ref.device))
  finally:
    module.train(was_training)
  want = want.detach().cpu().double().numpy().reshape(len(images), -1)
  got = clf.forward(jnp.asarray(images, jax.tree.leaves(clf.variables)[0].dtype))
  if config.get("stripped"):
    s = config["stripped"]
    got = apply_op(s["kind"], [got], s["params"])
  got = np.asarray(got, np.float64).reshape(len(images), -1)
  return {"max_abs_diff": float(np.max(np.abs(got - want))),
          "argmax_agree": int((got.argmax(1) == want.argmax(1)).sum()), "n": len(images)}
