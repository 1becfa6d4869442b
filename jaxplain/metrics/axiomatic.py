"""Axiomatic properties: completeness (integrated gradients' gap, from
:mod:`jaxplain.attribution`), non-sensitivity and input invariance."""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp

from jaxplain.attribution._common import as_forward
from jaxplain.attribution.integrated_gradients import completeness_gap
from jaxplain.metrics._common import (auto_steps, baseline_values, call_method, check_baseline,
                                      check_features_in_step, check_metric_call,
                                      evaluate_copies, explained_call, flat, need_key,
                                      predict_target, preprocess)
from jaxplain.models import Classifier

__all__ = ["completeness_gap", "input_invariance", "non_sensitivity", "shifted"]


@functools.partial(jax.jit, static_argnames=("features_in_step", "eps", "perturb_baseline",
                                             "softmax", "abs", "normalise", "batch_size"))
def _non_sensitivity(forward, inputs, target, attributions, key, *, features_in_step, eps,
                     perturb_baseline, softmax, abs, normalise, batch_size):  # noqa: A002
  n = inputs.shape[0]
  a = flat(preprocess(attributions, normalise=normalise, abs=abs))
  d = a.shape[1]
  steps = math.ceil(d / features_in_step)
  group = (jnp.arange(d) // features_in_step).reshape(inputs.shape[1:])
  fill = baseline_values(inputs, perturb_baseline, key, (steps,))
  y = predict_target(forward, inputs, target, softmax)

  def make(k):
    return jnp.where(group == k, fill[:, k].reshape(n, 1, 1, 1), inputs)

  preds = evaluate_copies(forward, make, jnp.arange(steps), target, softmax=softmax,
                          batch_size=batch_size)
  unchanged = jnp.abs(preds - y[:, None]) < eps
  padded = jnp.pad(a < eps, ((0, 0), (0, steps * features_in_step - d)), constant_values=True)
  no_attribution = padded.reshape(n, steps, features_in_step).all(-1)
  return jnp.sum(unchanged ^ no_attribution, -1)


def non_sensitivity(forward, inputs, target, attributions, *, key=None, eps: float = 1e-5,
                    features_in_step: int = 1, abs: bool = True,  # noqa: A002
                    normalise: bool = True, perturb_baseline="black", softmax: bool = True,
                    batch_size: int | None = None):
  """Non-sensitivity: how many features break "zero attribution ⇔ no effect on the output".

  Quantus ``NonSensitivity``: each group of ``features_in_step`` features (in index order) is
  set to the baseline alone; it violates the axiom if its removal leaves the target's output
  unchanged (``|Δy| < eps``) but it has attribution, or changes the output but has none
  (``|a| < eps``). The score counts violations; lower is better. Quantus compares per feature
  and fails for ``features_in_step > 1`` (its shapes do not broadcast); here a group counts as
  having no attribution when all its features have none (identical for groups of one).

  Args:
    forward, inputs, target, attributions: as :func:`~jaxplain.metrics.pixel_flipping`.
    key: PRNG key, only for ``perturb_baseline="uniform"``.
    eps: the threshold on attributions and on output changes.
    features_in_step: features per group (static).
    abs, normalise, perturb_baseline, softmax, batch_size: as
      :func:`~jaxplain.metrics.pixel_flipping`.

  Returns:
    ``(N,)`` int counts of violations.

  References:
    Nguyen & Martinez, "On quantitative aspects of model interpretability", 2020.
  """
  forward, inputs, target, attributions = check_metric_call(forward, inputs, target, attributions)
  f, d = check_features_in_step(features_in_step, inputs)
  perturb_baseline = check_baseline(perturb_baseline)
  key = need_key(key, perturb_baseline, "non_sensitivity")
  return _non_sensitivity(forward, inputs, target, attributions, key, features_in_step=f,
                          eps=float(eps), perturb_baseline=perturb_baseline,
                          softmax=bool(softmax), abs=bool(abs), normalise=bool(normalise),
                          batch_size=auto_steps(forward, inputs, math.ceil(d / f), batch_size,
                                                forward_only=True))


@dataclasses.dataclass(frozen=True)
class _ShiftedApply:
  """``apply_fn`` of a classifier that subtracts ``shift`` from its input first."""

  apply_fn: Callable
  shift: float

  def __call__(self, variables, x, **kwargs):
    return self.apply_fn(variables, x - self.shift, **kwargs)


def _shifted_forward(forward, shift, x):
  return forward(x - shift)


def shifted(forward, input_shift: float):
  """The model of Kindermans et al.'s input-invariance test: on ``x + input_shift`` it computes
  exactly what ``forward`` computes on ``x`` (the shift is undone before the first layer, the
  paper's bias compensation). A ``Classifier`` stays a ``Classifier`` (layers still tap)."""
  from jaxplain.models import declare_input_range, input_range
  value_range = input_range(forward)  # the shifted model takes the shifted range
  low, high = (None, None) if value_range is None else (value_range[0] + float(input_shift),
                                                         value_range[1] + float(input_shift))
  if isinstance(forward, Classifier):
    model = dataclasses.replace(forward, apply_fn=_ShiftedApply(forward.apply_fn,
                                                                float(input_shift)))
  else:
    model = jax.tree_util.Partial(_shifted_forward, as_forward(forward), float(input_shift))
  return declare_input_range(model, low, high)


def input_invariance(forward, inputs, target, attributions=None, *, method, key=None,
                     input_shift: float = -1.0, abs: bool = False,  # noqa: A002
                     normalise: bool = False, method_options=None, atol: float = 1e-4):
  """Input invariance: is the explanation unchanged when the input is shifted by a constant and
  the model compensates for it exactly?

  Kindermans et al. (and Quantus ``InputInvariance``): ``x' = x + input_shift`` explained on a
  model ``f'`` with ``f'(x') = f(x)``; the score is whether every attribution matches within
  ``atol`` (``np.isclose`` with its ``rtol = 1e-5``). Gradients are invariant; input ×
  gradient is not.

  Quantus builds ``f'`` by changing the first layer's bias to ``b − W·shift`` as the
  convolution computes it on a constant image, taking the smallest value per channel: that is
  exact only for a first convolution without zero padding (at padded borders the compensation is
  wrong) and only for models whose first module is that layer. The paper defines ``f'`` by
  ``f'(x + shift) = f(x)`` for every input; here ``f'`` (:func:`shifted`) undoes the shift
  before the model, which is that definition for any model.

  Args:
    forward: the model (a ``Classifier`` for layer methods).
    inputs, target: as :func:`~jaxplain.metrics.pixel_flipping`.
    attributions: the method's maps on ``inputs`` (default: computed).
    method: attribution function.
    key: unused (shared signature).
    input_shift: the constant added to every feature.
    abs, normalise: pre-processing of both maps (Quantus: neither).
    method_options: options of ``method``.
    atol: absolute tolerance.

  Returns:
    ``(N,)`` booleans.

  References:
    Kindermans et al., "The (Un)reliability of Saliency Methods", 2017.
  """
  del key
  method, model, inputs, target, attributions, static, dynamic = explained_call(
      method, forward, inputs, target, attributions, method_options)
  a = preprocess(attributions, normalise=bool(normalise), abs=bool(abs))
  b = call_method(method, shifted(model, input_shift), inputs + input_shift, target, static,
                  dynamic)
  b = preprocess(b, normalise=bool(normalise), abs=bool(abs))
  close = jnp.abs(a - b) <= atol + 1e-5 * jnp.abs(b)
  return jnp.all(close, axis=tuple(range(1, a.ndim)))
