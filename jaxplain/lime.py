"""LIME for jaxplain classifiers: a batched prediction function for the ``lime`` package, and a
native LIME that explains many images at once in JAX.

Two ways to run LIME on a :class:`~jaxplain.models.Classifier`:

* :func:`classifier_fn` / :func:`explain` drive the reference ``lime`` package
  (``LimeImageExplainer``): lime perturbs the image in NumPy and calls our prediction function,
  which runs one compiled forward pass over fixed-size chunks.
* :func:`lime_batch` is LIME itself in JAX: masks sampled on device (or passed in), perturbed
  images built vectorised, one chunked forward over every image and sample, lime's cosine
  distance and kernel, and a weighted ridge regression with sklearn ``Ridge`` semantics, for a
  whole batch of images at fixed shapes. Given lime's segments and masks it reproduces lime's
  weights (tests/test_lime.py). :func:`lime_many` runs it over any number of faces in groups of
  one compiled shape, with a progress callback.

Superpixels: :func:`segment_face` is scikit-image SLIC tuned for 48×48 faces (about 25-45
superpixels; lime's default quickshift gives only a handful on images this small), labelled
``0..S-1`` as lime expects (lime's column ``j`` is the superpixel labelled ``j``).

References:
  Ribeiro, Singh and Guestrin, "Why Should I Trust You?: Explaining the Predictions of Any
  Classifier", KDD 2016. The ``lime`` package, ``lime/lime_image.py`` and ``lime/lime_base.py``.
  Achanta et al., "SLIC Superpixels Compared to State-of-the-Art Superpixel Methods", 2012.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxplain import batching
from jaxplain.models import Classifier, check_images, input_range

__all__ = [
    "LimeResult",
    "classifier_fn",
    "explain",
    "lime_batch",
    "lime_many",
    "sample_masks",
    "segment_face",
    "segment_faces",
    "weights_to_image",
]

_HIGHEST = jax.lax.Precision.HIGHEST


# ----------------------------------------------------------------------------- superpixels


def segment_face(image, *, n_segments: int = 50, compactness: float = 0.1) -> np.ndarray:
  """SLIC superpixels of one face, labelled ``0..S-1``; deterministic.

  Usable as lime's ``segmentation_fn`` (lime hands it the RGB image it made with
  ``gray2rgb``; a gray face's identical channels are averaged back to one).

  Args:
    image: ``(H, W)``, ``(H, W, 1)`` or ``(H, W, 3)`` float in [0, 1] (uint8 is scaled by 1/255).
    n_segments: SLIC's target number of superpixels. With ``compactness=0.1`` the bundled
      48×48 faces get 26-42 superpixels (35 on average).
    compactness: SLIC's balance of intensity against space, for intensities in [0, 1].

  Returns:
    int32 ``(H, W)`` superpixel labels ``0..S-1``.
  """
  from skimage.segmentation import slic
  image = np.asarray(image)
  if image.ndim == 3 and image.shape[-1] in (1, 3):
    image = image.astype(np.float64).mean(-1)
  if image.ndim != 2:
    raise ValueError(f"`image` must be (H, W), (H, W, 1) or (H, W, 3), got shape {image.shape}")
  image = image / 255.0 if image.dtype == np.uint8 else image.astype(np.float64)
  labels = slic(image, n_segments=n_segments, compactness=compactness, channel_axis=None,
                start_label=0)
  # Relabel to 0..S-1 in order, whatever SLIC returned (lime indexes columns by label).
  return np.unique(labels, return_inverse=True)[1].reshape(labels.shape).astype(np.int32)


def segment_faces(images, *, n_segments: int = 50, compactness: float = 0.1) -> np.ndarray:
  """:func:`segment_face` of each image of ``(N, H, W, C)``: int32 ``(N, H, W)``."""
  images = np.asarray(images)
  if images.ndim != 4:
    raise ValueError(f"`images` must have rank 4 (N, H, W, C), got shape {images.shape}")
  return np.stack([segment_face(im, n_segments=n_segments, compactness=compactness)
                   for im in images]) if len(images) else np.zeros(images.shape[:3], np.int32)


# ----------------------------------------------------------------- the lime package's side


@jax.jit
def _probabilities(forward, x):
  return jax.nn.softmax(forward(x), axis=-1)


def _chunk_size(n: int, batch_size: int) -> int:
  """``min(batch_size, next power of two ≥ n)``: at most ⌈log2 batch_size⌉ + 1 shapes."""
  return min(batch_size, 1 << max(0, n - 1).bit_length())


def classifier_fn(classifier: Classifier, *, batch_size: int = 256) -> Callable[..., np.ndarray]:
  """A prediction function for lime's ``LimeImageExplainer.explain_instance``.

  The returned function takes the images lime sends, ``(N, H, W, 3)``, and returns the class
  probabilities ``(N, K)`` (softmax of the logits) as NumPy. It expects what jaxplain uses
  everywhere, float images in [0, 1] (so give lime a float face, e.g. from
  ``jaxplain.data.to_float``); lime turns a 2-D gray face into RGB with
  ``skimage.color.gray2rgb``, which copies the gray channel three times and keeps the dtype, so
  for a one-channel classifier the channels are averaged back (exactly the gray value when they
  are equal). uint8 images are scaled by 1/255; float values outside [0, 1] raise ``ValueError``
  (they are most likely 0-255 pixels). Extra keyword arguments that lime versions pass are
  accepted and ignored.

  Images are evaluated in chunks of ``min(batch_size, next power of two ≥ N)`` rows by one
  jitted function, the last chunk zero-padded to the chunk size: a run compiles at most
  ``⌈log2 batch_size⌉ + 1`` times whatever ``num_samples`` and lime's ``batch_size`` are, and a
  call with 10 images pads them to 16, not to ``batch_size``.

  Args:
    classifier: the classifier to explain.
    batch_size: the largest chunk evaluated at once (memory knob).

  Returns:
    ``fn(images, **kwargs) -> (N, K)`` float probabilities.
  """
  if not isinstance(classifier, Classifier):
    raise ValueError(f"`classifier` must be a jaxplain Classifier, got {type(classifier).__name__}")
  if batch_size < 1:
    raise ValueError(f"`batch_size` must be >= 1, got {batch_size}")
  channels = classifier.input_shape[-1]
  forward = classifier.forward

  def predict_proba(images, **kwargs) -> np.ndarray:
    del kwargs  # lime versions pass options (e.g. batch sizes) the prediction does not need
    x = np.asarray(images)
    if x.dtype == np.uint8:
      x = x.astype(np.float32) / 255.0
    elif not np.issubdtype(x.dtype, np.floating):
      raise ValueError(f"`images` must be float in [0, 1] or uint8, got dtype {x.dtype}")
    elif x.dtype == np.float64 and not jax.config.jax_enable_x64:
      x = x.astype(np.float32)  # lime always sends float64: no "becomes float32" warning
    if x.ndim == 4 and x.shape[-1] != channels and channels == 1:
      x = x.astype(np.float64).mean(-1, keepdims=True).astype(x.dtype)
    check_images(x, name="images", shape=classifier.input_shape)
    if x.size and (x.min() < -1e-6 or x.max() > 1 + 1e-6):
      raise ValueError(f"`images` must be in [0, 1], got values in [{x.min()}, {x.max()}]; "
                       "give lime a float face in [0, 1] (jaxplain.data.to_float)")
    n = len(x)
    if n == 0:
      return np.zeros((0, classifier.num_classes), np.float32)
    return batching.map_chunks(functools.partial(_probabilities, forward), (x,),
                               size=_chunk_size(n, batch_size), shrink=False)

  return predict_proba


def explain(classifier: Classifier, image, *, label, num_samples: int = 1000,
            segmentation: Callable[[np.ndarray], np.ndarray] | None = None, seed: int = 0,
            hide_color=None, batch_size: int = 256):
  """LIME with the ``lime`` package on one face: lime's ``ImageExplanation``.

  Reproducible: lime draws its masks from the explainer's ``random_state``, so a fresh
  ``LimeImageExplainer(random_state=seed)`` is made on every call, and the default segmentation
  is deterministic. The same ``seed`` gives the same weights.

  Args:
    classifier: the classifier to explain.
    image: one face, ``(H, W, C)`` or ``(H, W)`` float in [0, 1] (a gray face is given to lime as
      2-D; lime makes it RGB).
    label: the class (or classes) to explain.
    num_samples: perturbed samples, the unperturbed image first (lime's ``num_samples``).
    segmentation: ``fn(rgb_image) -> (H, W)`` int labels ``0..S-1`` (lime's
      ``segmentation_fn``, e.g. a ``lime.wrappers.scikit_image.SegmentationAlgorithm``);
      default :func:`segment_face`.
    seed: lime's random state (and ``random_seed``).
    hide_color: lime's ``hide_color``: ``None`` fills a hidden superpixel with its mean.
    batch_size: largest chunk of the prediction function (:func:`classifier_fn`).

  Returns:
    lime's ``ImageExplanation``: ``local_exp[label]`` is a list of ``(superpixel, weight)``,
    ``intercept[label]``, ``score``, ``local_pred`` and ``segments``.
  """
  from lime.lime_image import LimeImageExplainer
  if not isinstance(classifier, Classifier):
    raise ValueError(f"`classifier` must be a jaxplain Classifier, got {type(classifier).__name__}")
  image = np.asarray(image)
  if image.ndim == 2:
    image = image[..., None]
  check_images(image[None], name="image", shape=classifier.input_shape)
  if num_samples < 2:
    raise ValueError(f"`num_samples` must be >= 2 (the image and a perturbation), got {num_samples}")
  labels = tuple(int(t) for t in np.atleast_1d(label))
  bad = [t for t in labels if not 0 <= t < classifier.num_classes]
  if bad:
    raise ValueError(f"`label` must be in 0..{classifier.num_classes - 1}, got {bad}")
  explainer = LimeImageExplainer(kernel_width=0.25, random_state=seed)
  with _quiet_lime():
    return explainer.explain_instance(
      image[..., 0] if image.shape[-1] == 1 else image,
        classifier_fn(classifier, batch_size=batch_size), labels=labels, top_labels=None,
        hide_color=hide_color, num_features=100000, num_samples=num_samples,
        batch_size=max(num_samples, 1), segmentation_fn=segmentation or segment_face,
        random_seed=seed)


@contextlib.contextmanager
def _quiet_lime():
  """Silences lime's own tqdm bar (lime 0.2.0.1 has no switch for it) while jaxplain's shows."""
  from lime import lime_image
  bar = lime_image.tqdm
  lime_image.tqdm = lambda iterable, *args, **kwargs: iterable
  try:
    yield
  finally:
    lime_image.tqdm = bar


# ------------------------------------------------------------------------- native LIME


class LimeResult(NamedTuple):
  """LIME's local linear model of each image (``M`` = padded number of superpixels).

  Attributes:
    weights: ``(N, M)`` the ridge coefficient of each superpixel (0 where not ``valid``).
    intercept: ``(N,)``.
    score: ``(N,)`` the weighted R² of the local model on the samples (lime's ``score``).
    local_pred: ``(N,)`` the local model's prediction at the unperturbed image.
    valid: ``(N, M)`` bool, which superpixel labels the image has.
  """

  weights: Any
  intercept: Any
  score: Any
  local_pred: Any
  valid: Any


def _regression_dtype():
  return jnp.float64 if jax.config.jax_enable_x64 else jnp.float32


def _cosine_kernel(masks, valid, kernel_width):
  """lime's sample weights ``sqrt(exp(-d² / width²))``, ``d`` the cosine distance of each mask
  row to row 0 (the unperturbed image), as ``sklearn.metrics.pairwise_distances`` computes it.
  """
  m = masks * valid[None, :]
  dot = m @ m[0]
  norm = jnp.sqrt((m * m).sum(-1)) * jnp.sqrt((m[0] * m[0]).sum())
  similarity = jnp.where(norm > 0, dot / jnp.where(norm > 0, norm, 1), 0)  # sklearn: 0-rows → 0
  d = jnp.clip(1 - similarity, 0, 2)
  return jnp.sqrt(jnp.exp(-(d ** 2) / kernel_width ** 2))


def _weighted_ridge(x, y, w, valid, alpha):
  """sklearn ``Ridge(alpha, fit_intercept=True).fit(x, y, sample_weight=w)`` and its score.

  Minimises ``Σ w (y - x·b - c)² + alpha |b|²``: centre x and y by their weighted means (the
  intercept is not penalised), solve ``(Xcᵀ W Xc + alpha I) b = Xcᵀ W yc``. Columns that are
  not ``valid`` are zero and get weight 0.
  """
  total = w.sum()
  x_mean = jnp.einsum("s,si->i", w, x, precision=_HIGHEST) / total
  y_mean = (w * y).sum() / total
  xc, yc = x - x_mean[None, :], y - y_mean
  gram = jnp.einsum("s,si,sj->ij", w, xc, xc, precision=_HIGHEST)
  ridge = jnp.where(valid, alpha, 1).astype(x.dtype)  # invalid columns: 1·b = 0
  b = jax.scipy.linalg.solve(gram + jnp.diag(ridge), jnp.einsum("s,si,s->i", w, xc, yc,
                                                                precision=_HIGHEST),
                             assume_a="pos")
  b = jnp.where(valid, b, 0)
  c = y_mean - (x_mean * b).sum()
  pred = jnp.einsum("si,i->s", x, b, precision=_HIGHEST) + c
  residual = (w * (y - pred) ** 2).sum()
  spread = (w * yc ** 2).sum()
  # sklearn's r2_score(force_finite=True): a constant target scores 1 if fitted exactly, else 0.
  score = jnp.where(spread > 0, 1 - residual / jnp.where(spread > 0, spread, 1),
                    jnp.where(residual > 0, 0.0, 1.0))
  return b, c, score, pred[0]


@functools.partial(jax.jit, static_argnames=("mean_fill", "logits", "batch_size"))
def _lime_core(forward, images, target, segments, masks, hide, kernel_width, alpha, *,
               mean_fill, logits, batch_size):
  n, h, w_, c = images.shape
  s, m = masks.shape[1], masks.shape[2]
  dtype = _regression_dtype()
  flat = segments.reshape(n, h * w_)
  per_segment = jax.vmap(functools.partial(jax.ops.segment_sum, num_segments=m))
  counts = per_segment(jnp.ones(flat.shape, images.dtype), flat)  # (N, M) pixels per label
  valid = counts > 0
  if mean_fill:  # lime's "fudged image" with hide_color=None: each superpixel's mean colour
    sums = per_segment(images.reshape(n, h * w_, c), flat)  # (N, M, C)
    means = sums / jnp.maximum(counts, 1)[..., None]
    fudged = jnp.take_along_axis(means, segments.reshape(n, h * w_, 1), axis=1)
    fudged = fudged.reshape(images.shape)
  else:
    fudged = jnp.broadcast_to(hide.astype(images.dtype), images.shape)

  # Every (image, sample) row, chunked: one compiled forward of `size` perturbed images.
  rows = n * s
  size = min(batch_size, rows)
  chunks = -(-rows // size)
  index = jnp.arange(chunks * size) % rows  # padding rows repeat early ones; dropped below
  image_of, sample_of = index // s, index % s

  def predict(chunk):
    i, j = chunk
    keep = jnp.take_along_axis(masks[i, j], segments[i].reshape(size, h * w_), axis=1)
    keep = keep.reshape(size, h, w_, 1) > 0
    x = jnp.where(keep, images[i], fudged[i])
    out = forward(x)
    if not logits:
      out = jax.nn.softmax(out, axis=-1)
    return jnp.take_along_axis(out, target[i][:, None], axis=1)[:, 0]

  ys = jax.lax.map(predict, (image_of.reshape(chunks, size), sample_of.reshape(chunks, size)))
  ys = ys.reshape(-1)[:rows].reshape(n, s).astype(dtype)

  x = masks.astype(dtype) * valid[:, None, :].astype(dtype)
  kernel = jax.vmap(_cosine_kernel, in_axes=(0, 0, None))(
      x, valid.astype(dtype), jnp.asarray(kernel_width, dtype))
  b, c0, score, local = jax.vmap(_weighted_ridge, in_axes=(0, 0, 0, 0, None))(
      x, ys, kernel, valid, jnp.asarray(alpha, dtype))
  out_dtype = jnp.result_type(images.dtype, jnp.float32)
  return LimeResult(b.astype(out_dtype), c0.astype(out_dtype), score.astype(out_dtype),
                    local.astype(out_dtype), valid)


def sample_masks(key, num_images: int, num_samples: int, num_segments: int):
  """lime's samples: int32 ``(num_images, num_samples, num_segments)`` 0/1 masks.

  Row 0 of each image is all ones (the unperturbed image); the rest are Bernoulli(½) per
  superpixel, as lime's ``data_labels`` draws them (with JAX's generator instead of NumPy's).
  """
  masks = jax.random.bernoulli(key, 0.5, (num_images, num_samples, num_segments))
  return masks.astype(jnp.int32).at[:, 0, :].set(1)


def _forward_and_shape(forward, images):
  """The forward function and its number of classes, checking ``images`` against it."""
  if isinstance(forward, Classifier):
    check_images(images, name="images", shape=forward.input_shape,
                 value_range=forward.input_range)
    return forward.forward, forward.num_classes
  check_images(images, name="images", value_range=input_range(forward))
  try:
    out = jax.eval_shape(forward, jax.ShapeDtypeStruct((1,) + tuple(images.shape[1:]),
                                                        images.dtype))
  except Exception as e:  # noqa: BLE001 - any failure means the shapes do not fit
    raise ValueError(f"`images` of shape {tuple(images.shape)} do not match `forward` "
                     f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
  if getattr(out, "ndim", None) != 2 or out.shape[0] != 1:
    raise ValueError(f"`forward` must return logits (N, K), got shape {getattr(out, 'shape', out)}")
  return forward, out.shape[1]


def lime_batch(forward, images, target, segments, *, key=None, masks=None,
               num_samples: int = 1000, kernel_width: float = 0.25, hide="mean",
               alpha: float = 1.0, logits: bool = False, max_segments: int | None = None,
               batch_size: int = 256) -> LimeResult:
  """LIME for many images at once, in JAX, with the ``lime`` package's semantics.

  For each image: ``num_samples`` binary masks over its superpixels (the first all ones, the
  unperturbed image, then Bernoulli(½), as lime draws them), the perturbed images (hidden
  superpixels filled with their mean colour, lime's ``hide_color=None``, or with ``hide``), the
  probability of ``target`` for each (softmax of ``forward``'s logits; ``logits=True`` regresses
  the logits), lime's weights ``sqrt(exp(-d²/kernel_width²))`` of the cosine distance ``d``
  between each mask and the all-ones mask, and a weighted ridge regression of the outputs on the
  masks with ``sklearn.linear_model.Ridge(alpha, fit_intercept=True)`` semantics (what lime
  fits when no feature selection happens, i.e. ``num_features`` ≥ the number of superpixels).

  Superpixels are padded to ``M`` per image (``max_segments``, default the largest label + 1)
  so the whole batch runs at fixed shapes in one jitted call; absent labels are marked invalid
  and get weight 0. The regression runs in float64 when ``jax_enable_x64`` is on.

  Args:
    forward: pure ``(B, H, W, C) → (B, K)`` logits (e.g. ``classifier.forward``), or a
      :class:`Classifier` (its input shape is then checked too).
    images: ``(N, H, W, C)`` float in [0, 1].
    target: the class to explain, an int or int ``(N,)``.
    segments: int ``(N, H, W)`` superpixel labels ``0..M-1`` (e.g. :func:`segment_faces`).
    key: PRNG key for the masks; required unless ``masks`` is given.
    masks: ``(N, num_samples, M)`` or ``(num_samples, M)`` (shared by all images) 0/1 masks
      (row 0 should be all ones, the unperturbed image, as lime's is); overrides ``key`` and
      ``num_samples``.
    num_samples: samples per image, the unperturbed one included (≥ 2).
    kernel_width: lime's ``kernel_width``.
    hide: ``"mean"`` (lime's ``hide_color=None``) or the value hidden pixels get.
    alpha: the ridge penalty (lime: 1).
    logits: regress the logits instead of the probabilities.
    max_segments: ``M``, the padded number of superpixels (static; fix it to avoid recompiles).
    batch_size: images per forward call (memory knob).

  Returns:
    :class:`LimeResult` of arrays: ``weights (N, M)``, ``intercept (N,)``, ``score (N,)``,
    ``local_pred (N,)``, ``valid (N, M)``.

  References:
    Ribeiro et al., KDD 2016; ``lime/lime_image.py`` and ``lime/lime_base.py``.
  """
  if not hasattr(images, "shape"):
    images = np.asarray(images)
  forward, num_classes = _forward_and_shape(forward, images)
  n, h, w, _ = images.shape
  segments = jnp.asarray(segments)
  if segments.shape != (n, h, w):
    raise ValueError(f"`segments` must have shape (N, H, W) = {(n, h, w)} to match `images` "
                     f"{tuple(images.shape)}, got {tuple(segments.shape)}")
  if not jnp.issubdtype(segments.dtype, jnp.integer):
    raise ValueError(f"`segments` must be integer superpixel labels, got dtype {segments.dtype}")
  if masks is not None:
    masks = jnp.asarray(masks)
    if masks.ndim == 2:
      masks = jnp.broadcast_to(masks, (n,) + masks.shape)
    if masks.ndim != 3 or masks.shape[0] != n:
      raise ValueError(f"`masks` must have shape (N, num_samples, M) with N = {n} or "
                       f"(num_samples, M), got {tuple(masks.shape)}")
    num_samples = masks.shape[1]
    if max_segments is None:
      max_segments = masks.shape[2]
  if num_samples < 2:
    raise ValueError(f"`num_samples` must be >= 2 (the image and a perturbation), got {num_samples}")
  if not isinstance(segments, jax.core.Tracer) and segments.size:
    lo, hi = int(segments.min()), int(segments.max())
    if lo < 0:
      raise ValueError(f"`segments` labels must be >= 0, got {lo}")
    if max_segments is None:
      max_segments = hi + 1
    elif hi >= max_segments:
      raise ValueError(f"`segments` has label {hi}, but `max_segments`/`masks` allow "
                       f"0..{max_segments - 1}")
  if max_segments is None:
    raise ValueError("`max_segments` is required when `segments` is traced")
  if masks is None:
    if key is None:
      raise ValueError("`key` is required to sample the masks (or pass `masks`)")
    masks = sample_masks(key, n, num_samples, max_segments)
  elif masks.shape[2] != max_segments:
    raise ValueError(f"`masks` has {masks.shape[2]} columns, `max_segments` is {max_segments}")
  target = jnp.asarray(target)
  if not jnp.issubdtype(target.dtype, jnp.integer):
    raise ValueError(f"`target` must be integer class indices, got dtype {target.dtype}")
  if target.ndim == 0:
    target = jnp.broadcast_to(target, (n,))
  if target.shape != (n,):
    raise ValueError(f"`target` must be an int or have shape ({n},), got {tuple(target.shape)}")
  if not isinstance(target, jax.core.Tracer) and n and (
      int(target.min()) < 0 or int(target.max()) >= num_classes):
    raise ValueError(f"`target` must be in 0..{num_classes - 1}, got "
                     f"{int(target.min())}..{int(target.max())}")
  if isinstance(hide, str):
    if hide != "mean":
      raise ValueError(f"`hide` must be 'mean' or a number, got {hide!r}")
    mean_fill, hide_value = True, jnp.zeros((), images.dtype)
  else:
    mean_fill, hide_value = False, jnp.asarray(hide, images.dtype)
    if hide_value.ndim:
      raise ValueError(f"`hide` must be 'mean' or a scalar, got shape {hide_value.shape}")
  if not kernel_width > 0:
    raise ValueError(f"`kernel_width` must be > 0, got {kernel_width}")
  if batch_size < 1:
    raise ValueError(f"`batch_size` must be >= 1, got {batch_size}")
  if n == 0:
    z = jnp.zeros((0,), images.dtype)
    return LimeResult(jnp.zeros((0, max_segments), images.dtype), z, z, z,
                      jnp.zeros((0, max_segments), bool))
  return _lime_core(forward, jnp.asarray(images), target.astype(jnp.int32),
                    segments.astype(jnp.int32), masks, hide_value, kernel_width, alpha,
                    mean_fill=mean_fill, logits=bool(logits),
                    batch_size=int(batch_size))


def lime_many(forward, images, target, segments, *, key, num_samples: int = 1000,
              images_per_call: int = 8, max_segments: int | None = None,
              progress: Callable[[int], Any] | None = None, **options) -> LimeResult:
  """:func:`lime_batch` over any number of images, ``images_per_call`` at a time.

  Every call has the same shapes (the last group is padded with copies of its first image and
  ``max_segments`` is fixed for the whole run), so the run compiles once. Group ``g`` samples
  its masks with ``jax.random.fold_in(key, g)``.

  Args:
    forward, images, target, segments, num_samples: as :func:`lime_batch`.
    key: PRNG key.
    images_per_call: images explained by one :func:`lime_batch` call (memory knob).
    max_segments: ``M``; default the largest label + 1 over all images.
    progress: called with the number of images finished by each call (e.g. ``tqdm.update``).
    **options: other :func:`lime_batch` options (``kernel_width``, ``hide``, ``logits``, ...).

  Returns:
    :class:`LimeResult` of NumPy arrays for all ``N`` images.
  """
  images = np.asarray(images)
  segments = np.asarray(segments)
  n = len(images)
  target = np.broadcast_to(np.asarray(target), (n,)) if np.ndim(target) == 0 else \
      np.asarray(target)
  if target.shape != (n,):
    raise ValueError(f"`target` must be an int or have shape ({n},), got {target.shape}")
  if segments.shape[:1] != (n,):
    raise ValueError(f"`segments` must have shape (N, H, W) with N = {n}, got {segments.shape}")
  batching.check_batch_size(images_per_call, name="images_per_call", allow_none=False)
  if n == 0:
    raise ValueError("`images` is an empty batch (N = 0): pass at least one image")
  if max_segments is None:
    max_segments = int(segments.max()) + 1

  def call(key, x, t, s):
    return lime_batch(forward, x, t, s, key=key, num_samples=num_samples,
                      max_segments=max_segments, **options)

  return batching.map_chunks(call, (images, target, segments), size=images_per_call,
                             progress=progress, key=key)


def weights_to_image(result: LimeResult, segments) -> np.ndarray:
  """Each pixel's superpixel weight: ``(N, H, W)`` NumPy, for heat maps."""
  weights = np.asarray(result.weights)
  segments = np.asarray(segments)
  return np.take_along_axis(weights, segments.reshape(len(segments), -1), axis=1).reshape(
      segments.shape)

