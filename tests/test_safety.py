"""Issue 11: output folders never delete what jaxplain did not write, damaged weights never load,
run directories and data are checked on resume, and bad inputs are refused with one line."""

import dataclasses
import json
import os
import pathlib
import shutil
import subprocess
import sys
import warnings

import jax
import numpy as np
import pytest

import jaxplain
from jaxplain import checkpoint, data, models, train

REPO = pathlib.Path(__file__).resolve().parents[1]
SHIPPED = REPO / "checkpoints" / "fer2013_cnn"  # this clone's copy (the package may be another)
TINY = dict(widths=(8, 16), depths=(1, 1), hidden=16)


def _user_folder(path):
  """A folder of the user's own: what a misdirected --out must never delete."""
  (path / "sub").mkdir(parents=True)
  (path / "thesis.tex").write_text("\\documentclass{article}")
  (path / "sub" / "results.csv").write_text("a,b\n1,2\n")
  return {"thesis.tex": "\\documentclass{article}", "sub/results.csv": "a,b\n1,2\n"}


def _contents(path):
  return {p.relative_to(path).as_posix(): p.read_text() for p in sorted(path.rglob("*"))
          if p.is_file()}


def _other(clf, value=0.5):
  """``clf`` with different weights (so which checkpoint a folder holds is visible)."""
  return dataclasses.replace(clf, variables=jax.tree.map(lambda v: np.full_like(v, value),
                                                          clf.variables))


def _same(a, b):
  return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a.variables),
                                                  jax.tree.leaves(b.variables)))


# --- 1. output folders ------------------------------------------------------------------------

@pytest.mark.parametrize("overwrite", [False, True])
def test_save_never_replaces_a_folder_jaxplain_did_not_write(tmp_path, tiny_classifier,
                                                             overwrite):
  before = _user_folder(tmp_path / "mine")
  with pytest.raises(ValueError, match=r"not written by jaxplain.*--overwrite") as e:
    jaxplain.save_classifier(tiny_classifier, tmp_path / "mine", overwrite=overwrite)
  assert "\n" not in str(e.value)
  assert _contents(tmp_path / "mine") == before
  assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]  # no temporary left


def test_report_never_replaces_a_folder_jaxplain_did_not_write(tmp_path, tiny_classifier, faces):
  from jaxplain import report
  before = _user_folder(tmp_path / "mine")
  lines = []
  with pytest.raises(ValueError, match=r"not written by jaxplain.*--overwrite"):
    report.report(tiny_classifier, faces, tmp_path / "mine", overwrite=True, log=lines.append)
  assert _contents(tmp_path / "mine") == before
  assert not lines  # refused before any work


def test_check_output_dir(tmp_path, tiny_classifier, monkeypatch):
  ck = tmp_path / "ck"
  assert checkpoint.check_output_dir(ck, kind="checkpoint") == ck  # new: fine, nothing made
  assert not ck.exists()
  jaxplain.save_classifier(tiny_classifier, ck)
  with pytest.raises(ValueError, match=r"exists \(a jaxplain checkpoint\); pass --overwrite"):
    checkpoint.check_output_dir(ck, kind="checkpoint")
  checkpoint.check_output_dir(ck, overwrite=True, kind="checkpoint")
  with pytest.raises(ValueError, match="not written by jaxplain as a report"):
    checkpoint.check_output_dir(ck, overwrite=True, kind="report")  # a checkpoint is no report
  (ck / "notes.txt").write_text("mine")
  with pytest.raises(ValueError, match=r"files jaxplain did not write \(notes.txt\).*--overwrite"):
    jaxplain.save_classifier(tiny_classifier, ck, overwrite=True)
  assert (ck / "notes.txt").read_text() == "mine"
  (tmp_path / "file.txt").write_text("x")
  with pytest.raises(ValueError, match="is a file, not a folder"):
    checkpoint.check_output_dir(tmp_path / "file.txt", overwrite=True, kind="report")
  with pytest.raises(ValueError, match="file.txt is a file, not a folder"):
    checkpoint.check_output_dir(tmp_path / "file.txt" / "out", kind="report")
  monkeypatch.chdir(ck)
  with pytest.raises(ValueError, match="current folder"):
    checkpoint.check_output_dir(".", overwrite=True, kind="checkpoint")
  with pytest.raises(ValueError, match="`kind`"):
    checkpoint.check_output_dir(tmp_path / "x", kind="thesis")


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0,
                    reason="root writes into read-only folders")
def test_unwritable_parent(tmp_path):
  locked = tmp_path / "locked"
  locked.mkdir()
  locked.chmod(0o555)
  try:
    with pytest.raises(ValueError, match="cannot write into"):
      checkpoint.check_output_dir(locked / "out", kind="checkpoint")
  finally:
    locked.chmod(0o755)


def test_report_marker_and_overwrite(tmp_path):
  out = tmp_path / "rep"
  with checkpoint.atomic_directory(out, kind="report") as tmp:
    (tmp / "index.html").write_text("<html>1</html>")
    (tmp / "figs").mkdir()
    (tmp / "figs" / "a.png").write_bytes(b"png")
  marker = json.loads((out / checkpoint.REPORT_MARKER).read_text())
  assert marker["files"] == ["figs/a.png", "index.html"]
  with pytest.raises(ValueError, match="--overwrite"):
    with checkpoint.atomic_directory(out, kind="report"):
      pass
  with checkpoint.atomic_directory(out, overwrite=True, kind="report") as tmp:
    (tmp / "index.html").write_text("<html>2</html>")
  assert (out / "index.html").read_text() == "<html>2</html>"
  assert not (out / "figs").exists()
  assert sorted(p.name for p in tmp_path.iterdir()) == ["rep"]
  # an error while writing leaves the previous report as it was, and no temporary
  with pytest.raises(RuntimeError):
    with checkpoint.atomic_directory(out, overwrite=True, kind="report") as tmp:
      (tmp / "index.html").write_text("half")
      raise RuntimeError("figure failed")
  assert (out / "index.html").read_text() == "<html>2</html>"
  assert sorted(p.name for p in tmp_path.iterdir()) == ["rep"]


class _Killed(BaseException):
  """The process dies here: nothing after it runs, not even cleanup handlers."""


@pytest.mark.parametrize("step", [1, 2, 3])
def test_overwrite_survives_a_kill_between_any_two_steps(tmp_path, tiny_classifier, monkeypatch,
                                                         step):
  """Steps of an overwrite: 1 rename the old folder aside, 2 rename the new one in, 3 delete the
  old one. A kill before each leaves a loadable checkpoint, and the next save cleans up."""
  old, new = tiny_classifier, _other(tiny_classifier)
  ck = tmp_path / "ck"
  jaxplain.save_classifier(old, ck)
  real_rename, real_rmtree, done, dead = os.rename, shutil.rmtree, [], []

  def step_of_swap(a):
    return pathlib.Path(a).parent == tmp_path  # orbax's own renames happen deeper down

  def rename(a, b):
    if dead:
      return
    if step_of_swap(a):
      done.append(a)
      if len(done) == step:
        dead.append(True)
        raise _Killed
    real_rename(a, b)

  def rmtree(p, *args, **kwargs):
    if dead:
      return
    if step_of_swap(p) and ".jaxplain-old-" in pathlib.Path(p).name:
      done.append(p)
      if len(done) == step:
        dead.append(True)
        raise _Killed
    real_rmtree(p, *args, **kwargs)

  monkeypatch.setattr(os, "rename", rename)
  monkeypatch.setattr(shutil, "rmtree", rmtree)
  with pytest.raises(_Killed):
    jaxplain.save_classifier(new, ck, overwrite=True)
  monkeypatch.undo()
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    loaded = jaxplain.load_classifier(ck)
  assert _same(loaded, new if step == 3 else old)
  assert (step == 2) == any("killed midway" in str(w.message) for w in caught)
  assert len(list(tmp_path.iterdir())) == 2  # the checkpoint (or its aside) and one leftover
  monkeypatch.setattr(checkpoint, "_alive", lambda pid: False)  # the killed process is gone
  jaxplain.save_classifier(new, ck, overwrite=True)
  assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]
  assert _same(jaxplain.load_classifier(ck), new)


def test_leftovers_of_running_saves_and_other_names_are_kept(tmp_path, tiny_classifier):
  dead = subprocess.Popen([sys.executable, "-c", ""])
  dead.wait()
  stale = tmp_path / f".ck.jaxplain-tmp-{dead.pid}-abc123"
  live = tmp_path / f".ck.jaxplain-tmp-{os.getpid()}-abc123"  # a save still running
  foreign = [tmp_path / ".ck.mine", tmp_path / f".other.jaxplain-tmp-{dead.pid}-abc123"]
  for d in [stale, live] + foreign:
    d.mkdir()
  jaxplain.save_classifier(tiny_classifier, tmp_path / "ck")
  assert not stale.exists()
  assert live.exists() and all(d.exists() for d in foreign)


# --- 2. damaged weights -----------------------------------------------------------------------

def _xor_middle(f, n=64):
  b = bytearray(f.read_bytes())
  m = len(b) // 2
  b[m:m + n] = bytes(x ^ 0xFF for x in b[m:m + n])
  f.write_bytes(bytes(b))


@pytest.fixture
def shipped_copy(tmp_path):
  dst = tmp_path / "fer2013_cnn"
  shutil.copytree(SHIPPED, dst)
  return dst


def _largest_weight_file(path):
  return max((p for p in (path / "variables").rglob("*") if p.is_file()),
             key=lambda p: p.stat().st_size)


def test_shipped_checkpoint_is_verified(faces):
  meta = json.loads((SHIPPED / checkpoint.META_FILE).read_text())
  assert meta["sha256"] == checkpoint.file_digests(SHIPPED, "variables")
  with warnings.catch_warnings():
    warnings.simplefilter("error")  # recorded checksums: no "cannot be verified" warning
    clf = jaxplain.load_classifier(SHIPPED)
  assert (np.asarray(clf.forward(data.to_float(faces.images[:8]))).argmax(-1)
          == faces.labels[:8]).mean() > 0.5


def test_corrupted_weights_never_load(shipped_copy):
  weights = _largest_weight_file(shipped_copy)
  _xor_middle(weights)
  rel = weights.relative_to(shipped_copy).as_posix()
  with pytest.raises(ValueError, match=f"{rel}: sha256 differs.*damaged") as e:
    jaxplain.load_classifier(shipped_copy)
  assert "\n" not in str(e.value)
  # a checkpoint without checksums (older jaxplain, third party) warns, and the weight and
  # probe checks still refuse it
  meta = json.loads((shipped_copy / checkpoint.META_FILE).read_text())
  del meta["sha256"]
  (shipped_copy / checkpoint.META_FILE).write_text(json.dumps(meta))
  with pytest.warns(UserWarning, match="no checksums"), \
      pytest.raises(ValueError, match=r"variables: the weights \[.*conv.*\] hold NaN or Inf"):
    jaxplain.load_classifier(shipped_copy)


def test_probe_refuses_weights_giving_nonfinite_logits(tmp_path, tiny_classifier, monkeypatch):
  ck = jaxplain.save_classifier(_other(tiny_classifier, 3e37), tmp_path / "ck")  # finite, huge
  with pytest.raises(ValueError, match="non-finite logits on a probe image"):
    jaxplain.load_classifier(ck)


def test_save_refuses_nonfinite_weights(tmp_path, tiny_classifier):
  with pytest.raises(ValueError, match="hold NaN or Inf"):
    jaxplain.save_classifier(_other(tiny_classifier, np.nan), tmp_path / "ck")
  assert not list(tmp_path.iterdir())


def test_class_names_must_name_every_output(shipped_copy):
  meta = json.loads((shipped_copy / checkpoint.META_FILE).read_text())
  meta["class_names"] = meta["class_names"][:5]
  (shipped_copy / checkpoint.META_FILE).write_text(json.dumps(meta))
  with pytest.raises(ValueError, match="5 class names for a model with 7 outputs"):
    jaxplain.load_classifier(shipped_copy)


def test_no_event_loop_tracebacks_after_a_clean_error(shipped_copy):
  """Issue 11: orbax closed its event loop while tensorstore still finished reads."""
  meta = json.loads((shipped_copy / checkpoint.META_FILE).read_text())
  del meta["sha256"]  # let orbax itself meet the damage
  (shipped_copy / checkpoint.META_FILE).write_text(json.dumps(meta))
  for f in (shipped_copy / "variables").rglob("*"):
    if f.is_file() and "ocdbt" in str(f):
      f.write_bytes(f.read_bytes()[: f.stat().st_size // 3])
  code = ("import warnings, jaxplain\nwarnings.simplefilter('ignore')\nfor _ in range(6):\n"
          f"  try: jaxplain.load_classifier({str(shipped_copy)!r})\n"
          "  except ValueError as e: print('refused', str(e)[:60])\n")
  run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env=dict(os.environ, PYTHONPATH=str(REPO)), timeout=300)
  assert run.returncode == 0, run.stderr[-2000:]
  assert run.stdout.count("refused") == 6
  assert "Event loop is closed" not in run.stderr, run.stderr[-2000:]
  assert "Traceback" not in run.stderr, run.stderr[-2000:]


# --- 3. training runs -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_csvs(tmp_path_factory):
  """Two small Kaggle CSVs of separable faces (different rows)."""
  root = tmp_path_factory.mktemp("csv")
  paths = []
  for seed in (0, 1):
    rng = np.random.default_rng(seed)
    labels = np.arange(64) % 2 * 3
    images = (np.where(labels[:, None, None] == 3, 180, 60)
              + rng.integers(-40, 40, (64, 48, 48))).clip(0, 255)
    rows = ["emotion,pixels,Usage"] + [f"{l},{' '.join(map(str, im.ravel()))},Training"
                                       for l, im in zip(labels, images)]
    paths.append(root / f"fer{seed}.csv")
    paths[-1].write_text("\n".join(rows) + "\n")
  return paths


@pytest.fixture(scope="module")
def one_epoch_run(tmp_path_factory, tiny_csvs):
  """A run directory after one epoch of a two-epoch run (copied by each test)."""
  run = tmp_path_factory.mktemp("run") / "run"
  cfg = train.TrainConfig(epochs=2, batch_size=32, model=TINY)
  train.fit(data.load(tiny_csvs[0]), None, cfg, run_dir=run, stop_after=1, log=lambda s: None)
  return run, cfg


def test_new_run_in_a_run_dir_holding_another_is_refused(tmp_path, one_epoch_run, tiny_csvs):
  src, cfg = one_epoch_run
  run = tmp_path / "run"
  shutil.copytree(src, run)
  (run / "notes.txt").write_text("mine")
  before = checkpoint.file_digests(run)
  with pytest.raises(ValueError, match=r"holds another run \(epochs 1\).*--resume.*--fresh"):
    checkpoint.check_run_dir(run)  # what the CLI asks before reading the data
  assert checkpoint.check_run_dir(run, resume=True) == run
  faces = data.load(tiny_csvs[0])
  with pytest.raises(ValueError, match=r"holds another run \(epochs 1\).*--resume.*--fresh"):
    train.fit(faces, None, cfg, run_dir=run, log=lambda s: None)
  assert checkpoint.file_digests(run) == before
  with pytest.raises(ValueError, match="not both"):
    train.fit(faces, None, cfg, run_dir=run, resume=True, fresh=True, log=lambda s: None)
  # fresh: the old epochs go (only they), and this run's epoch 1 is really saved
  old = json.loads((run / checkpoint.RUN_FILE).read_text())["sha256"]["1"]
  train.fit(faces, None, dataclasses.replace(cfg, seed=5), run_dir=run, fresh=True,
            stop_after=1, log=lambda s: None)
  record = json.loads((run / checkpoint.RUN_FILE).read_text())
  assert record["config"]["seed"] == 5 and record["sha256"]["1"] != old
  assert record["sha256"]["1"] == checkpoint.file_digests(run / "1")
  assert (run / "notes.txt").read_text() == "mine"


def test_resume_with_other_data_is_refused(tmp_path, one_epoch_run, tiny_csvs):
  src, cfg = one_epoch_run
  run = tmp_path / "run"
  shutil.copytree(src, run)
  with pytest.raises(ValueError, match=r"trained on .*fer0\.csv \(\d+ bytes.*not on .*fer1\.csv"):
    train.fit(data.load(tiny_csvs[1]), None, cfg, run_dir=run, resume=True, log=lambda s: None)
  record = json.loads((run / checkpoint.RUN_FILE).read_text())
  assert record["data"]["size"] == tiny_csvs[0].stat().st_size
  assert record["data"]["sha256"] == checkpoint.sha256(tiny_csvs[0])


def test_corrupted_epoch_checkpoint_is_refused_at_resume(tmp_path, one_epoch_run, tiny_csvs):
  src, cfg = one_epoch_run
  run = tmp_path / "run"
  shutil.copytree(src, run)
  weights = _largest_weight_file_of(run / "1")
  _xor_middle(weights)
  with pytest.raises(ValueError, match=f"{weights.name}: sha256 differs.*epoch 1"):
    train.fit(data.load(tiny_csvs[0]), None, cfg, run_dir=run, resume=True, log=lambda s: None)


def _largest_weight_file_of(path):
  return max((p for p in path.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


@pytest.mark.parametrize("options, message", [
    (dict(epochs=0), "`epochs` must be an int >= 1, got 0"),
    (dict(batch_size=0), "`batch_size` must be an int >= 1, got 0"),
    (dict(model=dict(widths=(8, 16), depths=(1,))), r"`widths` \[8, 16\] and `depths` \[1\]"),
    (dict(learning_rate=float("nan")), "`learning_rate` must be a finite number"),
    (dict(model=dict(width=8)), "unknown CNN options"),
])
def test_train_config_refuses_settings_that_cannot_train(options, message):
  with pytest.raises(ValueError, match=message):
    train.TrainConfig(**options)


# --- 4. inputs --------------------------------------------------------------------------------

@pytest.mark.parametrize("bad, message", [
    (np.full((1, 48, 48, 1), np.inf, np.float32), "contains Inf"),
    (np.full((1, 48, 48, 1), 200.0, np.float32), r"outside .*\[0, 1\].*jaxplain.data.to_float"),
    (np.full((1, 48, 48, 1), -0.5, np.float32), r"outside .*\[0, 1\]"),
    (np.zeros((2, 1, 48, 48), np.float32), r"NCHW.*x.transpose\(0, 2, 3, 1\)"),
])
def test_check_images_refuses(bad, message):
  for x in (bad, jax.numpy.asarray(bad)):  # NumPy and JAX arrays alike
    with pytest.raises(ValueError, match=message):
      models.check_images(x, shape=(48, 48, 1))
  models.check_images(np.clip(np.zeros((1, 48, 48, 1)) + 1 + 1e-6, 0, None).astype(np.float32),
                      shape=(48, 48, 1))  # rounding above 1 is fine


def test_nchw_without_a_known_shape():
  with pytest.raises(ValueError, match="looks like NCHW"):
    models.check_images(np.zeros((2, 3, 32, 32), np.float32))


@pytest.mark.skipif(jax.config.jax_enable_x64, reason="x64 keeps float64")
def test_float64_warns_once(monkeypatch):
  monkeypatch.setattr(models, "_WARNED_FLOAT64", False)
  with pytest.warns(UserWarning, match="float64 but jax_enable_x64 is off"):
    models.check_images(np.zeros((1, 4, 4, 1)))
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    models.check_images(np.zeros((1, 4, 4, 1)))


def test_every_method_refuses_inf_and_0_255(tiny_classifier, faces):
  from jaxplain import attribution, lime
  x = data.to_float(faces.images[:2])
  t = np.asarray(faces.labels[:2])
  inf = x.copy()
  inf[0, 3, 3, 0] = np.inf
  for bad, message in ((x * 255, "jaxplain.data.to_float"), (inf, "Inf")):
    for method in ("saliency", "integrated_gradients", "smoothgrad", "occlusion", "grad_cam",
                   "guided_backprop"):
      with pytest.raises(ValueError, match=message):
        attribution.attribute(tiny_classifier, bad, t, method=method, key=jax.random.key(0))
    with pytest.raises(ValueError, match=message):
      attribution.saliency(tiny_classifier.forward, bad, t)  # a plain forward function too
    segments = np.repeat(np.arange(4), 48 * 48 // 4).reshape(1, 48, 48).repeat(2, 0)
    with pytest.raises(ValueError, match=message):
      lime.lime_batch(tiny_classifier.forward, bad, t, segments, key=jax.random.key(0),
                      num_samples=8)


def test_declared_input_range(tiny_classifier, faces):
  from jaxplain import attribution
  x = data.to_float(faces.images[:2]) * 2 - 1  # images in [-1, 1]
  t = np.asarray(faces.labels[:2])
  with pytest.raises(ValueError, match=r"\[-1, 1\].*outside"):
    attribution.saliency(tiny_classifier, x, t)
  clf = models.declare_input_range(tiny_classifier, -1.0, 1.0)
  assert clf.input_range == (-1.0, 1.0) and models.input_range(clf.forward) == (-1.0, 1.0)
  a = attribution.saliency(clf, x, t)
  b = attribution.saliency(clf.forward, x, t)
  np.testing.assert_array_equal(a, b)
  unchecked = models.declare_input_range(tiny_classifier.forward, None)  # no range check
  np.testing.assert_array_equal(b, attribution.saliency(unchecked, x, t))
  with pytest.raises(ValueError, match=r"outside the classifier's input range \[-1, 1\]"):
    attribution.saliency(clf.forward, x * 255, t)
  plain = models.declare_input_range(lambda v: tiny_classifier.forward(v), -1.0, 1.0)
  assert attribution.saliency(plain, x, t).shape == x.shape


def test_declared_range_is_saved(tmp_path, tiny_classifier):
  clf = models.declare_input_range(tiny_classifier, -1.0, 1.0)
  loaded = jaxplain.load_classifier(jaxplain.save_classifier(clf, tmp_path / "ck"))
  assert loaded.input_range == (-1.0, 1.0)


def test_late_read_reports_of_a_failed_restore_are_dropped(tmp_path, caplog):
  """A read orbax abandoned after a failed restore is reported by asyncio when collected (seen
  under load); jaxplain drops exactly those reports, for checkpoints whose restore failed."""
  import logging
  bad = str(tmp_path / "ck")
  with pytest.raises(RuntimeError), checkpoint._orbax_reads(bad):
    raise RuntimeError("a read failed")
  logger = logging.getLogger("asyncio")
  with caplog.at_level(logging.ERROR, logger="asyncio"):
    for where in (f"{bad}/variables", f"{tmp_path}/other"):
      logger.error("Task exception was never retrieved\nfuture: <Task finished "
                   f"exception=ValueError('DATA_LOSS: {where}')>")
    logger.error(f"something else about {bad}")
  messages = [r.getMessage() for r in caplog.records]
  assert len(messages) == 2 and all(bad + "/variables" not in m for m in messages)
