"""Benchmark rows: DeepLift, DeepLiftShap, GradientShap, deconvolution, guided Grad-CAM, LRP and
the layer methods against Captum / Zennit on the same weights and faces.

Each ``row_<name>(ctx)`` returns ``(jaxplain_fn, peer_fn)``: two argument-free callables that
compute the method on the same ``ctx.faces`` real faces (32 by default) and block until done, so
a harness (scripts/bench.py) can time them side by side. ``ROWS`` lists them; :func:`context`
builds the shared model (the shipped FER2013 CNN in jaxplain and as a PyTorch twin, the same
weights) and faces. ``main`` is a small harness of its own: warm-up (compile) once, then
alternating rounds, medians, the peer/jaxplain ratio.

Usage: python scripts/bench_methods_a.py [--faces 32] [--reps 3] [--rows deep_lift,lrp_...]
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time

import jax
import numpy as np
from _bench_common import classifier as _classifier
from bench_attribution import torch_twin
from _bench_common import twin_module

FACES, REPS, STEPS = 32, 3, 50


@dataclasses.dataclass
class Context:
  clf: object  # the jaxplain Classifier
  twin: object  # the torch twin, NCHW [0, 1] inputs
  layer: str  # jaxplain's default layer of layer methods
  module: object  # the twin's module whose output is that layer
  x: object  # jax (N, 48, 48, 1)
  t: object  # jax (N,)
  xt: object  # torch (N, 1, 48, 48)
  tt: object  # torch (N,)
  background: np.ndarray  # (B, 48, 48, 1) SHAP background
  what: str
  faces: int


def context(faces: int = FACES) -> Context:
  import torch

  from jaxplain import data
  from jaxplain.attribution import registry
  clf, what = _classifier()
  twin = torch_twin(clf)
  layer = registry.default_layer(clf)
  module = twin_module(twin, clf, layer)
  sample = data.sample_faces()
  x = np.resize(data.to_float(sample.images), (faces, 48, 48, 1))
  t = np.resize(sample.labels, faces).astype(np.int32)
  background = np.linspace(0, 1, 5, dtype=np.float32)[:, None, None, None] * np.ones(
      (1, 48, 48, 1), np.float32)
  return Context(clf, twin, layer, module, jax.device_put(x), jax.device_put(t),
                 torch.as_tensor(x.transpose(0, 3, 1, 2).copy()),
                 torch.as_tensor(t, dtype=torch.long), background, what, faces)


def _nchw(a):
  import torch
  return torch.as_tensor(np.asarray(a).transpose(0, 3, 1, 2).copy())


def row_deep_lift(ctx):
  from captum import attr as ca

  from jaxplain import attribution as A
  return (lambda: A.deep_lift(ctx.clf.forward, ctx.x, ctx.t).block_until_ready(),
          lambda: ca.DeepLift(ctx.twin).attribute(ctx.xt, target=ctx.tt))


def row_deep_lift_shap(ctx):
  from captum import attr as ca

  from jaxplain import attribution as A
  bt = _nchw(ctx.background)
  return (lambda: A.deep_lift_shap(ctx.clf.forward, ctx.x, ctx.t,
                                   baselines=ctx.background).block_until_ready(),
          lambda: ca.DeepLiftShap(ctx.twin).attribute(ctx.xt, baselines=bt, target=ctx.tt))


def row_gradient_shap(ctx):
  from captum import attr as ca

  from jaxplain import attribution as A
  bt, key = _nchw(ctx.background), jax.random.key(0)
  return (lambda: A.gradient_shap(ctx.clf.forward, ctx.x, ctx.t, key=key,
                                  baselines=ctx.background, samples=5,
                                  stdev=0.1).block_until_ready(),
          lambda: ca.GradientShap(ctx.twin).attribute(ctx.xt, baselines=bt, n_samples=5,
                                                      stdevs=0.1, target=ctx.tt))


def row_deconvolution(ctx):
  from captum import attr as ca

  from jaxplain import attribution as A
  return (lambda: A.deconvolution(ctx.clf.forward, ctx.x, ctx.t).block_until_ready(),
          lambda: ca.Deconvolution(ctx.twin).attribute(ctx.xt.clone().requires_grad_(),
                                                       target=ctx.tt))


def row_guided_grad_cam(ctx):
  from captum import attr as ca

  from jaxplain import attribution as A
  return (lambda: A.guided_grad_cam(ctx.clf, ctx.x, ctx.t, layer=ctx.layer).block_until_ready(),
          lambda: ca.GuidedGradCam(ctx.twin, ctx.module).attribute(
              ctx.xt.clone().requires_grad_(), target=ctx.tt))


def _zennit_row(ctx, composite):
  import torch
  from zennit import canonizers, composites
  from zennit.attribution import Gradient

  from jaxplain import attribution as A
  mean, std = ctx.clf.metadata["config"]["mean"], ctx.clf.metadata["config"]["std"]
  onehot = torch.eye(ctx.clf.num_classes)[ctx.tt]

  def peer():
    canon = [canonizers.SequentialMergeBatchNorm()]
    if composite == "epsilon_gamma_box":
      comp = composites.EpsilonGammaBox(low=-mean / std, high=(1 - mean) / std,
                                        canonizers=canon)
    else:
      comp = composites.EpsilonPlusFlat(canonizers=canon)
    with Gradient(model=ctx.twin, composite=comp) as attributor:
      return attributor(ctx.xt.clone().requires_grad_(), onehot)[1]

  return (lambda: A.lrp(ctx.clf.forward, ctx.x, ctx.t, composite=composite).block_until_ready(),
          peer)


def row_lrp_epsilon_plus_flat(ctx):
  return _zennit_row(ctx, "epsilon_plus_flat")


def row_lrp_epsilon_gamma_box(ctx):
  return _zennit_row(ctx, "epsilon_gamma_box")


def row_layer_gradient_x_activation(ctx):
  from captum import attr as ca

  from jaxplain import attribution as A
  return (lambda: A.layer_gradient_x_activation(ctx.clf, ctx.x, ctx.t,
                                                layer=ctx.layer).block_until_ready(),
          lambda: ca.LayerGradientXActivation(ctx.twin, ctx.module).attribute(
              ctx.xt, target=ctx.tt))


def row_layer_integrated_gradients(ctx):
  from captum import attr as ca

  from jaxplain import attribution as A
  return (lambda: A.layer_integrated_gradients(ctx.clf, ctx.x, ctx.t, layer=ctx.layer,
                                               steps=STEPS).block_until_ready(),
          lambda: ca.LayerIntegratedGradients(ctx.twin, ctx.module).attribute(
              ctx.xt, target=ctx.tt, n_steps=STEPS))


def row_layer_conductance(ctx):
  from captum import attr as ca

  from jaxplain import attribution as A
  return (lambda: A.layer_conductance(ctx.clf, ctx.x, ctx.t, layer=ctx.layer,
                                      steps=STEPS).block_until_ready(),
          lambda: ca.LayerConductance(ctx.twin, ctx.module).attribute(
              ctx.xt, target=ctx.tt, n_steps=STEPS))


ROWS = {f.__name__[4:]: f for f in (
    row_deep_lift, row_deep_lift_shap, row_gradient_shap, row_deconvolution,
    row_guided_grad_cam, row_lrp_epsilon_plus_flat, row_lrp_epsilon_gamma_box,
    row_layer_gradient_x_activation, row_layer_integrated_gradients, row_layer_conductance)}


def time_row(ours, peer, reps: int):
  """``(ours_s, peer_s, compile_s)``: medians of ``reps`` alternating rounds after warm-up."""
  t0 = time.perf_counter()
  ours()
  first = time.perf_counter() - t0
  peer()
  a, b = [], []
  for _ in range(reps):
    for fn, out in ((ours, a), (peer, b)):
      t0 = time.perf_counter()
      fn()
      out.append(time.perf_counter() - t0)
  ours_s, peer_s = statistics.median(a), statistics.median(b)
  return ours_s, peer_s, max(first - ours_s, 0.0)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--faces", type=int, default=FACES)
  p.add_argument("--reps", type=int, default=REPS)
  p.add_argument("--rows", default=",".join(ROWS))
  args = p.parse_args(argv)
  sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1] / "tests"))
  from torch_compat import import_torchvision
  import_torchvision()  # zennit imports torchvision
  import torch
  ctx = context(args.faces)
  print(f"{ctx.faces} faces, {ctx.what}, layer {ctx.layer}; torch threads "
        f"{torch.get_num_threads()}")
  for name in args.rows.split(","):
    ours, peer = ROWS[name](ctx)
    ours_s, peer_s, compile_s = time_row(ours, peer, args.reps)
    print(f"{name:30s} jaxplain {ours_s * 1e3:9.1f} ms  reference {peer_s * 1e3:9.1f} ms  "
          f"ratio {peer_s / ours_s:6.2f}x  compile {compile_s:6.2f} s", flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
