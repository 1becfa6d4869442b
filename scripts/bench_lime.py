"""Benchmark: jaxplain.lime.lime_batch against the lime package's LimeImageExplainer.

Both explain the same N faces with the same classifier, segments (jaxplain.lime.segment_face),
num_samples and label. The lime package gets jaxplain.lime.classifier_fn (one jitted forward over
fixed-size chunks), its best case; lime's per-sample NumPy perturbation loop and its sklearn
regressions are what remain on its side. Steady-state seconds exclude compilation (first call);
compile time is reported separately.

Usage: python scripts/bench_lime.py [--images N] [--samples S]
"""

from __future__ import annotations

import argparse
import sys
import time

import jax
import numpy as np
from _bench_common import classifier as _classifier, median_seconds

IMAGES = 4
SAMPLES = 250





def _time(fn, repeats: int = 2) -> tuple[float, float]:
  """(first call seconds, median steady-state seconds)."""
  t0 = time.perf_counter()
  jax.block_until_ready(fn())
  return time.perf_counter() - t0, median_seconds(fn, repeats)


def _small_classifier():
  """A small CNN whose forward is cheap, so LIME's own machinery dominates the timing."""
  from jaxplain import models
  model = models.CNN(widths=(8, 16), depths=(1, 1), hidden=16)
  variables = model.init(jax.random.key(0), np.zeros((1, 48, 48, 1), np.float32))
  return models.classifier(model, variables), "small random CNN (8-16 channels)"


def run(report, *, num_images: int = IMAGES, num_samples: int = SAMPLES) -> None:
  import lime.lime_image as lime_image

  from jaxplain import data
  from jaxplain import lime as jl

  lime_image.tqdm = lambda it, **kwargs: it  # no progress bar on lime's side (makes it faster)
  faces = data.sample_faces()
  images = data.to_float(faces.images[np.linspace(0, len(faces) - 1, num_images).astype(int)])
  segments = jl.segment_faces(images)
  key = jax.random.key(0)

  for clf, kind in (_classifier(), _small_classifier()):
    target = np.asarray(clf.predict(images).argmax(-1), np.int32)

    def ours(clf=clf, target=target):
      return jl.lime_batch(clf.forward, images, target, segments, key=key,
                           num_samples=num_samples, max_segments=64).weights

    fn = jl.classifier_fn(clf, batch_size=256)

    def peer(batch_size, fn=fn, target=target):
      def go():
        for i, image in enumerate(images):
          explainer = lime_image.LimeImageExplainer(random_state=i)
          explainer.explain_instance(image[..., 0], fn, labels=(int(target[i]),),
                                     top_labels=None, num_samples=num_samples,
                                     batch_size=batch_size,
                                     segmentation_fn=lambda _, s=segments[i]: s)
      return go

    first, steady = _time(ours, repeats=1)
    _, lime_steady = _time(peer(num_samples), repeats=1)
    note = (f"{num_images} faces x {num_samples} samples, {kind}, "
            f"{jax.devices()[0].platform}; lime gets jaxplain's batched classifier_fn")
    report(f"lime_batch vs lime, {kind}", steady, lime_steady, first - steady, note)
    if kind.startswith("small"):
      _, lime10 = _time(peer(10), repeats=1)
      report(f"lime_batch vs lime (lime's default batch_size=10), {kind}", steady, lime10,
             first - steady, note)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--images", type=int, default=IMAGES)
  p.add_argument("--samples", type=int, default=SAMPLES)
  args = p.parse_args(argv)

  def report(name, ours_s, peer_s, compile_s, note):
    print(f"{name}: ours {ours_s:.3f}s  peer {peer_s:.3f}s  ratio {peer_s / ours_s:.1f}x  "
          f"(compile {compile_s:.2f}s; {note})", flush=True)

  run(report, num_images=args.images, num_samples=args.samples)
  return 0


if __name__ == "__main__":
  sys.exit(main())
