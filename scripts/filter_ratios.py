"""How much more an optimised image activates its filter than the best of 1,000 real faces.

For each filter of a layer: the filter's activation (channel mean) on its gradient-ascent image,
on the random start of that ascent, and on the most activating of the first ``--faces``
PublicTest faces of FER2013; the two ratios; a table on stdout and a JSON file.

  python scripts/filter_ratios.py --checkpoint checkpoints/fer2013_cnn --layer conv3_2 \\
      --filters 0:128 --json filter_ratios.json
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

import jax
import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
CSV = ROOT.parent / "shared/data/fer2013/fer2013_train_public.csv.gz"


def best_real_activation(clf, layer, images_u8, *, batch_size: int = 250):
  """``(channels,)`` max over faces of each channel's mean activation, and the argmax face."""
  from jaxplain import data, feature_vis
  scores = np.concatenate([
      np.asarray(feature_vis.channel_activation(clf, data.to_float(images_u8[i:i + batch_size]),
                                                layer))
      for i in range(0, len(images_u8), batch_size)])
  return scores.max(0), scores.argmax(0)


def measure(clf, layer, filters, images_u8, *, key, progress=None, **options) -> dict:
  from jaxplain import feature_vis
  t0 = time.perf_counter()
  best, best_index = best_real_activation(clf, layer, images_u8)
  t_real = time.perf_counter() - t0
  t0 = time.perf_counter()
  vis = feature_vis.maximize_filters(clf, layer, filters, key=key, progress=progress, **options)
  t_ascent = time.perf_counter() - t0
  index = (np.arange(len(filters)), np.asarray(filters))
  final = np.asarray(feature_vis.channel_activation(clf, vis.images, layer))[index]
  start = np.asarray(feature_vis.channel_activation(clf, vis.start_images, layer))[index]
  rows = []
  for i, f in enumerate(filters):
    rows.append({"filter": int(f), "start": float(start[i]), "optimised": float(final[i]),
                 "best_real": float(best[f]), "best_real_face": int(best_index[f]),
                 "ratio_real": float(final[i] / best[f]) if best[f] > 0 else float("inf"),
                 "ratio_start": float(final[i] / start[i]) if start[i] > 0 else float("inf")})
  ratios = np.array([r["ratio_real"] for r in rows])
  return {"layer": layer, "faces": int(len(images_u8)), "options": options,
          "seconds": {"real_faces": t_real, "ascent": t_ascent},
          "summary": {"filters": len(rows), "ratio_real_gt_1": int((ratios > 1).sum()),
                      "ratio_real_min": float(ratios.min()),
                      "ratio_real_median": float(np.median(ratios)),
                      "ratio_real_max": float(ratios.max())},
          "filters": rows}


def main(argv=None) -> int:
  from tqdm.auto import tqdm

  from jaxplain import data, feature_vis, load_classifier
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--checkpoint", default=str(ROOT / "checkpoints/fer2013_cnn"))
  p.add_argument("--csv", default=str(CSV), help="Kaggle FER2013 CSV (PublicTest rows used)")
  p.add_argument("--faces", type=int, default=1000)
  p.add_argument("--layer", help="default: a middle conv layer")
  p.add_argument("--filters", default="all", help="slice (0:64) or list (1,5,9)")
  p.add_argument("--steps", type=int, default=256)
  p.add_argument("--fourier", action=argparse.BooleanOptionalAction, default=True)
  p.add_argument("--jitter", type=int, default=1)
  p.add_argument("--tv", type=float, default=0.0)
  p.add_argument("--l2", type=float, default=0.0)
  p.add_argument("--blur-every", type=int, default=0)
  p.add_argument("--chunk", type=int, default=32)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--json", default="filter_ratios.json")
  args = p.parse_args(argv)

  clf = load_classifier(args.checkpoint)
  layer = args.layer or feature_vis.default_layer(clf)
  filters = feature_vis.parse_filters(args.filters, feature_vis.filter_count(clf, layer))
  faces = data.load_csv(args.csv, usage="PublicTest")
  images = faces.images[:args.faces]
  options = dict(steps=args.steps, fourier=args.fourier, jitter=args.jitter, tv=args.tv,
                 l2=args.l2, blur_every=args.blur_every, chunk=args.chunk)
  with tqdm(total=len(filters), desc=f"ascent on {layer}", unit="filter", file=sys.stderr) as bar:
    result = measure(clf, layer, filters, images, key=jax.random.key(args.seed),
                     progress=bar.update, **options)
  result["checkpoint"] = str(args.checkpoint)
  result["device"] = str(jax.devices()[0])
  print(f"{layer}: activation (channel mean) of the optimised image vs its random start and vs "
        f"the best of {len(images)} PublicTest faces")
  print(f"{'filter':>6} {'start':>9} {'optimised':>10} {'best face':>10} {'x best face':>11} "
        f"{'x start':>9}")
  for r in result["filters"]:
    print(f"{r['filter']:>6} {r['start']:>9.3g} {r['optimised']:>10.3g} {r['best_real']:>10.3g} "
          f"{r['ratio_real']:>11.2f} {r['ratio_start']:>9.3g}")
  s = result["summary"]
  print(f"ratio to the best real face > 1 for {s['ratio_real_gt_1']}/{s['filters']} filters; "
        f"min {s['ratio_real_min']:.2f}, median {s['ratio_real_median']:.2f}, "
        f"max {s['ratio_real_max']:.2f} ({result['seconds']['ascent']:.0f}s of ascent on "
        f"{result['device']})")
  pathlib.Path(args.json).write_text(json.dumps(result, indent=1))
  print(f"wrote {args.json}", file=sys.stderr)
  return 0


if __name__ == "__main__":
  sys.exit(main())
