"""orbax checkpoints: a classifier directory, and the epoch checkpoints of a training run.

A classifier directory holds ``jaxplain.json`` (format, architecture config, class names,
input shape and preprocessing, metrics, the sha256 of every weight file) and ``variables/``
(orbax). Output folders (checkpoints and reports) are written to a hidden temporary sibling and
moved into place (:func:`atomic_directory`), so an interrupted save leaves nothing half-written,
and jaxplain never replaces a folder it did not write.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import hashlib
import json
import logging
import os
import pathlib
import re
import secrets
import shutil
import sys
import tempfile
import time
import warnings
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from jaxplain.models import CNN, Classifier, classifier

FORMAT = "jaxplain-classifier"
VERSION = 1
META_FILE = "jaxplain.json"
REPORT_FORMAT = "jaxplain-report"
REPORT_MARKER = "jaxplain-report.json"  # written into every report folder: what jaxplain wrote
RUN_FORMAT = "jaxplain-run"
RUN_FILE = "jaxplain-run.json"  # a training run's settings, data and epoch checksums
OUTPUT_KINDS = ("checkpoint", "report")
_TMP, _OLD = "jaxplain-tmp", "jaxplain-old"  # hidden siblings: `.{name}.{_TMP}-{pid}-{random}`

__all__ = ["save_classifier", "load_classifier", "read_metadata", "check_output_dir",
           "check_run_dir", "atomic_directory", "clean_leftovers", "file_digests", "sha256",
           "RunManager", "builders"]


def _json_default(o):
  if isinstance(o, np.ndarray):
    return o.tolist()
  if isinstance(o, (np.integer, np.floating)):
    return o.item()
  if isinstance(o, tuple):
    return list(o)
  raise TypeError(f"cannot store {type(o).__name__} in {META_FILE}")


# --- output folders ----------------------------------------------------------------------------

def file_digests(root: str | os.PathLike, under: str = "") -> dict[str, str]:
  """sha256 of every file below ``root / under``, keyed by its POSIX path relative to ``root``."""
  root = pathlib.Path(root)
  base = root / under if under else root
  files = [base] if base.is_file() else sorted(p for p in base.rglob("*") if p.is_file())
  return {f.relative_to(root).as_posix(): sha256(f) for f in files}


def sha256(file: str | os.PathLike) -> str:
  """The sha256 of a file's bytes, hex."""
  h = hashlib.sha256()
  with open(file, "rb") as fh:
    for block in iter(lambda: fh.read(1 << 20), b""):
      h.update(block)
  return h.hexdigest()


def _verify_digests(root: pathlib.Path, recorded: dict[str, str], what: str) -> None:
  """Raises ``ValueError`` naming the first file of ``recorded`` that is missing or differs."""
  for rel, digest in sorted(recorded.items()):
    f = root / rel
    if not f.is_file():
      raise ValueError(f"{f}: missing; {what} is truncated")
    if sha256(f) != digest:
      raise ValueError(f"{f}: sha256 differs from the one recorded at save time; {what} is "
                       "damaged (restore it from a copy)")


def _files(path: pathlib.Path) -> list[str]:
  return sorted(p.relative_to(path).as_posix() for p in path.rglob("*") if not p.is_dir())


def _written_by_jaxplain(path: pathlib.Path, kind: str) -> list[str] | None:
  """``None`` if ``path`` holds no jaxplain marker of ``kind``; else the files it holds that
  jaxplain did not write (empty: the folder is jaxplain's alone and may be replaced)."""
  try:
    if kind == "checkpoint":
      meta = json.loads((path / META_FILE).read_text())
      if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        return None
      ours = set(meta["sha256"]) if isinstance(meta.get("sha256"), dict) else None
      return [f for f in _files(path) if f != META_FILE
              and not (f in ours if ours is not None else f.startswith("variables/"))]
    marker = json.loads((path / REPORT_MARKER).read_text())
    if not isinstance(marker, dict) or marker.get("format") != REPORT_FORMAT:
      return None
    ours = set(marker.get("files", []))
    return [f for f in _files(path) if f != REPORT_MARKER and f not in ours]
  except (OSError, ValueError, KeyError, TypeError):  # no marker, or not ours
    return None


_LEFTOVER = re.compile(rf"^\.(?P<name>.+)\.(?P<what>{_TMP}|{_OLD})-(?P<pid>\d+)-[0-9a-z_]+$",
                       re.IGNORECASE)


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except (PermissionError, OverflowError):
    return True
  return True


def _leftovers(path: pathlib.Path, *, dead_only: bool = True) -> list[tuple[str, pathlib.Path]]:
  """Hidden siblings a killed save of ``path`` left: ``("tmp"|"old", folder)``, newest first
  (``dead_only``: only those of processes no longer running)."""
  try:
    entries = list(path.parent.iterdir())
  except OSError:
    return []
  found = []
  for e in entries:
    m = _LEFTOVER.match(e.name)
    if (m and m["name"] == path.name and e.is_dir() and not e.is_symlink()
        and not (dead_only and _alive(int(m["pid"])))):
      found.append(("tmp" if m["what"] == _TMP else "old", e))
  return sorted(found, key=lambda t: t[1].stat().st_mtime, reverse=True)


def _stranded(path: pathlib.Path) -> pathlib.Path | None:
  """The previous folder a save killed between its two renames left aside (``path`` missing)."""
  if path.exists():
    return None
  return next((p for what, p in _leftovers(path, dead_only=False) if what == "old"), None)


def clean_leftovers(path: str | os.PathLike) -> None:
  """Removes the hidden temporary folders killed saves of ``path`` left beside it.

  Only jaxplain's own names (``.{name}.jaxplain-tmp-{pid}-…``) of processes no longer running
  are touched. A previous folder set aside by a save killed between its renames
  (``.{name}.jaxplain-old-…``) is moved back to ``path`` when ``path`` is missing.
  """
  path = pathlib.Path(path).absolute()
  for what, p in _leftovers(path):
    if what == "old" and not path.exists():
      os.rename(p, path)
    else:
      shutil.rmtree(p, ignore_errors=True)


def check_output_dir(path: str | os.PathLike, *, overwrite: bool = False,
                     kind: str) -> pathlib.Path:
  """Checks, before any work, that ``path`` may be written as a jaxplain output folder.

  ``path`` may be new (its parents are created), or, with ``overwrite``, a folder jaxplain wrote
  as this ``kind`` holding only files jaxplain wrote: a checkpoint (``jaxplain.json``) or a
  report (``jaxplain-report.json``). Anything else is refused: jaxplain never deletes what it
  did not write. Nothing is created or changed.

  Args:
    path: the output folder.
    overwrite: allow replacing a previous jaxplain output of this ``kind``.
    kind: ``"checkpoint"`` or ``"report"``.

  Returns:
    ``path``, absolute.

  Raises:
    ValueError: one line naming the folder, the problem and ``--overwrite`` where it applies.
  """
  if kind not in OUTPUT_KINDS:
    raise ValueError(f"`kind` must be one of {OUTPUT_KINDS}, got {kind!r}")
  path = pathlib.Path(path).absolute()
  marker = META_FILE if kind == "checkpoint" else REPORT_MARKER
  cwd = pathlib.Path.cwd().resolve()
  if path.resolve() == cwd or path.resolve() in cwd.parents:
    raise ValueError(f"{path} is the current folder or holds it; jaxplain writes a {kind} "
                     "into a folder of its own: name a new subfolder")
  if path.is_symlink():
    raise ValueError(f"{path} is a symbolic link; name a real folder for the {kind}")
  existing = path if path.exists() else _stranded(path)
  if existing is not None:
    if not existing.is_dir():
      raise ValueError(f"{path} is a file, not a folder; name a new folder for the {kind} "
                       f"(--overwrite only replaces a jaxplain {kind} folder)")
    if any(existing.iterdir()):
      foreign = _written_by_jaxplain(existing, kind)
      if foreign is None:
        raise ValueError(f"{path} exists and was not written by jaxplain as a {kind} (no "
                         f"{marker}), so even --overwrite will not replace it; name a new folder")
      if foreign:
        more = f" and {len(foreign) - 3} more" if len(foreign) > 3 else ""
        raise ValueError(f"{path} holds files jaxplain did not write ({', '.join(foreign[:3])}"
                         f"{more}), so even --overwrite will not replace it; move them out or "
                         "name a new folder")
      if not overwrite:
        raise ValueError(f"{path} exists (a jaxplain {kind}); pass --overwrite (overwrite=True) "
                         "to replace it, or name a new folder")
  parent = path.parent
  while not parent.exists() and not parent.is_symlink():
    parent = parent.parent
  if not parent.is_dir():
    raise ValueError(f"{path}: {parent} is a file, not a folder; name a folder for the {kind}")
  if not os.access(parent, os.W_OK | os.X_OK):
    raise ValueError(f"{path}: cannot write into {parent} (permission denied); name a folder "
                     "you can write to")
  try:  # the real test (root passes os.access, and some file systems refuse anyway)
    os.rmdir(tempfile.mkdtemp(prefix=".jaxplain-probe-", dir=parent))
  except OSError as e:
    raise ValueError(f"{path}: cannot write into {parent} ({e.strerror or e}); name a folder "
                     "you can write to") from None
  return path


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike, *, overwrite: bool = False, kind: str):
  """Yields a hidden temporary sibling of ``path`` to fill; on success it becomes ``path``.

  ``path`` is checked first with :func:`check_output_dir` (the same ``overwrite`` and ``kind``),
  and again before the swap. A report folder gets its marker ``jaxplain-report.json`` listing
  the files written; a checkpoint's marker is the ``jaxplain.json`` the caller writes.

  Kill-safe at every moment: on any error the temporary folder is removed and ``path`` is left
  as it was. A replaced ``path`` is first renamed aside, the new folder renamed in, and only then
  the old one deleted; a kill between the renames leaves the old folder aside, which
  :func:`load_classifier` still reads and the next save moves back (:func:`clean_leftovers`).
  """
  path = pathlib.Path(path).absolute()
  clean_leftovers(path)
  check_output_dir(path, overwrite=overwrite, kind=kind)
  try:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{path.name}.{_TMP}-{os.getpid()}-",
                                        dir=path.parent))
  except OSError as e:
    raise ValueError(f"{path}: cannot create it ({e.strerror}); name a folder you can write "
                     "to") from None
  try:
    yield tmp
    if kind == "report":
      (tmp / REPORT_MARKER).write_text(json.dumps(
          {"format": REPORT_FORMAT, "version": VERSION, "files": _files(tmp)}, indent=1))
    elif not (tmp / META_FILE).is_file():
      raise RuntimeError(f"atomic_directory(kind='checkpoint') left no {META_FILE} in {tmp}")
    tmp.chmod(0o755)  # mkdtemp makes it private
    check_output_dir(path, overwrite=overwrite, kind=kind)  # the folder may have changed since
    if path.exists():
      old = path.parent / f".{path.name}.{_OLD}-{os.getpid()}-{secrets.token_hex(4)}"
      os.rename(path, old)
      try:
        os.rename(tmp, path)
      except BaseException:
        os.rename(old, path)
        raise
      shutil.rmtree(old)
    else:
      os.rename(tmp, path)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise


# --- classifier checkpoints ---------------------------------------------------------------------

def _nonfinite(tree) -> list[str]:
  """Key paths of the leaves of ``tree`` holding NaN or Inf."""
  return [jax.tree_util.keystr(k) for k, v in jax.tree_util.tree_flatten_with_path(tree)[0]
          if np.issubdtype(np.asarray(v).dtype, np.inexact) and not np.isfinite(v).all()]


def save_classifier(clf: Classifier, path: str | os.PathLike, *, overwrite: bool = False,
                    extra: dict | None = None) -> pathlib.Path:
  """Saves ``clf`` to the directory ``path`` (atomically: temp dir, then rename).

  Args:
    clf: a classifier whose ``metadata`` holds ``kind`` and ``config`` (every classifier made by
      jaxplain does).
    path: the directory to create.
    overwrite: replace a jaxplain checkpoint already at ``path`` (a folder jaxplain did not write
      is never replaced; see :func:`check_output_dir`).
    extra: more JSON-serialisable metadata (e.g. accuracy).

  Raises:
    ValueError: ``path`` may not be written, or the weights hold NaN or Inf.
  """
  path = pathlib.Path(path).absolute()
  meta = dict(clf.metadata or {})
  if meta.get("kind") not in builders():
    raise ValueError(f"cannot save a classifier of kind {meta.get('kind')!r}: its metadata must "
                     f"name one of {sorted(builders())} and hold its config")
  check_output_dir(path, overwrite=overwrite, kind="checkpoint")
  bad = _nonfinite(clf.variables)
  if bad:
    raise ValueError(f"cannot save {path}: the weights {bad[:3]} hold NaN or Inf (a diverged "
                     "run? lower the learning rate)")
  meta |= {"format": FORMAT, "version": VERSION, "class_names": list(clf.class_names),
           "input_shape": list(clf.input_shape), "layer_names": list(clf.layer_names),
           "input": "float (N, H, W, C) in [0, 1], NHWC; the model normalises it itself"}
  if tuple(clf.input_range or ()) != (0.0, 1.0):
    meta["input_range"] = None if clf.input_range is None else list(clf.input_range)
  meta |= extra or {}
  meta["dtypes"] = sorted({str(x.dtype) for x in jax.tree.leaves(clf.variables)})
  with atomic_directory(path, overwrite=overwrite, kind="checkpoint") as tmp:
    with ocp.StandardCheckpointer() as ckptr:
      ckptr.save(tmp / "variables", jax.tree.map(np.asarray, clf.variables))
      ckptr.wait_until_finished()
    meta["sha256"] = file_digests(tmp, "variables")
    (tmp / META_FILE).write_text(json.dumps(meta, indent=1, default=_json_default))
  return path


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


def _located(path: pathlib.Path) -> pathlib.Path:
  """``path``, or the previous checkpoint a save killed between its renames left aside."""
  aside = _stranded(path)
  if aside is not None and (aside / META_FILE).is_file():
    warnings.warn(f"{path} is missing: a save killed midway left the previous checkpoint at "
                  f"{aside}; reading that (the next save to {path} moves it back)", stacklevel=3)
    return aside
  return path


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
  """The checked ``jaxplain.json`` of the checkpoint in directory ``path``, without its weights.

  Raises:
    ValueError: not a jaxplain checkpoint, damaged metadata, or a newer format version.
  """
  path = _located(pathlib.Path(path).absolute())
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
  if not isinstance(meta, dict) or meta.get("format") != FORMAT:
    got = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
    raise ValueError(f"{meta_file}: format {got!r}, expected {FORMAT!r}")
  if meta.get("version", 0) > VERSION:
    raise ValueError(f"{path}: checkpoint version {meta['version']} is newer than this jaxplain "
                     f"reads ({VERSION}); upgrade jaxplain")
  return meta


# Checkpoints whose restore failed: asyncio's "exception was never retrieved" reports about their
# abandoned reads are dropped (_LateReadErrors), whenever the garbage collector gets to them.
_FAILED_READS: set[str] = set()


class _LateReadErrors(logging.Filter):
  """Drops asyncio's report of a read that orbax abandoned after an earlier read of the same
  checkpoint failed (that failure is already jaxplain's raised error)."""

  def filter(self, record):
    text = record.getMessage()
    return not ("exception was never retrieved" in text
                and any(p in text for p in _FAILED_READS))


_LATE_READ_FILTER = _LateReadErrors()


@contextlib.contextmanager
def _orbax_reads(where):
  """Runs an orbax restore of ``where``; on failure, waits for its reads still in flight.

  orbax runs a restore in an event loop of its own and closes it as soon as one read fails,
  while tensorstore is still finishing the others; each then calls ``call_soon_threadsafe`` on
  the closed loop, and Python prints ``RuntimeError: Event loop is closed`` after jaxplain's own
  clean error (issue 11), or, when a late read failed too, asyncio logs "Task exception was
  never retrieved" with its traceback once the task is collected (seen on a loaded machine).
  Checksums verified before the restore keep damaged files from orbax in the first place; for
  files without checksums this waits out those late callbacks and drops exactly these two
  reports, which carry nothing the raised error does not.
  """
  previous = sys.unraisablehook

  def hook(unraisable):
    if not (isinstance(unraisable.exc_value, RuntimeError)
            and str(unraisable.exc_value) == "Event loop is closed"):
      previous(unraisable)

  sys.unraisablehook = hook
  try:
    yield
  except BaseException:
    _FAILED_READS.add(str(where))
    logger = logging.getLogger("asyncio")
    if _LATE_READ_FILTER not in logger.filters:
      logger.addFilter(_LATE_READ_FILTER)
    time.sleep(0.3)
    gc.collect()  # report (and drop) the abandoned reads now, not at some later moment
    raise
  finally:
    sys.unraisablehook = previous


def load_classifier(path: str | os.PathLike) -> Classifier:
  """Rebuilds the :class:`Classifier` saved in directory ``path`` (no torch needed).

  The weights are verified: every file's sha256 against the one recorded at save time (older
  checkpoints without checksums load with a warning), every weight finite, and the logits of a
  probe image finite.

  Raises:
    ValueError: not a jaxplain checkpoint, truncated or damaged (naming the file), or weights
      that do not fit the architecture or class names its metadata names.
  """
  path = _located(pathlib.Path(path).absolute())
  meta = read_metadata(path)
  meta_file = path / META_FILE
  kinds = builders()
  if meta.get("kind") not in kinds:
    raise ValueError(f"{path}: unknown architecture kind {meta.get('kind')!r}; "
                     f"known: {sorted(kinds)}")
  for key in ("class_names", "input_shape", "layer_names"):
    if not isinstance(meta.get(key), list):
      raise ValueError(f"{meta_file}: `{key}` must be a list, got {meta.get(key)!r}")
  apply_fn, abstract = kinds[meta["kind"]](meta)
  shape = tuple(meta["input_shape"])
  input_range = tuple(meta["input_range"]) if meta.get("input_range") else (
      None if "input_range" in meta else (0.0, 1.0))
  out = jax.eval_shape(apply_fn, abstract, jax.ShapeDtypeStruct((1,) + shape, np.float32))
  if len(meta["class_names"]) != out.shape[-1]:
    raise ValueError(f"{meta_file}: {len(meta['class_names'])} class names for a model with "
                     f"{out.shape[-1]} outputs; `class_names` must name every output")
  if not (path / "variables").is_dir():
    raise ValueError(f"{path}: the weights (variables/) are missing; the checkpoint is truncated")
  if isinstance(meta.get("sha256"), dict):
    _verify_digests(path, meta["sha256"], f"the checkpoint {path}")
  else:
    warnings.warn(f"{path}: {META_FILE} records no checksums (saved by an older jaxplain), so "
                  "its weight files cannot be verified; re-save it with save_classifier",
                  stacklevel=2)
  try:
    with _orbax_reads(path), ocp.StandardCheckpointer() as ckptr:
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
  bad = _nonfinite(variables)
  if bad:
    raise ValueError(f"{path / 'variables'}: the weights {bad[:3]} hold NaN or Inf; the "
                     "checkpoint is damaged")
  clf = Classifier(apply_fn=apply_fn, variables=jax.tree.map(jax.numpy.asarray, variables),
                   class_names=tuple(meta["class_names"]), input_shape=shape,
                   layer_names=tuple(meta["layer_names"]), input_range=input_range, metadata=meta)
  _probe(clf, path)
  return clf


def _probe(clf: Classifier, path: pathlib.Path) -> None:
  """Raises ``ValueError`` unless ``clf`` gives finite logits on a fixed probe image."""
  from jaxplain.models import _predict_chunk
  lo, hi = clf.input_range or (0.0, 1.0)
  n = int(np.prod(clf.input_shape))
  ramp = (np.arange(n, dtype=np.float32) * 0.618034) % 1.0  # every value of the range, mixed
  probe = (lo + (hi - lo) * ramp).reshape((1,) + tuple(clf.input_shape)).astype(np.float32)
  logits = np.asarray(_predict_chunk(clf.forward, probe))
  if not np.isfinite(logits).all():
    raise ValueError(f"{path / 'variables'}: the weights give non-finite logits on a probe "
                     "image; the checkpoint is damaged (or saved from a diverged run)")


def _leaves_like(raw, abstract):
  """Leaves of ``raw`` in the order of ``abstract``'s leaves (matched by key path)."""
  by_path = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_flatten_with_path(raw)[0]}
  return [by_path[jax.tree_util.keystr(k)]
          for k, _ in jax.tree_util.tree_flatten_with_path(abstract)[0]]


# --- training runs ------------------------------------------------------------------------------

def _run_steps(directory: pathlib.Path) -> list[int]:
  """The epochs whose checkpoints ``directory`` holds (orbax names step folders by number)."""
  if not directory.is_dir():
    return []
  return sorted(int(p.name) for p in directory.iterdir() if p.is_dir() and p.name.isdigit())


def check_run_dir(directory: str | os.PathLike, *, resume: bool = False,
                  fresh: bool = False) -> pathlib.Path:
  """Checks, before any work, that a run may start (or resume) in ``directory``.

  A directory holding another run's epoch checkpoints is refused unless ``resume`` (continue
  it) or ``fresh`` (:class:`RunManager` then deletes those checkpoints, and only them). Nothing
  is created or changed.

  Returns:
    ``directory``, absolute.

  Raises:
    ValueError: one line naming the directory and ``--resume``/``--fresh``.
  """
  directory = pathlib.Path(directory).absolute()
  if resume and fresh:
    raise ValueError("pass either resume=True (--resume) or fresh=True (--fresh), not both")
  if directory.exists() and not directory.is_dir():
    raise ValueError(f"run_dir {directory} is a file; name a folder for the run")
  steps = _run_steps(directory)
  if steps and not (resume or fresh):
    raise ValueError(f"run_dir {directory} holds another run (epochs "
                     f"{', '.join(map(str, steps))}); pass resume=True (--resume) to continue "
                     "it, fresh=True (--fresh) to delete its checkpoints and start again, or name "
                     "a new --run-dir")
  return directory


def _write_json_atomically(path: pathlib.Path, obj) -> None:
  tmp = path.with_name(f".{path.name}.{_TMP}-{os.getpid()}-{secrets.token_hex(4)}")
  tmp.write_text(json.dumps(obj, indent=1, default=_json_default))
  os.replace(tmp, path)


class RunManager:
  """Epoch checkpoints of a training run (orbax ``CheckpointManager``, last 2 kept).

  orbax writes each step to a temporary directory and renames it when complete, so a run killed
  mid-epoch or mid-save leaves the previous epoch's checkpoint intact. ``jaxplain-run.json``
  beside the steps records the run's settings, its training data (file size and sha256, and a
  hash of the faces) and the sha256 of every file of each epoch checkpoint, checked on resume.

  Args:
    directory: the run directory.
    config: the run's :class:`~jaxplain.train.TrainConfig`.
    data: what identifies the training data (any JSON); a resumed run must have the same.
    resume: continue the run in ``directory``; otherwise a directory holding another run is
      refused, unless ``fresh``.
    fresh: delete the other run's epoch checkpoints (only those) and start again.

  Raises:
    ValueError: ``directory`` holds another run (neither ``resume`` nor ``fresh``), or the
      resumed run was trained on other data.
  """

  def __init__(self, directory, config, *, data: dict | None = None, resume: bool = False,
               fresh: bool = False):
    self.directory = check_run_dir(directory, resume=resume, fresh=fresh)
    self.config = json.loads(json.dumps(dataclasses.asdict(config), default=_json_default))
    self.data = data or {}
    run_file = self.directory / RUN_FILE
    steps = _run_steps(self.directory)
    if steps and fresh:
      for p in self.directory.iterdir():
        if (p.is_dir() and (p.name.isdigit() or ".orbax-checkpoint-tmp" in p.name)
            and not p.is_symlink()):
          shutil.rmtree(p)
      steps = []
    self.record = self._read_record() if steps and run_file.is_file() else None
    if self.record is not None:
      self._check_data(self.record.get("data") or {})
    elif steps and resume:
      warnings.warn(f"{self.directory}: no {RUN_FILE} (a run of an older jaxplain); its data and "
                    "epoch checkpoints cannot be verified", stacklevel=3)
    self.manager = ocp.CheckpointManager(
        self.directory, options=ocp.CheckpointManagerOptions(max_to_keep=2, create=True))
    if self.record is None:
      self.record = {"format": RUN_FORMAT, "version": VERSION, "config": self.config,
                     "data": self.data, "sha256": {}}
      _write_json_atomically(run_file, self.record)

  def _read_record(self) -> dict:
    f = self.directory / RUN_FILE
    try:
      record = json.loads(f.read_text())
    except (OSError, ValueError) as e:
      raise ValueError(f"{f}: unreadable ({e}); the run directory is damaged") from None
    if not isinstance(record, dict) or record.get("format") != RUN_FORMAT:
      raise ValueError(f"{f}: not a jaxplain run record")
    return record

  def _check_data(self, saved: dict) -> None:
    now = self.data

    def name(d):
      return (f"{d.get('file', 'in-memory faces')} ({d.get('size', '?')} bytes, sha256 "
              f"{str(d.get('sha256', d.get('faces_sha256', '?')))[:12]})")

    if saved.get("sha256") and now.get("sha256") and saved["sha256"] != now["sha256"]:
      raise ValueError(f"run_dir {self.directory} was trained on {name(saved)}, not on "
                       f"{name(now)}; resume with the same --data or name a new --run-dir")
    if saved.get("faces_sha256") and now.get("faces_sha256") and \
        saved["faces_sha256"] != now["faces_sha256"]:
      raise ValueError(f"run_dir {self.directory} was trained on other faces ({name(saved)}; "
                       f"now {name(now)}: another file, split or --skip-bad?); resume with the "
                       "same data or name a new --run-dir")

  def save(self, epoch: int, state, history) -> None:
    self.manager.save(epoch, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        meta=ocp.args.JsonSave({"config": self.config, "history": history})))
    self.manager.wait_until_finished()
    kept = {str(s) for s in self.manager.all_steps()}
    sums = {k: v for k, v in self.record["sha256"].items() if k in kept}
    sums[str(epoch)] = file_digests(self.directory / str(epoch))
    self.record["sha256"] = sums
    _write_json_atomically(self.directory / RUN_FILE, self.record)

  def restore_latest(self, like):
    epoch = self.manager.latest_step()
    if epoch is None:
      return None
    step_dir = self.directory / str(epoch)
    recorded = self.record["sha256"].get(str(epoch))
    what = (f"the epoch {epoch} checkpoint of the run (delete {step_dir} to resume from the "
            "epoch before, or pass --fresh)")
    if recorded:
      _verify_digests(step_dir, recorded, what)
    else:
      warnings.warn(f"{step_dir}: no checksums recorded (the run was killed while saving it, or "
                    "an older jaxplain wrote it); its files cannot be verified", stacklevel=3)
    try:
      with _orbax_reads(step_dir):
        restored = self.manager.restore(epoch, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(jax.tree.map(ocp.utils.to_shape_dtype_struct, like)),
            meta=ocp.args.JsonRestore()))
    except Exception as e:  # orbax raises many types for damaged files
      raise ValueError(f"{step_dir}: cannot read it ({type(e).__name__}: {str(e)[:300]}); "
                       f"{what} is damaged") from None
    saved = restored["meta"]["config"]
    if saved != self.config:
      diff = {k: (saved.get(k), v) for k, v in self.config.items() if saved.get(k) != v}
      raise ValueError(f"{self.directory}: the run was started with other settings "
                       f"(saved, now): {diff}; resume with the same settings or a new --run-dir")
    bad = _nonfinite(restored["state"])
    if bad:
      raise ValueError(f"{step_dir}: the state {bad[:3]} holds NaN or Inf; {what} is damaged")
    return epoch, restored["state"], restored["meta"]["history"]

  def close(self):
    self.manager.close()
