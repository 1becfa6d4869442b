"""Randomisation (sanity checks): does the explanation depend on what the model learned?

These metrics take the attribution method, not its maps: ``metric(method, classifier, inputs,
target, *, key, ...)``, because they explain other models (randomised weights) or other classes.
The method is called as ``method(classifier, inputs, target, **method_options)`` (methods of
:mod:`jaxplain.attribution` accept a ``Classifier`` in place of its forward); randomised
classifiers have the same pytree structure, so the method compiles once for all of them.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxplain.metrics._common import (call_method, check_method, check_metric_call, flat,
                                      preprocess, spearman, pearson, split_options, ssim)
from jaxplain.models import Classifier

__all__ = ["Randomisation", "SIMILARITIES", "layer_groups", "model_parameter_randomisation",
           "random_logit", "randomise_layer", "randomised_classifiers", "randomised_maps",
           "similarity"]

SIMILARITIES = ("spearman", "pearson", "ssim", "ssim_flat")
LAYER_ORDERS = ("top_down", "bottom_up", "independent")
_COLLECTIONS = ("params", "batch_stats")


class Randomisation(NamedTuple):
  """Similarities between the original explanation and those of randomised models.

  Attributes:
    layers: names of the randomised layers, in the order they were randomised.
    scores: ``(L, N)`` similarity after randomising each layer (cascading: that layer and all
      before it in ``layers``; independent: that layer alone).
    original: ``(N,)`` similarity of the given maps with the method re-run on the original
      model (Quantus's ``"original"`` entry; 1 for a deterministic method).
  """

  layers: tuple[str, ...]
  scores: jax.Array
  original: jax.Array


def similarity(a, b, kind: str | Callable = "spearman"):
  """Per-image similarity of two ``(N, H, W, C)`` batches of maps.

  ``"spearman"`` / ``"pearson"``: rank / linear correlation of the flattened maps.
  ``"ssim"``: structural similarity over each ``H × W`` map (7 × 7 windows, averaged over
  channels), as Adebayo et al. compare maps. ``"ssim_flat"``: SSIM of the flattened maps with
  7-long windows, which is what Quantus 0.6's ``ssim`` computes (it reshapes the maps to
  ``(N, -1)`` before calling scikit-image). A callable takes ``(a, b)`` and returns ``(N,)``.
  """
  if callable(kind):
    return kind(a, b)
  if kind == "spearman":
    return spearman(flat(a), flat(b))
  if kind == "pearson":
    return pearson(flat(a), flat(b))
  if kind == "ssim":
    return ssim(a, b, axes=(1, 2)).mean(-1)
  if kind == "ssim_flat":
    return ssim(flat(a), flat(b), axes=(1,))
  raise ValueError(f"`similarity` must be one of {SIMILARITIES} or a function, got {kind!r}")


def _check_similarity(kind):
  if not callable(kind) and kind not in SIMILARITIES:
    raise ValueError(f"`similarity` must be one of {SIMILARITIES} or a function, got {kind!r}")
  return kind


# ---------------------------------------------------------------------------------------------
# Layers of a classifier's variables, and their re-initialisation
# ---------------------------------------------------------------------------------------------


def _key_name(k) -> str:
  return str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k))))


def layer_groups(classifier: Classifier) -> tuple[tuple[str, tuple], ...]:
  """The classifier's parametrised layers, input to output: ``(name, leaf paths)``.

  A layer is one innermost dict of arrays (a convolution's kernel and bias, a normalisation's
  scale, bias and statistics), Flax collections (``params``, ``batch_stats``) merged; these are
  the modules PyTorch's ``reset_parameters`` re-initialises one at a time. Layers are ordered by
  the classifier's ``layer_names`` (a weight layer before the normalisation that follows it
  under the same name), else by their order in the variables.
  """
  leaves = jax.tree_util.tree_flatten_with_path(classifier.variables)[0]
  groups: dict[str, list] = {}
  for path, _ in leaves:
    names = [_key_name(k) for k in path]
    if len(names) > 1 and names[0] in _COLLECTIONS:
      names = names[1:]
    groups.setdefault(".".join(names[:-1]) or names[-1], []).append(path)
  layer_names = list(classifier.layer_names)
  first = {name: i for i, name in enumerate(groups)}

  def weighted(paths):
    return any(np.ndim(_get(classifier.variables, p)) >= 2 for p in paths)

  def position(name):
    matches = [i for i, ln in enumerate(layer_names) if name == ln or name.startswith(ln + "_")]
    index = max(matches, key=lambda i: len(layer_names[i])) if matches else \
        len(layer_names) + first[name]
    return index, 0 if weighted(groups[name]) else 1, first[name]

  return tuple((name, tuple(groups[name])) for name in sorted(groups, key=position))


def _get(tree, path):
  for k in path:
    tree = tree[getattr(k, "key", getattr(k, "idx", None))]
  return tree


def _fan_in(name: str, shape) -> int:
  if name == "kernel":  # Flax layout: (..., in, out)
    return int(np.prod(shape[:-1]))
  return int(np.prod(shape[1:]))  # PyTorch layout: (out, in, ...)


def randomise_layer(leaves: dict[str, jax.Array], uniforms: dict[str, jax.Array]):
  """New values for one layer's leaves (leaf name → array), as PyTorch ``reset_parameters``:
  weights (``kernel``/``weight`` of rank ≥ 2) and their bias ``U(-1/√fan_in, 1/√fan_in)``
  (Kaiming-uniform with a = √5), from the U(0, 1) draws ``uniforms`` of the same shapes; a
  normalisation layer's scale 1, bias 0, running mean 0 and variance 1. Other leaves are kept."""
  weights = [n for n, v in leaves.items() if n in ("kernel", "weight") and np.ndim(v) >= 2]
  out = dict(leaves)
  if weights:
    bound = 1 / np.sqrt(_fan_in(weights[0], np.shape(leaves[weights[0]])))
    for n, v in leaves.items():
      if n in weights or n == "bias":
        out[n] = ((2 * uniforms[n] - 1) * bound).astype(jnp.asarray(v).dtype)
    return out
  reset = {"scale": 1, "weight": 1, "bias": 0, "mean": 0, "running_mean": 0, "var": 1,
           "running_var": 1}
  for n, v in leaves.items():
    if n in reset:
      out[n] = jnp.full(np.shape(v), reset[n], jnp.asarray(v).dtype)
  return out


@jax.jit
def _uniforms(key, variables):
  """U(0, 1) draws shaped like every leaf, leaf ``i`` from ``fold_in(key, i)`` (one compile per
  model structure)."""
  leaves, treedef = jax.tree_util.tree_flatten(variables)
  draws = [jax.random.uniform(jax.random.fold_in(key, i), jnp.shape(v),
                              jnp.result_type(v) if jnp.issubdtype(jnp.result_type(v),
                                                                   jnp.floating) else jnp.float32)
           for i, v in enumerate(leaves)]
  return jax.tree_util.tree_unflatten(treedef, draws)


def _replace(variables, paths, values):
  flat_leaves, treedef = jax.tree_util.tree_flatten_with_path(variables)
  new = {tuple(p): v for p, v in zip(paths, values)}
  return jax.tree_util.tree_unflatten(treedef, [new.get(tuple(p), v) for p, v in flat_leaves])


def randomised_classifiers(classifier: Classifier, *, key, layer_order: str = "top_down",
                           layers: Sequence[str] | None = None):
  """``(layer name, classifier)`` pairs with layers re-initialised one after another.

  ``"top_down"`` (Adebayo et al.'s cascading randomisation, Quantus's default) starts at the
  output layer and keeps every earlier randomisation; ``"bottom_up"`` starts at the input;
  ``"independent"`` randomises each layer alone in the original model. The weights of the
  variables' leaf ``i`` are drawn from ``fold_in(key, i)``, whatever the order (Quantus re-seeds
  PyTorch with the same seed before each layer).

  Args:
    classifier: the model.
    key: PRNG key.
    layer_order: ``"top_down"``, ``"bottom_up"`` or ``"independent"``.
    layers: names from :func:`layer_groups` to randomise (default all).
  """
  if layer_order not in LAYER_ORDERS:
    raise ValueError(f"`layer_order` must be one of {LAYER_ORDERS}, got {layer_order!r}")
  groups = layer_groups(classifier)
  if layers is not None:
    known = [g[0] for g in groups]
    unknown = [n for n in layers if n not in known]
    if unknown:
      raise ValueError(f"`layers` {unknown} are not layers of the classifier; its layers: {known}")
    groups = tuple(g for g in groups if g[0] in set(layers))
  if layer_order == "top_down":
    groups = groups[::-1]
  variables = classifier.variables
  uniforms = _uniforms(key, variables)
  out = []
  for name, paths in groups:
    base = classifier.variables if layer_order == "independent" else variables
    leaves = {_key_name(p[-1]): _get(base, p) for p in paths}
    new = randomise_layer(leaves, {_key_name(p[-1]): _get(uniforms, p) for p in paths})
    variables = _replace(base, paths, [new[_key_name(p[-1])] for p in paths])
    out.append((name, dataclasses.replace(classifier, variables=variables)))
  return out


# ---------------------------------------------------------------------------------------------
# Model parameter randomisation
# ---------------------------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=("method", "static", "abs", "normalise"))
def _explain(model, inputs, target, dynamic, *, method, static, abs, normalise):  # noqa: A002
  a = call_method(method, model, inputs, target, static, dynamic)
  return preprocess(a, normalise=normalise, abs=abs)


@functools.partial(jax.jit, static_argnames=("kind",))
def _similar(a, b, *, kind):
  return similarity(a, b, kind)


def _prepare(method, classifier, inputs, target, attributions, method_options,
             abs, normalise):  # noqa: A002
  method = check_method(method)
  if not isinstance(classifier, Classifier):
    raise ValueError(f"`classifier` must be a jaxplain Classifier (its weights are randomised), "
                     f"got {type(classifier).__name__}")
  _, inputs, target, _ = check_metric_call(classifier, inputs, target, None,
                                           need_attributions=False)
  static, dynamic = split_options(method_options)
  explain = functools.partial(_explain, inputs=inputs, target=target, dynamic=dynamic,
                              method=method, static=static, abs=bool(abs),
                              normalise=bool(normalise))
  original = explain(classifier)
  if attributions is None:
    a = original
  else:
    _, _, _, a = check_metric_call(classifier, inputs, target, attributions)
    a = preprocess(a, normalise=bool(normalise), abs=bool(abs))
  return explain, a, original


def model_parameter_randomisation(method, classifier: Classifier, inputs, target, *, key=None,
                                  attributions=None, layer_order: str = "top_down",
                                  similarity="spearman", abs: bool = True,  # noqa: A002
                                  normalise: bool = True, method_options=None,
                                  models: Sequence[tuple[str, Classifier]] | None = None,
                                  layers: Sequence[str] | None = None) -> Randomisation:
  """Model parameter randomisation test: similarity of the explanation before and after the
  classifier's layers are re-initialised, layer by layer.

  Quantus ``MPRT`` (``ModelParameterRandomisation``): a method whose maps stay similar while
  the weights are destroyed does not explain the model (it passes no sanity check); lower
  similarity is better. Quantus's defaults: cascading from the top, Spearman rank correlation of
  the absolute, normalised maps.

  Args:
    method: attribution function ``method(classifier, inputs, target, **method_options)``.
    classifier: the model whose weights are randomised.
    inputs: float images ``(N, H, W, C)``.
    target: the explained class, int or ``(N,)``.
    key: PRNG key for the new weights (required unless ``models``).
    attributions: the method's maps on ``inputs`` (default: computed).
    layer_order: ``"top_down"`` (cascading), ``"bottom_up"`` or ``"independent"``.
    similarity: ``"spearman"``, ``"pearson"``, ``"ssim"`` (over 2-D maps, as the paper),
      ``"ssim_flat"`` (Quantus's SSIM of flattened maps) or a function (see :func:`similarity`).
    abs, normalise: Quantus's pre-processing of both maps.
    method_options: options of ``method``.
    models: ``(layer name, randomised classifier)`` pairs to use instead of drawing them
      (e.g. the same draws as another library's).
    layers: randomise only these layers (names of :func:`layer_groups`).

  Returns:
    :class:`Randomisation` with ``scores (L, N)``.

  References:
    Adebayo et al., "Sanity Checks for Saliency Maps", NeurIPS 2018.
  """
  _check_similarity(similarity)
  explain, a, original = _prepare(method, classifier, inputs, target, attributions,
                                  method_options, abs, normalise)
  if models is None:
    if key is None:
      raise ValueError("model_parameter_randomisation draws random weights: pass `key`")
    models = randomised_classifiers(classifier, key=key, layer_order=layer_order, layers=layers)
  names, scores = [], []
  for name, model in models:
    names.append(name)
    scores.append(_similar(a, explain(model), kind=similarity))
  return Randomisation(tuple(names), jnp.stack(scores), _similar(a, original, kind=similarity))


def randomised_maps(method, classifier: Classifier, inputs, target, *, key,
                    layer_order: str = "top_down", abs: bool = True,  # noqa: A002
                    normalise: bool = True, method_options=None,
                    layers: Sequence[str] | None = None) -> tuple[tuple[str, ...], np.ndarray]:
  """The maps of the sanity-check figure: ``("original", layer, ...)`` and ``(L + 1, N, H, W,
  C)`` maps, the method on the original model then after each cascading randomisation."""
  explain, _, original = _prepare(method, classifier, inputs, target, None, method_options, abs,
                                  normalise)
  models = randomised_classifiers(classifier, key=key, layer_order=layer_order, layers=layers)
  maps = [np.asarray(original)] + [np.asarray(explain(m)) for _, m in models]
  return ("original",) + tuple(n for n, _ in models), np.stack(maps)


# ---------------------------------------------------------------------------------------------
# Random logit
# ---------------------------------------------------------------------------------------------


def random_logit(method, classifier: Classifier, inputs, target, *, key=None, attributions=None,
                 num_classes: int | None = None, similarity="ssim",
                 abs: bool = False, normalise: bool = True,  # noqa: A002
                 method_options=None, off_target=None):
  """Random logit: similarity between the explanation of the target and of a random other class.

  Quantus ``RandomLogit``: for each image a class other than its target is drawn uniformly, the
  method explains it, and the two maps are compared (a method that explains the class, not only
  the image, gives dissimilar maps: lower is better). Quantus compares flattened maps with SSIM
  (``"ssim_flat"``); the paper's SSIM, the default here, compares the 2-D maps.

  Args:
    method, classifier, inputs, target, attributions, abs, normalise, method_options: as
      :func:`model_parameter_randomisation`.
    key: PRNG key for the other classes (required unless ``off_target``).
    num_classes: classes to draw from (default: the classifier's).
    similarity: as :func:`model_parameter_randomisation` (default ``"ssim"``).
    off_target: ``(N,)`` the other classes to use instead of drawing them.

  Returns:
    ``(N,)`` similarities.

  References:
    Sixt et al., "When Explanations Lie: Why Many Modified BP Attributions Fail", ICML 2020.
  """
  _check_similarity(similarity)
  explain, a, _ = _prepare(method, classifier, inputs, target, attributions, method_options, abs,
                           normalise)
  _, inputs, target, _ = check_metric_call(classifier, inputs, target, None,
                                           need_attributions=False)
  k = classifier.num_classes if num_classes is None else int(num_classes)
  if k < 2:
    raise ValueError(f"`num_classes` must be >= 2 to draw another class, got {k}")
  if off_target is None:
    if key is None:
      raise ValueError("random_logit draws other classes: pass `key` (or `off_target`)")
    draw = jax.random.randint(key, target.shape, 0, k - 1)
    off_target = draw + (draw >= target)
  else:
    off_target = jnp.asarray(off_target, jnp.int32)
    if off_target.shape != target.shape or bool(jnp.any(off_target == target)):
      raise ValueError(f"`off_target` must be ({len(target)},) classes other than `target`, got "
                       f"{np.asarray(off_target)}")
  b = explain(classifier, target=off_target.astype(jnp.int32))
  return _similar(a, b, kind=similarity)

