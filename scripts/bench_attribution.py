"""Benchmark: jaxplain attributions against Captum on the same weights.

The FER2013 CNN (the trained checkpoint when present, else the same architecture with random
weights) in jaxplain and as a PyTorch twin (its weights copied: conv HWIO → OIHW, BatchNorm in
eval mode), on a batch of real faces:

* saliency (Captum ``Saliency``),
* integrated gradients, 50 Gauss-Legendre steps (Captum ``IntegratedGradients``).

Steady-state seconds per call (median of a few calls), measured side by side in this process;
jaxplain's compile time (first call minus steady state) is reported separately.

Usage: python scripts/bench_attribution.py [--faces N] [--ig-faces N] [--reps R]
"""

from __future__ import annotations

import argparse
import sys
import time

import jax
import numpy as np
from _bench_common import classifier as _classifier, median_seconds

FACES, IG_FACES, REPS = 32, 8, 3





def torch_twin(clf):
  """jaxplain's CNN as a torch module on (N, 1, H, W) [0, 1] images, same weights."""
  import torch
  from torch import nn
  cfg = clf.metadata["config"]
  p, stats = clf.variables["params"], clf.variables["batch_stats"]
  t = lambda a: torch.as_tensor(np.array(a, np.float32))  # noqa: E731
  layers, cin = [], 1
  with torch.no_grad():
    for s, (w, d) in enumerate(zip(cfg["widths"], cfg["depths"]), start=1):
      for i in range(1, d + 1):
        conv, bn = nn.Conv2d(cin, w, 3, padding=1, bias=False), nn.BatchNorm2d(w)
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
  mean, std = cfg["mean"], cfg["std"]

  class Twin(nn.Module):
    def __init__(self):
      super().__init__()
      self.features, self.dense, self.head = features, dense, head

    def forward(self, x):
      h = self.features((x - mean) / std).mean((2, 3))
      return self.head(torch.relu(self.dense(h)))

  return Twin().eval()


def run(report, *, faces: int = FACES, ig_faces: int = IG_FACES, reps: int = REPS) -> None:
  import captum
  import torch
  from captum import attr as ca

  from jaxplain import attribution, data
  clf, what = _classifier()
  twin = torch_twin(clf)
  sample = data.sample_faces()
  x = np.resize(data.to_float(sample.images), (faces, 48, 48, 1))
  t = np.resize(sample.labels, faces).astype(np.int32)
  xt = torch.as_tensor(x.transpose(0, 3, 1, 2).copy())
  tt = torch.as_tensor(t, dtype=torch.long)
  xj, tj = jax.device_put(x), jax.device_put(t)

  def ours_sal():
    attribution.saliency(clf.forward, xj, tj).block_until_ready()

  def captum_sal():
    ca.Saliency(twin).attribute(xt.clone().requires_grad_(), target=tt)

  xi, ti, xti, tti = xj[:ig_faces], tj[:ig_faces], xt[:ig_faces], tt[:ig_faces]

  def ours_ig():
    attribution.integrated_gradients(clf.forward, xi, ti, steps=50).block_until_ready()

  def captum_ig():
    ca.IntegratedGradients(twin).attribute(xti, target=tti, n_steps=50)

  with torch.no_grad():
    err = float(np.max(np.abs(twin(xt).numpy() - np.asarray(clf.forward(xj)))))
  for name, ours, peer, n in (("saliency", ours_sal, captum_sal, faces),
                              ("integrated_gradients_50", ours_ig, captum_ig, ig_faces)):
    t0 = time.perf_counter()
    ours()
    first = time.perf_counter() - t0
    ours_s = median_seconds(ours, reps)
    peer()  # warm-up
    peer_s = median_seconds(peer, reps)
    report(name, ours_s, peer_s, max(first - ours_s, 0.0),
           f"{n} faces, {what}, vs Captum {captum.__version__} "
           f"on a torch twin (max logit diff {err:.1e}); torch threads "
           f"{torch.get_num_threads()}")


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--faces", type=int, default=FACES)
  p.add_argument("--ig-faces", type=int, default=IG_FACES)
  p.add_argument("--reps", type=int, default=REPS)
  args = p.parse_args(argv)

  def report(name, ours_s, peer_s, compile_s, note):
    print(f"{name:26s} jaxplain {ours_s * 1e3:9.1f} ms  Captum {peer_s * 1e3:9.1f} ms  "
          f"ratio {peer_s / ours_s:6.2f}x  compile {compile_s:6.2f} s  ({note})")

  run(report, faces=args.faces, ig_faces=args.ig_faces, reps=args.reps)
  return 0


if __name__ == "__main__":
  sys.exit(main())
