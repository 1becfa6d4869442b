"""The ``jaxplain`` command: argument parsing only; each subcommand calls one library function
(:mod:`jaxplain.commands`, :func:`jaxplain.report.report`), whose config dataclasses hold the
defaults."""

from __future__ import annotations

import argparse
import logging
import sys

from jaxplain import commands
from jaxplain.commands import (ConvertConfig, EvaluateConfig, ExplainConfig, FiltersConfig,
                               LimeConfig)

log = logging.getLogger("jaxplain")


def _ints(text: str) -> tuple[int, ...]:
  try:
    return tuple(int(t) for t in text.split(",") if t.strip())
  except ValueError:
    raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _floats(text: str) -> tuple[float, ...]:
  try:
    return tuple(float(t) for t in text.split(",") if t.strip())
  except ValueError:
    raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _option(text: str) -> tuple[str, object]:
  """``NAME=VALUE`` of ``--option``; VALUE is read as JSON where it parses (numbers, lists)."""
  import json
  name, sep, value = text.partition("=")
  if not sep or not name:
    raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
  try:
    return name.replace("-", "_"), json.loads(value)
  except json.JSONDecodeError:
    return name.replace("-", "_"), value


def _checkpoint(args):
  from jaxplain import checkpoint, shipped_checkpoint
  return checkpoint.load_classifier(args.checkpoint or shipped_checkpoint())


def _faces(args, default_split=None):
  """A loader of the faces the arguments name (the command calls it after its checks)."""
  return lambda: commands.load_faces(images=getattr(args, "images", None), data=getattr(args, "data", None),
                             split=getattr(args, "split", None),
                             skip_bad=getattr(args, "skip_bad", False), default_split=default_split)


def cmd_train(args) -> int:
  from jaxplain import checkpoint, train
  model = {"widths": list(args.widths), "depths": list(args.depths), "hidden": args.hidden,
           "dropout": args.dropout}
  if args.init_from:  # the architecture is the saved one's
    saved = checkpoint.read_metadata(args.init_from).get("config", {})
    model = {k: saved.get(k, v) for k, v in model.items()}
  config = train.TrainConfig(
      epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.lr,
      weight_decay=args.weight_decay, label_smoothing=args.label_smoothing,
      class_weighting=args.class_weighting, seed=args.seed, model=model,
      init_from=args.init_from or "")
  commands.train(args.data, args.out, config, train_split=args.train_split,
                 val_split=args.val_split, run_dir=args.run_dir, resume=args.resume,
                 fresh=args.fresh, stop_after=args.stop_after, skip_bad=args.skip_bad,
                 overwrite=args.overwrite)
  return 0


def cmd_evaluate(args) -> int:
  clf = _checkpoint(args)
  commands.evaluate(clf, _faces(args, "PublicTest"), args.out,
                    EvaluateConfig(batch_size=args.batch_size), overwrite=args.overwrite)
  return 0


def cmd_lime(args) -> int:
  cfg = LimeConfig(per_class=args.per_class, target=args.target, num_samples=args.num_samples,
                   num_features=args.num_features, n_segments=args.n_segments,
                   compactness=args.compactness, images_per_call=args.images_per_call,
                   batch_size=args.batch_size, seed=args.seed)
  commands.lime(_checkpoint(args), _faces(args, "PublicTest"), args.out, cfg,
                overwrite=args.overwrite)
  return 0


def cmd_filters(args) -> int:
  from jaxplain import data
  cfg = FiltersConfig(layer=args.layer, filters=args.filters, steps=args.steps,
                      fourier=args.fourier, pixel_range=args.pixel_range, jitter=args.jitter,
                      tv=args.tv, l2=args.l2, blur_every=args.blur_every,
                      blur_sigma=args.blur_sigma, filters_per_batch=args.filters_per_batch,
                      seed=args.seed)
  face = data.load_images([args.image])[0] if args.image else None
  commands.filters(_checkpoint(args), args.out, cfg, face=face, overwrite=args.overwrite)
  return 0


def cmd_convert(args) -> int:
  cfg = ConvertConfig(model=args.model, model_args=args.model_args, weights=args.weights,
                      key=args.key, trusted=args.trusted, input_shape=args.input_shape,
                      mean=args.mean, std=args.std, output_activation=args.output_activation,
                      frontend=args.frontend)
  commands.convert(args.out, cfg, overwrite=args.overwrite)
  return 0


def cmd_explain(args) -> int:
  options = dict(args.option or ())
  flags = {"steps": args.steps, "rule": args.rule, "baselines": args.baseline,
           "batch_size": args.batch_size, "samples": args.samples, "stdev": args.stdev,
           "layer": args.layer, "window": args.window, "stride": args.stride}
  from jaxplain.attribution import registry
  accepted = [o for o in registry.get(args.method).options if o not in ("key", "method")]
  for name, value in flags.items():
    if value is not None:
      if name not in accepted:
        raise ValueError(f"--{name.replace('_', '-')} does not apply to --method "
                         f"{args.method}; its options: {', '.join(accepted) or 'none'}")
      options.setdefault(name, value)
  cfg = ExplainConfig(method=args.method, per_class=args.per_class, target=args.target,
                      images_per_batch=args.images_per_batch, seed=args.seed, tol=args.tol,
                      options=options)
  commands.explain(_checkpoint(args), _faces(args, "PublicTest"), args.out, cfg,
                   overwrite=args.overwrite)
  return 0


def cmd_evaluate_explanations(args) -> int:
  cfg = commands.MetricsConfig(
      methods=tuple(args.methods) if args.methods else None,
      metrics=tuple(args.metrics) if args.metrics else None, per_class=args.per_class,
      target=args.target, lime_samples=args.lime_samples, seed=args.seed)
  commands.evaluate_explanations(_checkpoint(args), _faces(args, "PublicTest"), args.out, cfg,
                                 overwrite=args.overwrite)
  return 0


def cmd_report(args) -> int:
  from jaxplain import report, shipped_checkpoint
  cfg = report.ReportConfig(
      ig_tol=args.ig_tol, filters=args.filters, filter_layer=args.layer,
      gradcam_layer=args.gradcam_layer, lime_samples=args.lime_samples,
      per_class=args.per_class, seed=args.seed, trust_metrics=args.trust_metrics,
      methods=tuple(args.methods) if args.methods else report.ReportConfig.methods)
  report.check(cfg, args.out, overwrite=args.overwrite)
  clf = _checkpoint(args)
  if args.images:
    faces = commands.load_faces(images=args.images)
  else:  # the figures' faces; --data feeds the measurements over many faces
    from jaxplain import data
    faces = data.sample_faces()
    log.info("figures: the 35 bundled sample faces (5 per class)"
             + (f"; measurements: {args.data}" if args.data else ""))
  measure = _faces(args, "PublicTest")() if args.data else None
  page = report.report(clf, faces, args.out, config=cfg, measure=measure,
                       checkpoint_name=args.checkpoint or "the shipped FER2013 CNN",
                       overwrite=args.overwrite)
  print(page)
  return 0


def _add_data_args(p, *, split_default=None):
  p.add_argument("--data", help="FER2013 CSV (Kaggle or course layout, plain or .gz) or image "
                 "folder; default: the bundled sample faces")
  p.add_argument("--split", default=split_default,
                 help="usage/split to use, e.g. PublicTest, Training, or 'all'")
  p.add_argument("--skip-bad", action="store_true", help="drop malformed rows instead of failing")


def _add_common(p, *, checkpoint=True, out_required=True, out_help="output directory"):
  if checkpoint:
    p.add_argument("--checkpoint", help="classifier directory (default: the shipped one)")
  p.add_argument("--out", required=out_required, help=out_help)
  p.add_argument("--overwrite", action="store_true",
                 help="replace --out if it holds earlier jaxplain output (never other folders)")


def _add_target(p):
  p.add_argument("--target", choices=commands.TARGETS + ("pred",), default=ExplainConfig.target,
                 help="explain the true class (when the faces are labelled) or the predicted one")


def parser() -> argparse.ArgumentParser:
  from jaxplain import report, train
  from jaxplain.attribution import registry
  from jaxplain.models import CNN
  # -q/-v go before or after the subcommand (SUPPRESS: a subcommand's parser sets them only
  # when given, so it does not undo the top level's)
  common = argparse.ArgumentParser(add_help=False)
  verbosity = common.add_mutually_exclusive_group()
  verbosity.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                         help="errors and results only")
  verbosity.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                         help="debug messages too")
  p = argparse.ArgumentParser(prog="jaxplain", parents=[common], description="Train and "
                              "explain a FER2013 CNN in JAX: saliency, integrated gradients, "
                              "filters, LIME.")
  p.set_defaults(quiet=False, verbose=False)
  sub = p.add_subparsers(dest="command", required=True)

  def add(name, **kwargs):
    return sub.add_parser(name, parents=[common], **kwargs)

  tc = train.TrainConfig()
  t = add("train", help="train the CNN with optax")
  t.add_argument("--data", required=True, help="FER2013 CSV or image folder")
  t.add_argument("--train-split", default="Training")
  t.add_argument("--val-split", default="PublicTest", help="evaluated each epoch ('' : none)")
  t.add_argument("--skip-bad", action="store_true")
  t.add_argument("--epochs", type=int, default=tc.epochs)
  t.add_argument("--batch-size", type=int, default=tc.batch_size)
  t.add_argument("--lr", type=float, default=tc.learning_rate)
  t.add_argument("--weight-decay", type=float, default=tc.weight_decay)
  t.add_argument("--label-smoothing", type=float, default=tc.label_smoothing)
  t.add_argument("--class-weighting", type=float, default=tc.class_weighting,
                 help="weigh classes by inverse frequency to this power (0: off, 1: full)")
  t.add_argument("--widths", type=_ints, default=tuple(CNN.widths), help="channels per stage")
  t.add_argument("--depths", type=_ints, default=tuple(CNN.depths),
                 help="conv blocks per stage (one per width)")
  t.add_argument("--hidden", type=int, default=CNN.hidden)
  t.add_argument("--dropout", type=float, default=CNN.dropout)
  t.add_argument("--seed", type=int, default=tc.seed)
  t.add_argument("--init-from", metavar="CHECKPOINT",
                 help="start from this saved classifier's weights (a new schedule and optimizer "
                      "state: fine-tuning or a warm restart); the architecture is the saved one's")
  t.add_argument("--run-dir", default="runs/fer", help="epoch checkpoints go here")
  t.add_argument("--resume", action="store_true", help="continue from the last epoch checkpoint")
  t.add_argument("--fresh", action="store_true",
                 help="start a new run in a --run-dir that holds another jaxplain run")
  t.add_argument("--stop-after", type=int, help="stop after this many epochs of this call")
  _add_common(t, checkpoint=False, out_required=False,
              out_help="save the final classifier to this directory")
  t.set_defaults(func=cmd_train)

  e = add("evaluate", help="accuracy, per-class accuracy and confusion matrix")
  _add_data_args(e)
  e.add_argument("--batch-size", type=int, default=EvaluateConfig.batch_size)
  _add_common(e, out_required=False, out_help="write confusion_matrix.png and evaluation.json")
  e.set_defaults(func=cmd_evaluate)

  lc = LimeConfig()
  li = add("lime", help="LIME superpixel explanations per class (native, in JAX)")
  li.add_argument("--images", nargs="+", help="image files to explain (instead of --data)")
  _add_data_args(li, split_default="PublicTest")
  li.add_argument("--per-class", type=int, default=lc.per_class,
                  help="faces of each true class to explain (0: all; labelled data only)")
  _add_target(li)
  li.add_argument("--num-samples", type=int, default=lc.num_samples,
                  help="perturbed samples per face")
  li.add_argument("--num-features", type=int, default=lc.num_features,
                  help="superpixels marked on each side in the figure")
  li.add_argument("--n-segments", type=int, default=lc.n_segments,
                  help="SLIC target superpixel count")
  li.add_argument("--compactness", type=float, default=lc.compactness, help="SLIC compactness")
  li.add_argument("--images-per-call", type=int, default=lc.images_per_call,
                  help="faces per compiled call")
  li.add_argument("--batch-size", type=int, default=lc.batch_size,
                  help="images per forward pass")
  li.add_argument("--seed", type=int, default=lc.seed)
  _add_common(li, out_help="write lime_classes.png, lime.npz, lime.json here")
  li.set_defaults(func=cmd_lime)

  fc = FiltersConfig()
  fi = add("filters", help="the input that maximises each filter of a layer, and "
                      "the filters' outputs on a face")
  fi.add_argument("--layer", help="layer name (default: a middle conv layer, conv3_2 for "
                  "jaxplain's CNN)")
  fi.add_argument("--filters", default=fc.filters, help="slice (0:64, ::4) or list (1,5,9)")
  fi.add_argument("--image", help="face image file for the filter outputs (default: a bundled "
                  "sample face)")
  fi.add_argument("--steps", type=int, default=fc.steps)
  fi.add_argument("--fourier", action=argparse.BooleanOptionalAction, default=fc.fourier,
                  help="decorrelated Fourier parameterisation (Lucid/Lucent fft_image)")
  fi.add_argument("--pixel-range", choices=("sigmoid", "clip"), default=fc.pixel_range)
  fi.add_argument("--jitter", type=int, default=fc.jitter, help="random shift in pixels per step")
  fi.add_argument("--tv", type=float, default=fc.tv, help="total-variation weight")
  fi.add_argument("--l2", type=float, default=fc.l2, help="L2 decay weight")
  fi.add_argument("--blur-every", type=int, default=fc.blur_every,
                  help="blur every N steps (0: never)")
  fi.add_argument("--blur-sigma", type=float, default=fc.blur_sigma)
  fi.add_argument("--filters-per-batch", "--chunk", type=int, default=fc.filters_per_batch,
                  dest="filters_per_batch", help="filters per compiled call")
  fi.add_argument("--seed", type=int, default=fc.seed)
  _add_common(fi)
  fi.set_defaults(func=cmd_filters)

  c = add("convert", help="convert a PyTorch CNN into a jaxplain checkpoint")
  c.add_argument("--model", required=True,
                 help="pkg.module:ClassName or path/to/file.py:ClassName (loaded by path)")
  c.add_argument("--model-args", help='constructor arguments as JSON: {"in_c": 1} or [1, 32]')
  c.add_argument("--weights", help="state dict file: torch.save (.pt/.pth) or .safetensors")
  c.add_argument("--key", help="entry of the checkpoint dict holding the state dict")
  c.add_argument("--trusted", action="store_true",
                 help="allow pickled Python objects in --weights (runs their code)")
  c.add_argument("--input-shape", type=_ints, default=ConvertConfig.input_shape, help="C,H,W")
  c.add_argument("--mean", type=_floats, default=ConvertConfig.mean,
                 help="normalisation mean (scalar or per channel a,b,c)")
  c.add_argument("--std", type=_floats, default=ConvertConfig.std,
                 help="normalisation std (scalar or per channel)")
  c.add_argument("--output-activation", choices=("keep", "strip"),
                 default=ConvertConfig.output_activation,
                 help="strip a final Sigmoid/Softmax/LogSoftmax so explanations see logits")
  c.add_argument("--frontend", choices=("auto", "fx", "export"), default=ConvertConfig.frontend,
                 help="how the module is captured: torch.fx, torch.export, or fx falling back "
                 "to export (auto)")
  _add_common(c, checkpoint=False, out_help="checkpoint directory to write")
  c.set_defaults(func=cmd_convert)

  x = add("explain", help="attributions of any registered method per face, as "
                     "figures and .npz")
  x.add_argument("--method", required=True,
                 choices=registry.names() + tuple(a for n in registry.names()
                                                  for a in registry.get(n).aliases),
                 metavar="METHOD", help=f"one of: {', '.join(registry.names())}")
  x.add_argument("--images", nargs="+", help="your photos instead of --data (unlabelled: the "
                 "predicted class is explained)")
  _add_data_args(x, split_default="PublicTest")
  x.add_argument("--per-class", type=int, default=ExplainConfig.per_class,
                 help="faces per class (0: all)")
  _add_target(x)
  x.add_argument("--option", type=_option, action="append", metavar="NAME=VALUE",
                 help="any option of the method (repeatable), e.g. --option samples=50")
  x.add_argument("--steps", type=int, help="integrated_gradients: path points")
  x.add_argument("--rule", help="integrated_gradients: quadrature rule (Captum's names)")
  x.add_argument("--tol", type=float, help="integrated_gradients: refine each face until its "
                 "completeness gap is below this fraction of |f(x) - f(baseline)|")
  x.add_argument("--baseline", help="path methods: black, blur or uniform")
  x.add_argument("--batch-size", type=int, help="path points / samples at once")
  x.add_argument("--samples", type=int, help="smoothgrad: noisy copies")
  x.add_argument("--stdev", type=float, help="smoothgrad: noise sd (input units)")
  x.add_argument("--layer", help="layer methods: layer (default: the last spatial one)")
  x.add_argument("--window", type=int, help="occlusion: window size")
  x.add_argument("--stride", type=int, help="occlusion: stride")
  x.add_argument("--images-per-batch", "--chunk", type=int, dest="images_per_batch",
                 default=ExplainConfig.images_per_batch, help="faces per call")
  x.add_argument("--seed", type=int, default=ExplainConfig.seed)
  _add_common(x, out_help="write <method>.npz and <method>_NNN.png here")
  x.set_defaults(func=cmd_explain)

  mc = commands.MetricsConfig()
  m = add("evaluate-explanations", help="which explanation to trust: each attribution method "
          "scored by faithfulness, robustness, randomisation and complexity metrics")
  m.add_argument("--images", nargs="+", help="your photos instead of --data")
  _add_data_args(m, split_default="PublicTest")
  m.add_argument("--methods", nargs="+", metavar="METHOD",
                 help="attribution methods (registered names, or lime); default: 8 methods")
  m.add_argument("--metrics", nargs="+", metavar="METRIC", help="metrics (default: 9)")
  m.add_argument("--per-class", type=int, default=mc.per_class, help="faces per class (0: all)")
  _add_target(m)
  m.add_argument("--lime-samples", type=int, default=mc.lime_samples)
  m.add_argument("--seed", type=int, default=mc.seed)
  _add_common(m, out_help="write metrics.md and metrics.json here")
  m.set_defaults(func=cmd_evaluate_explanations)

  rc = report.ReportConfig()
  r = add("report", help="all four answers as figures and one HTML page")
  r.add_argument("--checkpoint", help="classifier directory, own or converted (default: shipped)")
  r.add_argument("--images", nargs="+", help="your photos (any size/colour; centre-cropped to "
                 "48x48 gray); default: the bundled FER2013 sample faces")
  _add_data_args(r, split_default="PublicTest")
  r.add_argument("--out", default="jaxplain-report", help="report directory")
  r.add_argument("--overwrite", action="store_true",
                 help="replace --out if it holds an earlier jaxplain report (never other folders)")
  r.add_argument("--methods", nargs="+", metavar="METHOD",
                 help=f"the attribution grid's methods (default: {' '.join(rc.methods)})")
  r.add_argument("--layer", help="layer for the filter figures (default: a middle conv layer)")
  r.add_argument("--gradcam-layer", help="layer for the layer methods (default: the last "
                 "spatial layer)")
  r.add_argument("--filters", type=int, default=rc.filters, help="how many filters to visualise")
  r.add_argument("--ig-tol", type=float, default=rc.ig_tol,
                 help="integrated gradients: completeness tolerance of the adaptive integral")
  r.add_argument("--lime-samples", type=int, default=rc.lime_samples)
  r.add_argument("--trust-metrics", action=argparse.BooleanOptionalAction,
                 default=rc.trust_metrics, help="the 'Which explanation to trust?' section "
                 "(explanation-quality metrics of every method)")
  r.add_argument("--per-class", type=int, default=rc.per_class,
                 help="faces per class for the measured maps (with --data)")
  r.add_argument("--seed", type=int, default=rc.seed)
  r.set_defaults(func=cmd_report)
  return p


class _Stderr(logging.Handler):
  """Writes each message to the current ``sys.stderr`` (which tests and tools may swap)."""

  def emit(self, record):
    print(self.format(record), file=sys.stderr, flush=True)


def _configure_logging(args) -> None:
  level = logging.WARNING if args.quiet else logging.DEBUG if args.verbose else logging.INFO
  if not any(isinstance(h, _Stderr) for h in log.handlers):
    log.addHandler(_Stderr())
  log.setLevel(level)
  log.propagate = False


def _use_compilation_cache() -> None:
  """Keeps compiled programs on disk between runs (JAX's persistent compilation cache), so a
  second ``jaxplain report`` skips most of its compiles. ``$JAXPLAIN_COMPILATION_CACHE`` names
  the folder (default ``~/.cache/jaxplain/xla``; ``off`` turns it off); a cache folder the
  caller already configured is left as it is. Programs that compiled in under 0.5 s are not
  kept, unless ``$JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS`` says otherwise."""
  import os
  import pathlib

  import jax
  where = os.environ.get("JAXPLAIN_COMPILATION_CACHE", "")
  if where.lower() in ("off", "0", "no", "false") or jax.config.jax_compilation_cache_dir:
    return
  path = pathlib.Path(where or "~/.cache/jaxplain/xla").expanduser()
  try:
    path.mkdir(parents=True, exist_ok=True)
  except OSError as e:  # a read-only home: run without it
    log.debug(f"no compilation cache at {path}: {e}")
    return
  jax.config.update("jax_compilation_cache_dir", str(path))
  if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:  # JAX's own setting wins
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def main(argv=None) -> int:
  """Runs the command; a problem is one line on stderr (exit 2; 1 for an OS error; 130 for
  Ctrl-C), never a traceback."""
  args = parser().parse_args(argv)
  _configure_logging(args)
  _use_compilation_cache()
  try:
    return args.func(args)
  except ValueError as e:
    log.error(f"jaxplain {args.command}: error: {e}")
    return 2
  except OSError as e:
    where = f" {e.filename}" if getattr(e, "filename", None) else ""
    log.error(f"jaxplain {args.command}: error:{where} {e.strerror or e}")
    return 1
  except KeyboardInterrupt:
    log.error(f"jaxplain {args.command}: interrupted; nothing was left half-written")
    return 130


def entry() -> None:
  """The console script: :func:`main`, then exit. After Ctrl-C the process ends at once
  (``os._exit``): XLA threads still compiling could otherwise crash the interpreter's
  shutdown."""
  import os
  code = main()
  if code == 130:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
  sys.exit(code)


if __name__ == "__main__":
  entry()
