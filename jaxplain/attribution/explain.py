"""One entry point for every registered attribution method by name, over many faces in chunks."""

from __future__ import annotations

from collections.abc import Callable

import jax
import numpy as np

from jaxplain import batching
from jaxplain.attribution import registry
from jaxplain.models import Classifier

__all__ = ["attribute", "attribute_many", "check_method", "default_cam_layer", "method_options"]


def default_cam_layer(classifier: Classifier) -> str:
  """Deprecated name of :func:`jaxplain.attribution.registry.default_layer`."""
  return registry.default_layer(classifier)


def method_options(classifier: Classifier, method: str, options: dict) -> dict:
  """``options`` completed with the method's registered defaults and default layer.

  Raises ``ValueError`` naming an option the method does not take, before any work.
  """
  m = registry.get(method)
  unknown = sorted(set(options) - set(m.options))
  if unknown:
    raise ValueError(f"method {m.name!r} takes no option(s) {unknown}; its options: "
                     f"{list(o for o in m.options if o != 'key')}")
  options = {k: v for k, v in m.defaults.items() if k in m.options} | dict(options)
  if m.layer:
    if options.get("layer") is None:
      options["layer"] = registry.default_layer(classifier)
    classifier.check_layer(options["layer"])
  return options


def check_method(classifier: Classifier, method: str, options: dict, *, key=None) -> dict:
  """Every check ``method`` makes of ``options``, now: it is traced on one abstract image
  (``jax.eval_shape``, nothing is computed). Returns the completed options."""
  options = method_options(classifier, method, options)
  x = jax.ShapeDtypeStruct((1,) + tuple(classifier.input_shape), np.float32)
  t = jax.ShapeDtypeStruct((1,), np.int32)
  key = jax.random.key(0) if key is None else key
  try:
    jax.eval_shape(lambda x, t: attribute(classifier, x, t, method=method, key=key, **options),
                   x, t)
  except ValueError as e:
    if "traced" not in str(e):  # a method that needs concrete images (to segment them, say)
      raise                     # checks the rest when it runs
  return options


def attribute(classifier: Classifier, inputs, target, *, method: str, key=None, **options):
  """The registered ``method`` of ``classifier`` on ``inputs`` for ``target``.

  Args:
    classifier: the model (layer methods need its named layers).
    inputs: float ``(N, H, W, C)`` in [0, 1].
    target: an int or ``(N,)`` class indices.
    method: a name from :func:`jaxplain.attribution.registry.names` (or an alias: ``ig``,
      ``guided``, ``gradcam``).
    key: PRNG key, required by random methods (SmoothGrad, ...), ignored by the others.
    **options: the method's options; unset ones take the registered defaults (the report's
      settings), the rest the function's own (Captum's).
  """
  m = registry.get(method)
  options = method_options(classifier, method, options)
  if m.random:
    if key is None:
      raise ValueError(f"method {m.name!r} is random: pass key=jax.random.key(seed)")
    options["key"] = key
  elif key is not None and "key" in m.options:
    options["key"] = key
  return m.fn(classifier if m.classifier else classifier.forward, inputs, target, **options)


def attribute_many(classifier: Classifier, inputs, target, *, method: str, key=None,
                   images_per_batch: int = 32, progress: Callable[[int], None] | None = None,
                   chunk: int | None = None, **options) -> np.ndarray:
  """:func:`attribute` over many faces, ``images_per_batch`` at a time.

  Every call sees the same shape (the last batch is padded), so one compilation serves any
  count; ``progress(n)`` is called after each batch of ``n`` faces. ``chunk`` is the deprecated
  name of ``images_per_batch``. Random methods get ``fold_in(key, batch index)``.
  """
  if chunk is not None:
    import warnings
    warnings.warn("attribute_many(chunk=...) is deprecated; use images_per_batch=...",
                  DeprecationWarning, stacklevel=2)
    images_per_batch = chunk
  registry.get(method)  # a bad name fails before any work
  options = method_options(classifier, method, options)
  inputs, target = np.asarray(inputs), np.asarray(target)
  if target.ndim == 0:
    target = np.full(len(inputs), int(target))
  fn = lambda *args: attribute(classifier, *args[-2:], method=method,
                               key=args[0] if len(args) == 3 else None, **options)
  return batching.map_chunks(fn, (inputs, target.astype(np.int32)), size=images_per_batch,
                             progress=progress, key=key)
