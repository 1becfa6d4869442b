"""Benchmark rows: the shipped CNN's forward and gradient attributions against PyTorch/Captum.

The FER2013 CNN (the trained checkpoint when present, else the same architecture with random
weights) in jaxplain and as a PyTorch twin with the same weights (``_bench_common.torch_twin``),
on bundled faces. Peers: the twin's forward under ``torch.no_grad``, Captum ``Saliency``,
``IntegratedGradients`` (50 Gauss-Legendre steps, as jaxplain), ``NoiseTunnel(Saliency)``
(SmoothGrad) and ``GuidedBackprop``.

Chunk sizes (``--rows 'chunk*'`` reruns the sweeps): jaxplain's gradient methods over many faces
go through ``attribute_many`` in chunks of :data:`IMAGES_PER_BATCH` faces, IG evaluates
:data:`IG_BATCH` path points at a time. On the 2-core CPU (loaded, 2026-11-27) saliency cost
16-19 ms/image for chunks of 16 to 256 faces and 23 ms/image for 8: 32 is within 10% of the
best and keeps memory small.

    python scripts/bench.py --modules attribution [--quick]
"""

from __future__ import annotations

import functools

import jax
import numpy as np
from _bench_common import Workload, classifier, faces, jax_on_gpu, row, to_torch, torch_twin
from _bench_common import torch_device as xt_device

# Chunk sizes from the sweep rows (module docstring); a GPU wants whole batches.
IMAGES_PER_BATCH = 256 if jax_on_gpu() else 32  # attribute_many's chunk (gradient methods)
IG_BATCH = 50 if jax_on_gpu() else 10  # IG path points per chunk at N=32
CAPTUM_IG_BATCH = None  # Captum's internal_batch_size: all points at once


@functools.cache
def _setup():
  import captum
  clf, what = classifier()
  return clf, what, torch_twin(clf), f"captum {captum.__version__}"


def _inputs(n):
  import torch
  x, t = faces(n)
  tt = torch.as_tensor(t, dtype=torch.long).to(xt_device())
  return jax.device_put(x), jax.device_put(t), to_torch(x), tt


def _attribute(clf, method, x, t, **options):
  from jaxplain import attribution
  if len(x) <= IMAGES_PER_BATCH:
    return attribution.attribute(clf, x, t, method=method, **options)
  return attribution.attribute_many(clf, np.asarray(x), np.asarray(t), method=method,
                                    images_per_batch=IMAGES_PER_BATCH, **options)


@row("forward CNN N=256")
def _forward(quick):
  import torch
  clf, what, twin, _ = _setup()
  n = 64 if quick else 256
  xj, _, xt, _ = _inputs(n)
  fwd = jax.jit(lambda f, x: f(x))

  def peer():
    with torch.no_grad():
      return twin(xt)
  return Workload(lambda: fwd(clf.forward, xj), peer, f"torch {torch.__version__} no_grad",
                  n, f"{what}; {n} faces, one call each")


def _gradient_row(name, captum_class, n):
  """A row for a gradient method that Captum computes as ``captum_class(model).attribute``."""
  def build(quick):
    import captum.attr
    clf, what, twin, peer_name = _setup()
    m = min(n, 64) if quick else n
    xj, tj, xt, tt = _inputs(m)
    peer = getattr(captum.attr, captum_class)(twin)
    return Workload(lambda: _attribute(clf, name, xj, tj),
                    lambda: peer.attribute(xt.clone().requires_grad_(), target=tt),
                    peer_name, m, f"{what}; {m} faces, jaxplain chunks of "
                    f"{min(m, IMAGES_PER_BATCH)}")
  return build


row("saliency N=32")(_gradient_row("saliency", "Saliency", 32))
row("saliency N=256")(_gradient_row("saliency", "Saliency", 256))


@row("integrated_gradients 50 steps N=32")
def _ig(quick):
  from captum.attr import IntegratedGradients
  clf, what, twin, peer_name = _setup()
  n, steps = (8, 10) if quick else (32, 50)
  xj, tj, xt, tt = _inputs(n)
  return Workload(
      lambda: _attribute(clf, "integrated_gradients", xj, tj, steps=steps, batch_size=IG_BATCH),
      lambda: IntegratedGradients(twin).attribute(xt, target=tt, n_steps=steps,
                                                  internal_batch_size=CAPTUM_IG_BATCH),
      peer_name, n, f"{what}; {n} faces x {steps} steps, gausslegendre both; jaxplain "
      f"batch_size={IG_BATCH}, Captum "
      f"internal_batch_size={CAPTUM_IG_BATCH}")


def _smoothgrad_row(n):
  def build(quick):
    from captum.attr import NoiseTunnel, Saliency
    clf, what, twin, peer_name = _setup()
    samples = 10
    xj, tj, xt, tt = _inputs(8 if quick else n)
    key = jax.random.key(0)
    return Workload(
        lambda: _attribute(clf, "smoothgrad", xj, tj, key=key, samples=samples, stdev=0.15),
        lambda: NoiseTunnel(Saliency(twin)).attribute(
            xt.clone().requires_grad_(), target=tt, nt_type="smoothgrad", nt_samples=samples,
            stdevs=0.15),
        peer_name, len(xt), f"{what}; {samples} noisy copies, stdev 0.15")
  return build


row("smoothgrad 10 samples N=32")(_smoothgrad_row(32))


row("guided_backprop N=32")(_gradient_row("guided_backprop", "GuidedBackprop", 32))
row("guided_backprop N=256")(_gradient_row("guided_backprop", "GuidedBackprop", 256))


# Sweeps (run with --rows 'chunk*'): per-image cost against the chunk size, peer fixed.

def _chunk_row(size):
  def build(quick):
    from captum.attr import Saliency
    from jaxplain import attribution
    clf, what, twin, peer_name = _setup()
    n = 256
    xj, tj, xt, tt = _inputs(n)
    x, t = np.asarray(xj), np.asarray(tj)
    return Workload(
        lambda: attribution.attribute_many(clf, x, t, method="saliency", images_per_batch=size),
        lambda: Saliency(twin).attribute(xt.clone().requires_grad_(), target=tt),
        peer_name, n, f"{what}; jaxplain images_per_batch={size}, Captum all 256 at once")
  return build


for _size in (8, 16, 32, 64, 128, 256):
  row(f"chunk saliency N=256 images_per_batch={_size}", extra=True)(_chunk_row(_size))


def _ig_chunk_row(size):
  def build(quick):
    from captum.attr import IntegratedGradients
    clf, what, twin, peer_name = _setup()
    xj, tj, xt, tt = _inputs(32)
    return Workload(
        lambda: _attribute(clf, "integrated_gradients", xj, tj, steps=50, batch_size=size),
        lambda: IntegratedGradients(twin).attribute(xt, target=tt, n_steps=50,
                                                    internal_batch_size=size * 32),
        peer_name, 32, f"{what}; both {size} path points x 32 images per pass")
  return build


for _size in (2, 5, 10, 25, 50):
  row(f"chunk integrated_gradients N=32 batch_size={_size}", extra=True)(_ig_chunk_row(_size))


@row("integrated_gradients 50 steps N=32 host loop", extra=True)
def _ig_host_loop(quick):
  """IG as jit-compiled path chunks called from a Python loop, not a ``lax.scan`` over them.

  A diagnostic: on XLA:CPU a gradient pass inside a scan body ran 2-3x slower than the same
  pass as its own jit call, so this is what IG costs without the scan.
  """
  import jax.numpy as jnp
  from captum.attr import IntegratedGradients

  from jaxplain.attribution._common import target_grad
  from jaxplain.attribution.integrated_gradients import approximation
  clf, what, twin, peer_name = _setup()
  n, steps = (8, 10) if quick else (32, 50)
  xj, tj, xt, tt = _inputs(n)
  alphas, weights = approximation("gausslegendre", steps)
  size = min(IG_BATCH, steps)
  pad = -steps % size
  a = np.concatenate([alphas, np.ones(pad)]).reshape(-1, size).astype(np.float32)
  w = np.concatenate([weights, np.zeros(pad)]).reshape(-1, size).astype(np.float32)

  @jax.jit
  def chunk(forward, x, t, a, w):
    g = jax.vmap(lambda s: target_grad(forward, s * x, t))(a)
    return jnp.sum(w.reshape(-1, 1, 1, 1, 1) * g, axis=0)

  def ours():
    total = sum(chunk(clf.forward, xj, tj, a[i], w[i]) for i in range(len(a)))
    return xj * total
  return Workload(ours, lambda: IntegratedGradients(twin).attribute(xt, target=tt, n_steps=steps),
                  peer_name, n, f"{what}; {n} faces x {steps} steps, host loop over chunks of "
                  f"{size} path points")
