"""Image batches over several devices, and data sets over several processes.

Two levels, both over the batch axis (images are independent, so no method needs to talk
across devices):

* **devices of one process**: :func:`shard_batch` places a chunk of images on a 1-D
  :class:`jax.sharding.Mesh` of the local devices (:func:`batch_mesh`), each device holding
  ``rows / devices`` of them; a jit-compiled method called on it runs on every device at once
  (computation follows the data). :func:`jaxplain.batching.map_chunks` does this for every
  batched entry point (``attribute_many``, ``predict``/``evaluate``, LIME over many images, the
  report's measurements) whenever there is more than one local device, padding each chunk to a
  multiple of the device count;
* **processes** (hosts of a GPU cluster or TPU pod, after ``jax.distributed.initialize()``):
  each process takes its contiguous block of the data set (:func:`process_rows`), runs the same
  calls on its own devices, and writes its part (:func:`save_part`); :func:`load_parts` joins
  the parts in row order once all are written.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Mapping, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

__all__ = ["BATCH_AXIS", "batch_mesh", "batch_sharding", "padded_size", "shard_batch",
           "process_rows", "save_part", "load_parts"]

BATCH_AXIS = "batch"


def batch_mesh(devices: Sequence | None = None) -> Mesh:
  """A 1-D mesh named ``"batch"`` over ``devices`` (default: this process's local devices)."""
  devices = list(jax.local_devices() if devices is None else devices)
  if not devices:
    raise ValueError("`devices` must name at least one device, got none")
  return Mesh(np.asarray(devices, dtype=object), (BATCH_AXIS,))


def batch_sharding(mesh: Mesh | None = None) -> NamedSharding:
  """Leading (batch) axis split over ``mesh``'s ``"batch"`` axis, other axes whole."""
  return NamedSharding(batch_mesh() if mesh is None else mesh, PartitionSpec(BATCH_AXIS))


def padded_size(rows: int, devices: int) -> int:
  """``rows`` rounded up to a multiple of ``devices``."""
  return -(-int(rows) // int(devices)) * int(devices)


def shard_batch(arrays: Sequence, mesh: Mesh | None = None) -> list[jax.Array]:
  """``arrays`` (same leading length, a multiple of the mesh size) split over ``mesh``.

  Returns:
    One ``jax.Array`` per input, row ``i`` on device ``i // (rows / devices)``.
  """
  sharding = batch_sharding(mesh)
  size = sharding.mesh.size
  out = []
  for a in arrays:
    a = np.asarray(a)
    if a.ndim == 0 or len(a) % size:
      raise ValueError(f"`arrays` must have a leading axis that is a multiple of the {size} "
                       f"devices, got shape {a.shape}")
    out.append(jax.device_put(a, sharding))
  return out


def process_rows(rows: int, *, process_index: int | None = None,
                 process_count: int | None = None) -> slice:
  """The contiguous block of ``rows`` that this process (of ``jax.process_count()``) handles.

  Blocks differ in length by at most one row and cover ``range(rows)`` in process order.
  """
  index = jax.process_index() if process_index is None else int(process_index)
  count = jax.process_count() if process_count is None else int(process_count)
  if count < 1 or not 0 <= index < count:
    raise ValueError(f"`process_index` must lie in 0..{count - 1}, got {index}")
  base, extra = divmod(int(rows), count)
  start = index * base + min(index, extra)
  return slice(start, start + base + (index < extra))


def _part_name(index: int, count: int) -> str:
  return f"part-{index:05d}-of-{count:05d}.npz"


def save_part(directory, arrays: Mapping[str, np.ndarray], *, rows: slice,
              process_index: int | None = None, process_count: int | None = None
              ) -> pathlib.Path:
  """Writes this process's results (rows ``rows`` of the whole) into ``directory``, atomically.

  Args:
    directory: a folder shared by all processes (created if missing).
    arrays: named result arrays, each with ``rows.stop - rows.start`` leading rows.
    rows: the block this process handled (:func:`process_rows`).

  Returns:
    The part's path.
  """
  index = jax.process_index() if process_index is None else int(process_index)
  count = jax.process_count() if process_count is None else int(process_count)
  n = rows.stop - rows.start
  for name, a in arrays.items():
    if np.shape(a)[:1] != (n,):
      raise ValueError(f"`arrays[{name!r}]` has shape {np.shape(a)}, expected {n} rows "
                       f"(rows {rows.start}..{rows.stop})")
  directory = pathlib.Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  path = directory / _part_name(index, count)
  tmp = path.with_suffix(f".tmp{os.getpid()}.npz")
  np.savez(tmp, __start__=rows.start, __stop__=rows.stop,
           **{name: np.asarray(a) for name, a in arrays.items()})
  os.replace(tmp, path)
  return path


def load_parts(directory) -> dict[str, np.ndarray]:
  """The parts :func:`save_part` wrote into ``directory``, joined in row order.

  Raises:
    ValueError: parts missing, from different runs, or leaving rows uncovered.
  """
  paths = sorted(pathlib.Path(directory).glob("part-*-of-*.npz"))
  if not paths:
    raise ValueError(f"`directory` {str(directory)!r} holds no part-*-of-*.npz files")
  counts = {p.stem.rsplit("-of-", 1)[1] for p in paths}
  if len(counts) != 1 or len(paths) != int(counts.pop()):
    raise ValueError(f"`directory` {str(directory)!r} holds an incomplete or mixed set of parts: "
                     f"{[p.name for p in paths]}")
  parts = []
  for p in paths:
    with np.load(p) as f:
      parts.append((int(f["__start__"]), int(f["__stop__"]),
                    {k: f[k] for k in f.files if not k.startswith("__")}))
  parts.sort(key=lambda part: part[0])
  expected = 0
  for start, stop, _ in parts:
    if start != expected:
      raise ValueError(f"parts in {str(directory)!r} leave rows {expected}..{start} uncovered")
    expected = stop
  names = parts[0][2].keys()
  return {k: np.concatenate([part[2][k] for part in parts]) for k in names}
