"""One home for chunking: how every jaxplain loop over images, path points, samples or masks
bounds its memory.

Two places need it:

* inside a jit-compiled method, many evaluations of a model (path points, noisy copies, masks)
  run ``batch_size`` at a time with :func:`chunked_map` (chunks in sequence, so the compiled
  program holds one chunk's activations, not all of them);
* on the host, many images run through one compiled function in fixed-size chunks with
  :func:`map_chunks` (the last chunk padded, so one compilation serves any count).

:func:`auto_batch_size` turns a memory budget into a chunk size from the model's activation
sizes (read off its jaxpr, nothing is computed), so ``batch_size=None`` never means "everything
at once" when that would not fit.
"""

from __future__ import annotations

import collections
import functools
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["ACCELERATOR_BUDGET", "DEFAULT_BUDGET", "activation_bytes", "auto_batch_size",
           "check_batch_size", "chunked_map", "default_budget", "eval_shape", "forward_bytes",
           "map_chunks", "MAX_UNROLLED_CHUNKS", "on_cpu", "shape_memo", "traced"]

# Bytes of activations one chunk may hold by default on a CPU: a few hundred MB keeps the
# README's examples far below a laptop's memory while chunks stay large enough to be fast.
DEFAULT_BUDGET = 512 * 2**20
# On an accelerator: an eighth of the device's memory, at most this. A GPU needs large chunks
# (each chunk is a few kernel launches whatever its size: 32 faces x 50 IG points in chunks of
# 512 MiB took 128 ms on an H200, 23x the same work in one chunk).
ACCELERATOR_BUDGET = 4 * 2**30


def on_cpu() -> bool:
  """Whether JAX computes on a CPU (the default device's platform): chunk sizes tuned for a
  CPU's caches do not suit an accelerator, where a chunk costs its launches whatever its size."""
  return jax.local_devices()[0].platform == "cpu"


def default_budget() -> int:
  """The activation bytes a chunk may hold when a caller gives no ``budget``:
  :data:`DEFAULT_BUDGET` on a CPU; on a GPU or TPU an eighth of the first local device's
  memory, at most :data:`ACCELERATOR_BUDGET`."""
  if on_cpu():
    return DEFAULT_BUDGET
  try:
    limit = int((jax.local_devices()[0].memory_stats() or {}).get("bytes_limit", 0))
  except Exception:  # noqa: BLE001 - a backend without memory statistics
    limit = 0
  return min(ACCELERATOR_BUDGET, limit // 8) if limit else DEFAULT_BUDGET


def check_batch_size(value, *, name: str = "batch_size", allow_none: bool = True) -> int | None:
  """``value`` as a positive int (or ``None`` where allowed); a ``ValueError`` naming ``name``."""
  if value is None and allow_none:
    return None
  if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 1:
    raise ValueError(f"`{name}` must be a positive int{' or None' if allow_none else ''}, "
                     f"got {value!r}")
  return int(value)


# Chunks that chunked_map writes out one after another in the compiled program; more run in a
# loop. XLA's CPU backend runs convolutions inside a loop body about 15x slower than the same
# convolutions written out (measured: 12 chunks of 64 faces through the converted NetworkV2,
# 39 s as jax.lax.map, 2.5 s written out, 3.7 s as one vmap), so the loop is the fallback.
MAX_UNROLLED_CHUNKS = 64


def chunked_map(fn: Callable, xs, *, batch_size: int | None):
  """``fn`` over the leading axis of the pytree ``xs``, ``batch_size`` rows at a time.

  Rows of a chunk are vmapped; chunks run one after another, so peak memory is one chunk's.
  ``None`` (or a size at least the number of rows) vmaps all rows at once. Up to
  :data:`MAX_UNROLLED_CHUNKS` chunks are written out in sequence (each waits for the previous
  one's result, ``jax.lax.optimization_barrier``, so their activations are not alive at once);
  more run as ``jax.lax.map(fn, xs, batch_size=...)``. Results are stacked along a new leading
  axis.
  """
  n = jax.tree.leaves(xs)[0].shape[0]
  if batch_size is None or batch_size >= n:
    return jax.vmap(fn)(xs)
  if -(-n // batch_size) > MAX_UNROLLED_CHUNKS:
    return jax.lax.map(fn, xs, batch_size=batch_size)
  outs, previous = [], None
  for start in range(0, n, batch_size):
    chunk = jax.tree.map(lambda a: a[start:start + batch_size], xs)
    if previous is not None:
      chunk, _ = jax.lax.optimization_barrier((chunk, previous))
    previous = jax.vmap(fn)(chunk)
    outs.append(previous)
  return jax.tree.map(lambda *parts: jnp.concatenate(parts), *outs)


def map_chunks(fn: Callable, arrays: Sequence, *, size: int,
               progress: Callable[[int], None] | None = None, key=None,
               devices: Sequence | None = None, shrink: bool = True):
  """``fn(*chunk)`` (or ``fn(key_i, *chunk)``) over fixed-size chunks of host arrays.

  With several devices each chunk is split over them along its rows
  (:func:`jaxplain.sharding.shard_batch`, a 1-D mesh), so a jit-compiled ``fn`` runs on all of
  them at once; results are those of one device.

  Args:
    fn: usually a jit-compiled function; it sees every chunk with the same shape.
    arrays: arrays with the same leading length N (images, targets, segments, ...).
    size: rows per call, rounded up to a multiple of the number of devices. The last chunk is
      padded by repeating its first row (valid input for any model and any target), and the
      padding is dropped from the results.
    progress: called with the number of real rows after each chunk.
    key: if given, ``jax.random.fold_in(key, i)`` is passed first for chunk ``i``.
    shrink: with fewer than ``size`` rows, run one chunk of that many rows; ``False`` pads them
      to ``size`` (callers that bound their compilations pick sizes from a small set).
    devices: the devices to split chunks over (default: all local devices); with one device
      chunks are passed as NumPy arrays.

  Returns:
    ``fn``'s outputs (a pytree of arrays) concatenated as NumPy along the leading axis.
  """
  from jaxplain import sharding
  arrays = [np.asarray(a) for a in arrays]
  n = len(arrays[0])
  if any(len(a) != n for a in arrays):
    raise ValueError(f"arrays of different lengths {[len(a) for a in arrays]}")
  if n == 0:
    raise ValueError("no rows to process (empty batch)")
  devices = list(jax.local_devices() if devices is None else devices)
  mesh = sharding.batch_mesh(devices) if len(devices) > 1 else None
  size = check_batch_size(size, name="size", allow_none=False)
  if shrink:  # fewer rows than a chunk: one chunk of exactly those rows
    size = min(size, n)
  if mesh is not None:
    size = sharding.padded_size(size, mesh.size)
  outs = []
  for i, start in enumerate(range(0, n, size)):
    chunk = [a[start:start + size] for a in arrays]
    real = len(chunk[0])
    if real < size:
      chunk = [np.concatenate([c, np.repeat(c[:1], size - real, 0)]) for c in chunk]
    if mesh is not None:
      chunk = sharding.shard_batch(chunk, mesh)
    args = chunk if key is None else [jax.random.fold_in(key, i)] + chunk
    out = fn(*args)
    outs.append(jax.tree.map(lambda o: np.asarray(o)[:real], out))
    if progress is not None:
      progress(real)
  return jax.tree.map(lambda *parts: np.concatenate(parts), *outs)


def traced(*trees) -> bool:
  """Whether any leaf of ``trees`` is a tracer (the call runs under jit, vmap or grad): callers
  then take their one-program path instead of a host loop of compiled chunks."""
  return any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves(trees))


def _leaf_key(leaf):
  if hasattr(leaf, "shape") and hasattr(leaf, "dtype"):
    return tuple(leaf.shape), jnp.dtype(leaf.dtype), getattr(leaf, "weak_type", False)
  if getattr(leaf, "__closure__", None):  # a closure made per call: a new key every time, and
    raise TypeError("closure")             # holding it would keep what it captured alive
  return type(leaf), leaf


def shape_memo(fn: Callable, *, maxsize: int = 32) -> Callable:
  """``fn`` memoised on its arguments' pytree structure and leaf shapes and dtypes.

  For functions whose result follows from shapes alone (``jax.eval_shape``, jaxpr sizes): a
  second call with the same model and batch shape does not trace the model again (tracing a
  CNN costs tens of milliseconds of Python, more than a GPU takes to run it). The structure
  includes a ``Partial``'s function, so two models never share an entry; arguments with an
  unhashable structure, or with a closure among them, are not memoised. The ``maxsize`` most
  recent entries are kept (each holds its function, e.g. a model's ``apply``, alive).
  """
  cache: collections.OrderedDict = collections.OrderedDict()

  @functools.wraps(fn)
  def memoised(*args):
    leaves, treedef = jax.tree.flatten(args)
    try:
      key = (treedef, tuple(_leaf_key(leaf) for leaf in leaves))
      hash(key)
    except TypeError:
      return fn(*args)
    if key in cache:
      cache.move_to_end(key)
      return cache[key]
    out = cache[key] = fn(*args)
    if len(cache) > maxsize:
      cache.popitem(last=False)
    return out

  return memoised


eval_shape = shape_memo(jax.eval_shape)
eval_shape.__doc__ = """``jax.eval_shape(fn, *args)``, memoised by :func:`shape_memo`."""


def _jaxprs_in_params(params):
  try:
    from jax.extend.core import jaxprs_in_params
  except ImportError:  # older jax
    jaxprs_in_params = jax.core.jaxprs_in_params
  return jaxprs_in_params(params)


def _output_bytes(fn: Callable, args, combine: Callable[[int, int], int]) -> int:
  """``combine`` folded over the byte sizes of every equation output of ``fn(*args)``'s jaxpr
  (nested jaxprs included), from shapes alone."""

  def walk(jp) -> int:
    acc = 0
    for eqn in jp.eqns:
      for v in eqn.outvars:
        aval = getattr(v, "aval", None)
        if hasattr(aval, "shape") and hasattr(aval, "dtype"):
          acc = combine(acc, int(np.prod(aval.shape, dtype=np.int64))
                        * jnp.dtype(aval.dtype).itemsize)
      for sub in _jaxprs_in_params(eqn.params):
        acc = combine(acc, walk(sub))
    return acc

  return walk(jax.make_jaxpr(fn)(*args).jaxpr)


@shape_memo
def activation_bytes(fn: Callable, *args) -> int:
  """Bytes of every intermediate value of ``fn(*args)`` (its jaxpr's equation outputs).

  An upper bound on what reverse-mode differentiation keeps for the backward pass; computed
  from shapes alone (``args`` may be ``jax.ShapeDtypeStruct``).
  """
  return _output_bytes(fn, args, lambda a, b: a + b)


@shape_memo
def forward_bytes(fn: Callable, *args) -> int:
  """Bytes a forward-only evaluation of ``fn(*args)`` keeps alive: 4 times its largest
  intermediate value.

  Without a backward pass an intermediate is freed after its last use, so the live set of a
  network is a few layers' outputs (a residual branch's input, the current layer's input and
  output), not the sum over layers that :func:`activation_bytes` bounds. Computed from shapes.
  """
  return 4 * _output_bytes(fn, args, max)


def auto_batch_size(per_row_bytes: int, rows: int, *, budget: int | None = None) -> int:
  """How many of ``rows`` evaluations (each holding ``per_row_bytes``) fit ``budget`` bytes at
  once (``None``: :func:`default_budget`)."""
  if per_row_bytes <= 0:
    return rows
  if budget is None:
    budget = default_budget()
  return int(max(1, min(rows, budget // per_row_bytes)))
