"""Feature visualisation: layer activations, and the inputs that maximise a filter.

:func:`activations` returns the feature maps of any named layer of a
:class:`~jaxplain.models.Classifier` (jaxplain's CNN and converted PyTorch models alike: both
follow the ``apply_fn(..., tap=layer)`` contract). :func:`maximize_activation` finds, by
gradient ascent on the input, an image that excites each requested filter: one optax
optimisation per filter, all of them vmapped (a host loop over one compiled step), with the
regularisers of Lucid / Lucent (L2 decay, total variation, random jitter, periodic blur, a
sigmoid- or clip-bounded pixel range, and the decorrelated Fourier parameterisation), and a
jitter-free polish phase at the end that keeps the best iterate, so that the image returned
maximises the filter itself rather than its average over shifts; units that are off get a
pre-activation gradient for the first steps, and saturated (box-vertex) candidates are kept
where they score higher. :func:`check_layer` says
before any work whether a layer can be visualised; :func:`ratio_to_best` compares the result
with the most activating real face.

Images are native ``classifier.input_shape`` (48×48×1 for FER2013): no RGB, no upsampling.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.extend import core as jex_core

from jaxplain import batching
from jaxplain.models import Classifier, check_images

__all__ = [
    "Visualization",
    "activations",
    "best_activation",
    "channel_activation",
    "check_layer",
    "default_layer",
    "filter_count",
    "maximize_activation",
    "maximize_filters",
    "parse_filters",
    "ratio_to_best",
]

# Lucid's constant: the Fourier image is divided by 4 before the sigmoid ("reduces saturation").
_FFT_MAGIC = 4.0


class Visualization(NamedTuple):
  """What :func:`maximize_activation` returns.

  Attributes:
    images: ``(F, H, W, C)`` in [0, 1], the optimised input of each requested filter.
    trace: ``(steps, F)`` the objective (filter activation) at each step, measured on the
      (jittered) input the step differentiated, before its update.
    start_images: ``(F, H, W, C)`` the random images the optimisation started from.
  """

  images: jax.Array
  trace: jax.Array
  start_images: jax.Array


def activations(classifier: Classifier, inputs, layer: str) -> jax.Array:
  """The output of ``layer`` for ``inputs``: ``(N, h, w, channels)`` maps or ``(N, units)``.

  Args:
    classifier: any jaxplain classifier (own CNN or converted PyTorch model).
    inputs: float ``(N, H, W, C)`` in [0, 1], ``classifier.input_shape`` per image.
    layer: one of ``classifier.layer_names``.

  Returns:
    The layer's activation, as the network computes it in eval mode.

  Raises:
    ValueError: unknown ``layer`` (the message lists the valid names), or bad ``inputs``.
  """
  classifier.check_layer(layer)
  check_images(inputs, shape=classifier.input_shape, value_range=classifier.input_range)
  return classifier.tapped(layer)(inputs, None)[1]


def _layer_shape(classifier: Classifier, layer: str) -> tuple[int, ...]:
  """The activation shape of ``layer`` for one image (no FLOPs: ``eval_shape``)."""
  classifier.check_layer(layer)
  x = jax.ShapeDtypeStruct((1,) + tuple(classifier.input_shape), jnp.float32)
  return tuple(batching.eval_shape(classifier.tapped(layer), x, None)[1].shape[1:])


def check_layer(classifier: Classifier, layer: str) -> tuple[int, ...]:
  """``layer``'s activation shape for one image, if its filters can be visualised.

  Every layer whose output is ``(h, w, channels)`` maps (convolution, BatchNorm, ReLU, pooling,
  padding) or ``(units,)`` (dense, logits, flattened features) can: the objective is a
  channel's spatial mean, or the unit itself. Costs no FLOPs (``eval_shape``): call it before
  any work starts.

  Raises:
    ValueError: (one line) ``layer`` is not one of ``classifier.layer_names``, or its output has
      another rank (e.g. a scalar per image).
  """
  shape = _layer_shape(classifier, layer)
  if len(shape) not in (1, 3) or not shape[-1]:
    raise ValueError(f"`layer` {layer!r} outputs shape {shape} per image: filter visualisation "
                     f"needs (h, w, channels) maps or (units,) vectors")
  return shape


def filter_count(classifier: Classifier, layer: str) -> int:
  """The number of channels (filters, or units of a dense layer) of ``layer``.

  Raises:
    ValueError: as :func:`check_layer`.
  """
  return check_layer(classifier, layer)[-1]


def _check_filters(filters, count: int, layer: str) -> np.ndarray:
  """``filters`` as a 1-D int array of channel indices below ``count``, or a ``ValueError``."""
  if isinstance(filters, jax.core.Tracer):
    raise ValueError("`filters` must be concrete to be range-checked; under jax.jit pass them "
                     "as a static argument")
  filters_np = np.atleast_1d(np.asarray(filters))
  if filters_np.ndim != 1 or filters_np.size == 0 or not np.issubdtype(filters_np.dtype,
                                                                        np.integer):
    raise ValueError(f"`filters` must be one or more integer channel indices, got {filters!r}")
  bad = filters_np[(filters_np < 0) | (filters_np >= count)]
  if bad.size:
    raise ValueError(f"`filters` {bad.tolist()} out of range: layer {layer!r} has {count} "
                     f"filters (0..{count - 1})")
  return filters_np


def default_layer(classifier: Classifier) -> str:
  """A middle convolutional block: the median of the layers that end a conv block.

  Found from shapes alone, so it works for converted PyTorch models too: consecutive layers
  with equal ``(h, w, channels)`` maps form a block (conv, BatchNorm, ReLU); a block counts
  when its channel count differs from the layer before it (padding and pooling keep channels),
  and its last layer (the ReLU) stands for it. ``conv3_2`` for jaxplain's CNN, ``conv_3.3``
  for a conv/BN/ReLU ``nn.Sequential`` per stage.
  """
  blocks = _block_ends(classifier)
  if not blocks:
    spatial = [n for n in classifier.layer_names if len(_layer_shape(classifier, n)) == 3]
    if not spatial:
      raise ValueError(f"the classifier has no layer with spatial maps; layers: "
                       f"{list(classifier.layer_names)}")
    return spatial[len(spatial) // 2]
  return blocks[len(blocks) // 2]


def _block_ends(classifier: Classifier) -> list[str]:
  """The last layer of each conv block, input to output (see :func:`default_layer`)."""
  blocks, previous, channels = [], None, classifier.input_shape[-1]
  for name in classifier.layer_names:
    shape = _layer_shape(classifier, name)
    if len(shape) != 3:
      previous = None
      continue
    if shape == previous:
      if blocks and blocks[-1][1] == shape:
        blocks[-1] = (name, shape)
    elif shape[-1] != channels:
      blocks.append((name, shape))
    channels, previous = shape[-1], shape
  return [name for name, _ in blocks]


def _check_neuron(neuron, shape, layer):
  if neuron is None:
    return None
  if len(shape) != 3:
    raise ValueError(f"`neuron` needs a layer with spatial maps; {layer!r} has shape {shape}")
  neuron = tuple(int(v) for v in neuron)
  if len(neuron) != 2 or not all(0 <= v < s for v, s in zip(neuron, shape[:2])):
    raise ValueError(f"`neuron` must be (row, col) inside the {shape[0]}×{shape[1]} maps of "
                     f"{layer!r}, got {neuron}")
  return neuron


def _objective(act, neuron):
  """``act`` (N, h, w, F') or (N, F') → (N, F'): channel mean, or the value at ``neuron``."""
  if act.ndim == 2:
    return act
  if neuron is None:
    return jnp.mean(act, axis=(1, 2))
  return act[:, neuron[0], neuron[1], :]


def channel_activation(classifier: Classifier, inputs, layer: str, *,
                       neuron: Sequence[int] | None = None) -> jax.Array:
  """The objective :func:`maximize_activation` maximises, for every channel: ``(N, channels)``.

  The mean over spatial positions of each channel of ``layer`` (the unit itself for a dense
  layer), or its value at ``neuron = (row, col)``.
  """
  neuron = _check_neuron(neuron, _layer_shape(classifier, layer), layer)
  return _objective(activations(classifier, inputs, layer), neuron)


def best_activation(classifier: Classifier, faces, layer: str, *,
                    batch_size: int = 250) -> np.ndarray:
  """``(channels,)``: each channel's largest :func:`channel_activation` over ``faces``.

  Args:
    classifier: any jaxplain classifier.
    faces: float ``(N, H, W, C)`` in [0, 1], e.g. ``data.to_float(faces.images)``.
    layer: a layer :func:`check_layer` accepts.
    batch_size: faces per call (bounds memory).
  """
  from jaxplain import batching
  check_layer(classifier, layer)
  check_images(faces, name="faces", shape=classifier.input_shape)
  scores = batching.map_chunks(lambda x: channel_activation(classifier, x, layer), [faces],
                               size=batching.check_batch_size(batch_size, allow_none=False))
  return scores.max(0)


def ratio_to_best(classifier: Classifier, layer: str, filters: Sequence[int], images, faces, *,
                  batch_size: int = 250) -> np.ndarray:
  """``(F,)``: each filter's activation on its image / its best over real ``faces``.

  ``images[i]`` is the optimised input of ``filters[i]`` (``maximize_activation(...).images``).
  NaN where the best face's activation is <= 0 (a layer before its ReLU), where a ratio does
  not say which is larger. Above 1: the image beats every face.
  """
  filters_np = _check_filters(filters, filter_count(classifier, layer), layer)
  check_images(images, name="images", shape=classifier.input_shape)
  if len(images) != filters_np.size:
    raise ValueError(f"`images` has {len(images)} images, `filters` {filters_np.size}")
  best = best_activation(classifier, faces, layer, batch_size=batch_size)[filters_np]
  own = np.asarray(channel_activation(classifier, images, layer))[np.arange(filters_np.size),
                                                                   filters_np]
  with np.errstate(divide="ignore", invalid="ignore"):
    return np.where(best > 0, own / np.where(best > 0, best, 1), np.nan)


# --- parameterisations ---------------------------------------------------------------------


def _freqs(h: int, w: int) -> np.ndarray:
  """Radial frequency of each rfft2 coefficient, ``(h, w // 2 + 1)`` (Lucid ``rfft2d_freqs``)."""
  fy = np.fft.fftfreq(h)[:, None]
  fx = np.fft.rfftfreq(w)[None, :]
  return np.sqrt(fx * fx + fy * fy)


def _spectrum_scale(h: int, w: int, decay_power: float) -> np.ndarray:
  """Lucid's ``1 / max(f, 1/max(h, w)) ** decay_power``: equalises the energy of frequencies."""
  return (1.0 / np.maximum(_freqs(h, w), 1.0 / max(h, w)) ** decay_power).astype(np.float32)


def _fft_to_pixels(spectrum, shape, scale):
  """(2, h, w//2+1, C) real/imag → (h, w, C) with an orthonormal inverse FFT, / Lucid's 4."""
  h, w, _ = shape
  coeffs = (spectrum[0] + 1j * spectrum[1]) * scale[..., None]
  return jnp.fft.irfft2(coeffs, s=(h, w), axes=(0, 1), norm="ortho").astype(spectrum.dtype) \
      / _FFT_MAGIC


def _pixels_to_fft(pixels, scale):
  coeffs = jnp.fft.rfft2(pixels * _FFT_MAGIC, axes=(0, 1), norm="ortho") / scale[..., None]
  return jnp.stack([coeffs.real, coeffs.imag]).astype(pixels.dtype)


def _pixel_std(shape, scale) -> float:
  """Pixel standard deviation of ``_fft_to_pixels`` of a N(0, 1) spectrum."""
  h, w, _ = shape
  rfft_cols = np.full(w // 2 + 1, 2.0)  # each rfft column stands for two FFT columns ...
  rfft_cols[0] = 0.5
  if w % 2 == 0:
    rfft_cols[-1] = 0.5  # ... except DC and Nyquist, whose imaginary parts irfft drops
  energy = (np.asarray(scale, np.float64) ** 2 * rfft_cols).sum() * 2 / (h * w)
  return float(np.sqrt(energy) / _FFT_MAGIC)


def _gaussian_kernel(sigma: float) -> np.ndarray:
  radius = max(1, int(math.ceil(3 * sigma)))
  t = np.arange(-radius, radius + 1, dtype=np.float64)
  k = np.exp(-0.5 * (t / sigma) ** 2)
  return (k / k.sum()).astype(np.float32)


def _blur_pixels(x, sigma):
  """Separable Gaussian blur of (h, w, C), edges reflected (shape kept)."""
  k = jnp.asarray(_gaussian_kernel(sigma), x.dtype)
  r = (len(k) - 1) // 2
  x = jnp.pad(x, ((r, r), (r, r), (0, 0)), mode="reflect")
  h, w = x.shape[0] - 2 * r, x.shape[1] - 2 * r
  x = sum(k[i] * x[i:i + h] for i in range(len(k)))
  return sum(k[i] * x[:, i:i + w] for i in range(len(k)))


def _blur_fft(spectrum, shape, sigma):
  """The same Gaussian blur in the Fourier basis (circular): scale each frequency."""
  h, w, _ = shape
  fy = np.fft.fftfreq(h)[:, None]
  fx = np.fft.rfftfreq(w)[None, :]
  gain = np.exp(-2 * (np.pi * sigma) ** 2 * (fx * fx + fy * fy)).astype(np.float32)
  return spectrum * jnp.asarray(gain, spectrum.dtype)[None, :, :, None]


def _total_variation(x):
  """Mean absolute difference of neighbouring pixels (Lucid ``total_variation``, averaged)."""
  return jnp.mean(jnp.abs(x[1:] - x[:-1])) + jnp.mean(jnp.abs(x[:, 1:] - x[:, :-1]))


def _jitter(key, x, amount, active=True):
  """Random translation by up to ``amount`` pixels (reflect-padded, shape kept).

  ``active`` (a traced bool) switches the shift off (offset 0) without changing the program.
  """
  if amount == 0:
    return x
  h, w, c = x.shape
  padded = jnp.pad(x, ((amount, amount), (amount, amount), (0, 0)), mode="reflect")
  offset = jax.random.randint(key, (2,), 0, 2 * amount + 1)
  dy, dx = jnp.where(active, offset, amount)
  return jax.lax.dynamic_slice(padded, (dy, dx, 0), (h, w, c))


@functools.lru_cache(maxsize=None)
def _default_optimizer(learning_rate: float) -> optax.GradientTransformation:
  # Cached so that repeated calls with the default hit the same jit cache entry.
  return optax.adam(learning_rate)


_PIXEL_RANGES = ("sigmoid", "clip")
# Start brightness of each restart, pre-sigmoid (sigmoid(∓2) = 0.12 / 0.88): a ReLU channel
# that fires only on dark (or bright) areas gets a gradient from the start everywhere.
_RESTART_OFFSETS = (0.0, -2.0, 2.0, -1.0, 1.0, -3.0, 3.0, -0.5, 0.5)


def _unit_value(tapped, f, x, *, neuron):
  """Filter ``f``'s objective on one image ``x`` (h, w, C): a scalar."""
  return jnp.take(_objective(tapped(x[None], None)[1], neuron)[0], f)


def _vertex_walk(objective, image, value, steps):
  """Saturated candidates for ``image``, each kept only if ``objective`` scores it higher.

  The image binarised at 0.5, the black and the white image, then ``steps`` moves to the vertex
  of the [0, 1] box that the objective's gradient points to (pixels with a positive gradient to
  1, negative to 0, zero kept), each from the best so far. Returns ``(image, value)``.
  """
  def keep(best, candidates, values):  # the first candidate scoring higher than ``best``
    i = jnp.argmax(values)
    better = values[i] > best[1]
    return jnp.where(better, candidates[i], best[0]), jnp.where(better, values[i], best[1])

  # The three fixed candidates in one batched pass, then the moves.
  fixed = jnp.stack([image > 0.5, jnp.zeros_like(image, bool), jnp.ones_like(image, bool)])
  fixed = fixed.astype(image.dtype)
  best = keep((image, value), fixed, jax.vmap(objective)(fixed))

  def move(_, best):
    g = jax.grad(objective)(best[0])
    candidate = jnp.where(g > 0, 1.0, jnp.where(g < 0, 0.0, best[0])).astype(image.dtype)
    return keep(best, candidate[None], objective(candidate)[None])

  for i in range(steps):  # written out: XLA:CPU runs a loop body's convolutions 2-3x slower
    best = move(i, best)
  return best


def _through_last_relu(forward, x):
  """``forward(x)`` whose last ReLU (the one nearest the output) has the identity as backward pass.

  The other ReLUs keep their gradient, so ``grad`` is that of the pre-activation of the unit
  ``forward`` measures (a straight-through estimator of its ReLU alone): where the unit is off
  for the whole image it still points to where the unit turns on. Without a ReLU on the way to
  the output this is ``forward`` itself.
  """
  from jaxplain.attribution import rules
  traced, flat = rules._trace(forward, x)
  jaxpr, activations = traced.jaxpr, traced.analysis.activations
  needed = {v for v in jaxpr.outvars if not isinstance(v, jex_core.Literal)}
  last = None
  for i in reversed(range(len(jaxpr.eqns))):
    eqn = jaxpr.eqns[i]
    if not any(v in needed for v in eqn.outvars):
      continue
    needed.update(v for v in eqn.invars if not isinstance(v, jex_core.Literal))
    if last is None and activations.get(i, ("",))[0] == "relu":
      last = i
  kept = {} if last is None else {last: activations[last]}
  traced = dataclasses.replace(traced, analysis=dataclasses.replace(traced.analysis,
                                                                    activations=kept))
  out = rules._evaluate(traced, flat[:-1] + [x], rules.RuleSet(relu="pass"))
  return jax.tree_util.tree_unflatten(traced.out_tree, out)


_STATIC = ("layer", "steps", "optimizer", "neuron", "fourier", "pixel_range", "decay_power", "l2",
           "tv", "jitter", "polish_steps", "blur_every", "blur_sigma", "init_scale", "restarts",
           "warmup_steps", "vertex_steps")


def _ascent(classifier, *, layer, steps, optimizer, neuron, fourier, pixel_range, decay_power,
            l2, tv, jitter, polish_steps, blur_every, blur_sigma, init_scale, restarts,
            warmup_steps, vertex_steps):
  """One filter's ascent in three pure pieces, for :func:`_maximize` (one ``lax.scan``) and
  :func:`_maximize_host` (a host loop over compiled steps):

  * ``begin(f, k, x0, offset) -> (carry, step_keys, p0)``: the start and its optimizer state;
  * ``step(carry, i, ki, f, flags=None) -> (carry, value)``: update ``i`` with key ``ki``;
    ``step.phase(i)`` gives the step's ``flags`` (warm-up, polishing, blur) for an int ``i``;
  * ``end(carry, f, p0) -> (image, start_image, value)``: the kept image, after the vertex walk.
  """
  shape = tuple(classifier.input_shape)
  h, w, _ = shape
  scale_np = _spectrum_scale(h, w, decay_power)
  scale = jnp.asarray(scale_np)
  tapped = classifier.tapped(layer)

  def to_image(p):
    x = _fft_to_pixels(p, shape, scale) if fourier else p
    if pixel_range == "sigmoid":
      return jax.nn.sigmoid(x)
    return jnp.clip(x + 0.5, 0.0, 1.0) if fourier else x  # pixel basis: projected below

  def from_image(x):
    if pixel_range == "sigmoid":
      x = jax.scipy.special.logit(jnp.clip(x, 1e-4, 1 - 1e-4))
    elif fourier:
      x = x - 0.5
    return _pixels_to_fft(x, scale) if fourier else x

  unit_value = functools.partial(_unit_value, neuron=neuron)

  def objective(x, f):
    return unit_value(tapped, f, x)

  def straight_through(x, f):
    # The objective with its last ReLU's backward pass the identity: the gradient of the unit's
    # pre-activation, which exists where the unit is off.
    return _through_last_relu(jax.tree_util.Partial(unit_value, tapped, f), x)

  def loss(p, f, k, jittered, surrogate=False):
    x = to_image(p)
    value = (straight_through if surrogate else objective)(_jitter(k, x, jitter, jittered), f)
    penalty = 0.0
    if l2:
      penalty += l2 * jnp.mean(jnp.square(x - 0.5))
    if tv:
      penalty += tv * _total_variation(x)
    return penalty - value, value

  def blur(p):
    if fourier:
      return _blur_fft(p, shape, blur_sigma)
    return _blur_pixels(p, blur_sigma)

  def begin(f, k, x0, offset):
    k_init, k_steps = jax.random.split(k)
    if x0 is None:  # pre-squash start ~ N(offset, init_scale) in pixel space, in every basis
      noise = init_scale * jax.random.normal(k_init, shape, jnp.float32) + offset
      p0 = noise if pixel_range == "sigmoid" else 0.5 + noise / 4  # sigmoid'(0) = 1/4
      if fourier:
        spectrum = jax.random.normal(k_init, (2, h, w // 2 + 1, shape[2]), jnp.float32)
        p0 = spectrum * (init_scale / _pixel_std(shape, scale_np)) \
            + _pixels_to_fft(jnp.full(shape, offset, jnp.float32), scale)
        if pixel_range == "clip":
          p0 = p0 / 4
    else:
      p0 = from_image(x0)
    if pixel_range == "clip" and not fourier:
      p0 = jnp.clip(p0, 0.0, 1.0)
    value_dtype = jax.eval_shape(objective, to_image(p0), f).dtype
    carry = (p0, optimizer.init(p0), p0, jnp.full((), -jnp.inf, value_dtype))
    return carry, jax.random.split(k_steps, steps), p0

  polish_from = steps - polish_steps

  def gradient(p, f, ki, jittered):
    (_, value), g = jax.value_and_grad(loss, has_aux=True)(p, f, ki, jittered)
    return value, g

  def warm_gradient(p, f, ki, jittered):
    value, g = gradient(p, f, ki, jittered)
    off = value == 0  # a ReLU'd unit off at every position: its gradient is zero too
    g_st = jax.grad(lambda q: loss(q, f, ki, jittered, surrogate=True)[0])(p)
    return value, jax.tree.map(lambda a, b: jnp.where(off, b, a), g, g_st)

  def phase(i):
    """Step ``i``'s (warm-up, polishing, blur) flags: Python bools for an int ``i``."""
    return i < warmup_steps, i >= polish_from, blur_every and (i + 1) % blur_every == 0

  def step(carry, i, ki, f, flags=None):
    # ``flags``: step i's phase(i) as Python bools (the host loop compiles one step per phase,
    # since XLA:CPU runs a ``lax.cond`` branch's convolutions as slowly as a loop body's);
    # None: decided on the traced ``i`` (inside the scan).
    p, opt_state, best, best_value = carry
    if flags is None:
      warm, polishing, blurring = phase(i)
      if warmup_steps:
        value, g = jax.lax.cond(warm, warm_gradient, gradient, p, f, ki, ~polishing)
      else:
        value, g = gradient(p, f, ki, ~polishing)
    else:
      warm, polishing, blurring = flags
      value, g = (warm_gradient if warm else gradient)(p, f, ki, not polishing)
    # While polishing, `value` is the objective of `p` itself (no jitter): keep the best.
    better = jnp.logical_and(polishing, value > best_value)
    best = jax.tree.map(lambda a, b: jnp.where(better, a, b), p, best)
    best_value = jnp.where(better, value, best_value)
    updates, opt_state = optimizer.update(g, opt_state, p)
    p = optax.apply_updates(p, updates)
    if blur_every and flags is None:
      p = jax.lax.cond(blurring, blur, lambda q: q, p)
    elif blurring:
      p = blur(p)
    if pixel_range == "clip" and not fourier:
      p = jnp.clip(p, 0.0, 1.0)
    return (p, opt_state, best, best_value), value

  def end(carry, f, p0):
    p, _, best, best_value = carry
    if polish_steps or restarts > 1 or vertex_steps:  # the last update was never measured
      final = objective(to_image(p), f)
      p, best_value = jnp.where(final >= best_value, p, best), jnp.maximum(final, best_value)
    image = to_image(p)
    if vertex_steps:
      image, best_value = _vertex_walk(lambda x: objective(x, f), image, best_value,
                                       vertex_steps)
    return image, to_image(p0), best_value

  step.phase = phase
  return begin, step, end


def _runs(filters, key, init, restarts):
  """Every (filter, restart) run's arguments ``(filter, key, init, offset)``, filter-major.

  Restart r of filter f: key fold_in(fold_in(key, f), r) (r = 0: fold_in(key, f) alone, so one
  restart gives what it always gave), start brightness _RESTART_OFFSETS[r].
  """
  n = filters.shape[0]
  keys = jax.vmap(lambda f: jax.random.fold_in(key, f))(filters)
  keys = jnp.stack([keys] + [jax.vmap(lambda k, r=r: jax.random.fold_in(k, r))(keys)
                             for r in range(1, restarts)], 1).reshape(n * restarts)
  offsets = jnp.tile(jnp.asarray(_RESTART_OFFSETS[:restarts], jnp.float32), n)
  repeat = lambda a: None if a is None else jnp.repeat(a, restarts, axis=0)  # noqa: E731
  return (repeat(filters), keys, repeat(init),
          offsets if init is None else jnp.zeros_like(offsets))


def _best_restart(images, trace, start, value, restarts):
  """The :class:`Visualization` of each filter's best restart (``trace``: (runs, steps))."""
  pick = jnp.arange(value.shape[0] // restarts) * restarts + jnp.argmax(
      value.reshape(-1, restarts), axis=1)
  return Visualization(images[pick], trace[pick].T, start[pick])


@functools.partial(jax.jit, static_argnames=_STATIC + ("batch_size",))
def _maximize(classifier, filters, key, init, *, batch_size, **config):
  """The whole ascent as one program (a ``lax.scan`` over the steps): for calls under a trace."""
  begin, step, end = _ascent(classifier, **config)

  def optimize_one(args):
    f, k, x0, offset = args
    carry, step_keys, p0 = begin(f, k, x0, offset)
    carry, trace = jax.lax.scan(lambda c, a: step(c, a[0], a[1], f), carry,
                                (jnp.arange(config["steps"]), step_keys))
    image, start, value = end(carry, f, p0)
    return image, trace, start, value

  args = _runs(filters, key, init, config["restarts"])
  if batch_size is None:
    out = jax.vmap(optimize_one)(args)
  else:
    out = jax.lax.map(optimize_one, args, batch_size=batch_size)
  return _best_restart(*out, config["restarts"])


@functools.partial(jax.jit, static_argnames=_STATIC)
def _host_begin(classifier, args, **config):
  return jax.vmap(_ascent(classifier, **config)[0])(*args)


@functools.partial(jax.jit, static_argnames=_STATIC + ("flags",))
def _host_step(classifier, carry, i, step_keys, filters, *, flags, **config):
  step = _ascent(classifier, **config)[1]
  return jax.vmap(lambda c, k, f: step(c, i, k, f, flags))(carry, step_keys[:, i], filters)


@functools.partial(jax.jit, static_argnames=_STATIC)
def _host_end(classifier, carry, filters, p0, **config):
  return jax.vmap(_ascent(classifier, **config)[2])(carry, filters, p0)


def _maximize_host(classifier, filters, key, init, *, batch_size, **config):
  """:func:`_maximize` as a host loop over compiled steps, the same arithmetic run by run.

  XLA:CPU runs convolutions inside a loop body (``lax.scan``) 2–3× slower than the same
  convolutions in a program of their own, and a step costs far more than a call's dispatch;
  so, called outside a trace, the steps are called from Python. ``batch_size`` runs that many
  (filter, restart) runs at a time, the last chunk padded by repeating its first run.
  """
  args = _runs(jnp.asarray(filters), key, init, config["restarts"])
  runs = args[0].shape[0]
  size = runs if batch_size is None else min(batch_size, runs)
  outs = []
  for lo in range(0, runs, size):
    part = [None if a is None else a[lo:lo + size] for a in args]
    short = size - part[0].shape[0]
    if short:
      part = [None if a is None else jnp.concatenate([a, jnp.repeat(a[:1], short, 0)])
              for a in part]
    carry, step_keys, p0 = _host_begin(classifier, tuple(part), **config)
    phase = _ascent(classifier, **config)[1].phase
    values = []
    for i in range(config["steps"]):
      flags = tuple(bool(v) for v in phase(i))
      carry, value = _host_step(classifier, carry, np.int32(i), step_keys, part[0], flags=flags,
                                **config)
      values.append(value)
    image, start, value = _host_end(classifier, carry, part[0], p0, **config)
    keep = size - short
    outs.append((image[:keep], jnp.stack(values, 1)[:keep], start[:keep], value[:keep]))
  out = [jnp.concatenate(o) if len(outs) > 1 else o[0] for o in zip(*outs)]
  return _best_restart(*out, config["restarts"])


def maximize_activation(classifier: Classifier, layer: str, filters: Sequence[int] | int, *,
                        key: jax.Array, steps: int = 256,
                        optimizer: optax.GradientTransformation | None = None,
                        neuron: Sequence[int] | None = None, fourier: bool = True,
                        pixel_range: str = "sigmoid", decay_power: float = 1.0,
                        l2: float = 0.0, tv: float = 0.0, jitter: int = 1,
                        polish_steps: int | None = None, blur_every: int = 0,
                        blur_sigma: float = 0.5,
                        init_scale: float = 1.0, init=None, restarts: int = 3,
                        warmup_steps: int | None = None, vertex_steps: int = 2,
                        batch_size: int | None = None) -> Visualization:
  """Gradient ascent on the input: for each filter, an image that activates it strongly.

  Each filter gets its own optimisation (its own optimizer state, its own random start and
  jitter drawn from ``fold_in(key, filter)``, so a filter's image does not depend on which
  other filters are requested); all of them run at once, vmapped, ``steps`` optax updates:
  called with concrete arrays, a Python loop over one compiled step (XLA:CPU runs convolutions
  inside a ``lax.scan`` 2–3× slower); under ``jax.jit``, one ``lax.scan``. The loss of filter
  ``f`` on image ``x`` is::

      -objective_f(jitter(x)) + l2 * mean((x - 0.5)²) + tv * TV(x)

  where the objective is the mean of channel ``f`` of ``layer`` over spatial positions (the
  unit itself for a dense layer), or its value at ``neuron = (row, col)``. The first
  ``steps - polish_steps`` steps jitter the image (readable, translation-robust patterns); the
  last ``polish_steps`` do not, and the best unshifted iterate is kept. Filters that are off
  (no gradient) follow their pre-activation's gradient for the first ``warmup_steps``, and the
  kept image then meets saturated candidates (``vertex_steps``): whichever scores higher by the
  true activation is returned. Every
  ``blur_every`` steps the parameters are blurred with a Gaussian of ``blur_sigma`` pixels
  (Yosinski et al.); in the Fourier basis that blur is exact, applied to the spectrum.

  Args:
    classifier: any jaxplain classifier; images have its ``input_shape``.
    layer: one of ``classifier.layer_names``.
    filters: channel indices (``F`` of them, or one int) of ``layer``. Must be concrete
      (under ``jax.jit`` pass them as a static argument).
    key: PRNG key: random starts and jitter. Same key, same images.
    steps: number of optimizer updates.
    optimizer: an optax transformation, applied to each filter separately (default
      ``optax.adam(0.05)``, Lucent's). Pass the same object again to reuse the compilation.
    neuron: ``(row, col)`` in the layer's maps: maximise that single neuron instead of the
      channel mean.
    fourier: parameterise the image by its spectrum, scaled by ``1/f**decay_power``
      (Lucid/Lucent ``fft_image``: decorrelated, favours low frequencies). ``False``: pixels.
    pixel_range: how pixels stay in [0, 1]: ``"sigmoid"`` (image = sigmoid(param), Lucent's
      choice) or ``"clip"`` (pixel basis: projected gradient ascent, the parameters are
      clipped to [0, 1] after each update; Fourier basis: the image is clipped).
    decay_power: spectrum decay of the Fourier parameterisation.
    l2: weight of the L2 decay towards mid-gray (``mean((x - 0.5)²)``).
    tv: weight of the total variation (mean absolute neighbour difference).
    jitter: random translation of up to this many pixels at each step (reflect padding),
      except during the last ``polish_steps``. Without jitter the ascent finds
      high-frequency noise; with it, it finds readable patterns but maximises the *expected*
      activation under shifts, which for a layer behind a stride-2 convolution (phase-sensitive)
      can stay below what one real face reaches.
    polish_steps: the last this many steps run without jitter, and the image returned is the
      best of them by the objective itself (measured on the unshifted image, at no extra
      cost; plus one forward pass for the final update). ``None``: ``steps // 4``; ``0``: the
      old behaviour (jitter to the end, last iterate). On the converted NetworkV2's
      ``conv_2.3`` this lifts the worst filter from 0.91× to 2× the best of 1,000 real faces
      and keeps the jittered run's look (scripts/filter_ratios.py measures every layer).
    blur_every: blur every this many steps (0: never).
    blur_sigma: standard deviation of that blur, in pixels.
    init_scale: standard deviation of the random start before the sigmoid, in pixel space
      whatever the basis (``"clip"``: of the pixels, divided by 4, the sigmoid's slope). The
      default 1 starts from visible noise (pixel std ≈ 0.2): from Lucent's nearly uniform
      gray (0.01) a ReLU channel that is off at gray has no gradient and never moves.
    init: optional ``(F, H, W, C)`` images in [0, 1] to start from instead (e.g. a face).
    restarts: optimise each filter this many times, vmapped in the same program (``restarts``
      times the compute), and return the best by the unshifted objective. Restart 0 is the
      run ``restarts=1`` gives; restart ``r`` starts from noise around a darker or brighter
      gray (pre-sigmoid offsets 0, -2, +2, -1, +1, ...) with its own jitter. The default 3
      exists for brightness detectors (first layers): a ReLU channel that fires only on dark
      areas gets no gradient where a mid-gray start is bright, so a single run ends in a
      striped local optimum at about half of what an all-dark image gives (the shipped CNN's
      ``conv1_1``: 0.53× the best real face with 1 restart, 0.90× with 3; FER2013 holds blank
      faces, which are this optimum exactly). With ``init``, restarts differ by jitter only.
    warmup_steps: during the first this many steps, a filter whose objective is exactly 0 and
      so has no gradient (a ReLU unit that is off for the whole image, as NetworkV2's
      ``linear.1`` unit 217 is at every start) follows the gradient of its pre-activation
      instead: the same objective with the backward pass of its own ReLU (the last one on the
      way to the layer) the identity, every other ReLU exact (a straight-through estimator of
      that ReLU alone), which points to where the unit turns on. Passing every ReLU's gradient
      instead also follows inner units that are off, and can point the wrong way: the shipped
      CNN's ``dense`` units 3, 33 and 65 then stayed at 0 where faces reach 0.07-0.25 (now 7.5-17×
      them). Filters with a gradient keep theirs; what is measured, kept and returned is always
      the true activation. ``None``: ``steps // 16`` (those steps compute both gradients).
      ``0``: never.
    vertex_steps: after the ascent, saturated candidates, each kept only if it scores higher:
      the image binarised at 0.5, the black and the white image, then this many moves to the
      vertex of the [0, 1] box the gradient points to (pixels with a positive gradient to 1,
      negative to 0), from the best so far. A first layer's filter (a ReLU of a linear map of
      the pixels) is convex, so its maximum over the box is at a vertex, e.g. an exactly black
      image, which a sigmoid-bounded image only approaches (shipped ``conv1_1``: dark detectors
      0.90-0.95× the best face without, 1.00× with: that face is a black FER2013 image, the
      maximum itself). Costs ``3 + 2 * vertex_steps`` forward passes per restart. ``0``: none.
    batch_size: optimise this many filters at a time (``lax.map``) to bound memory; ``None``:
      all at once.

  Returns:
    A :class:`Visualization` ``(images (F, H, W, C), trace (steps, F), start_images)``.

  Raises:
    ValueError: unknown ``layer``, a filter index out of range, a ``neuron`` outside the
      maps, bad options or ``init``.

  References:
    Erhan et al., "Visualizing Higher-Layer Features of a Deep Network", 2009.
    Yosinski et al., "Understanding Neural Networks Through Deep Visualization", 2015.
    Olah et al., "Feature Visualization", Distill 2017 (Lucid; Lucent is its PyTorch port).
  """
  shape = check_layer(classifier, layer)
  filters_np = _check_filters(filters, shape[-1], layer)
  neuron = _check_neuron(neuron, shape, layer)
  if pixel_range not in _PIXEL_RANGES:
    raise ValueError(f"`pixel_range` must be one of {_PIXEL_RANGES}, got {pixel_range!r}")
  for name, v in (("steps", steps), ("jitter", jitter), ("blur_every", blur_every)):
    if not isinstance(v, (int, np.integer)) or v < (1 if name == "steps" else 0):
      raise ValueError(f"`{name}` must be an int >= {1 if name == 'steps' else 0}, got {v!r}")
  if polish_steps is None:
    polish_steps = steps // 4
  if not isinstance(restarts, (int, np.integer)) or not 1 <= restarts <= len(_RESTART_OFFSETS):
    raise ValueError(f"`restarts` must be an int in 1..{len(_RESTART_OFFSETS)}, got "
                     f"{restarts!r}")
  if warmup_steps is None:
    warmup_steps = steps // 16
  for name, v in (("warmup_steps", warmup_steps), ("vertex_steps", vertex_steps)):
    if not isinstance(v, (int, np.integer)) or v < 0:
      raise ValueError(f"`{name}` must be an int >= 0, got {v!r}")
  if not isinstance(polish_steps, (int, np.integer)) or not 0 <= polish_steps <= steps:
    raise ValueError(f"`polish_steps` must be an int in 0..steps ({steps}), got {polish_steps!r}")
  if jitter >= min(classifier.input_shape[:2]):
    raise ValueError(f"`jitter` {jitter} must be smaller than the image "
                     f"{classifier.input_shape[:2]}")
  if blur_every and not blur_sigma > 0:
    raise ValueError(f"`blur_sigma` must be > 0, got {blur_sigma!r}")
  for name, v in (("l2", l2), ("tv", tv), ("init_scale", init_scale)):
    if not v >= 0:
      raise ValueError(f"`{name}` must be >= 0, got {v!r}")
  if batch_size is not None and (not isinstance(batch_size, (int, np.integer)) or batch_size < 1):
    raise ValueError(f"`batch_size` must be a positive int or None, got {batch_size!r}")
  if init is not None:
    check_images(init, name="init", shape=classifier.input_shape,
                 value_range=classifier.input_range)
    if init.shape[0] != filters_np.size:
      raise ValueError(f"`init` has {init.shape[0]} images, `filters` {filters_np.size}")
    init = jnp.asarray(init, jnp.float32)
  traced = batching.traced(classifier, key, init)
  return (_maximize if traced else _maximize_host)(
      classifier, jnp.asarray(filters_np, jnp.int32), key, init, layer=layer, steps=int(steps),
      optimizer=optimizer or _default_optimizer(0.05), neuron=neuron, fourier=bool(fourier),
      pixel_range=pixel_range, decay_power=float(decay_power), l2=float(l2), tv=float(tv),
      jitter=int(jitter), polish_steps=int(polish_steps), blur_every=int(blur_every),
      blur_sigma=float(blur_sigma), init_scale=float(init_scale), restarts=int(restarts),
      warmup_steps=min(int(warmup_steps), int(steps)), vertex_steps=int(vertex_steps),
      batch_size=None if batch_size is None else int(batch_size))


def maximize_filters(classifier: Classifier, layer: str, filters: Sequence[int] | int, *,
                     key: jax.Array, filters_per_batch: int = 16, progress=None,
                     chunk: int | None = None, **options) -> Visualization:
  """:func:`maximize_activation` over many filters, ``filters_per_batch`` at a time, with progress.

  Gives the same images as one call (each filter's randomness comes from
  ``fold_in(key, filter)``); every batch has the same size (``batching.map_chunks`` pads the
  last by repeating its first filter), so one compilation serves them all. The layer, every
  filter index and the options are checked before any work starts.

  Args:
    classifier, layer, filters, key: as for :func:`maximize_activation`.
    filters_per_batch: filters per compiled call.
    progress: optional ``progress(n)`` called after each batch with its number of filters.
    chunk: deprecated alias of ``filters_per_batch``.
    **options: the keyword options of :func:`maximize_activation` (not ``init``).

  Returns:
    A :class:`Visualization` for all ``filters``.
  """
  from jaxplain import batching
  if chunk is not None:
    import warnings
    warnings.warn("`chunk` is deprecated: use `filters_per_batch`", DeprecationWarning,
                  stacklevel=2)
    filters_per_batch = chunk
  size = batching.check_batch_size(filters_per_batch, name="filters_per_batch",
                                   allow_none=False)
  if "init" in options:
    raise ValueError("`init` is not supported by maximize_filters; use maximize_activation")
  filters_np = _check_filters(filters, filter_count(classifier, layer), layer)

  def run(part):
    r = maximize_activation(classifier, layer, part, key=key, **options)
    return r.images, r.trace.T, r.start_images

  images, trace_t, start = batching.map_chunks(run, [filters_np], size=size, progress=progress)
  return Visualization(images, trace_t.T, start)


def parse_filters(text: str, count: int) -> list[int]:
  """``"0:64"``, ``"3"``, ``"1,5,9"``, ``"::4"`` or ``"all"`` → filter indices below ``count``.

  A slice is clipped to ``count`` (like Python's); listed indices must exist; an empty result
  (``"5:5"``, or a slice past ``count``) is an error. ``count`` is ``filter_count(clf, layer)``,
  which accepts every layer :func:`check_layer` accepts (dense units included).
  """
  if isinstance(count, (bool, np.bool_)) or not isinstance(count, (int, np.integer)) \
      or count < 1:
    raise ValueError(f"`count` must be a positive int, got {count!r}")
  text = text.strip()
  if text in ("", "all", ":"):
    return list(range(count))
  try:
    if ":" in text:
      parts = [int(t) if t.strip() else None for t in text.split(":")]
      if len(parts) > 3:
        raise ValueError(text)
      picked = list(range(count))[slice(*parts)]
    else:
      picked = [int(t) for t in text.split(",") if t.strip()]
  except ValueError:
    raise ValueError(f"`filters` {text!r}: expected a slice like 0:64, or indices like "
                     f"1,5,9") from None
  if not picked:
    raise ValueError(f"`filters` {text!r} selects none of the {count} filters (0..{count - 1})")
  bad = [f for f in picked if not 0 <= f < count]
  if bad:
    raise ValueError(f"`filters` {bad} out of range: the layer has {count} filters "
                     f"(0..{count - 1})")
  return picked
