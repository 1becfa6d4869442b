"""Benchmark: jaxplain.metrics against Quantus 0.6 on the same weights and faces.

The pretrained FER2013 ``NetworkV2`` (PyTorch, converted with ``jaxplain.convert``; fetched by
scripts/fetch_reference_models.py), or, when it is absent, jaxplain's CNN and its PyTorch twin
(scripts/bench_attribution.py). Rows (the issue's targets):

* pixel flipping, 64 faces, 48 features a step (48 steps);
* MaxSensitivity, 10 samples × 32 faces, saliency;
* model parameter randomisation (MPRT, cascading from the top), 16 faces, saliency;
* faithfulness correlation, 32 faces, Quantus's defaults (100 subsets of 224 pixels);
* ROAD, 8 faces, Quantus's 50 percentages (noisy linear imputation).

Both sides run in this process, in alternating rounds (jaxplain, Quantus, jaxplain, ...) after
one warm-up call each; the report gives each side's median seconds and spread (min–max) and the
ratio Quantus / jaxplain (above 1: jaxplain is faster). jaxplain's compile time (first call
minus the steady state) is reported apart.

Usage: python scripts/bench_metrics.py [--rounds R] [--only pixel_flipping,road,...]
"""

from __future__ import annotations

import argparse
import pathlib
import statistics
import sys
import time

import jax
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))  # _bench_common, under -P too

ROUNDS = 3
ROWS = ("pixel_flipping", "max_sensitivity", "mprt", "faithfulness_correlation", "road")


def _models():
  """``(torch model on [0, 1] NCHW, jaxplain classifier, label)``, the same weights."""
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "tests"))
  from torch_compat import import_torchvision
  import_torchvision()
  import torch
  try:
    import reference_models
    if reference_models.network_v2_dir() is None:
      raise ImportError
    module, clf = reference_models._network_v2("float32", "keep", False)

    class Normalised(torch.nn.Module):
      def __init__(self, m):
        super().__init__()
        self.m = m

      def forward(self, x):
        return self.m((x - 0.5) / 0.5)

    for m in module.modules():
      if isinstance(m, torch.nn.ReLU):
        m.inplace = False
    return (Normalised(module).eval().to(_device()), clf,
            "NetworkV2 (pretrained, converted)")
  except ImportError:
    from _bench_common import classifier
    from bench_attribution import torch_twin
    clf, label = classifier()
    return torch_twin(clf).to(_device()), clf, f"{label} and its torch twin"


def _device() -> str:
  import _bench_common
  return _bench_common.TORCH_DEVICE


def _faces(n):
  from jaxplain import data
  faces = data.sample_faces()
  idx = np.arange(n) % len(faces.images)
  return data.to_float(faces.images[idx]), faces.labels[idx].astype(np.int64)


def _torch_saliency(model, inputs, targets, **kwargs):
  import torch
  device = next(model.parameters()).device
  x = torch.as_tensor(np.asarray(inputs, np.float32), device=device).requires_grad_()
  with torch.enable_grad():
    out = model(x)
    t = torch.as_tensor(np.asarray(targets), dtype=torch.long, device=device)
    out[torch.arange(len(x), device=device), t].sum().backward()
  return np.abs(x.grad.detach().cpu().numpy())


def _nchw(x):
  return np.ascontiguousarray(np.asarray(x).transpose(0, 3, 1, 2))


def _cases(model, clf, only):
  """name -> (faces, jaxplain call, Quantus call, note)."""
  import quantus
  from jaxplain import attribution as A
  from jaxplain import metrics as M
  key = jax.random.key(0)
  cases = {}

  def q(metric, x, t, a, **kw):
    return lambda: metric(model=model, x_batch=_nchw(x), y_batch=t, a_batch=_nchw(a),
                          channel_first=True, device=_device(), **kw)

  def add(name, n, build):
    if name in only:
      x, t = _faces(n)
      a = np.asarray(A.saliency(clf.forward, x, t))
      cases[name] = (n,) + build(x, t, a)

  add("pixel_flipping", 64, lambda x, t, a: (
      lambda: M.pixel_flipping(clf.forward, x, t, a, features_in_step=48).curve,
      q(quantus.PixelFlipping(features_in_step=48, disable_warnings=True), x, t, a),
      "48 features a step"))
  add("max_sensitivity", 32, lambda x, t, a: (
      lambda: M.max_sensitivity(clf.forward, x, t, a, method=A.saliency, key=key,
                                nr_samples=10),
      q(quantus.MaxSensitivity(nr_samples=10, disable_warnings=True), x, t, a,
        explain_func=_torch_saliency),
      "10 samples, saliency"))
  add("mprt", 16, lambda x, t, a: (
      lambda: M.model_parameter_randomisation(A.saliency, clf, x, t, key=key,
                                              attributions=a).scores,
      q(quantus.MPRT(disable_warnings=True), x, t, a, explain_func=_torch_saliency),
      "cascading, all layers, saliency, Spearman"))
  add("faithfulness_correlation", 32, lambda x, t, a: (
      lambda: M.faithfulness_correlation(clf.forward, x, t, a, key=key),
      q(quantus.FaithfulnessCorrelation(return_aggregate=False, disable_warnings=True), x, t,
        a),
      "100 subsets of 224 pixels"))
  add("road", 8, lambda x, t, a: (
      lambda: M.road(clf.forward, x, t, a, key=key).curve,
      q(quantus.ROAD(disable_warnings=True), x, t, a),
      "50 percentages, noisy linear imputation"))
  return cases


def run(report, *, rounds: int = ROUNDS, only=ROWS):
  """Times each row; calls ``report(name, ours_s, peer_s, compile_s, note)`` per row."""
  import torch
  model, clf, label = _models()
  for name, (n, ours, peer, what) in _cases(model, clf, set(only)).items():
    t0 = time.perf_counter()
    jax.block_until_ready(ours())
    first = time.perf_counter() - t0
    peer()  # warm-up
    ours_t, peer_t = [], []
    for _ in range(rounds):  # alternating rounds: both sides see the same machine load
      t0 = time.perf_counter()
      jax.block_until_ready(ours())
      ours_t.append(time.perf_counter() - t0)
      t0 = time.perf_counter()
      peer()
      peer_t.append(time.perf_counter() - t0)
    ours_s, peer_s = statistics.median(ours_t), statistics.median(peer_t)
    report(f"metrics/{name}", ours_s, peer_s, max(first - ours_s, 0.0),
           f"{n} faces, {what}; {label}; jaxplain {min(ours_t):.2f}-{max(ours_t):.2f} s, "
           f"Quantus {min(peer_t):.2f}-{max(peer_t):.2f} s over {rounds} rounds; "
           f"torch threads {torch.get_num_threads()}")


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--rounds", type=int, default=ROUNDS)
  p.add_argument("--only", default=",".join(ROWS))
  p.add_argument("--torch-device", choices=("auto", "cpu", "cuda"), default="auto",
                 help="where Quantus and the PyTorch model run (auto: cuda when JAX is on a GPU "
                      "and torch sees one)")
  args = p.parse_args(argv)
  import _bench_common
  from bench import _torch_device
  _bench_common.TORCH_DEVICE = _torch_device(args.torch_device)

  def report(name, ours_s, peer_s, compile_s, note):
    print(f"{name:34s} jaxplain {ours_s:8.2f} s  Quantus {peer_s:8.2f} s  "
          f"ratio {peer_s / ours_s:5.2f}x  compile {compile_s:6.1f} s  ({note})", flush=True)

  print(f"devices: {jax.devices()}; Quantus on {_device()}", flush=True)
  run(report, rounds=args.rounds, only=tuple(s.strip() for s in args.only.split(",")))
  return 0


if __name__ == "__main__":
  sys.exit(main())
