"""Robustness: does the explanation stay put when the input barely moves?

Each metric re-runs the attribution ``method`` on ``nr_samples`` noisy copies of every image,
``batch_size`` copies at a time inside one jit-compiled function (the method is traced once).
``method`` is any attribution function ``method(forward, inputs, target, **options)`` of
:mod:`jaxplain.attribution` (it receives the ``forward`` given here: pass a ``Classifier`` for
layer methods such as Grad-CAM).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jaxplain.metrics._common import (auto_steps, call_method, check_positive,
                                      explained_call, flat, preprocess)
from jaxplain.attribution._common import as_forward
from jaxplain import batching

__all__ = ["avg_sensitivity", "local_lipschitz_estimate", "max_sensitivity", "sensitivity_max"]


@functools.partial(jax.jit, static_argnames=("method", "static", "kind", "normalise", "abs",
                                             "nan_on_change", "batch_size"))
def _sensitivities(model, inputs, target, attributions, noise, dynamic, *, method, static, kind,
                   normalise, abs, nan_on_change, batch_size):  # noqa: A002
  fwd = as_forward(model)
  a = flat(preprocess(attributions, normalise=normalise, abs=abs))
  norm_a = jnp.linalg.norm(a, axis=-1)
  label = jnp.argmax(fwd(inputs), axis=-1) if nan_on_change else None

  def one(eps):
    xp = inputs + eps
    ap = flat(preprocess(call_method(method, model, xp, target, static, dynamic),
                         normalise=normalise, abs=abs))
    diff = jnp.linalg.norm(a - ap, axis=-1)
    if kind == "lipschitz":
      score = diff / (jnp.linalg.norm(flat(eps), axis=-1) + 1e-10)
    elif kind == "captum":
      score = diff / jnp.where(norm_a == 0, 1, norm_a)
    else:
      score = diff / norm_a
    if nan_on_change:
      score = jnp.where(jnp.argmax(fwd(xp), axis=-1) != label, jnp.nan, score)
    return score

  return batching.chunked_map(one, noise, batch_size=batch_size).T  # (N, S)


def _run(name, forward, inputs, target, attributions, *, method, key, nr_samples, draw, kind,
         normalise, abs, method_options, noise, nan_on_change, batch_size, reduce):  # noqa: A002
  method, model, inputs, target, attributions, static, dynamic = explained_call(
      method, forward, inputs, target, attributions, method_options)
  if noise is None:
    samples = check_positive(nr_samples, "nr_samples")
    if key is None:
      raise ValueError(f"{name} draws random perturbations: pass `key` (or `noise`)")
    noise = draw(key, (samples,) + tuple(inputs.shape), inputs.dtype)
  else:
    noise = jnp.asarray(noise, inputs.dtype)
    if noise.ndim != 5 or noise.shape[1:] != inputs.shape:
      raise ValueError(f"`noise` must have shape (nr_samples,) + {tuple(inputs.shape)}, got "
                       f"{tuple(noise.shape)}")
  size = auto_steps(lambda v, tt, dyn: call_method(method, model, v, tt, static, dyn), inputs,
                    noise.shape[0], batch_size, target, dynamic)
  scores = _sensitivities(model, inputs, target, attributions, noise, dynamic, method=method,
                          static=static, kind=kind, normalise=bool(normalise), abs=bool(abs),
                          nan_on_change=bool(nan_on_change), batch_size=size)
  if reduce == "max":
    return jnp.max(scores, axis=1) if nan_on_change else jnp.nanmax(scores, axis=1)
  return jnp.mean(scores, axis=1) if nan_on_change else jnp.nanmean(scores, axis=1)


def _uniform(lower_bound, upper_bound):
  if upper_bound is None:
    lo, hi = -lower_bound, lower_bound
  else:
    if not upper_bound > lower_bound:
      raise ValueError(f"`upper_bound` must be > `lower_bound`, got {upper_bound} <= "
                       f"{lower_bound}")
    lo, hi = lower_bound, upper_bound
  return lambda key, shape, dtype: jax.random.uniform(key, shape, dtype, lo, hi)


def max_sensitivity(forward, inputs, target, attributions=None, *, method, key=None,
                    nr_samples: int = 200, lower_bound: float = 0.2,
                    upper_bound: float | None = None, abs: bool = False,  # noqa: A002
                    normalise: bool = False, method_options=None, noise=None,
                    return_nan_when_prediction_changes: bool = False,
                    batch_size: int | None = None):
  """Max-sensitivity: the largest relative change of the explanation under uniform noise.

  Quantus ``MaxSensitivity``: ``nr_samples`` times, ``x + U(-lower_bound, lower_bound)`` (or
  ``U(lower_bound, upper_bound)``) noise on every feature, the method's map ``a'`` on the noisy
  image, and ``‖a − a'‖₂ / ‖a‖₂``; the score is the maximum over samples. Lower is better.

  Args:
    forward: the model (a ``Classifier`` for layer methods), as the method takes it.
    inputs, target: as :func:`~jaxplain.metrics.pixel_flipping`.
    attributions: the method's maps on ``inputs``; ``None`` computes them.
    method: attribution function ``method(forward, inputs, target, **method_options)``.
    key: PRNG key for the noise (required unless ``noise``).
    nr_samples: noisy copies per image.
    lower_bound, upper_bound: the noise's range.
    abs, normalise: Quantus's pre-processing, applied to both maps (per image here, see
      ``preprocess``).
    method_options: options of ``method`` (arrays are traced, other values are static).
    noise: ``(nr_samples, N, H, W, C)`` noise to use instead of drawing it.
    return_nan_when_prediction_changes: a sample whose predicted class changes counts as NaN
      (and makes the score NaN); otherwise such samples are kept.
    batch_size: noisy copies explained per method call (``None``: fit the memory budget).

  Returns:
    ``(N,)`` sensitivities.

  References:
    Yeh et al., "On the (In)fidelity and Sensitivity of Explanations", NeurIPS 2019.
  """
  return _run("max_sensitivity", forward, inputs, target, attributions, method=method, key=key,
              nr_samples=nr_samples, draw=_uniform(lower_bound, upper_bound), kind="relative",
              normalise=normalise, abs=abs, method_options=method_options, noise=noise,
              nan_on_change=return_nan_when_prediction_changes, batch_size=batch_size,
              reduce="max")


def avg_sensitivity(forward, inputs, target, attributions=None, *, method, key=None,
                    nr_samples: int = 200, lower_bound: float = 0.2,
                    upper_bound: float | None = None, abs: bool = False,  # noqa: A002
                    normalise: bool = False, method_options=None, noise=None,
                    return_nan_when_prediction_changes: bool = False,
                    batch_size: int | None = None):
  """Avg-sensitivity: :func:`max_sensitivity` averaged over the samples instead of maximised
  (Quantus ``AvgSensitivity``). Lower is better. Arguments as :func:`max_sensitivity`."""
  return _run("avg_sensitivity", forward, inputs, target, attributions, method=method, key=key,
              nr_samples=nr_samples, draw=_uniform(lower_bound, upper_bound), kind="relative",
              normalise=normalise, abs=abs, method_options=method_options, noise=noise,
              nan_on_change=return_nan_when_prediction_changes, batch_size=batch_size,
              reduce="mean")


def local_lipschitz_estimate(forward, inputs, target, attributions=None, *, method, key=None,
                             nr_samples: int = 200, perturb_mean: float = 0.0,
                             perturb_std: float = 0.1, abs: bool = False,  # noqa: A002
                             normalise: bool = True, method_options=None, noise=None,
                             return_nan_when_prediction_changes: bool = False,
                             batch_size: int | None = None):
  """Local Lipschitz estimate: the largest ``‖a − a'‖₂ / (‖x − x'‖₂ + 1e-10)`` over Gaussian
  perturbations ``x' = x + N(perturb_mean, perturb_std²)`` (Quantus ``LocalLipschitzEstimate``,
  which normalises the maps by default). Lower is better. Arguments as
  :func:`max_sensitivity`.

  References:
    Alvarez-Melis & Jaakkola, "On the Robustness of Interpretability Methods", 2018.
  """

  def draw(k, shape, dtype):
    return perturb_mean + perturb_std * jax.random.normal(k, shape, dtype)

  return _run("local_lipschitz_estimate", forward, inputs, target, attributions, method=method,
              key=key, nr_samples=nr_samples, draw=draw, kind="lipschitz", normalise=normalise,
              abs=abs, method_options=method_options, noise=noise,
              nan_on_change=return_nan_when_prediction_changes, batch_size=batch_size,
              reduce="max")


def sensitivity_max(forward, inputs, target, attributions=None, *, method, key=None,
                    n_perturb_samples: int = 10, perturb_radius: float = 0.02,
                    method_options=None, noise=None, batch_size: int | None = None):
  """Captum ``captum.metrics.sensitivity_max``: the largest ``‖a − a'‖_F / ‖a‖_F`` (a zero norm
  counts as 1) over ``n_perturb_samples`` copies with ``U(-perturb_radius, perturb_radius)``
  noise (Captum's ``default_perturb_func``). Lower is better. Arguments as
  :func:`max_sensitivity`.

  References:
    Yeh et al., "On the (In)fidelity and Sensitivity of Explanations", NeurIPS 2019.
  """
  return _run("sensitivity_max", forward, inputs, target, attributions, method=method, key=key,
              nr_samples=n_perturb_samples, draw=_uniform(perturb_radius, None), kind="captum",
              normalise=False, abs=False, method_options=method_options, noise=noise,
              nan_on_change=False, batch_size=batch_size, reduce="max")
