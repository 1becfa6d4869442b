"""The ``jaxplain`` command: argument parsing only; the work is in the library."""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import sys
import time

import numpy as np


def _log(message: str) -> None:
  print(message, file=sys.stderr, flush=True)


def _ints(text: str) -> tuple[int, ...]:
  return tuple(int(t) for t in text.split(",") if t.strip())


def _faces(args, *, default_split: str | None = None):
  """The faces named by ``--data/--split`` or ``--images``, else the bundled sample faces."""
  from jaxplain import data
  if getattr(args, "images", None):
    images = data.load_images(args.images)  # unlabelled: label -1
    return data.Faces(images, np.full(len(images), -1, np.int32), np.full(len(images), "user"),
                      source="--images")
  if getattr(args, "data", None):
    faces = data.load(args.data, skip_bad=getattr(args, "skip_bad", False))
    if faces.skipped:
      _log(f"skipped {faces.skipped} malformed rows of {args.data}")
    split = args.split if args.split is not None else default_split
    return faces.split(split if split not in ("", "all") else None)
  return data.sample_faces()


def _per_class(faces, clf, per_class: int):
  """The first ``per_class`` faces of each class (all faces for 0); errors when none remain."""
  if per_class:
    faces = faces.take(np.concatenate([np.flatnonzero(faces.labels == k)[:per_class]
                                       for k in range(clf.num_classes)]))
  if not len(faces):
    raise ValueError("no faces to explain")
  return faces


def _checkpoint(args):
  from jaxplain import checkpoint, shipped_checkpoint
  return checkpoint.load_classifier(args.checkpoint or shipped_checkpoint())


def cmd_train(args) -> int:
  from jaxplain import checkpoint, data, train
  model = {"widths": list(args.widths), "depths": list(args.depths), "hidden": args.hidden,
           "dropout": args.dropout}
  if args.init_from:  # the architecture is the saved one's
    saved = checkpoint.read_metadata(args.init_from).get("config", {})
    model = {k: saved.get(k, v) for k, v in model.items()}
  config = train.TrainConfig(
      epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.lr,
      weight_decay=args.weight_decay, label_smoothing=args.label_smoothing,
      class_weighting=args.class_weighting, seed=args.seed, model=model,
      init_from=str(pathlib.Path(args.init_from).absolute()) if args.init_from else "")
  t0 = time.time()
  faces = data.load(args.data, skip_bad=args.skip_bad)
  _log(f"read {len(faces)} faces from {args.data} in {time.time() - t0:.1f}s"
       + (f" ({faces.skipped} malformed rows skipped)" if faces.skipped else ""))
  train_set = faces.split(args.train_split)
  val_set = faces.split(args.val_split) if args.val_split else None
  clf = train.fit(train_set, val_set, config, run_dir=args.run_dir, resume=args.resume,
                  stop_after=args.stop_after, log=_log)
  if args.out:
    extra = {}
    if val_set is not None:
      ev = train.evaluate(clf, val_set.images, val_set.labels)
      extra["evaluation"] = {args.val_split: ev.to_json(clf.class_names)}
      print(ev.format(clf.class_names))
    extra["trained_on"] = {"file": pathlib.Path(args.data).name, "split": args.train_split,
                           "count": len(train_set)}
    path = checkpoint.save_classifier(clf, args.out, overwrite=True, extra=extra)
    _log(f"saved classifier to {path}")
  return 0


def cmd_evaluate(args) -> int:
  from jaxplain import train, viz
  clf = _checkpoint(args)
  faces = _faces(args, default_split="PublicTest")
  ev = train.evaluate(clf, faces.images, faces.labels)
  print(f"{faces.source}: {len(faces)} faces")
  print(ev.format(clf.class_names))
  if args.out:
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    viz.save(viz.confusion_figure(ev.confusion, clf.class_names, title=f"accuracy "
                                  f"{ev.accuracy:.3f} on {len(faces)} faces"),
             out / "confusion_matrix.png")
    (out / "evaluation.json").write_text(json.dumps(ev.to_json(clf.class_names), indent=1))
    _log(f"wrote {out / 'confusion_matrix.png'} and {out / 'evaluation.json'}")
  return 0


def cmd_lime(args) -> int:
  import jax
  from tqdm.auto import tqdm

  from jaxplain import data, lime, train, viz
  clf = _checkpoint(args)
  faces = _faces(args, default_split="PublicTest")
  known = len(faces) > 0 and bool((faces.labels >= 0).all())
  ev = train.evaluate(clf, faces.images, faces.labels) if known else None
  faces = _per_class(faces, clf, args.per_class if known else 0)
  images = data.to_float(faces.images)
  probabilities = np.asarray(jax.nn.softmax(clf.predict(images), axis=-1))
  targets = faces.labels if args.target == "true" and known else probabilities.argmax(-1)
  segments = lime.segment_faces(images, n_segments=args.n_segments,
                                compactness=args.compactness)
  with tqdm(total=len(images), desc="LIME", unit="face") as bar:
    result = lime.lime_many(clf, images, targets, segments, key=jax.random.key(args.seed),
                            num_samples=args.num_samples, images_per_call=args.images_per_call,
                            batch_size=args.batch_size, progress=bar.update)
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  np.savez_compressed(out / "lime.npz", segments=segments, targets=targets, labels=faces.labels,
                      probabilities=probabilities, **result._asdict())
  viz.save(viz.lime_class_figure(
      images, segments, result.weights, targets, clf.class_names,
      labels=faces.labels if known else None,
      probabilities=probabilities[np.arange(len(targets)), targets],
      per_class=None if ev is None else ev.per_class,
      confusion=None if ev is None else ev.confusion, num_features=args.num_features),
      out / "lime_classes.png")
  summary = {"faces": len(images), "source": faces.source, "num_samples": args.num_samples,
             "seed": args.seed, "target": args.target,
             "mean_score": float(np.mean(result.score)),
             "evaluation": None if ev is None else ev.to_json(clf.class_names)}
  (out / "lime.json").write_text(json.dumps(summary, indent=1))
  print(f"LIME on {len(images)} faces ({args.num_samples} samples each): mean R^2 of the local "
        f"models {summary['mean_score']:.3f}")
  _log(f"wrote {out / 'lime_classes.png'}, {out / 'lime.npz'} and {out / 'lime.json'}")
  return 0


def cmd_filters(args) -> int:
  import jax
  from tqdm.auto import tqdm

  from jaxplain import data, feature_vis, viz
  clf = _checkpoint(args)
  layer = args.layer or feature_vis.default_layer(clf)
  clf.check_layer(layer)
  filters = feature_vis.parse_filters(args.filters, feature_vis.filter_count(clf, layer))
  if args.image:
    face = data.load_images([args.image])[0]
  else:
    sample = data.sample_faces()
    face = sample.images[int(np.flatnonzero(sample.labels == 3)[0])]  # a happy face
  options = dict(steps=args.steps, fourier=args.fourier, jitter=args.jitter, tv=args.tv,
                 l2=args.l2, blur_every=args.blur_every, blur_sigma=args.blur_sigma,
                 pixel_range=args.pixel_range)
  with tqdm(total=len(filters), desc=f"gradient ascent on {layer}", unit="filter") as bar:
    vis = feature_vis.maximize_filters(clf, layer, filters, key=jax.random.key(args.seed),
                                       chunk=args.chunk, progress=bar.update, **options)
  index = (np.arange(len(filters)), np.asarray(filters))
  start = np.asarray(feature_vis.channel_activation(clf, vis.start_images, layer))[index]
  final = np.asarray(feature_vis.channel_activation(clf, vis.images, layer))[index]
  maps = np.asarray(feature_vis.activations(clf, data.to_float(face[None]), layer))[0]
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  viz.save(viz.filter_grid_figure(vis.images, filters, layer=layer), out / f"filters_{layer}.png")
  viz.save(viz.feature_maps_figure(face, maps[..., filters], filters, layer=layer),
           out / f"feature_maps_{layer}.png")
  np.savez_compressed(out / f"filters_{layer}.npz", filters=np.asarray(filters),
                      images=vis.images, trace=vis.trace, start_images=vis.start_images,
                      face=face, feature_maps=maps)
  summary = {"layer": layer, "filters": filters, "seed": args.seed, "options": options,
             "start_activation": start.tolist(), "final_activation": final.tolist()}
  (out / f"filters_{layer}.json").write_text(json.dumps(summary, indent=1))
  print(f"{layer}: {len(filters)} filters, mean activation {start.mean():.3g} at the random "
        f"start -> {final.mean():.3g} after {args.steps} steps")
  _log(f"wrote {out / f'filters_{layer}.png'}, {out / f'feature_maps_{layer}.png'}, "
       f"filters_{layer}.npz and filters_{layer}.json")
  return 0


def cmd_convert(args) -> int:

  from jaxplain import checkpoint, convert, data
  try:
    model_args = json.loads(args.model_args) if args.model_args else {}
  except json.JSONDecodeError as e:
    raise ValueError(f"--model-args is not JSON ({e}): {args.model_args!r}") from None
  cls = convert.import_class(args.model)
  module = cls(*model_args) if isinstance(model_args, list) else cls(**model_args)
  if args.weights:
    convert.load_torch_weights(module, args.weights, key=args.key, trusted=args.trusted)
  else:
    _log("no --weights: converting the module's freshly initialised weights")
  floats = lambda text: [float(t) for t in text.split(",")]
  clf = convert.from_torch(module, input_shape=args.input_shape, mean=floats(args.mean),
                           std=floats(args.std), output_activation=args.output_activation)
  h, w, c = clf.input_shape
  path = checkpoint.save_classifier(clf, args.out, overwrite=args.overwrite, extra={
      "converted_from": {"model": args.model, "model_args": model_args,
                         "weights": pathlib.Path(args.weights).name if args.weights else None,
                         "key": args.key}})
  print(f"converted {cls.__name__}: {len(clf.layer_names)} layers, {clf.num_classes} outputs; "
        f"saved to {path}")
  if (h, w) == (48, 48) and c in (1, 3):
    faces = data.sample_faces()
    images = np.repeat(data.to_float(faces.images), c, axis=-1)
    diff = convert.torch_difference(module, clf, images)
    print(f"on {diff['n']} bundled FER2013 faces: max |torch - jax| = "
          f"{diff['max_abs_diff']:.3g}, predictions agree on {diff['argmax_agree']}/{diff['n']}")
  return 0


def cmd_explain(args) -> int:
  import jax
  from tqdm.auto import tqdm

  from jaxplain import attribution, data, viz
  clf = _checkpoint(args)
  faces = _faces(args, default_split="PublicTest")
  known = len(faces) > 0 and bool((faces.labels >= 0).all())
  faces = _per_class(faces, clf, args.per_class if known else 0)
  images = data.to_float(faces.images)
  predictions = clf.predict(images).argmax(-1)
  targets = faces.labels if args.target == "true" and known else predictions
  options = {"saliency": {}, "smoothgrad": {"samples": args.samples, "stdev": args.stdev},
             "ig": {"steps": args.steps, "rule": args.rule, "batch_size": args.batch_size,
                    "baselines": args.baseline},
             "guided": {}, "occlusion": {"window": args.window, "stride": args.stride},
             "gradcam": {"layer": args.layer} if args.layer else {}}[args.method]
  with tqdm(total=len(images), desc=args.method, unit="face") as bar:
    attrs = attribution.attribute_many(clf, images, targets, method=args.method,
                                       key=jax.random.key(args.seed), chunk=args.chunk,
                                       progress=bar.update, **options)
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  np.savez_compressed(out / f"{args.method}.npz", attributions=attrs, images=faces.images,
                      labels=faces.labels, targets=targets, predictions=predictions)
  sign = "all" if args.method in ("ig", "occlusion") else "absolute_value"
  written = []
  for page, start in enumerate(range(0, len(images), 7)):
    sl = slice(start, start + 7)
    path = out / f"{args.method}_{page:03d}.png"
    viz.save(viz.class_attribution_figure(
        images[sl], attrs[sl], clf.class_names, labels=targets[sl], predictions=predictions[sl],
        method_name=f"{args.method} (target: {args.target if known else 'pred'})", sign=sign),
        path)
    written.append(path.name)
  _log(f"wrote {out / f'{args.method}.npz'} and {len(written)} figure(s) {written[0]}...")
  return 0


def cmd_report(args) -> int:
  from jaxplain import data, report, shipped_checkpoint
  t0 = time.time()
  clf = _checkpoint(args)
  faces = _faces(argparse.Namespace(images=args.images))  # the photos, or the bundled faces
  measure = None
  if args.data:
    measure = _faces(args, default_split="PublicTest")
  config = report.ReportConfig(
      ig_steps=args.ig_steps, filters=args.filters, filter_layer=args.layer,
      gradcam_layer=args.gradcam_layer, lime_samples=args.lime_samples,
      per_class=args.per_class, seed=args.seed)
  page = report.report(clf, faces, args.out, config=config, measure=measure,
                       checkpoint_name=str(args.checkpoint or shipped_checkpoint()), log=_log)
  print(page)
  _log(f"total {time.time() - t0:.0f}s")
  return 0


def _add_data_args(p, *, split_default=None):
  p.add_argument("--data", help="FER2013 CSV (Kaggle or course layout, plain or .gz) or image "
                 "folder; default: the bundled sample faces")
  p.add_argument("--split", default=split_default,
                 help="usage/split to use, e.g. PublicTest, Training, or 'all'")
  p.add_argument("--skip-bad", action="store_true", help="drop malformed rows instead of failing")


def parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="jaxplain", description="Train and explain a FER2013 CNN "
                              "in JAX: saliency, integrated gradients, filters, LIME.")
  sub = p.add_subparsers(dest="command", required=True)

  t = sub.add_parser("train", help="train the CNN with optax")
  t.add_argument("--data", required=True, help="FER2013 CSV or image folder")
  t.add_argument("--train-split", default="Training")
  t.add_argument("--val-split", default="PublicTest", help="evaluated each epoch ('' : none)")
  t.add_argument("--skip-bad", action="store_true")
  t.add_argument("--epochs", type=int, default=30)
  t.add_argument("--batch-size", type=int, default=128)
  t.add_argument("--lr", type=float, default=0.05)
  t.add_argument("--weight-decay", type=float, default=5e-4)
  t.add_argument("--label-smoothing", type=float, default=0.0)
  t.add_argument("--class-weighting", type=float, default=0.0,
                 help="weigh classes by inverse frequency to this power (0: off, 1: full)")
  t.add_argument("--widths", type=_ints, default=(32, 64, 128, 256))
  t.add_argument("--depths", type=_ints, default=(1, 1, 2, 2))
  t.add_argument("--hidden", type=int, default=256)
  t.add_argument("--dropout", type=float, default=0.3)
  t.add_argument("--seed", type=int, default=0)
  t.add_argument("--init-from", metavar="CHECKPOINT",
                 help="start from this saved classifier's weights (a new schedule and optimizer "
                      "state: fine-tuning or a warm restart); the architecture is the saved one's")
  t.add_argument("--run-dir", default="runs/fer", help="epoch checkpoints go here")
  t.add_argument("--resume", action="store_true", help="continue from the last epoch checkpoint")
  t.add_argument("--stop-after", type=int, help="stop after this many epochs of this call")
  t.add_argument("--out", help="save the final classifier to this directory")
  t.set_defaults(func=cmd_train)

  e = sub.add_parser("evaluate", help="accuracy, per-class accuracy and confusion matrix")
  e.add_argument("--checkpoint", help="classifier directory (default: the shipped one)")
  _add_data_args(e)
  e.add_argument("--out", help="write confusion_matrix.png and evaluation.json here")
  e.set_defaults(func=cmd_evaluate)
  li = sub.add_parser("lime", help="LIME superpixel explanations per class (native, in JAX)")
  li.add_argument("--checkpoint", help="classifier directory (default: the shipped one)")
  li.add_argument("--images", nargs="+", help="image files to explain (instead of --data)")
  _add_data_args(li, split_default="PublicTest")
  li.add_argument("--per-class", type=int, default=3,
                  help="faces of each true class to explain (0: all; labelled data only)")
  li.add_argument("--target", choices=("predicted", "true"), default="predicted",
                  help="the class each explanation is for")
  li.add_argument("--num-samples", type=int, default=1000, help="perturbed samples per face")
  li.add_argument("--num-features", type=int, default=5,
                  help="superpixels marked on each side in the figure")
  li.add_argument("--n-segments", type=int, default=50, help="SLIC target superpixel count")
  li.add_argument("--compactness", type=float, default=0.1, help="SLIC compactness")
  li.add_argument("--images-per-call", type=int, default=8, help="faces per compiled call")
  li.add_argument("--batch-size", type=int, default=256, help="images per forward pass")
  li.add_argument("--seed", type=int, default=0)
  li.add_argument("--out", required=True, help="write lime_classes.png, lime.npz, lime.json")
  li.set_defaults(func=cmd_lime)
  fi = sub.add_parser("filters", help="the input that maximises each filter of a layer, and "
                      "the filters' outputs on a face")
  fi.add_argument("--checkpoint", help="classifier directory (default: the shipped one)")
  fi.add_argument("--layer", help="layer name (default: a middle conv layer, conv3_2 for "
                  "jaxplain's CNN)")
  fi.add_argument("--filters", default="0:64", help="slice (0:64, ::4) or list (1,5,9)")
  fi.add_argument("--image", help="face image file for the filter outputs (default: a bundled "
                  "sample face)")
  fi.add_argument("--out", required=True, help="output directory")
  fi.add_argument("--steps", type=int, default=256)
  fi.add_argument("--fourier", action=argparse.BooleanOptionalAction, default=True,
                  help="decorrelated Fourier parameterisation (Lucid/Lucent fft_image)")
  fi.add_argument("--pixel-range", choices=("sigmoid", "clip"), default="sigmoid")
  fi.add_argument("--jitter", type=int, default=1, help="random shift in pixels per step")
  fi.add_argument("--tv", type=float, default=0.0, help="total-variation weight")
  fi.add_argument("--l2", type=float, default=0.0, help="L2 decay weight")
  fi.add_argument("--blur-every", type=int, default=0, help="blur every N steps (0: never)")
  fi.add_argument("--blur-sigma", type=float, default=0.5)
  fi.add_argument("--chunk", type=int, default=16, help="filters per compiled call")
  fi.add_argument("--seed", type=int, default=0)
  fi.set_defaults(func=cmd_filters)
  c = sub.add_parser("convert", help="convert a PyTorch CNN into a jaxplain checkpoint")
  c.add_argument("--model", required=True,
                 help="pkg.module:ClassName or path/to/file.py:ClassName (loaded by path)")
  c.add_argument("--model-args", help='constructor arguments as JSON: {"in_c": 1} or [1, 32]')
  c.add_argument("--weights", help="torch.save file with the state dict")
  c.add_argument("--key", help="entry of the checkpoint dict holding the state dict")
  c.add_argument("--trusted", action="store_true",
                 help="allow pickled Python objects in --weights (runs their code)")
  c.add_argument("--input-shape", type=_ints, default=(1, 48, 48), help="C,H,W")
  c.add_argument("--mean", default="0.0", help="normalisation mean (scalar or per channel a,b,c)")
  c.add_argument("--std", default="1.0", help="normalisation std (scalar or per channel)")
  c.add_argument("--output-activation", choices=("keep", "strip"), default="keep",
                 help="strip a final Sigmoid/Softmax/LogSoftmax so explanations see logits")
  c.add_argument("--out", required=True, help="checkpoint directory to write")
  c.add_argument("--overwrite", action="store_true")
  c.set_defaults(func=cmd_convert)
  x = sub.add_parser("explain", help="gradient attributions (saliency, IG, SmoothGrad, guided "
                     "backprop, Grad-CAM, occlusion) per face, as figures and .npz")
  x.add_argument("--checkpoint", help="classifier directory (default: the shipped one)")
  x.add_argument("--method", required=True, choices=("saliency", "ig", "smoothgrad", "guided",
                                                     "gradcam", "occlusion"))
  x.add_argument("--images", nargs="+", help="your photos instead of --data (unlabelled: the "
                 "predicted class is explained)")
  _add_data_args(x, split_default="PublicTest")
  x.add_argument("--per-class", type=int, default=1, help="faces per class (0: all)")
  x.add_argument("--target", choices=("true", "pred"), default="true",
                 help="explain the true class (when known) or the predicted one")
  x.add_argument("--steps", type=int, default=50, help="ig: path points")
  x.add_argument("--rule", default="gausslegendre", help="ig: quadrature rule (Captum's names)")
  x.add_argument("--baseline", default="black", help="ig: black, blur or uniform")
  x.add_argument("--batch-size", type=int, default=None, help="ig: path points at once")
  x.add_argument("--samples", type=int, default=25, help="smoothgrad: noisy copies")
  x.add_argument("--stdev", type=float, default=0.15, help="smoothgrad: noise sd (input units)")
  x.add_argument("--layer", help="gradcam: layer (default: the last spatial one)")
  x.add_argument("--window", type=int, default=8, help="occlusion: window size")
  x.add_argument("--stride", type=int, default=4, help="occlusion: stride")
  x.add_argument("--chunk", type=int, default=32, help="faces per call")
  x.add_argument("--seed", type=int, default=0)
  x.add_argument("--out", required=True, help="write <method>.npz and <method>_NNN.png here")
  x.set_defaults(func=cmd_explain)

  r = sub.add_parser("report", help="all four answers as figures and one HTML page")
  r.add_argument("--checkpoint", help="classifier directory, own or converted (default: shipped)")
  r.add_argument("--images", nargs="+", help="your photos (any size/colour; centre-cropped to "
                 "48x48 gray); default: the bundled FER2013 sample faces")
  _add_data_args(r, split_default="PublicTest")
  r.add_argument("--out", default="jaxplain-report")
  r.add_argument("--layer", help="layer for the filter figures (default: a middle conv layer)")
  r.add_argument("--gradcam-layer", help="layer for Grad-CAM (default: the last spatial layer)")
  r.add_argument("--filters", type=int, default=16, help="how many filters to visualise")
  r.add_argument("--ig-steps", type=int, default=50)
  r.add_argument("--lime-samples", type=int, default=1000)
  r.add_argument("--per-class", type=int, default=50,
                 help="faces per class for the measured maps (with --data)")
  r.add_argument("--seed", type=int, default=0)
  r.set_defaults(func=cmd_report)
  return p


def main(argv=None) -> int:
  args = parser().parse_args(argv)
  try:
    return args.func(args)
  except ValueError as e:
    _log(f"jaxplain {args.command}: error: {e}")
    return 2


if __name__ == "__main__":
  sys.exit(main())
