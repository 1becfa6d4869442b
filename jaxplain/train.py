"""Training with optax: JAX data augmentation, a jit-compiled step, evaluation, resumable runs.

Determinism: epoch ``e`` shuffles with ``fold_in(key, e)`` and step ``t`` augments and drops out
with ``fold_in(key, t)``, so a run resumed from its epoch checkpoint takes exactly the batches
and random numbers an uninterrupted run takes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import pathlib
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxplain import data as data_lib
from jaxplain.evaluation import Evaluation, confusion_matrix, evaluate  # noqa: F401 (old home)
from jaxplain.models import CNN, Classifier, classifier, predict

__all__ = ["TrainConfig", "augment", "fit", "init_state"]


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """Hyperparameters of a run (saved beside the checkpoint)."""

  epochs: int = 30
  batch_size: int = 128
  learning_rate: float = 0.05
  momentum: float = 0.9
  weight_decay: float = 5e-4
  warmup_epochs: float = 1.0
  label_smoothing: float = 0.0
  class_weighting: float = 0.0  # 0: none; 1: inverse frequency; in between: its power
  max_rotation: float = 12.0  # degrees
  max_shift: float = 0.1  # fraction of the side
  max_zoom: float = 0.1
  flip: bool = True
  seed: int = 0
  model: dict = dataclasses.field(default_factory=dict)  # CNN(**model)
  init_from: str = ""  # a saved classifier whose weights start the run ("": random init)

  def __post_init__(self):
    """Refuses settings that cannot train, before any work (one-line ``ValueError``s)."""
    def whole(name, low):
      v = getattr(self, name)
      if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < low:
        raise ValueError(f"`{name}` must be an int >= {low}, got {v!r}")

    whole("epochs", 1)
    whole("batch_size", 1)
    whole("seed", 0)
    for name in ("learning_rate", "momentum", "weight_decay", "warmup_epochs", "label_smoothing",
                 "class_weighting", "max_rotation", "max_shift", "max_zoom"):
      v = getattr(self, name)
      if isinstance(v, bool) or not isinstance(v, (int, float, np.number)) or not v >= 0 \
          or not math.isfinite(v):
        raise ValueError(f"`{name}` must be a finite number >= 0, got {v!r}")
    if not self.label_smoothing < 1:
      raise ValueError(f"`label_smoothing` must be < 1, got {self.label_smoothing!r}")
    if not isinstance(self.model, dict):
      raise ValueError(f"`model` must be a dict of CNN options, got {type(self.model).__name__}")
    unknown = sorted(set(self.model) - {f.name for f in dataclasses.fields(CNN)})
    if unknown:
      raise ValueError(f"`model` has unknown CNN options {unknown}")
    widths = tuple(self.model.get("widths", CNN.widths))
    depths = tuple(self.model.get("depths", CNN.depths))
    if len(widths) != len(depths):
      raise ValueError(f"`widths` {list(widths)} and `depths` {list(depths)} must have one entry "
                       f"per stage, got {len(widths)} and {len(depths)}")
    if not widths or any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1
                         for v in widths + depths):
      raise ValueError(f"`widths` and `depths` must be ints >= 1, got {list(widths)} and "
                       f"{list(depths)}")
    hidden = self.model.get("hidden", CNN.hidden)
    if isinstance(hidden, bool) or not isinstance(hidden, (int, np.integer)) or hidden < 0:
      raise ValueError(f"`hidden` must be an int >= 0, got {hidden!r}")
    dropout = self.model.get("dropout", CNN.dropout)
    if not 0 <= dropout < 1:
      raise ValueError(f"`dropout` must be in [0, 1), got {dropout!r}")


def augment(key, images):
  """Random flip, rotation, zoom and shift of ``(N, H, W, C)`` images in one bilinear warp.

  Args:
    key: PRNG key.
    images: ``(N, H, W, C)`` float.

  Returns:
    Augmented images, same shape and dtype (edges repeat the border pixels).
  """
  return _augment(key, images, max_rotation=12.0, max_shift=0.1, max_zoom=0.1, flip=True)


def _augment(key, images, *, max_rotation, max_shift, max_zoom, flip):
  n, h, w, _ = images.shape
  k_rot, k_zoom, k_shift, k_flip = jax.random.split(key, 4)
  angle = jnp.deg2rad(jax.random.uniform(k_rot, (n,), minval=-max_rotation, maxval=max_rotation))
  zoom = jnp.exp(jax.random.uniform(k_zoom, (n,), minval=-max_zoom, maxval=max_zoom))
  shift = jax.random.uniform(k_shift, (n, 2), minval=-max_shift, maxval=max_shift) * h
  mirror = jnp.where(jax.random.bernoulli(k_flip, 0.5, (n,)) & flip, -1.0, 1.0)
  yy, xx = jnp.meshgrid(jnp.arange(h) - (h - 1) / 2, jnp.arange(w) - (w - 1) / 2, indexing="ij")

  def warp(image, angle, zoom, shift, mirror):
    cos, sin = jnp.cos(angle) / zoom, jnp.sin(angle) / zoom
    src_y = cos * yy - sin * xx * mirror + (h - 1) / 2 + shift[0]
    src_x = sin * yy + cos * xx * mirror + (w - 1) / 2 + shift[1]
    return jax.vmap(
        lambda c: jax.scipy.ndimage.map_coordinates(c, [src_y, src_x], order=1, mode="nearest"),
        in_axes=-1, out_axes=-1)(image)

  return jax.vmap(warp)(images, angle, zoom, shift, mirror).astype(images.dtype)


def init_state(config: TrainConfig, steps_per_epoch: int):
  """Model, optimizer and initial ``(params, batch_stats, opt_state)``."""
  model = CNN(**config.model)
  variables = model.init(jax.random.key(config.seed), jnp.zeros((1, 48, 48, 1)))
  if config.init_from:
    variables = _initial_variables(config.init_from, model, variables)
  warmup = int(config.warmup_epochs * steps_per_epoch)
  total = max(config.epochs * steps_per_epoch, warmup + 1)
  schedule = optax.warmup_cosine_decay_schedule(0.0, config.learning_rate, warmup, total)
  optimizer = optax.chain(
      optax.add_decayed_weights(config.weight_decay),
      optax.sgd(schedule, momentum=config.momentum, nesterov=True))
  state = {"params": variables["params"], "batch_stats": variables["batch_stats"],
           "opt_state": optimizer.init(variables["params"])}
  return model, optimizer, state


def _initial_variables(path: str, model: CNN, like):
  """The weights of the classifier saved at ``path``, checked against ``model``'s."""
  from jaxplain import checkpoint
  clf = checkpoint.load_classifier(path)
  saved = clf.metadata.get("config")
  if clf.metadata.get("kind") != "cnn" or saved != model.config():
    raise ValueError(f"init_from={path!r} holds a {clf.metadata.get('kind')} with config "
                     f"{saved}, not this run's CNN {model.config()}; train with the same "
                     "--widths/--depths/--hidden/--dropout, or start from random weights")
  variables = {k: clf.variables[k] for k in like}
  return jax.tree.map(lambda v, ref: jnp.asarray(v, ref.dtype), variables, like)


def class_weights(labels, power: float, num_classes: int = 7):
  """Per-class loss weights ``(count / mean count) ** -power``, normalised to mean 1."""
  counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
  w = (np.maximum(counts, 1) / counts.mean()) ** -power
  return (w * counts.sum() / (w * counts).sum()).astype(np.float32)


def make_step(model: CNN, optimizer, config: TrainConfig, weights) -> Callable:
  """The jit-compiled training step ``(state, key, images uint8, labels) -> (state, metrics)``."""
  weights = jnp.asarray(weights)

  def loss_fn(params, batch_stats, key, x, y):
    k_drop, _ = jax.random.split(key)
    logits, updates = model.apply({"params": params, "batch_stats": batch_stats}, x, train=True,
                                  rngs={"dropout": k_drop}, mutable=["batch_stats"])
    onehot = optax.smooth_labels(jax.nn.one_hot(y, model.num_classes), config.label_smoothing)
    per = optax.softmax_cross_entropy(logits, onehot) * weights[y]
    return per.sum() / weights[y].sum(), (updates["batch_stats"], logits)

  @jax.jit
  def step(state, key, images, labels):
    k_aug, k_drop = jax.random.split(key)
    x = images.astype(jnp.float32)[..., None] / 255.0
    x = _augment(k_aug, x, max_rotation=config.max_rotation, max_shift=config.max_shift,
                 max_zoom=config.max_zoom, flip=config.flip)
    (loss, (batch_stats, logits)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state["params"], state["batch_stats"], k_drop, x, labels)
    updates, opt_state = optimizer.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    accuracy = jnp.mean(jnp.argmax(logits, -1) == labels)
    return ({"params": params, "batch_stats": batch_stats, "opt_state": opt_state},
            {"loss": loss, "accuracy": accuracy})

  return step


def epoch_order(key, epoch: int, n: int) -> np.ndarray:
  """The shuffled order of epoch ``epoch`` (a function of the run's key alone)."""
  return np.asarray(jax.random.permutation(jax.random.fold_in(key, epoch), n))


def data_identity(faces: data_lib.Faces) -> dict[str, Any]:
  """What identifies training data in a run: its file's size and sha256 (when ``faces.source``
  is a file), and the sha256 and count of the faces and labels themselves."""
  h = hashlib.sha256()
  h.update(np.ascontiguousarray(faces.images).tobytes())
  h.update(np.ascontiguousarray(faces.labels, np.int64).tobytes())
  out: dict[str, Any] = {"count": len(faces), "faces_sha256": h.hexdigest()}
  source = pathlib.Path(faces.source) if faces.source else None
  if source is not None and source.is_file():
    from jaxplain import checkpoint
    out = {"file": str(source.absolute()), "size": source.stat().st_size,
           "sha256": checkpoint.sha256(source)} | out
  return out


def fit(train: data_lib.Faces, val: data_lib.Faces | None, config: TrainConfig, *,
        run_dir: str | None = None, resume: bool = False, fresh: bool = False,
        stop_after: int | None = None,
        log: Callable[[str], None] | None = None) -> Classifier:
  """Trains a :class:`CNN` and returns the classifier from the last epoch.

  Args:
    train: training faces.
    val: evaluated after each epoch (``None``: skip).
    config: hyperparameters.
    run_dir: where an orbax checkpoint is written after each epoch (``None``: nowhere). A
      ``run_dir`` holding another run is refused unless ``resume`` or ``fresh``.
    resume: continue from the last checkpoint in ``run_dir`` (refused if it was trained on
      other data: :func:`data_identity`).
    fresh: delete the epoch checkpoints of another run in ``run_dir`` and start again.
    stop_after: stop after this many epochs of this call (for tests of resuming).
    log: where progress lines go (default: stderr).
  """
  from jaxplain import checkpoint

  log = log or logging.getLogger("jaxplain").info
  if not isinstance(config, TrainConfig):
    raise ValueError(f"`config` must be a TrainConfig, got {type(config).__name__}")
  if resume and run_dir is None:
    raise ValueError("resume=True needs run_dir")
  if fresh and run_dir is None:
    raise ValueError("fresh=True needs run_dir")
  if stop_after is not None and stop_after < 1:
    raise ValueError(f"`stop_after` must be >= 1 or None, got {stop_after!r}")
  if run_dir is not None:
    checkpoint.check_run_dir(run_dir, resume=resume, fresh=fresh)
  steps = len(train) // config.batch_size
  if steps == 0:
    raise ValueError(f"{len(train)} training faces < batch size {config.batch_size}")
  model, optimizer, state = init_state(config, steps)
  origin = checkpoint.read_metadata(config.init_from) if config.init_from else None
  weights = (class_weights(train.labels, config.class_weighting) if config.class_weighting
             else np.ones(model.num_classes, np.float32))
  step = make_step(model, optimizer, config, weights)
  key = jax.random.key(config.seed)
  start = 0
  history: list[dict[str, Any]] = []
  manager = checkpoint.RunManager(run_dir, config, data=data_identity(train), resume=resume,
                                  fresh=fresh) if run_dir else None
  if resume:
    restored = manager.restore_latest(state)
    if restored is None:
      log(f"no checkpoint in {run_dir}; starting from scratch")
    else:
      start, state, history = restored
      log(f"resumed from epoch {start} in {run_dir}")
  for epoch in range(start, config.epochs):
    if stop_after is not None and epoch - start >= stop_after:
      break
    order = epoch_order(key, epoch, len(train))
    t0 = time.time()
    for i in range(steps):
      idx = order[i * config.batch_size:(i + 1) * config.batch_size]
      state, m = step(state, jax.random.fold_in(key, epoch * steps + i), train.images[idx],
                      train.labels[idx])
      if (i + 1) % 25 == 0 or i + 1 == steps:  # read metrics sparsely: the device stays busy
        loss, acc = float(m["loss"]), float(m["accuracy"])
        if not math.isfinite(loss):
          raise ValueError(f"the loss became {loss} at epoch {epoch + 1} step {i + 1}: the run "
                           "diverged; lower the learning rate (--lr)")
        rate = (i + 1) / (time.time() - t0)
        log(f"epoch {epoch + 1}/{config.epochs} step {i + 1}/{steps} loss {loss:.3f} "
            f"acc {acc:.3f} ({rate:.1f} steps/s, eta {(steps - i - 1) / rate:.0f}s)")
    clf = _classifier(model, state, config, origin=origin)
    record = {"epoch": epoch + 1, "seconds": time.time() - t0, "train_loss": loss}
    if val is not None and len(val):
      ev = evaluate(clf, val.images, val.labels)
      record |= {"val_accuracy": ev.accuracy}
      log(f"epoch {epoch + 1}: val accuracy {ev.accuracy:.4f} "
          f"({record['seconds']:.0f}s)")
    history.append(record)
    if manager:
      manager.save(epoch + 1, state, history)
  return _classifier(model, state, config, history=history, origin=origin)


def _classifier(model, state, config, history=None, origin=None) -> Classifier:
  variables = {"params": state["params"], "batch_stats": state["batch_stats"]}
  meta = {"kind": "cnn", "config": model.config(), "train": dataclasses.asdict(config)}
  if history is not None:
    meta["history"] = history
  if origin is not None:  # the recipe of the starting weights, so the checkpoint tells it all
    meta["init_from"] = {k: origin[k] for k in ("train", "history", "init_from") if k in origin}
  return classifier(model, variables, metadata=meta)
