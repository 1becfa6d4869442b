"""Benchmark row: jaxplain.maximize_activation against the per-filter loop Lucent runs.

The same gradient ascent (sigmoid pixel parameterisation, Adam lr 0.05, channel-mean objective,
no jitter, no Fourier basis) for F filters of the middle conv layer of the FER2013 CNN:

* jaxplain: all F filters vmapped in one compiled ``lax.scan`` (one call);
* peer, Lucent's loop: one ``torch.optim.Adam`` optimisation per filter, on a PyTorch twin of the
  same network with the same weights and the same start images (what
  ``lucent.optvis.render.render_vis`` does per objective; Lucent itself is not installed, its
  loop is reproduced here without transforms).

``--rows 'filter ascent per-filter JAX*'`` adds jaxplain called once per filter (non-vmapped).

    python scripts/bench.py --modules feature_vis [--quick]
"""

from __future__ import annotations

import functools

import jax
import numpy as np
from _bench_common import Workload, classifier, row, torch_device

FILTERS, STEPS = 64, 100
QUICK_FILTERS, QUICK_STEPS = 4, 10


def torch_twin(clf, layer):
  """The jaxplain CNN up to ``layer`` as a torch function on ``(N, 1, H, W)``."""
  import torch
  cfg, p, s = clf.metadata["config"], clf.variables["params"], clf.variables["batch_stats"]
  t = lambda a: torch.tensor(np.asarray(a)).to(torch_device())  # noqa: E731
  blocks = []
  for stage, depth in enumerate(cfg["depths"], start=1):
    for i in range(1, depth + 1):
      n = f"conv{stage}_{i}"
      blocks.append((n, t(p[f"{n}_conv"]["kernel"]).permute(3, 2, 0, 1).contiguous(),
                     t(s[f"{n}_bn"]["mean"]), t(s[f"{n}_bn"]["var"]),
                     t(p[f"{n}_bn"]["scale"]), t(p[f"{n}_bn"]["bias"])))
    blocks.append((f"pool{stage}",))

  def run(x):
    x = (x - cfg["mean"]) / cfg["std"]
    for b in blocks:
      if len(b) == 1:
        x = torch.nn.functional.max_pool2d(x, 2)
      else:
        x = torch.nn.functional.conv2d(x, b[1], padding=1)
        x = torch.relu(torch.nn.functional.batch_norm(x, b[2], b[3], b[4], b[5], eps=1e-5))
      if b[0] == layer:
        return x
    raise ValueError(layer)
  return run


@functools.cache
def _setup(quick):
  from jaxplain import feature_vis
  clf, what = classifier()
  layer = feature_vis.default_layer(clf)
  filters, steps = (QUICK_FILTERS, QUICK_STEPS) if quick else (FILTERS, STEPS)
  opts = dict(steps=steps, init_scale=1.0, fourier=False, jitter=0,
              restarts=1)  # one optimisation per filter, as the peers do (default: 3)
  return clf, what, layer, tuple(range(filters)), opts


def _ours(clf, layer, picked, opts):
  from jaxplain import feature_vis
  return feature_vis.maximize_activation(clf, layer, picked, key=jax.random.key(0), **opts)


@row("filter ascent 64 filters x 100 steps")
def _filter_ascent(quick):
  import torch
  clf, what, layer, picked, opts = _setup(quick)
  vis = jax.block_until_ready(_ours(clf, layer, picked, opts))
  twin = torch_twin(clf, layer)
  starts = torch.logit(torch.tensor(np.asarray(vis.start_images)).permute(0, 3, 1, 2)).to(
      torch_device())

  def lucent_loop():
    for j, f in enumerate(picked):  # one optimisation per filter
      param = starts[j:j + 1].clone().requires_grad_(True)
      opt = torch.optim.Adam([param], lr=0.05)
      for _ in range(opts["steps"]):
        opt.zero_grad()
        loss = -twin(torch.sigmoid(param))[:, f].mean()
        loss.backward()
        opt.step()
  return Workload(lambda: _ours(clf, layer, picked, opts).images, lucent_loop,
                  f"torch {torch.__version__} Adam per filter (Lucent's loop)", len(picked),
                  f"{what}, layer {layer}, {len(picked)} filters x {opts['steps']} steps",
                  max_rounds=3)


@row("filter ascent per-filter JAX loop", extra=True)
def _per_filter(quick):
  clf, what, layer, picked, opts = _setup(quick)

  def loop():
    return [_ours(clf, layer, (f,), opts).images for f in picked]
  return Workload(lambda: _ours(clf, layer, picked, opts).images, loop,
                  "jaxplain called per filter (non-vmapped)", len(picked),
                  f"{what}, layer {layer}, {len(picked)} filters x {opts['steps']} steps",
                  max_rounds=3)
