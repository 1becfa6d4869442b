"""What the bench_<area>.py scripts share: row registration, the timing harness, the models.

A benchmark *row* is a function ``build(quick) -> Workload`` registered with :func:`row`; it
does its setup (models, inputs, the peer) and returns two zero-argument calls, jaxplain's and
the peer's, doing the same work. :func:`measure` runs them alternately for several rounds in
this process (the order flips every round, so a load change hits both sides alike) and reports
median and interquartile range of each, the per-round ratio ``peer / jaxplain`` with its spread,
and jaxplain's compile time (first call minus the steady state) apart.

A new script plugs in by defining rows::

    from _bench_common import Workload, row

    @row("my method N=32")
    def _my_method(quick):
      ...
      return Workload(ours=lambda: ..., peer=lambda: ..., peer_name="captum", items=32)

and ``scripts/bench.py --modules my_area`` (its file is ``scripts/bench_my_area.py``) runs them.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import functools
import pathlib
import statistics
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

import jaxplain  # noqa: F401 - before any JAX computation: sets jaxplain's XLA:CPU defaults

ROOT = pathlib.Path(__file__).resolve().parents[1]

# Where the PyTorch peers run: "cpu", or "cuda" to compare with Captum on the same GPU
# (bench.py --torch-device; default: cuda when JAX runs on a GPU and torch sees one).
TORCH_DEVICE = "cpu"


def torch_device():
  import torch
  return torch.device(TORCH_DEVICE)


def jax_on_gpu() -> bool:
  return jax.default_backend() == "gpu"


@dataclasses.dataclass(frozen=True)
class Workload:
  """The two sides of one row.

  Attributes:
    ours: one jaxplain call (the harness blocks on its result).
    peer: the peer doing the same work (``None``: jaxplain alone is timed).
    peer_name: what the peer is (library and version).
    items: how many images (or samples) one call processes, for the per-item time.
    note: model, sizes, chunk sizes: what a reader needs to redo the row.
    max_rounds: a cap on the rounds for rows whose peer takes minutes.
  """

  ours: Callable[[], Any]
  peer: Callable[[], Any] | None
  peer_name: str
  items: int = 1
  note: str = ""
  max_rounds: int | None = None


@dataclasses.dataclass(frozen=True)
class Row:
  name: str
  area: str
  build: Callable[[bool], Workload]
  extra: bool = False  # run only when --rows names it (sweeps, diagnostics)


ROWS: dict[str, Row] = {}


def row(name: str, *, extra: bool = False):
  """Registers ``build(quick) -> Workload`` as the benchmark row ``name`` (unique).

  ``extra`` rows (chunk-size sweeps, diagnostics) run only when ``--rows`` selects them.
  """
  def register(build):
    if name in ROWS:
      raise ValueError(f"benchmark row {name!r} registered twice")
    area = build.__module__.removeprefix("bench_")
    ROWS[name] = Row(name, area, build, extra)
    return build
  return register


def select(patterns: str | None) -> list[Row]:
  """Registered rows whose name matches any comma-separated glob or substring in ``patterns``."""
  if not patterns:
    return [r for r in ROWS.values() if not r.extra]
  pats = [p.strip() for p in patterns.split(",") if p.strip()]
  return [r for r in ROWS.values()
          if any(fnmatch.fnmatch(r.name, p) or p in r.name for p in pats)]


def _sync(out) -> None:
  jax.block_until_ready(out)
  if TORCH_DEVICE != "cpu":  # CUDA kernels run asynchronously: wait for the peer's too
    import torch
    torch.cuda.synchronize()


def _seconds(fn) -> float:
  t0 = time.perf_counter()
  _sync(fn())
  return time.perf_counter() - t0


def _spread(values) -> dict:
  q1, q2, q3 = np.percentile(values, [25, 50, 75])
  return {"median": float(q2), "iqr": float(q3 - q1), "min": float(np.min(values)),
          "all": [float(v) for v in values]}


def measure(work: Workload, rounds: int) -> dict:
  """Times ``work`` in ``rounds`` alternating rounds; a JSON-ready dict of the results."""
  first = _seconds(work.ours)  # compile + run
  if work.peer is not None:
    _seconds(work.peer)  # the peer's warm-up (lazy init, caches)
  ours, peer = [], []
  for r in range(min(rounds, work.max_rounds or rounds)):
    if work.peer is not None and r % 2:
      peer.append(_seconds(work.peer))
      ours.append(_seconds(work.ours))
    else:
      ours.append(_seconds(work.ours))
      if work.peer is not None:
        peer.append(_seconds(work.peer))
  out = {"ours_s": _spread(ours), "items": work.items, "peer_name": work.peer_name,
         "note": work.note, "compile_s": max(first - statistics.median(ours), 0.0)}
  if peer:
    out["peer_s"] = _spread(peer)
    out["ratio"] = _spread([p / o for p, o in zip(peer, ours)])
  return out


def median_seconds(fn, repeats: int) -> float:
  """Median wall time of ``repeats`` calls of ``fn`` (call it once before, to exclude compiling)."""
  return statistics.median(_seconds(fn) for _ in range(repeats))


# ----------------------------------------------------------------------------------------------
# Models and inputs the rows share
# ----------------------------------------------------------------------------------------------


@functools.cache
def classifier():
  """The trained FER2013 CNN when present, else the same architecture with random weights.

  Returns:
    ``(classifier, label)``; the label says which one it is, for the benchmark rows.
  """
  import jaxplain
  from jaxplain import checkpoint, models
  for path in (ROOT / "checkpoints/fer2013_cnn", jaxplain.shipped_checkpoint()):
    try:
      return checkpoint.load_classifier(path), f"trained CNN ({path.name})"
    except Exception:  # noqa: BLE001 - absent or unreadable: try the next, then random weights
      continue
  model = models.CNN()
  variables = model.init(jax.random.key(0), np.zeros((1, 48, 48, 1), np.float32))
  return models.classifier(model, variables), "random-weight CNN (default architecture)"


def faces(n: int) -> tuple[np.ndarray, np.ndarray]:
  """``n`` bundled faces (repeated as needed) as float NHWC and their labels (int32)."""
  from jaxplain import data
  sample = data.sample_faces()
  return (np.resize(data.to_float(sample.images), (n, 48, 48, 1)).astype(np.float32),
          np.resize(sample.labels, n).astype(np.int32))


def to_torch(x: np.ndarray):
  """NHWC float images as a contiguous NCHW torch tensor on the peers' device."""
  import torch
  return torch.as_tensor(np.ascontiguousarray(x.transpose(0, 3, 1, 2))).to(torch_device())


def torch_twin(clf, *, train: bool = False):
  """jaxplain's CNN as a torch module on (N, 1, H, W) [0, 1] images, same weights.

  Conv (HWIO → OIHW), BatchNorm (momentum 0.1 = Flax's 0.9), max-pool, global mean, dense +
  ReLU, head, dropout where the Flax module has it; eval mode unless ``train``.
  """
  import torch
  from torch import nn
  cfg = clf.metadata["config"]
  p, stats = clf.variables["params"], clf.variables["batch_stats"]
  t = lambda a: torch.as_tensor(np.array(a, np.float32))  # noqa: E731
  layers, cin = [], 1
  with torch.no_grad():
    for s, (w, d) in enumerate(zip(cfg["widths"], cfg["depths"]), start=1):
      for i in range(1, d + 1):
        conv, bn = nn.Conv2d(cin, w, 3, padding=1, bias=False), nn.BatchNorm2d(w, momentum=0.1)
        conv.weight.copy_(t(p[f"conv{s}_{i}_conv"]["kernel"]).permute(3, 2, 0, 1))
        bn.weight.copy_(t(p[f"conv{s}_{i}_bn"]["scale"]))
        bn.bias.copy_(t(p[f"conv{s}_{i}_bn"]["bias"]))
        bn.running_mean.copy_(t(stats[f"conv{s}_{i}_bn"]["mean"]))
        bn.running_var.copy_(t(stats[f"conv{s}_{i}_bn"]["var"]))
        layers += [conv, bn, nn.ReLU()]
        cin = w
      layers.append(nn.MaxPool2d(2))
    dense, head = nn.Linear(cin, cfg["hidden"]), nn.Linear(cfg["hidden"], clf.num_classes)
    for lin, name in ((dense, "dense"), (head, "head")):
      lin.weight.copy_(t(p[name]["kernel"]).T)
      lin.bias.copy_(t(p[name]["bias"]))
  features = nn.Sequential(*layers)
  mean, std, rate = cfg["mean"], cfg["std"], cfg.get("dropout", 0.0)

  class Twin(nn.Module):
    def __init__(self):
      super().__init__()
      self.features, self.dense, self.head = features, dense, head
      self.drop, self.relu = nn.Dropout(rate), nn.ReLU()  # a module: Captum's guided hooks it

    def forward(self, x):
      h = self.drop(self.features((x - mean) / std).mean((2, 3)))
      return self.head(self.drop(self.relu(self.dense(h))))

  twin = Twin().to(torch_device())
  return twin.train() if train else twin.eval()


def twin_module(twin, clf, layer: str):
  """The module of :func:`torch_twin`'s ``twin`` whose output is jaxplain's conv ``layer``.

  The twin lays out conv, BatchNorm, ReLU per conv and a max pool per stage, so conv ``s_i``'s
  output (after its ReLU, as jaxplain's layer) is the ReLU of its triple.
  """
  index = 0
  for s, depth in enumerate(clf.metadata["config"]["depths"], start=1):
    for i in range(1, depth + 1):
      if f"conv{s}_{i}" == layer:
        return twin.features[index + 2]
      index += 3
    index += 1
  raise ValueError(f"{layer!r} is not a conv layer of the CNN")
