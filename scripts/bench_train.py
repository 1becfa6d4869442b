"""Benchmark row: training images/s at batch 128, jaxplain's step against a PyTorch loop.

jaxplain: ``train.make_step`` (uint8 batch in, augmentation warp, Flax CNN in train mode with
dropout and BatchNorm statistics, weighted cross-entropy, SGD + Nesterov momentum + weight decay)
on the shipped architecture. Peer: the same network in PyTorch (``_bench_common.torch_twin`` in
train mode), the same augmentation (``affine_grid`` + bilinear ``grid_sample`` with border
padding, random flips), ``CrossEntropyLoss`` and ``torch.optim.SGD(nesterov=True,
weight_decay=5e-4)``. Both take the same uint8 batches from host memory, one step per batch.

    python scripts/bench.py --modules train [--quick]
"""

from __future__ import annotations

import functools

import jax
import numpy as np
from _bench_common import Workload, classifier, row, torch_device, torch_twin

BATCH = 128


def _batches(steps):
  from jaxplain import data
  sample = data.sample_faces()
  rng = np.random.default_rng(0)
  idx = rng.integers(0, len(sample.images), (steps, BATCH))
  return sample.images[idx], sample.labels[idx].astype(np.int32)


def _torch_step(twin, opt, cfg):
  import torch
  import torch.nn.functional as F
  loss_fn = torch.nn.CrossEntropyLoss()

  def augment(x):
    n = x.shape[0]
    rand = functools.partial(torch.rand, device=x.device)
    angle = torch.deg2rad((rand(n) * 2 - 1) * cfg.max_rotation)
    zoom = torch.exp((rand(n) * 2 - 1) * cfg.max_zoom)
    shift = (rand(n, 2) * 2 - 1) * cfg.max_shift * 2  # in [-1, 1] grid units
    mirror = torch.where(rand(n) < 0.5, -1.0, 1.0)
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    theta = torch.stack([torch.stack([cos * mirror, -sin, shift[:, 1]], 1),
                         torch.stack([sin * mirror, cos, shift[:, 0]], 1)], 1)
    grid = F.affine_grid(theta, x.shape, align_corners=True)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=True)

  def step(images, labels):
    x = torch.from_numpy(images).to(torch_device()).float().unsqueeze(1) / 255.0
    y = torch.from_numpy(labels).to(torch_device()).long()
    loss = loss_fn(twin(augment(x)), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    return loss
  return step


@row("training images/s batch 128")
def _training(quick):
  import torch

  from jaxplain import train
  clf, what = classifier()
  steps = 2 if quick else 8
  images, labels = _batches(steps)
  cfg = train.TrainConfig(model={k: tuple(v) if isinstance(v, list) else v
                                 for k, v in clf.metadata["config"].items()})
  model, optimizer, state = train.init_state(cfg, 100)
  step = train.make_step(model, optimizer, cfg, np.ones(7, np.float32))
  held = {"state": state}
  key = jax.random.key(0)

  def ours():
    s = held["state"]
    for i in range(steps):
      s, metrics = step(s, jax.random.fold_in(key, i), images[i], labels[i])
    held["state"] = s
    return metrics["loss"]

  twin = torch_twin(clf, train=True)
  opt = torch.optim.SGD(twin.parameters(), lr=0.01, momentum=cfg.momentum, nesterov=True,
                        weight_decay=cfg.weight_decay)
  tstep = _torch_step(twin, opt, cfg)

  def peer():
    for i in range(steps):
      loss = tstep(images[i], labels[i])
    return loss.detach()
  return Workload(ours, peer, f"torch {torch.__version__} loop", steps * BATCH,
                  f"{what} architecture; {steps} steps of {BATCH} per call "
                  "(images/s = items / time)")
