"""orbax checkpoints: a classifier directory, and the epoch checkpoints of a training run.

A classifier directory holds ``jaxplain.json`` (format, architecture config, class names,
input shape and preprocessing, metrics) and ``variables/`` (orbax). It is written to a temporary
sibling and renamed into place, so an interrupted save leaves nothing half-written.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import pathlib
import shutil
import tempfile
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from jaxplain.models import CNN, Classifier, classifier

FORMAT = "jaxplain-classifier"
VERSION = 1
META_FILE = "jaxplain.json"

__all__ = ["save_classifier", "load_classifier", "read_metadata", "RunManager", "builders"]


def _json_default(o):
  if isinstance(o, np.ndarray):
    return o.tolist()
  if isinstance(o, (np.integer, np.floating)):
    return o.item()
  if isinstance(o, tuple):
    return list(o)
  raise TypeError(f"cannot store {type(o).__name__} in {META_FILE}")


def save_classifier(clf: Classifier, path: str | os.PathLike, *, overwrite: bool = False,
                    extra: dict | None = None) -> pathlib.Path:
  """Saves ``clf`` to the directory ``path`` (atomically: temp dir, then rename).

  Args:
    clf: a classifier whose ``metadata`` holds ``kind`` and ``config`` (every classifier made by
      jaxplain does).
    path: the directory to create.
    overwrite: replace an existing directory.
    extra: more JSON-serialisable metadata (e.g. accuracy).
  """
  path = pathlib.Path(path).absolute()
  meta = dict(clf.metadata or {})
  if meta.get("kind") not in builders():
    raise ValueError(f"cannot save a classifier of kind {meta.get('kind')!r}: its metadata must "
                     f"name one of {sorted(builders())} and hold its config")
  if path.exists() and not overwrite:
    raise ValueError(f"{path} exists; pass overwrite=True (--overwrite) to replace it")
  meta |= {"format": FORMAT, "version": VERSION, "class_names": list(clf.class_names),
           "input_shape": list(clf.input_shape), "layer_names": list(clf.layer_names),
           "input": "float (N, H, W, C) in [0, 1], NHWC; the model normalises it itself"}
  meta |= extra or {}
  meta["dtypes"] = sorted({str(x.dtype) for x in jax.tree.leaves(clf.variables)})
  with atomic_directory(path) as tmp:
    (tmp / META_FILE).write_text(json.dumps(meta, indent=1, default=_json_default))
    with ocp.StandardCheckpointer() as ckptr:
      ckptr.save(tmp / "variables", jax.tree.map(np.asarray, clf.variables))
      ckptr.wait_until_finished()
  return path


@contextlib.contextmanager
def atomic_directory(path: pathlib.Path):
  """Yields a temporary sibling of ``path`` to fill; on success it replaces ``path``.

  On any error the temporary directory is removed and ``path`` is left as it was, so readers
  never see a half-written directory.
  """
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
  try:
    yield tmp
    tmp.chmod(0o755)  # mkdtemp makes it private
    if path.exists():
      shutil.rmtree(path)
    os.replace(tmp, path)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise


def _build_cnn(meta):
  model = CNN(**{k: tuple(v) if isinstance(v, list) else v for k, v in meta["config"].items()})
  shape = tuple(meta.get("input_shape", (48, 48, 1)))
  abstract = jax.eval_shape(lambda: model.init(jax.random.key(0), np.zeros((1,) + shape,
                                                                            np.float32)))
  return model.apply, abstract


def builders() -> dict[str, Any]:
  """Architecture kinds a checkpoint may name → ``build(meta) -> (apply_fn, abstract vars)``."""
  return {"cnn": _build_cnn, "torch_graph": _build_torch_graph}


def _build_torch_graph(meta):
  from jaxplain import graph  # numpy/JAX only: loading needs no torch
  return graph.build_from_meta(meta)


def _describe(tree) -> dict[str, tuple]:
  return {jax.tree_util.keystr(k): (tuple(v.shape), str(v.dtype))
          for k, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
  """The checked ``jaxplain.json`` of the checkpoint in directory ``path``, without its weights.

  Raises:
    ValueError: not a jaxplain checkpoint, damaged metadata, or a newer format version.
  """
  path = pathlib.Path(path).absolute()
  meta_file = path / META_FILE
  if not path.is_dir():
    raise ValueError(f"{path}: no such checkpoint directory")
  if not meta_file.is_file():
    raise ValueError(f"{path}: not a jaxplain checkpoint (no {META_FILE}); save one with "
                     "jaxplain.save_classifier or `jaxplain train`")
  try:
    meta = json.loads(meta_file.read_text())
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ValueError(f"{meta_file}: unreadable ({e}); the checkpoint is damaged") from None
  if meta.get("format") != FORMAT:
    raise ValueError(f"{meta_file}: format {meta.get('format')!r}, expected {FORMAT!r}")
  if meta.get("version", 0) > VERSION:
    raise ValueError(f"{path}: checkpoint version {meta['version']} is newer than this jaxplain "
                     f"reads ({VERSION}); upgrade jaxplain")
  return meta


def load_classifier(path: str | os.PathLike) -> Classifier:
  """Rebuilds the :class:`Classifier` saved in directory ``path`` (no torch needed).

  Raises:
    ValueError: not a jaxplain checkpoint, truncated, or weights that do not fit the
      architecture its metadata names.
  """
  path = pathlib.Path(path).absolute()
  meta = read_metadata(path)
  kinds = builders()
  if meta.get("kind") not in kinds:
    raise ValueError(f"{path}: unknown architecture kind {meta.get('kind')!r}; "
                     f"known: {sorted(kinds)}")
  apply_fn, abstract = kinds[meta["kind"]](meta)
  if not (path / "variables").is_dir():
    raise ValueError(f"{path}: the weights (variables/) are missing; the checkpoint is truncated")
  try:
    with ocp.StandardCheckpointer() as ckptr:
      raw = ckptr.restore(path / "variables")
  except Exception as e:  # orbax raises many types for damaged files
    raise ValueError(f"{path}: cannot read the weights in variables/ ({type(e).__name__}: "
                     f"{str(e)[:300]}); the checkpoint is truncated or damaged") from None
  want, got = _describe(abstract), _describe(raw)
  if want.keys() != got.keys() or any(want[k][0] != got[k][0] for k in want):
    missing = sorted(want.keys() - got.keys())[:8]
    unexpected = sorted(got.keys() - want.keys())[:8]
    shapes = [f"{k}: {got[k][0]} != {want[k][0]}" for k in sorted(want.keys() & got.keys())
              if want[k][0] != got[k][0]][:8]
    raise ValueError(f"{path}: the weights do not fit the architecture in {META_FILE} "
                     f"(missing {missing}, unexpected {unexpected}, wrong shapes {shapes}); "
                     "the directory mixes two models")
  variables = jax.tree.map(lambda a, r: np.asarray(r, dtype=a.dtype), abstract,
                           jax.tree.unflatten(jax.tree.structure(abstract),
                                              [np.asarray(x) for x in _leaves_like(raw, abstract)]))
  return Classifier(apply_fn=apply_fn, variables=jax.tree.map(jax.numpy.asarray, variables),
                    class_names=tuple(meta["class_names"]),
                    input_shape=tuple(meta["input_shape"]),
                    layer_names=tuple(meta["layer_names"]), metadata=meta)


def _leaves_like(raw, abstract):
  """Leaves of ``raw`` in the order of ``abstract``'s leaves (matched by key path)."""
  by_path = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_flatten_with_path(raw)[0]}
  return [by_path[jax.tree_util.keystr(k)]
          for k, _ in jax.tree_util.tree_flatten_with_path(abstract)[0]]


class RunManager:
  """Epoch checkpoints of a training run (orbax ``CheckpointManager``, last 2 kept).

  orbax writes each step to a temporary directory and renames it when complete, so a run killed
  mid-epoch or mid-save leaves the previous epoch's checkpoint intact.
  """

  def __init__(self, directory, config):
    self.directory = pathlib.Path(directory).absolute()
    self.config = dataclasses.asdict(config)
    self.manager = ocp.CheckpointManager(
        self.directory, options=ocp.CheckpointManagerOptions(max_to_keep=2, create=True))

  def save(self, epoch: int, state, history) -> None:
    self.manager.save(epoch, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        meta=ocp.args.JsonSave({"config": self.config, "history": history})))
    self.manager.wait_until_finished()

  def restore_latest(self, like):
    epoch = self.manager.latest_step()
    if epoch is None:
      return None
    restored = self.manager.restore(epoch, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(jax.tree.map(ocp.utils.to_shape_dtype_struct, like)),
        meta=ocp.args.JsonRestore()))
    saved = restored["meta"]["config"]
    if saved != json.loads(json.dumps(self.config)):
      diff = {k: (saved.get(k), v) for k, v in json.loads(json.dumps(self.config)).items()
              if saved.get(k) != v}
      raise ValueError(f"{self.directory}: the run was started with other settings "
                       f"(saved, now): {diff}; resume with the same settings or a new --run-dir")
    return epoch, restored["state"], restored["meta"]["history"]

  def close(self):
    self.manager.close()
