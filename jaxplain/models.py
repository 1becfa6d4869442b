"""The Flax CNN and the :class:`Classifier` every explanation method takes.

Input convention of every jaxplain classifier: float images ``(N, H, W, C)`` in [0, 1], NHWC
(48×48×1 for FER2013). Each classifier normalises its input itself.

A classifier is built from an *apply function* with the signature::

    apply_fn(variables, x, *, tap=None, delta=None, guided=False)

returning logits ``(N, K)``, or ``(logits, activation)`` when ``tap`` names a layer. ``delta``
(the activation's shape) is added to that layer's output before the rest of the network runs,
so ``jax.grad`` with respect to ``delta`` gives the gradient at that layer (Grad-CAM), and
``guided=True`` swaps every ReLU for the guided-backprop rule. Both the Flax CNN here and the
PyTorch graphs of :mod:`jaxplain.convert` follow it.
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from jax import lax

from jaxplain.data import CLASS_NAMES

__all__ = ["CNN", "Classifier", "check_images", "classifier", "cnn_inference",
           "conv_nhwc", "declare_input_range", "fold_batchnorm", "guided_relu", "input_range",
           "max_pool_2x2", "BatchNorm"]


@jax.custom_vjp
def guided_relu(x):
  """ReLU whose backward pass keeps only positive gradients at positive inputs.

  References:
    Springenberg et al., "Striving for Simplicity: The All Convolutional Net", 2015.
  """
  return jnp.maximum(x, 0)


def _guided_fwd(x):
  return jnp.maximum(x, 0), x


def _guided_bwd(x, g):
  return (jnp.where((x > 0) & (g > 0), g, jnp.zeros_like(g)),)


guided_relu.defvjp(_guided_fwd, _guided_bwd)


class _Tap:
  """Records the output of the layer named ``tap`` and adds ``delta`` to it."""

  def __init__(self, tap: str | None, delta):
    self.tap, self.delta, self.value, self.names = tap, delta, None, []

  def __call__(self, name: str, h):
    self.names.append(name)
    if name != self.tap:
      return h
    self.value = h
    return h if self.delta is None else h + self.delta

  def result(self, logits):
    if self.tap is None:
      return logits
    if self.value is None:
      raise ValueError(f"unknown layer {self.tap!r}; valid layers: {self.names}")
    return logits, self.value


def _column_sums(a):
  """Sums over the rows of ``a`` (M, C), blocks of up to 32 rows first.

  XLA:CPU splits one long reduction into a reduce-window over the whole activation for accuracy,
  which it runs slowly (~20 ms for one 128×48×48×32 activation); summing blocks of 32 rows first
  keeps the same pairwise accuracy and turns the long reduction into a short one.
  """
  m, c = a.shape
  k = 32
  while m % k:
    k //= 2
  return jnp.sum(jnp.sum(a.reshape(m // k, k, c), axis=1), axis=0)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _batch_norm_train(x, scale, bias, epsilon):
  return _batch_norm_fwd(x, scale, bias, epsilon)[0]


def _channels(v, ndim):
  """A per-channel vector shaped to broadcast over the last axis of an ``ndim`` array."""
  return v.reshape((1,) * (ndim - 1) + (-1,))


def _batch_norm_fwd(x, scale, bias, epsilon):
  c, ch = x.shape[-1], functools.partial(_channels, ndim=x.ndim)
  flat = x.reshape(-1, c)
  sums = _column_sums(jnp.concatenate([flat, flat * flat], axis=1)) / flat.shape[0]
  mean, var = sums[:c], jnp.maximum(sums[c:] - sums[:c] ** 2, 0)  # Flax's fast variance
  inv = lax.rsqrt(var + epsilon)
  y = (x - ch(mean)) * ch(inv * scale) + ch(bias)
  return (y, mean, var), (x, mean, inv, scale)


def _batch_norm_bwd(epsilon, res, cotangents):
  del epsilon
  x, mean, inv, scale = res
  g, g_mean, g_var = cotangents
  c, ch = x.shape[-1], functools.partial(_channels, ndim=x.ndim)
  m = x.size // c
  centred = x - ch(mean)
  xhat = centred * ch(inv)
  sums = _column_sums(jnp.concatenate([g.reshape(-1, c), (g * xhat).reshape(-1, c)], axis=1))
  d_bias, d_scale = sums[:c], sums[c:]
  dx = (ch(scale * inv) * (g - (ch(d_bias) + xhat * ch(d_scale)) / m)
        + (ch(g_mean) + 2 * ch(g_var) * centred) / m)
  return dx, d_scale, d_bias


_batch_norm_train.defvjp(_batch_norm_fwd, _batch_norm_bwd)


class BatchNorm(nn.Module):
  """``flax.linen.BatchNorm`` over the last axis (same variables, statistics and outputs, to
  rounding), whose train-mode statistics and backward pass avoid XLA:CPU's slow long reductions
  (:func:`_column_sums`): a training step of the shipped CNN at batch 128 runs about 10% faster.

  Attributes:
    use_running_average: normalise with the stored statistics (eval) instead of the batch's.
    momentum: running-average decay.
    epsilon: added to the variance.
  """

  use_running_average: bool = False
  momentum: float = 0.99
  epsilon: float = 1e-5

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    dtype = jnp.promote_types(x.dtype, jnp.float32)
    ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((c,), jnp.float32))
    ra_var = self.variable("batch_stats", "var", lambda: jnp.ones((c,), jnp.float32))
    scale = jnp.asarray(self.param("scale", nn.initializers.ones, (c,), jnp.float32), dtype)
    bias = jnp.asarray(self.param("bias", nn.initializers.zeros, (c,), jnp.float32), dtype)
    x = jnp.asarray(x, dtype)
    if self.use_running_average:
      mean, var = (jnp.asarray(v.value, dtype) for v in (ra_mean, ra_var))
      return ((x - _channels(mean, x.ndim)) * _channels(lax.rsqrt(var + self.epsilon) * scale,
                                                         x.ndim) + _channels(bias, x.ndim))
    y, mean, var = _batch_norm_train(x, scale, bias, self.epsilon)
    if not self.is_initializing():
      ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
      ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var
    return y


class CNN(nn.Module):
  """A VGG-style CNN for 48×48 faces: stages of 3×3 conv + BatchNorm + ReLU, max-pooled.

  Layer names (for ``tap``, activations and Grad-CAM): ``conv{stage}_{i}`` is a block's output
  after its conv, BatchNorm and ReLU (stages and blocks count from 1); ``pool{stage}`` the
  pooled output of a stage; ``features`` the pooled feature vector; ``dense`` the hidden layer
  after ReLU; ``logits``.

  Attributes:
    widths: channels of each stage.
    depths: conv blocks in each stage.
    hidden: width of the dense layer before the classifier (0: none).
    dropout: dropout rate before the dense layers (training only).
    num_classes: K.
    mean, std: input normalisation ``(x - mean) / std`` applied to [0, 1] images.
  """

  widths: Sequence[int] = (32, 64, 128, 256)
  depths: Sequence[int] = (1, 1, 2, 2)
  hidden: int = 256
  dropout: float = 0.3
  num_classes: int = len(CLASS_NAMES)
  mean: float = 0.5
  std: float = 0.25
  # Not a field: a subclass sets it to run eval mode through the Flax layers (tests, benchmarks).
  flax_inference = False

  @nn.compact
  def __call__(self, x, *, train: bool = False, tap: str | None = None, delta=None,
               guided: bool = False):
    if not train and not self.flax_inference and not self.is_initializing():
      return cnn_inference(self, self.variables, x, tap=tap, delta=delta, guided=guided)
    relu = guided_relu if guided else nn.relu
    mark = _Tap(tap, delta)
    x = (x - self.mean) / self.std
    for s, (width, depth) in enumerate(zip(self.widths, self.depths), start=1):
      for i in range(1, depth + 1):
        x = nn.Conv(width, (3, 3), use_bias=False, name=f"conv{s}_{i}_conv")(x)
        x = BatchNorm(use_running_average=not train, momentum=0.9, name=f"conv{s}_{i}_bn")(x)
        x = mark(f"conv{s}_{i}", relu(x))
      x = mark(f"pool{s}", max_pool_2x2(x))  # custom gradient: no select_and_scatter
    x = mark("features", jnp.mean(x, axis=(1, 2)))
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    if self.hidden:
      x = mark("dense", relu(nn.Dense(self.hidden, name="dense")(x)))
      x = nn.Dropout(self.dropout, deterministic=not train)(x)
    x = mark("logits", nn.Dense(self.num_classes, name="head")(x))
    return mark.result(x)

  @property
  def layer_names(self) -> tuple[str, ...]:
    names = []
    for s, depth in enumerate(self.depths, start=1):
      names += [f"conv{s}_{i}" for i in range(1, depth + 1)] + [f"pool{s}"]
    return tuple(names + ["features"] + (["dense"] if self.hidden else []) + ["logits"])

  def config(self) -> dict[str, Any]:
    return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v)
            for f in dataclasses.fields(self) if f.name not in ("parent", "name")}


BN_EPSILON = 1e-5  # flax.linen.BatchNorm's default, which CNN uses


def fold_batchnorm(kernel, bn_params, bn_stats, *, dtype, epsilon: float = BN_EPSILON):
  """A bias-free conv's ``kernel`` (HWIO) and the inference BatchNorm after it, as one conv.

  ``BN(conv(x, W)) = conv(x, W * a) + (bias - mean * a)`` with ``a = scale / sqrt(var + eps)``,
  BatchNorm's per-output-channel affine map moved into the kernel (exact up to rounding).

  Returns:
    ``(kernel, bias)`` in ``dtype``.
  """
  a = (jnp.asarray(bn_params["scale"], dtype)
       * lax.rsqrt(jnp.asarray(bn_stats["var"], dtype) + epsilon))
  bias = jnp.asarray(bn_params["bias"], dtype) - jnp.asarray(bn_stats["mean"], dtype) * a
  return jnp.asarray(kernel, dtype) * a.reshape(1, 1, 1, -1), bias


def max_pool_2x2(x):
  """2×2 max-pooling with stride 2 (VALID: an odd last row/column is dropped) on NHWC.

  The forward is ``lax.reduce_window`` (so rule-based methods such as DeepLift and LRP see a
  max-pool), the gradient a ``custom_jvp``: an elementwise mask rather than XLA's
  ``select_and_scatter``, which is slow on CPU. As there (and in PyTorch), the gradient of a
  window goes to its first maximum in row-major order, which matters for flat image regions
  whose activations tie exactly.
  """
  _, h, w, _ = x.shape
  return _max_pool_2x2(x[:, :h - h % 2, :w - w % 2])


def _first_max_index(x):
  """For each 2×2 window of ``x`` (NHWC, even sides): its maximum and the row-major position
  (0..3, int8) of its first maximum, from four strided views in one elementwise pass."""
  a, b, c, d = (x[:, i::2, j::2] for i in (0, 1) for j in (0, 1))
  top = jnp.maximum(jnp.maximum(a, b), jnp.maximum(c, d))
  first = jnp.where(a == top, 0, jnp.where(b == top, 1, jnp.where(c == top, 2, 3)))
  return top, first.astype(jnp.int8)


@jax.custom_jvp
def _max_pool_2x2(x):
  return lax.reduce_window(x, np.array(-np.inf, x.dtype), lax.max, (1, 2, 2, 1),
                           (1, 2, 2, 1), "VALID")


@_max_pool_2x2.defjvp
def _max_pool_2x2_jvp(primals, tangents):
  # The backward pass keeps the int8 position of each window's first maximum (a quarter of the
  # bytes of a full-size boolean mask) and selects with it, without a reduction over x.
  (x,), (t,) = primals, tangents
  n, h, w, c = x.shape
  windows = (n, h // 2, 2, w // 2, 2, c)
  top, first = _first_max_index(x)
  order = (2 * lax.broadcasted_iota(jnp.int8, windows, 2)
           + lax.broadcasted_iota(jnp.int8, windows, 4))
  t = t.reshape(windows)
  picked = jnp.where(order == first[:, :, None, :, None, :], t, jnp.zeros_like(t))
  return top, jnp.sum(picked, axis=(2, 4))


def window_max(x, window):
  """Max over non-overlapping windows (stride = window, VALID), with :func:`max_pool_2x2`'s
  gradient: the mask of each window's first maximum, in row-major order, as XLA's and PyTorch's
  max-pool gradients give it, without ``select_and_scatter``.

  Args:
    x: any array; ``window``: one size per axis (1 for axes not pooled). A trailing part that
      does not fill a window is dropped, as ``reduce_window`` with VALID padding does.
  """
  window = tuple(int(k) for k in window)
  crop = tuple(slice(0, d - d % k) for d, k in zip(x.shape, window))
  return _window_max(x[crop], window)


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def _window_max(x, window):
  return lax.reduce_window(x, np.array(-np.inf, x.dtype), lax.max, window, window, "VALID")


@_window_max.defjvp
def _window_max_jvp(window, primals, tangents):
  (x,), (t,) = primals, tangents
  split = tuple(s for d, k in zip(x.shape, window) for s in (d // k, k))
  inner = tuple(range(1, 2 * x.ndim, 2))
  windows = x.reshape(split)
  top = windows.max(axis=inner, keepdims=True)
  order, scale = jnp.zeros(split, jnp.int32), 1
  for axis, k in reversed(list(zip(inner, window))):
    order, scale = order + scale * lax.broadcasted_iota(jnp.int32, split, axis), scale * k
  first = jnp.min(jnp.where(windows == top, order, scale), axis=inner, keepdims=True)
  t = t.reshape(split)
  return _window_max(x, window), jnp.sum(jnp.where(order == first, t, jnp.zeros_like(t)),
                                         axis=inner)


# A conv whose kh·kw·C_in is at most this takes its input gradient through patches and a matmul.
IM2COL_MAX_FEATURES = 27


def conv_nhwc(x, kernel, *, strides=(1, 1), padding="SAME", dilation=(1, 1), precision=None):
  """``lax.conv_general_dilated`` on NHWC inputs and an HWIO ``kernel`` (one group).

  The same function and forward. For a first layer, whose few input channels make
  ``kh·kw·C_in`` at most :data:`IM2COL_MAX_FEATURES` (3×3 on grayscale or RGB), its derivative
  with respect to ``x`` is taken through the patches formulation (``kh·kw`` shifted slices, one
  matmul): XLA's CPU convolution computes that input gradient, a conv with a single or three
  output channels, about ten times slower (9 ms against 0.8 ms for 32 faces at 48×48×32).
  The kernel's derivative stays the convolution's own.

  Args:
    x: ``(N, H, W, C_in)``.
    kernel: ``(kh, kw, C_in, C_out)``.
    strides, dilation: per spatial axis.
    padding: ``"SAME"``, ``"VALID"`` or ``((lo, hi), (lo, hi))`` (negative crops).
    precision: as ``lax.conv_general_dilated``'s.
  """
  strides, dilation = tuple(int(v) for v in strides), tuple(int(v) for v in dilation)
  kh, kw, cin, _ = kernel.shape
  if isinstance(padding, str):
    padding = lax.padtype_to_pads(x.shape[1:3], ((kh - 1) * dilation[0] + 1,
                                                 (kw - 1) * dilation[1] + 1), strides, padding)
  padding = tuple((int(lo), int(hi)) for lo, hi in padding)
  if kh * kw * cin > IM2COL_MAX_FEATURES or kh * kw == 1:
    return _conv(x, kernel, strides, padding, dilation, precision)
  return _conv_small(x, kernel, strides, padding, dilation, precision)


def _conv(x, kernel, strides, padding, dilation, precision):
  return lax.conv_general_dilated(x, kernel, strides, padding, rhs_dilation=dilation,
                                  dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=precision)


def _patches_conv(x, kernel, strides, padding, dilation, precision):
  """The conv as ``kh·kw`` strided slices of the padded input concatenated on channels, times
  the kernel reshaped to ``(kh·kw·C_in, C_out)``: linear in ``x``, with a cheap transpose."""
  kh, kw, cin, cout = kernel.shape
  n = x.shape[0]
  x = lax.pad(x, np.array(0, x.dtype), ((0, 0, 0), (*padding[0], 0), (*padding[1], 0), (0, 0, 0)))
  out = [(x.shape[1 + a] - dilation[a] * (k - 1) - 1) // strides[a] + 1
         for a, k in enumerate((kh, kw))]
  cols = [lax.slice(x, (0, i * dilation[0], j * dilation[1], 0),
                    (n, i * dilation[0] + (out[0] - 1) * strides[0] + 1,
                     j * dilation[1] + (out[1] - 1) * strides[1] + 1, cin), (1, *strides, 1))
          for i in range(kh) for j in range(kw)]
  return jnp.dot(jnp.concatenate(cols, axis=-1), kernel.reshape(kh * kw * cin, cout),
                 precision=precision)


@functools.partial(jax.custom_jvp, nondiff_argnums=(2, 3, 4, 5))
def _conv_small(x, kernel, strides, padding, dilation, precision):
  return _conv(x, kernel, strides, padding, dilation, precision)


def _conv_small_jvp(strides, padding, dilation, precision, primals, tangents):
  (x, kernel), (tx, tk) = primals, tangents
  y = _conv(x, kernel, strides, padding, dilation, precision)
  ty = None
  if not isinstance(tx, jax.custom_derivatives.SymbolicZero):
    ty = _patches_conv(tx, kernel, strides, padding, dilation, precision)
  if not isinstance(tk, jax.custom_derivatives.SymbolicZero):
    tky = _conv(x, tk, strides, padding, dilation, precision)
    ty = tky if ty is None else ty + tky
  return y, (jnp.zeros_like(y) if ty is None else ty)


_conv_small.defjvp(_conv_small_jvp, symbolic_zeros=True)


def cnn_inference(model: "CNN", variables, x, *, tap: str | None = None, delta=None,
                  guided: bool = False):
  """:class:`CNN`'s eval-mode forward, written for speed; what ``model.apply`` runs at inference.

  The same function as the Flax module (to rounding: within 1e-5), with BatchNorm folded into
  each conv (:func:`fold_batchnorm`, done here at apply time from the stored ``params`` and
  ``batch_stats``, so the checkpoint keeps Flax's layout and new weights do not recompile),
  2×2 pooling as :func:`max_pool_2x2`, and convolutions in NHWC/HWIO, the layout XLA's CPU
  convolutions take without transposes (:func:`conv_nhwc`: the first layer's input gradient
  through patches). Dropout is the identity. Arguments as
  ``CNN.__call__``; computes in the promoted dtype of ``x`` and the weights (float64 stays
  float64).
  """
  params, stats = variables["params"], variables["batch_stats"]
  dtype = jnp.result_type(x, *jax.tree.leaves(params))
  relu = guided_relu if guided else jax.nn.relu
  mark = _Tap(tap, delta)
  x = (jnp.asarray(x, dtype) - model.mean) / model.std
  for s, depth in enumerate(model.depths, start=1):
    for i in range(1, depth + 1):
      name = f"conv{s}_{i}"
      kernel, bias = fold_batchnorm(params[f"{name}_conv"]["kernel"], params[f"{name}_bn"],
                                    stats[f"{name}_bn"], dtype=dtype)
      x = conv_nhwc(x, kernel)
      x = mark(name, relu(x + bias.reshape(1, 1, 1, -1)))
    x = mark(f"pool{s}", max_pool_2x2(x))
  x = mark("features", jnp.mean(x, axis=(1, 2)))

  def dense(h, name):
    kernel, bias = (jnp.asarray(params[name][k], dtype) for k in ("kernel", "bias"))
    return h @ kernel + bias[None]
  if model.hidden:
    x = mark("dense", relu(dense(x, "dense")))
  x = mark("logits", dense(x, "head"))
  return mark.result(x)


_WARNED_FLOAT64 = False
_RANGE_TOLERANCE = 1e-3  # relative to the range's width: rounding, never a 0-255 image


def check_images(inputs, *, name: str = "inputs", shape: Sequence[int] | None = None,
                 value_range: tuple[float, float] | None = (0.0, 1.0)):
  """Raises ``ValueError`` unless ``inputs`` is a float array ``(N, H, W, C)`` (of ``shape``).

  Shape, rank and dtype are checked on tracers too (NCHW input is named as such); on concrete
  arrays also NaN, Inf and values outside ``value_range`` (beyond rounding). float64 input
  without ``jax_enable_x64`` warns once that JAX computes it in float32.

  Args:
    inputs: the images.
    name: the argument's name in messages.
    shape: ``(H, W, C)`` the classifier takes (``None``: any).
    value_range: ``(low, high)`` the classifier takes (``None``: no range check); see
      :func:`input_range`.
  """
  global _WARNED_FLOAT64
  if not hasattr(inputs, "shape") or not hasattr(inputs, "dtype"):
    raise ValueError(f"`{name}` must be an array (N, H, W, C), got {type(inputs).__name__}")
  if inputs.ndim != 4:
    raise ValueError(f"`{name}` must have rank 4 (N, H, W, C), got shape {tuple(inputs.shape)}; "
                     "add a batch axis with x[None] or a channel axis with x[..., None]")
  if not jnp.issubdtype(inputs.dtype, jnp.floating):
    raise ValueError(f"`{name}` must be float images in [0, 1], got dtype {inputs.dtype}; "
                     "convert uint8 faces with jaxplain.data.to_float")
  got = tuple(inputs.shape[1:])
  nchw = (got == (shape[2], shape[0], shape[1]) if shape is not None and len(shape) == 3
          else got[0] in (1, 3) and min(got[1:]) >= 8)
  if nchw and (shape is None or got != tuple(shape)):
    raise ValueError(f"`{name}` of shape {tuple(inputs.shape)} looks like NCHW (N, C, H, W): "
                     "jaxplain takes NHWC; transpose to NHWC with x.transpose(0, 2, 3, 1)")
  if shape is not None and got != tuple(shape):
    raise ValueError(f"`{name}` images have shape {got}, the classifier "
                     f"takes {tuple(shape)} (H, W, C)")
  if inputs.dtype == jnp.float64 and not jax.config.jax_enable_x64 and not _WARNED_FLOAT64:
    _WARNED_FLOAT64 = True
    warnings.warn(f"`{name}` is float64 but jax_enable_x64 is off, so JAX computes in float32; "
                  "pass float32, or jax.config.update('jax_enable_x64', True) to keep float64",
                  stacklevel=3)
  if isinstance(inputs, jax.core.Tracer) or not inputs.size:
    return
  if isinstance(inputs, np.ndarray):
    finite = np.isfinite(inputs)
    has_nan, all_finite = bool(np.isnan(inputs).any()), bool(finite.all())
    low = float(inputs.min()) if all_finite else 0.0
    high = float(inputs.max()) if all_finite else 0.0
  else:
    has_nan, all_finite, low, high = (v.item() for v in _image_stats(inputs))
  if has_nan:
    raise ValueError(f"`{name}` contains NaN")
  if not all_finite:
    raise ValueError(f"`{name}` contains Inf; images must be finite floats")
  if value_range is not None:
    lo, hi = value_range
    tol = _RANGE_TOLERANCE * (hi - lo)
    if low < lo - tol or high > hi + tol:
      hint = ("convert uint8 0-255 faces with jaxplain.data.to_float (or x / 255)"
              if (lo, hi) == (0.0, 1.0) and high > 1.5 else
              "rescale them (jaxplain.data.to_float makes uint8 faces [0, 1])")
      raise ValueError(f"`{name}` values lie in [{low:.4g}, {high:.4g}], outside the classifier's "
                       f"input range [{lo:g}, {hi:g}]; {hint}, or declare another range "
                       "(Classifier.input_range, models.declare_input_range)")


@jax.jit
def _image_stats(x):
  finite = jnp.isfinite(x)
  return (jnp.isnan(x).any(), finite.all(), jnp.where(finite, x, jnp.inf).min(),
          jnp.where(finite, x, -jnp.inf).max())


def input_range(forward) -> tuple[float, float] | None:
  """The value range ``forward`` takes: ``(low, high)``, or ``None`` for any.

  A :class:`Classifier`'s ``input_range``, a range given to :func:`declare_input_range`, or
  jaxplain's convention ``(0, 1)``.
  """
  if isinstance(forward, Classifier):
    return forward.input_range
  fn = forward.func if isinstance(forward, jax.tree_util.Partial) else forward
  return fn.input_range if isinstance(fn, _Ranged) else (0.0, 1.0)


def declare_input_range(forward, low: float | None, high: float | None = None):
  """``forward`` declaring that it takes inputs in ``[low, high]`` (``None``: any values).

  Every method checks its inputs against the declared range instead of [0, 1]::

      forward = declare_input_range(my_forward, -1.0, 1.0)   # images normalised to [-1, 1]
      saliency(forward, x, target)

  Args:
    forward: a :class:`Classifier`, a ``jax.tree_util.Partial`` or any callable.
    low, high: the range; ``low=None`` switches the range check off.

  Returns:
    A ``Classifier`` with ``input_range`` set, or a ``Partial`` (same arguments) that does.
  """
  value_range = None if low is None else (float(low), float(high))
  if value_range is not None and not value_range[0] < value_range[1]:
    raise ValueError(f"`low` must be < `high`, got {low}, {high}")
  if isinstance(forward, Classifier):
    return dataclasses.replace(forward, input_range=value_range)
  if isinstance(forward, jax.tree_util.Partial):
    fn = forward.func.fn if isinstance(forward.func, _Ranged) else forward.func
    return jax.tree_util.Partial(_Ranged(fn, value_range), *forward.args, **forward.keywords)
  if not callable(forward):
    raise ValueError(f"`forward` must be callable, got {type(forward).__name__}")
  return jax.tree_util.Partial(_Ranged(forward, value_range))


@dataclasses.dataclass(frozen=True)
class _Ranged:
  """``fn`` with a declared input range; hashable by value so jit caches hit."""

  fn: Callable
  input_range: tuple[float, float] | None

  def __call__(self, *args, **kwargs):
    return self.fn(*args, **kwargs)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Classifier:
  """A trained classifier: pure apply function, its variables, and what it predicts.

  A pytree whose only leaves are ``variables``, so a ``Classifier`` passes through ``jax.jit``
  as an argument and new weights do not recompile.

  Attributes:
    apply_fn: ``apply_fn(variables, x, *, tap=None, delta=None, guided=False)`` (module docs).
    variables: the weights (a pytree).
    class_names: the K class names.
    input_shape: ``(H, W, C)`` the classifier takes.
    layer_names: the layers ``tap`` accepts, input to output.
    input_range: ``(low, high)`` of the input values (jaxplain: ``(0, 1)``); inputs outside it
      are refused. ``None``: no range check.
    metadata: anything else (architecture config, accuracy, source); JSON-serialisable.
  """

  apply_fn: Callable = dataclasses.field(metadata=dict(static=True))
  variables: Any
  class_names: tuple[str, ...] = dataclasses.field(default=CLASS_NAMES,
                                                   metadata=dict(static=True))
  input_shape: tuple[int, ...] = dataclasses.field(default=(48, 48, 1), metadata=dict(static=True))
  layer_names: tuple[str, ...] = dataclasses.field(default=(), metadata=dict(static=True))
  input_range: tuple[float, float] | None = dataclasses.field(default=(0.0, 1.0),
                                                              metadata=dict(static=True))
  metadata: Any = dataclasses.field(default=None, metadata=dict(static=True), compare=False,
                                    hash=False)

  @property
  def forward(self) -> jax.tree_util.Partial:
    """Pure ``(N, H, W, C) → (N, K)`` logits in eval mode, a pytree holding the weights (in
    the layout ``apply_fn.prepare`` gives them where it has one: a converted graph's linear
    weights transposed)."""
    return self._declared(self.apply_fn)

  @property
  def guided_forward(self) -> jax.tree_util.Partial:
    """``forward`` with guided-backprop ReLUs (same outputs, guided gradients)."""
    return self._declared(_Bound(self.apply_fn, guided=True))

  def tapped(self, layer: str) -> jax.tree_util.Partial:
    """Pure ``(x, delta) → (logits, activation)`` at ``layer``; ``delta`` may be ``None``."""
    self.check_layer(layer)
    return self._declared(_Tapped(self.apply_fn, layer))

  def _declared(self, fn) -> jax.tree_util.Partial:
    """``Partial(fn, variables)``, carrying ``input_range`` when it is not jaxplain's (0, 1)."""
    variables = self._run_variables()
    if self.input_range is not None and tuple(self.input_range) == (0.0, 1.0):
      return jax.tree_util.Partial(fn, variables)
    return jax.tree_util.Partial(_Ranged(fn, self.input_range), variables)

  def _run_variables(self):
    """``variables`` as ``apply_fn.prepare`` lays them out for speed (a converted graph's
    linear weights transposed), where it has one: for concrete weights computed once and kept
    with this classifier, under a trace computed in the trace."""
    prepare = getattr(self.apply_fn, "prepare", None)
    if prepare is None:
      return self.variables
    leaves, tree = jax.tree.flatten(self.variables)
    if any(isinstance(v, jax.core.Tracer) for v in leaves):
      return prepare(self.variables)
    # kept with the leaves it was made from (held, so their identities stay theirs): a weight
    # replaced in the variables' dicts is seen
    cached = self.__dict__.get("_prepared")
    if (cached is None or cached[0] != tree or len(cached[1]) != len(leaves)
        or any(a is not b for a, b in zip(cached[1], leaves))):
      cached = (tree, tuple(leaves), prepare(self.variables))
      object.__setattr__(self, "_prepared", cached)  # a cache, not a field: eq/hash ignore it
    return cached[2]

  def check_layer(self, layer: str) -> None:
    if layer not in self.layer_names:
      raise ValueError(f"unknown layer {layer!r}; valid layers: {list(self.layer_names)}")

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  def predict(self, inputs, *, batch_size: int = 256):
    """Logits for many images, in fixed-size chunks with one compiled function."""
    return predict(self.forward, inputs, batch_size=batch_size)


@dataclasses.dataclass(frozen=True)
class _Bound:
  """``apply_fn`` with fixed keyword options; hashable by value so jit caches hit."""

  apply_fn: Callable
  guided: bool = False

  def __call__(self, variables, x):
    return self.apply_fn(variables, x, guided=self.guided)


@dataclasses.dataclass(frozen=True)
class _Tapped:
  apply_fn: Callable
  layer: str

  def __call__(self, variables, x, delta=None):
    return self.apply_fn(variables, x, tap=self.layer, delta=delta)


@jax.jit
def _predict_chunk(forward, x):
  return forward(x)


def predict(forward, inputs, *, batch_size: int = 256):
  """Runs ``forward`` over ``inputs`` in chunks of ``batch_size`` (the last chunk padded).

  One compilation serves any number of images: every call sees the same chunk shape.
  """
  import numpy as np
  inputs = np.asarray(inputs)
  if not len(inputs):
    return np.zeros((0,), np.float32)
  return map_chunks(_predict_chunk, forward, inputs, min(batch_size, len(inputs)))


def map_chunks(fn, forward, inputs, size: int):
  """``fn(forward, chunk)`` over chunks of ``size`` rows of ``inputs``, concatenated as NumPy.

  :func:`jaxplain.batching.map_chunks` with ``forward`` bound: the last chunk is padded, so a
  jit-compiled ``fn`` sees one shape whatever the number of rows, and with several local devices
  each chunk is split over them.
  """
  from jaxplain import batching
  return batching.map_chunks(lambda chunk: fn(forward, chunk), (inputs,), size=size)


def classifier(model: CNN, variables, *, class_names: Sequence[str] = CLASS_NAMES,
               metadata: dict | None = None) -> Classifier:
  """Wraps a Flax :class:`CNN` and its variables (``params``, ``batch_stats``)."""
  return Classifier(apply_fn=model.apply, variables=variables, class_names=tuple(class_names),
                    input_shape=(48, 48, 1), layer_names=model.layer_names,
                    metadata=metadata or {"kind": "cnn", "config": model.config()})
