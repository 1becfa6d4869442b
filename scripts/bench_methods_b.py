"""Benchmark rows: the CAM family, the perturbation methods and the PAIR methods against their
references, on the same weights and the same 32 faces.

Each ``row_<method>(ctx)`` returns ``(jaxplain_fn, peer_fn)``: zero-argument callables doing the
whole job for all faces (the peer as its users run it: pytorch-grad-cam and Captum on the
PyTorch twin of jaxplain's CNN, PAIR ``saliency`` with a torch ``call_model_function``, the RISE
authors' ``forward`` for RISE), so the lead can plug them into ``scripts/bench.py``'s harness.
:func:`main` times them here side by side, alternating rounds, steady state (each jaxplain
function is called once first to compile).

Sample counts are kept small (the rows' defaults: Shapley 4 orders, KernelSHAP 100 coalitions,
RISE 200 masks, XRAI 20 IG steps, Guided IG 30 steps, Blur IG 20 steps) so that a run of every row
takes minutes on a shared 2-core CPU; both sides always do the same work.

Usage: python scripts/bench_methods_b.py [--faces 32] [--reps 1] [--only NAME,...]
"""

from __future__ import annotations

import argparse
import dataclasses
import pathlib
import statistics
import sys
import time

import jax
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "tests"))
from _bench_common import classifier as _classifier  # noqa: E402
from bench_attribution import torch_twin  # noqa: E402
from _bench_common import twin_module  # noqa: E402

FACES, REPS = 32, 1


@dataclasses.dataclass
class Context:
  """What every row shares: the model on both sides, the faces, their superpixels."""

  clf: object
  twin: object
  layer: str
  module: object  # the twin's module for ``layer``
  x: np.ndarray  # (N, 48, 48, 1) float32
  t: np.ndarray  # (N,) int32
  segments: np.ndarray  # (N, 48, 48) LIME superpixels
  label: str

  @property
  def xt(self):
    import torch
    return torch.as_tensor(self.x.transpose(0, 3, 1, 2).copy())

  @property
  def tt(self):
    import torch
    return torch.as_tensor(self.t, dtype=torch.long)


def context(faces: int = FACES) -> Context:
  from torch_compat import import_torchvision
  import_torchvision()
  from jaxplain import data, lime
  from jaxplain.attribution import registry
  clf, label = _classifier()
  twin = torch_twin(clf)
  layer = registry.default_layer(clf)
  module = twin_module(twin, clf, layer)
  f = data.sample_faces()
  idx = np.resize(np.arange(len(f.images)), faces)
  x = data.to_float(f.images[idx]).astype(np.float32)
  return Context(clf, twin, layer, module, x, f.labels[idx].astype(np.int32),
                 lime.segment_faces(x), label)


def _grads_fn(ctx, target):
  """PAIR's call_model_function over torch autograd of the twin."""
  import saliency.core as saliency
  import torch

  def call(x_batch, call_model_args=None, expected_keys=None):
    xt = torch.as_tensor(np.asarray(x_batch, np.float32).transpose(0, 3, 1, 2).copy())
    xt.requires_grad_(True)
    out = ctx.twin(xt)[:, target].sum()
    (g,) = torch.autograd.grad(out, xt)
    return {saliency.INPUT_OUTPUT_GRADIENTS: g.numpy().transpose(0, 2, 3, 1)}
  return call


# ----------------------------------------------------------------------------------- CAMs


def _cam_row(name, cls, **peer_opts):
  def row(ctx):
    from jaxplain import attribution as A
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    fn = getattr(A, name)
    cam = cls(model=ctx.twin, target_layers=[ctx.module])
    for k, v in peer_opts.items():
      setattr(cam, k, v)
    targets = [ClassifierOutputTarget(int(c)) for c in ctx.t]
    return (lambda: fn(ctx.clf, ctx.x, ctx.t, layer=ctx.layer),
            lambda: cam(input_tensor=ctx.xt, targets=targets))
  row.__name__ = f"row_{name}"
  return row


def _cams():
  import pytorch_grad_cam as gc
  return {
      "grad_cam_plus_plus": _cam_row("grad_cam_plus_plus", gc.GradCAMPlusPlus),
      "xgrad_cam": _cam_row("xgrad_cam", gc.XGradCAM),
      "hires_cam": _cam_row("hires_cam", gc.HiResCAM),
      "layer_cam": _cam_row("layer_cam", gc.LayerCAM),
      "eigen_cam": _cam_row("eigen_cam", gc.EigenCAM),
      "score_cam": _cam_row("score_cam", gc.ScoreCAM, batch_size=64),
      "ablation_cam": _cam_row("ablation_cam", gc.AblationCAM, batch_size=64),
  }


# ---------------------------------------------------------------------------- perturbation


def row_feature_ablation(ctx):
  from captum.attr import FeatureAblation
  from jaxplain import attribution as A
  import torch
  mask = torch.as_tensor(ctx.segments[:, None].astype(np.int64))
  return (lambda: A.feature_ablation(ctx.clf.forward, ctx.x, ctx.t, feature_mask=ctx.segments),
          lambda: FeatureAblation(ctx.twin).attribute(ctx.xt, target=ctx.tt, feature_mask=mask,
                                                      perturbations_per_eval=16))


def row_shapley_value_sampling(ctx, samples=4):
  from captum.attr import ShapleyValueSampling
  from jaxplain import attribution as A
  import torch
  mask = torch.as_tensor(ctx.segments[:, None].astype(np.int64))
  key = jax.random.key(0)
  return (lambda: A.shapley_value_sampling(ctx.clf.forward, ctx.x, ctx.t, key=key,
                                           feature_mask=ctx.segments, samples=samples),
          lambda: ShapleyValueSampling(ctx.twin).attribute(
              ctx.xt, target=ctx.tt, feature_mask=mask, n_samples=samples,
              perturbations_per_eval=16))


def row_kernel_shap(ctx, samples=100):
  import warnings
  from captum.attr import KernelShap
  from jaxplain import attribution as A
  import torch
  mask = torch.as_tensor(ctx.segments[:, None].astype(np.int64))
  key = jax.random.key(0)

  def peer():
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")
      return KernelShap(ctx.twin).attribute(ctx.xt, target=ctx.tt, feature_mask=mask,
                                            n_samples=samples, perturbations_per_eval=64)
  return (lambda: A.kernel_shap(ctx.clf.forward, ctx.x, ctx.t, key=key,
                                feature_mask=ctx.segments, samples=samples), peer)


def row_rise(ctx, samples=200):
  """vs the RISE authors' ``forward`` (eclique/RISE, one image at a time, gpu_batch 100)."""
  from jaxplain import attribution as A
  import torch
  key = jax.random.key(0)
  masks = A.rise_masks(key, samples, (48, 48))
  mt = torch.as_tensor(np.array(masks))

  def peer():
    out = []
    with torch.no_grad():
      for xi, ti in zip(ctx.xt, ctx.t):
        stack = torch.mul(mt[:, None], xi)
        p = torch.cat([torch.softmax(ctx.twin(stack[i:i + 100]), 1)
                       for i in range(0, samples, 100)])
        sal = torch.matmul(p.transpose(0, 1), mt.view(samples, -1)) / samples / 0.5
        out.append(sal[ti])
    return out
  return (lambda: A.rise(ctx.clf.forward, ctx.x, ctx.t, key=None, masks=masks), peer)


# ------------------------------------------------------------------------------------ PAIR


def row_xrai(ctx, steps=20):
  import saliency.core as saliency
  from jaxplain import attribution as A
  params = saliency.XRAIParameters(steps=steps)

  def ours():
    return A.xrai(ctx.clf.forward, ctx.x, ctx.t, steps=steps)  # segments included

  def peer():
    return [saliency.XRAI().GetMask(xi, _grads_fn(ctx, int(ti)), batch_size=steps,
                                    extra_parameters=params) for xi, ti in zip(ctx.x, ctx.t)]
  return ours, peer


def row_guided_ig(ctx, steps=30):
  import saliency.core as saliency
  quantile = np.quantile  # PAIR passes interpolation=, removed in NumPy 2

  def numpy2_quantile(a, q, *args, interpolation=None, **kwargs):
    return quantile(a, q, *args, **({"method": interpolation} if interpolation else {}), **kwargs)
  np.quantile = numpy2_quantile
  from jaxplain import attribution as A
  return (lambda: A.guided_ig(ctx.clf.forward, ctx.x, ctx.t, steps=steps),
          lambda: [saliency.GuidedIG().GetMask(xi, _grads_fn(ctx, int(ti)), x_steps=steps)
                   for xi, ti in zip(ctx.x, ctx.t)])


def row_blur_ig(ctx, steps=20, max_sigma=10.0):
  import saliency.core as saliency
  from jaxplain import attribution as A
  return (lambda: A.blur_ig(ctx.clf.forward, ctx.x, ctx.t, steps=steps, max_sigma=max_sigma),
          lambda: [saliency.BlurIG().GetMask(xi, _grads_fn(ctx, int(ti)), steps=steps,
                                             max_sigma=max_sigma, batch_size=steps)
                   for xi, ti in zip(ctx.x, ctx.t)])


def rows():
  """Every row, by method name."""
  out = dict(_cams())
  out.update(feature_ablation=row_feature_ablation,
             shapley_value_sampling=row_shapley_value_sampling, kernel_shap=row_kernel_shap,
             rise=row_rise, xrai=row_xrai, guided_ig=row_guided_ig, blur_ig=row_blur_ig)
  return out


def _time(fn):
  t0 = time.perf_counter()
  jax.block_until_ready(fn())
  return time.perf_counter() - t0


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--faces", type=int, default=FACES)
  p.add_argument("--reps", type=int, default=REPS)
  p.add_argument("--only", default="", help="comma-separated method names")
  args = p.parse_args(argv)
  import torch
  ctx = context(args.faces)
  chosen = [n for n in args.only.split(",") if n] or list(rows())
  with torch.no_grad():  # torch's one-time start-up is not the first row's cost
    ctx.twin(ctx.xt)
  print(f"{ctx.label}, layer {ctx.layer}, {args.faces} faces, torch threads "
        f"{torch.get_num_threads()}, jax {jax.devices()[0].platform}", flush=True)
  for name in chosen:
    ours, peer = rows()[name](ctx)
    first = _time(ours)
    ts_ours, ts_peer = [], []
    for _ in range(args.reps):  # alternate, so load changes hit both sides alike
      ts_ours.append(_time(ours))
      ts_peer.append(_time(peer))
    o, r = statistics.median(ts_ours), statistics.median(ts_peer)
    print(f"{name:24s} jaxplain {o:8.2f} s  reference {r:8.2f} s  ratio {r / o:6.2f}x  "
          f"(compile {max(first - o, 0):.1f} s)", flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
