"""How much more an optimised image activates its filter than the best of 1,000 real faces.

For each requested filter of each requested layer: the filter's activation (channel mean, or the
unit of a dense layer) on its gradient-ascent image (``maximize_filters`` with its defaults
unless options are given), on the random start of that ascent, and on the most activating of the
first ``--faces`` PublicTest faces of FER2013; the ratio optimised / best face (only where the
best face's activation is > 0: a layer before its ReLU can have a negative best, and then only
"beats" means something). Prints one row per filter (single layer) or one summary row per layer
(min / median / max ratio) as a Markdown table, and writes everything to a JSON file.

  # the README table: every layer of the shipped CNN and of the converted reference NetworkV2,
  # 3 random filters per layer, plus every filter of the layers that once failed
  python scripts/filter_ratios.py --model shipped,network_v2 --layers all --per-layer 3 \
      --also shipped:conv1_1=all --also network_v2:conv_2.3=all --also network_v2:linear.1=217
  # one layer, every filter
  python scripts/filter_ratios.py --layers conv3_2 --filters 0:128
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time
import zlib

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
  """The optimised, start and best-real activations of ``filters`` of ``layer``, and ratios."""
  from jaxplain import feature_vis
  filters = [int(f) for f in filters]
  t0 = time.perf_counter()
  best, best_index = best_real_activation(clf, layer, images_u8)
  t_real = time.perf_counter() - t0
  t0 = time.perf_counter()
  vis = feature_vis.maximize_filters(clf, layer, filters, key=key, progress=progress, **options)
  t_ascent = time.perf_counter() - t0
  index = (np.arange(len(filters)), np.asarray(filters))
  final = np.asarray(feature_vis.channel_activation(clf, vis.images, layer))[index]
  start = np.asarray(feature_vis.channel_activation(clf, vis.start_images, layer))[index]
  flat = images_u8.reshape(len(images_u8), -1)
  constant = flat.min(1) == flat.max(1)  # FER2013 holds blank (all-black) images
  rows = []
  for i, f in enumerate(filters):
    rows.append({"filter": f, "start": float(start[i]), "optimised": float(final[i]),
                 "best_real": float(best[f]), "best_real_face": int(best_index[f]),
                 "best_face_constant": bool(constant[best_index[f]]),
                 "beats": bool(final[i] > best[f]),
                 "ratio_real": float(final[i] / best[f]) if best[f] > 0 else None})
  ratios = np.array([r["ratio_real"] for r in rows if r["ratio_real"] is not None])
  # A tie: the ascent reached the best face's value exactly. With a constant face (a blank black
  # FER2013 image for a first-layer dark detector) that face is itself the maximiser
  # (tests/test_feature_vis.py proves it from the weights); otherwise the layer saturates (a
  # sigmoid at exactly 1.0 in float32).
  tie = [not r["beats"] and r["best_real"] > 0
         and abs(r["optimised"] - r["best_real"]) <= 1e-6 * r["best_real"] for r in rows]
  summary = {"filters": len(rows), "beats": int(sum(r["beats"] for r in rows)),
             "ties": int(sum(tie)),
             "ties_constant_face": int(sum(t and r["best_face_constant"]
                                           for t, r in zip(tie, rows))),
             "with_ratio": int(ratios.size)}
  if ratios.size:
    summary.update(ratio_real_min=float(ratios.min()), ratio_real_median=float(np.median(ratios)),
                   ratio_real_max=float(ratios.max()))
  return {"layer": layer, "shape": list(feature_vis.check_layer(clf, layer)),
          "faces": int(len(images_u8)), "options": options,
          "seconds": {"real_faces": t_real, "ascent": t_ascent}, "summary": summary,
          "filters": rows, "images": np.asarray(vis.images)}


def _load(model: str, checkpoint: str):
  from jaxplain import load_classifier
  if model == "shipped":
    return load_classifier(checkpoint)
  if model == "network_v2":
    sys.path.insert(0, str(ROOT / "tests"))
    import reference_models
    return reference_models.network_v2()[1]
  raise SystemExit(f"--model: expected 'shipped' or 'network_v2', got {model!r}")


def _fmt(v) -> str:
  return "n/a" if v is None else f"{v:.2f}"


def main(argv=None) -> int:
  from tqdm.auto import tqdm

  from jaxplain import data, feature_vis
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--model", default="shipped",
                 help="comma list of 'shipped' (--checkpoint) and 'network_v2' (the converted "
                      "reference PyTorch CNN, fetched by scripts/fetch_reference_models.py)")
  p.add_argument("--checkpoint", default=str(ROOT / "checkpoints/fer2013_cnn"))
  p.add_argument("--csv", default=str(CSV), help="Kaggle FER2013 CSV (PublicTest rows used)")
  p.add_argument("--faces", type=int, default=1000)
  p.add_argument("--layers", help="comma list, or 'all' (every layer); default: a middle conv "
                                  "layer")
  p.add_argument("--filters", default="all", help="slice (0:64) or list (1,5,9)")
  p.add_argument("--per-layer", type=int, default=0,
                 help="instead of --filters: this many filters per layer, drawn at random")
  p.add_argument("--also", action="append", default=[], metavar="[MODEL:]LAYER=FILTERS",
                 help="more filters of one layer, added to --per-layer's draw (repeatable), "
                      "e.g. network_v2:linear.1=217 or shipped:conv1_1=all")
  p.add_argument("--steps", type=int, help="default: maximize_activation's")
  p.add_argument("--jitter", type=int, help="default: maximize_activation's")
  p.add_argument("--polish-steps", type=int, help="default: maximize_activation's")
  p.add_argument("--filters-per-batch", type=int, default=32)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--json", default="filter_ratios.json")
  args = p.parse_args(argv)

  images = data.load_csv(args.csv, usage="PublicTest").images[:args.faces]
  options = {k: v for k, v in (("steps", args.steps), ("jitter", args.jitter),
                               ("polish_steps", args.polish_steps)) if v is not None}
  also = {}
  for item in args.also:
    where, _, picked = item.rpartition("=")
    model, _, layer = where.rpartition(":")
    also.setdefault((model or None, layer), []).append(picked)
  results = []
  for model in args.model.split(","):
    clf = _load(model.strip(), args.checkpoint)
    if args.layers == "all":
      layers = list(clf.layer_names)
    else:
      layers = args.layers.split(",") if args.layers else [feature_vis.default_layer(clf)]
    for layer in layers:
      count = feature_vis.filter_count(clf, layer)
      if args.per_layer:  # the same draw for a layer whatever else is run
        rng = np.random.default_rng([args.seed, zlib.crc32(f"{model}:{layer}".encode())])
        filters = rng.choice(count, min(args.per_layer, count), replace=False).tolist()
      else:
        filters = feature_vis.parse_filters(args.filters, count)
      for text in also.get((model, layer), []) + also.get((None, layer), []):
        filters += feature_vis.parse_filters(text, count)
      filters = sorted(set(filters))
      with tqdm(total=len(filters), desc=f"{model} {layer}", unit="filter",
                file=sys.stderr) as bar:
        r = measure(clf, layer, filters, images, key=jax.random.key(args.seed),
                    progress=bar.update, filters_per_batch=args.filters_per_batch, **options)
      r.pop("images")
      r["model"] = model
      results.append(r)
      s = r["summary"]
      print(f"{model} {layer}: beats the best face on {s['beats']}/{s['filters']} filters, "
            f"ratio min {_fmt(s.get('ratio_real_min'))} median "
            f"{_fmt(s.get('ratio_real_median'))} ({r['seconds']['ascent']:.0f}s)",
            file=sys.stderr, flush=True)
      pathlib.Path(args.json).write_text(json.dumps(results, indent=1))  # partial results too

  print(f"\nActivation of each filter's optimised image / its best over {len(images)} "
        f"PublicTest faces (options: {options or 'defaults'}; device {jax.devices()[0]})\n")
  if len(results) == 1:
    print("| filter | start | optimised | best face | × best face |\n|---:|---:|---:|---:|---:|")
    for row in results[0]["filters"]:
      print(f"| {row['filter']} | {row['start']:.3g} | {row['optimised']:.3g} | "
            f"{row['best_real']:.3g} | {_fmt(row['ratio_real'])} |")
  print("| model | layer | shape | filters | beat best face | min | median | max |\n"
        "|---|---|---|---:|---:|---:|---:|---:|")
  for r in results:
    s = r["summary"]
    ties = f" (+{s['ties']} tie{'s' * (s['ties'] > 1)})" if s.get("ties") else ""
    print(f"| {r['model']} | {r['layer']} | {'×'.join(map(str, r['shape']))} | {s['filters']} | "
          f"{s['beats']}/{s['filters']}{ties} | {_fmt(s.get('ratio_real_min'))} | "
          f"{_fmt(s.get('ratio_real_median'))} | {_fmt(s.get('ratio_real_max'))} |")
  pathlib.Path(args.json).write_text(json.dumps(results, indent=1))
  print(f"wrote {args.json}", file=sys.stderr)
  return 0


if __name__ == "__main__":
  sys.exit(main())
