"""The one table of attribution methods: name, function, kind, defaults, sign.

Each method module registers its public function with :func:`register`, once, beside its
definition. :func:`~jaxplain.attribution.attribute`, the CLI's ``--method`` choices, the report's
method grid, the figures' colour scales and the benchmark all read this table, so adding a
method is one file and one ``@register(...)`` line.

Functions take ``(forward, inputs, target, **options)``; a method registered with
``classifier=True`` takes the :class:`~jaxplain.models.Classifier` instead of its forward (layer
methods, which need named layers), and one registered with ``layer=True`` gets the default layer
(:func:`default_layer`) unless a ``layer`` is passed. ``random=True`` methods take a required
``key``.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np

from jaxplain import batching

__all__ = ["KINDS", "Method", "default_layer", "get", "names", "register"]

KINDS = ("gradient", "path", "perturbation", "layer", "modified-backward")


@dataclasses.dataclass(frozen=True)
class Method:
  """One registered attribution method.

  Attributes:
    name: the name the CLI, the report and ``attribute(method=...)`` use (snake case, the same
      as the function's name).
    fn: the function.
    kind: one of :data:`KINDS`.
    signed: whether its maps carry a sign worth showing (IG, occlusion) or are magnitudes.
    label: the human name on figures.
    classifier: ``fn`` takes the ``Classifier`` (layers), not its forward.
    layer: ``fn`` takes a ``layer``; :func:`default_layer` fills it in when not given.
    random: ``fn`` takes a required ``key``.
    defaults: options ``attribute`` passes unless the caller sets them (the report's and the
      CLI's settings; the function's own defaults are Captum's).
    aliases: older or short names that also select it (``ig``, ``gradcam``).
  """

  name: str
  fn: Callable
  kind: str
  signed: bool
  label: str
  classifier: bool = False
  layer: bool = False
  random: bool = False
  defaults: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  aliases: tuple[str, ...] = ()

  @property
  def options(self) -> tuple[str, ...]:
    """Keyword options ``fn`` accepts (after forward, inputs, target)."""
    params = list(inspect.signature(self.fn).parameters.values())[3:]
    return tuple(p.name for p in params if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD))


_METHODS: dict[str, Method] = {}
_ALIASES: dict[str, str] = {}


def register(name: str, *, kind: str, signed: bool, label: str | None = None,
             classifier: bool = False, layer: bool = False, random: bool = False,
             defaults: Mapping[str, Any] | None = None, aliases: tuple[str, ...] = ()):
  """Decorator registering ``fn`` as attribution method ``name`` (see :class:`Method`)."""
  if kind not in KINDS:
    raise ValueError(f"`kind` must be one of {KINDS}, got {kind!r}")

  def add(fn: Callable) -> Callable:
    taken = {name, *aliases} & (set(_METHODS) | set(_ALIASES))
    if taken:
      raise ValueError(f"attribution method name(s) {sorted(taken)} already registered")
    _METHODS[name] = Method(name=name, fn=fn, kind=kind, signed=signed,
                            label=label or name.replace("_", " "), classifier=classifier,
                            layer=layer, random=random, defaults=dict(defaults or {}),
                            aliases=tuple(aliases))
    _ALIASES.update({a: name for a in aliases})
    return fn

  return add


def names(kind: str | None = None) -> tuple[str, ...]:
  """Registered method names (of ``kind``), grouped by kind in :data:`KINDS` order."""
  ordered = sorted(_METHODS.values(), key=lambda m: KINDS.index(m.kind))
  return tuple(m.name for m in ordered if kind is None or m.kind == kind)


def get(name: str) -> Method:
  """The method registered as ``name`` or one of its aliases."""
  method = _METHODS.get(_ALIASES.get(name, name))
  if method is None:
    raise ValueError(f"unknown attribution method {name!r}; choose one of {list(_METHODS)}")
  return method


def default_layer(classifier) -> str:
  """The one default layer of every layer method: the last with ``(N, h, w, C)`` maps of at
  least 1/8 of the input's side (Grad-CAM's usual choice, the last convolutional block: coarse
  enough to be semantic, fine enough to localise; ``conv4_2``, 6×6, on jaxplain's CNN)."""
  x = jax.ShapeDtypeStruct((1,) + tuple(classifier.input_shape), np.float32)
  side = max(2, min(classifier.input_shape[:2]) // 8)
  best = None
  for layer in classifier.layer_names:
    shape = batching.eval_shape(classifier.tapped(layer), x, None)[1].shape
    if len(shape) == 4 and min(shape[1:3]) >= side:
      best = layer
  if best is None:
    raise ValueError(f"the classifier has no spatial layer for a layer method; its layers: "
                     f"{list(classifier.layer_names)}")
  return best
