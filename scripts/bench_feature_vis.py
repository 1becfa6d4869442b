"""Benchmark: jaxplain.maximize_activation against per-filter loops (Lucent's way).

The same gradient ascent (sigmoid pixel parameterisation, Adam lr 0.05, channel-mean
objective, no jitter) for F filters of a middle conv layer of the FER2013 CNN:

* jaxplain: all F filters vmapped in one compiled ``lax.scan`` (one call).
* peer 1, Lucent's loop: one ``torch.optim.Adam`` optimisation per filter, on a PyTorch twin
  of the same network with the same weights (what ``lucent.optvis.render.render_vis`` does per
  objective; Lucent itself is not installed, its loop is reproduced here without transforms).
* peer 2, a non-vmapped JAX loop: ``maximize_activation`` called once per filter (compiled
  once, reused).

Steady-state seconds per run of all F filters, compile time excluded (reported separately).

Usage: python scripts/bench_feature_vis.py [--filters F] [--steps S]
"""

from __future__ import annotations

import argparse
import sys
import time

import jax
import numpy as np
from _bench_common import classifier as _classifier, median_seconds

FILTERS = 8
STEPS = 32





def torch_twin(clf, layer):
  """The jaxplain CNN up to ``layer`` as a torch function on ``(N, 1, H, W)``."""
  import torch
  cfg, p, s = clf.metadata["config"], clf.variables["params"], clf.variables["batch_stats"]
  t = lambda a: torch.tensor(np.asarray(a))  # noqa: E731
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


def run(report, *, filters: int = FILTERS, steps: int = STEPS) -> None:
  import torch

  from jaxplain import feature_vis
  clf, what = _classifier()
  layer = feature_vis.default_layer(clf)
  picked = tuple(range(filters))
  key = jax.random.key(0)
  # One optimisation per filter, as the peers do (the default is 3 restarts).
  opts = dict(steps=steps, init_scale=1.0, fourier=False, jitter=0, restarts=1)

  def ours():
    return jax.block_until_ready(feature_vis.maximize_activation(clf, layer, picked, key=key,
                                                                 **opts))
  t0 = time.perf_counter()
  vis = ours()
  first_s = time.perf_counter() - t0
  ours_s = median_seconds(ours, repeats=2)
  compile_s = max(first_s - ours_s, 0.0)

  twin = torch_twin(clf, layer)
  starts = torch.logit(torch.tensor(np.asarray(vis.start_images)).permute(0, 3, 1, 2))

  def lucent_loop():
    for j, f in enumerate(picked):  # one optimisation per filter
      param = starts[j:j + 1].clone().requires_grad_(True)
      opt = torch.optim.Adam([param], lr=0.05)
      for _ in range(steps):
        opt.zero_grad()
        loss = -twin(torch.sigmoid(param))[:, f].mean()
        loss.backward()
        opt.step()
  lucent_loop()  # warm-up
  torch_s = median_seconds(lucent_loop, repeats=1)
  report(f"maximize_activation {filters} filters x {steps} steps ({layer})", ours_s, torch_s,
         compile_s, f"peer: torch Adam per filter (Lucent's loop) on a twin, {what}, "
         f"{torch.get_num_threads()} torch threads")

  def jax_loop():
    for f in picked:
      jax.block_until_ready(feature_vis.maximize_activation(clf, layer, (f,), key=key, **opts))
  jax_loop()  # compiles the one-filter loop
  report(f"maximize_activation {filters} filters x {steps} steps ({layer})", ours_s,
         median_seconds(jax_loop, repeats=1), compile_s,
         "peer: the same JAX loop called per filter (non-vmapped)")


def main() -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--filters", type=int, default=FILTERS)
  p.add_argument("--steps", type=int, default=STEPS)
  args = p.parse_args()

  def report(name, ours_s, peer_s, compile_s, note=""):
    print(f"{name:<52s} jaxplain {ours_s:8.3f} s  peer {peer_s:8.3f} s  x{peer_s / ours_s:6.2f}"
          f"  (compile {compile_s:.1f}s) {note}", flush=True)
  print(f"devices: {jax.devices()}", flush=True)
  run(report, filters=args.filters, steps=args.steps)
  return 0


if __name__ == "__main__":
  sys.exit(main())
