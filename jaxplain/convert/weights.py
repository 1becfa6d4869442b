"""Loading PyTorch code and weights: ``import_class``, ``build_module``, ``load_torch_weights``."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import json
import pathlib
import re
import sys
from typing import Any

from jaxplain.convert._common import is_tensor, torch_module

# Entries of a checkpoint dict that commonly hold the state dict, in the order they are tried.
COMMON_KEYS = ("state_dict", "model_state_dict", "model", "net", "network", "module",
               "model_state", "weights")


def import_class(spec: str):
  """The class named by ``"pkg.module:ClassName"`` or ``"path/to/file.py:ClassName"``.

  A file is loaded by path (its package's ``__init__`` is not run).
  """
  if not isinstance(spec, str) or ":" not in spec:
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


def build_module(model: str, model_args: str | dict | list | None = None):
  """Builds the PyTorch module that ``convert --model/--model-args`` names.

  Args:
    model: ``"pkg.module:ClassName"`` or ``"file.py:ClassName"`` (see :func:`import_class`).
    model_args: the constructor's arguments: a dict (keywords), a list (positional), their JSON
      text, or None.

  Returns:
    the module instance.

  Raises:
    ValueError: ``model_args`` is not JSON, or names an argument the class does not take (the
      message lists the accepted ones), or the constructor itself refuses the arguments.
  """
  if isinstance(model_args, str):
    try:
      model_args = json.loads(model_args) if model_args.strip() else {}
    except json.JSONDecodeError as e:
      raise ValueError(f"`model_args` is not JSON ({e}): {model_args!r}") from None
  model_args = {} if model_args is None else model_args
  if not isinstance(model_args, (dict, list)):
    raise ValueError(f"`model_args` must be a JSON object or list, got "
                     f"{type(model_args).__name__}")
  cls = import_class(model)
  try:
    sig = inspect.signature(cls)
  except (TypeError, ValueError):
    sig = None
  if sig is not None:
    params = [p for p in sig.parameters.values()
              if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    accepted = [p.name for p in params]
    described = ", ".join(p.name if p.default is p.empty else f"{p.name}={p.default!r}"
                          for p in params)
    try:
      if isinstance(model_args, dict):
        sig.bind(**model_args)
      else:
        sig.bind(*model_args)
    except TypeError as e:
      unknown = [k for k in model_args if k not in accepted] if isinstance(model_args, dict) \
          else []
      what = (f"unknown argument{'s' if len(unknown) > 1 else ''} "
              f"{', '.join(map(repr, unknown))}" if unknown else str(e))
      raise ValueError(f"`model_args`: {what} for {cls.__name__}; it accepts ({described})"
                       ) from None
  try:
    return cls(*model_args) if isinstance(model_args, list) else cls(**model_args)
  except TypeError as e:
    raise ValueError(f"`model_args`: {cls.__name__}({json.dumps(model_args)}) failed: {e}"
                     ) from None


def _kind(path: pathlib.Path) -> str:
  """What a weight file is, from its first bytes: safetensors, zip (torch.save), pickle, other."""
  with open(path, "rb") as f:
    head = f.read(16)
  if head[:4] == b"PK\x03\x04":
    return "zip"
  if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
    return "pickle"
  if len(head) >= 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < 1 << 32:
    return "safetensors"
  return "other"


def _read_safetensors(path: pathlib.Path):
  try:
    from safetensors import SafetensorError
    from safetensors.torch import load_file
  except ImportError:
    raise ImportError("reading .safetensors weights needs the safetensors package: pip install "
                      "'jaxplain[torch]'") from None
  try:
    return load_file(str(path), device="cpu")
  except (SafetensorError, OSError, ValueError) as e:
    raise ValueError(f"`weights`: {path} is not a readable safetensors file ("
                     f"{str(e).splitlines()[0][:200]})") from None


def _read_torch(path: pathlib.Path, trusted: bool):
  torch = torch_module()
  import pickle
  try:
    return torch.load(path, map_location="cpu", weights_only=not trusted)
  except pickle.UnpicklingError as e:
    found = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
    if found and not trusted:
      raise ValueError(f"{path} holds pickled Python objects ({found.group(1)}), which "
                       "torch.load(weights_only=True) refuses; if you trust the file, pass "
                       "trusted=True (CLI: --trusted) to run its pickle") from None
    raise ValueError(f"`weights`: {path} is damaged or not a PyTorch weight file (the pickle "
                     "inside cannot be read)") from None
  except (RuntimeError, EOFError, OSError, ValueError, AttributeError, ImportError) as e:
    if isinstance(e, (FileNotFoundError, IsADirectoryError)):
      raise
    first = (str(e).splitlines() or [type(e).__name__])[0][:200]
    raise ValueError(f"`weights`: {path} is damaged or not a PyTorch weight file "
                     f"({type(e).__name__}: {first})") from None


def _state_dict_of(obj, path, key):
  """The state dict inside what a file held: ``key`` or a common entry, or the whole dict."""
  torch = torch_module()
  if key is not None:
    if not isinstance(obj, dict) or key not in obj:
      keys = sorted(obj) if isinstance(obj, dict) else type(obj).__name__
      raise ValueError(f"{path} has no entry {key!r}; it holds {keys}")
    obj = obj[key]
  if isinstance(obj, torch.nn.Module):
    obj = obj.state_dict()
  if not isinstance(obj, dict):
    raise ValueError(f"{path} holds a {type(obj).__name__}, not a state dict")
  if key is None and not any(is_tensor(v) for v in obj.values()):
    found = [k for k in COMMON_KEYS if isinstance(obj.get(k), (dict, torch.nn.Module))]
    candidates = [k for k in found if isinstance(obj[k], torch.nn.Module)
                  or any(is_tensor(v) for v in obj[k].values())]
    if len(candidates) == 1:
      return _state_dict_of(obj, path, candidates[0])
    raise ValueError(f"{path} holds a dict without tensors (keys {sorted(obj)[:10]}); name the "
                     "entry with the state dict with key=... (CLI: --key)")
  return obj


def _strip(obj: dict, want: set[str], prefix: str | None) -> dict:
  """Removes ``prefix`` (or, found automatically, ``module.`` or one shared leading name)."""
  if prefix is not None:
    kept = {k[len(prefix):]: v for k, v in obj.items() if k.startswith(prefix)}
    return kept
  if obj and all(k.startswith("module.") for k in obj):  # saved from DataParallel / DDP
    obj = {k.removeprefix("module."): v for k, v in obj.items()}
  if not (obj.keys() & want) and obj:
    heads = {k.split(".", 1)[0] for k in obj if "." in k}
    for head in sorted(heads):  # e.g. Lightning's "model." wrapper
      inner = {k[len(head) + 1:]: v for k, v in obj.items() if k.startswith(head + ".")}
      if inner.keys() == want and len(inner) == len(obj):
        return inner
  return obj


def _prefix_hint(obj: dict, want: set[str]) -> str:
  heads = sorted({k.split(".", 1)[0] for k in obj if "." in k})
  for head in heads:
    if {k[len(head) + 1:] for k in obj if k.startswith(head + ".")} >= want:
      return f"; the entries under '{head}.' fit: pass prefix='{head}.'"
  return ""


def load_torch_weights(module, path, *, key: str | None = None, prefix: str | None = None,
                       trusted: bool = False):
  """Loads a state dict from ``path`` into ``module`` (in place) and returns the module.

  Reads ``.safetensors`` files and files written by ``torch.save`` (a state dict, a dict holding
  one, or, ``trusted`` only, a pickled module). The state dict is found under ``key``, or else
  under one of the usual entries (``state_dict``, ``model_state_dict``, ``model``, ``net``,
  ``network``, ...); DataParallel's ``module.`` prefix and a single wrapper name (Lightning's
  ``model.``) are removed when the module's names then match.

  Args:
    module: the ``torch.nn.Module`` to fill.
    path: the weight file.
    key: the entry of a checkpoint dict that holds the state dict (e.g. ``"network"``).
    prefix: keep only the keys starting with this prefix, without it (e.g. ``"backbone."``).
    trusted: allow pickled Python objects (``torch.load(weights_only=False)``), which can run
      arbitrary code: only for files you trust.

  Raises:
    ValueError: a missing, empty or damaged file; pickled code while ``trusted`` is False;
      ``key`` absent; NaN or infinite weights (named); or a state dict that does not fit
      (missing, unexpected and wrong-shape keys are listed).
  """
  torch = torch_module()
  path = pathlib.Path(path)
  if not path.is_file():
    raise ValueError(f"`weights`: no such file {path}")
  if path.stat().st_size == 0:
    raise ValueError(f"`weights`: {path} is empty (0 bytes)")
  kind = _kind(path)
  if kind == "safetensors" or path.suffix == ".safetensors":
    obj = _read_safetensors(path)
  elif kind == "other":
    raise ValueError(f"`weights`: {path} is not a weight file jaxplain reads (neither a "
                     "torch.save file, a pickle nor safetensors)")
  else:
    obj = _read_torch(path, trusted)
  obj = _state_dict_of(obj, path, key)
  want = module.state_dict()
  obj = _strip(obj, set(want), prefix)
  missing = sorted(want.keys() - obj.keys())
  unexpected = sorted(obj.keys() - want.keys())
  shapes = [f"{k}: file {tuple(obj[k].shape)} != module {tuple(want[k].shape)}"
            for k in sorted(want.keys() & obj.keys())
            if is_tensor(obj[k]) and tuple(obj[k].shape) != tuple(want[k].shape)]
  if missing or unexpected or shapes:
    raise ValueError(f"the weights in {path} do not fit {type(module).__name__}: missing keys "
                     f"{missing}, unexpected keys {unexpected}, wrong shapes {shapes}"
                     f"{_prefix_hint(obj, set(want)) if prefix is None else ''}")
  bad = nonfinite(obj)
  if bad:
    raise ValueError(f"the weights in {path} hold NaN or infinite values: {bad}; the file is "
                     "damaged or the training diverged")
  module.load_state_dict(obj)
  del torch
  return module


def nonfinite(tensors: dict[str, Any], limit: int = 5) -> list[str]:
  """``["name (k NaN, j Inf of n)", ...]`` for floating tensors with non-finite values."""
  out = []
  for name, t in tensors.items():
    if is_tensor(t) and t.is_floating_point() and not bool(t.detach().sum().isfinite()):
      nan, inf = int(t.isnan().sum()), int(t.isinf().sum())
      if nan or inf:
        out.append(f"{name} ({nan} NaN, {inf} Inf of {t.numel()})")
  return out[:limit] + ([f"... {len(out) - limit} more"] if len(out) > limit else [])
