"""Benchmark row: jaxplain.lime.lime_batch against the lime package's LimeImageExplainer.

Both explain the same faces with the same classifier (the FER2013 CNN), segments
(``jaxplain.lime.segment_faces``), ``num_samples`` and label. The lime package gets
``jaxplain.lime.classifier_fn`` (one jitted forward over fixed-size chunks) and its best
``batch_size`` (:data:`LIME_BATCH`, from the ``--rows 'lime batch_size*'`` sweep), its best case:
lime's per-sample NumPy perturbation loop and its sklearn regressions are what remain on its side.

    python scripts/bench.py --modules lime [--quick]
"""

from __future__ import annotations

import functools

import jax
import numpy as np
from _bench_common import Workload, classifier, row

IMAGES, SAMPLES = 64, 1000
QUICK_IMAGES, QUICK_SAMPLES = 4, 250
LIME_BATCH = 1000  # lime's batch_size: all samples in one classifier_fn call was its fastest


@functools.cache
def _setup(quick):
  import lime.lime_image as lime_image

  from jaxplain import data
  from jaxplain import lime as jl
  lime_image.tqdm = lambda it, **kwargs: it  # no progress bar on lime's side (makes it faster)
  clf, what = classifier()
  n, samples = (QUICK_IMAGES, QUICK_SAMPLES) if quick else (IMAGES, SAMPLES)
  sample = data.sample_faces()
  images = np.resize(data.to_float(sample.images), (n, 48, 48, 1)).astype(np.float32)
  segments = jl.segment_faces(images)
  target = np.asarray(clf.predict(images).argmax(-1), np.int32)
  return clf, what, images, segments, target, samples


def _workload(quick, lime_batch):
  import lime
  import lime.lime_image as lime_image

  from jaxplain import lime as jl
  clf, what, images, segments, target, samples = _setup(quick)
  key = jax.random.key(0)
  fn = jl.classifier_fn(clf, batch_size=256)

  def ours():
    return jl.lime_batch(clf.forward, images, target, segments, key=key, num_samples=samples,
                         max_segments=64).weights

  def peer():
    for i, image in enumerate(images):
      explainer = lime_image.LimeImageExplainer(random_state=i)
      explainer.explain_instance(image[..., 0], fn, labels=(int(target[i]),), top_labels=None,
                                 num_samples=samples, batch_size=min(lime_batch, samples),
                                 segmentation_fn=lambda _, s=segments[i]: s)
  version = getattr(lime, "__version__", "0.2.0.1")
  return Workload(ours, peer, f"lime {version} batch_size={min(lime_batch, samples)}, "
                  "jaxplain's classifier_fn", len(images),
                  f"{what}; {len(images)} faces x {samples} samples", max_rounds=2)


@row("lime 64 faces x 1000 samples")
def _lime(quick):
  return _workload(quick, LIME_BATCH)


def _sweep(size):
  return lambda quick: _workload(quick, size)


for _size in (10, 100, 1000):
  row(f"lime batch_size={_size}", extra=True)(_sweep(_size))
