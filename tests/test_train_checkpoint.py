import json
import shutil

import jax
import numpy as np
import pytest

import jaxplain
from jaxplain import checkpoint, cli, data, train

TINY = dict(widths=(8, 16), depths=(1, 1), hidden=16)


@pytest.fixture(scope="module")
def tiny_faces():
  rng = np.random.default_rng(0)
  # Two separable classes (bright vs dark) so a few steps visibly learn.
  labels = np.arange(192) % 2 * 3
  images = np.where(labels[:, None, None] == 3, 180, 60) + rng.integers(-40, 40, (192, 48, 48))
  return data.Faces(images.clip(0, 255).astype(np.uint8), labels.astype(np.int32),
                    np.array(["Training"] * 160 + ["PublicTest"] * 32))


def test_resume_ends_where_uninterrupted_run_ends(tmp_path, tiny_faces):
  cfg = train.TrainConfig(epochs=3, batch_size=32, model=TINY)
  tr, val = tiny_faces.split("Training"), tiny_faces.split("PublicTest")
  logs = []
  train.fit(tr, val, cfg, run_dir=tmp_path / "a", stop_after=1, log=logs.append)
  resumed = train.fit(tr, val, cfg, run_dir=tmp_path / "a", resume=True, log=logs.append)
  assert any("resumed from epoch 1" in line for line in logs)
  straight = train.fit(tr, val, cfg, run_dir=tmp_path / "b", log=logs.append)
  for a, b in zip(jax.tree.leaves(resumed.variables), jax.tree.leaves(straight.variables)):
    np.testing.assert_array_equal(a, b)
  assert [h["epoch"] for h in resumed.metadata["history"]] == [1, 2, 3]
  ev = train.evaluate(straight, val.images, val.labels)
  assert ev.accuracy > 0.9  # the separable task is learnt: training does train


def test_resume_with_other_settings_is_refused(tmp_path, tiny_faces):
  tr = tiny_faces.split("Training")
  train.fit(tr, None, train.TrainConfig(epochs=2, batch_size=32, model=TINY),
            run_dir=tmp_path, stop_after=1, log=lambda s: None)
  with pytest.raises(ValueError, match="other settings"):
    train.fit(tr, None, train.TrainConfig(epochs=2, batch_size=64, model=TINY),
              run_dir=tmp_path, resume=True, log=lambda s: None)


def test_init_from_starts_at_the_saved_weights(tmp_path, tiny_faces):
  tr, val = tiny_faces.split("Training"), tiny_faces.split("PublicTest")
  first = train.fit(tr, val, train.TrainConfig(epochs=2, batch_size=32, model=TINY),
                    log=lambda s: None)
  jaxplain.save_classifier(first, tmp_path / "first")
  # With a zero learning rate the parameters stay the saved ones, bit for bit.
  frozen = train.fit(tr, None, train.TrainConfig(epochs=1, batch_size=32, model=TINY,
                                                 learning_rate=0.0, seed=1,
                                                 init_from=str(tmp_path / "first")),
                     log=lambda s: None)
  for a, b in zip(jax.tree.leaves(frozen.variables["params"]),
                  jax.tree.leaves(first.variables["params"])):
    np.testing.assert_array_equal(a, b)
  assert frozen.metadata["train"]["init_from"] == str(tmp_path / "first")
  assert frozen.metadata["init_from"]["train"]["epochs"] == 2  # the first stage's recipe
  with pytest.raises(ValueError, match="--widths"):
    train.fit(tr, None, train.TrainConfig(epochs=1, batch_size=32, model=dict(TINY, hidden=8),
                                          init_from=str(tmp_path / "first")),
              log=lambda s: None)


def test_killed_save_keeps_last_good_checkpoint(tmp_path, tiny_faces):
  tr = tiny_faces.split("Training")
  cfg = train.TrainConfig(epochs=2, batch_size=32, model=TINY)
  train.fit(tr, None, cfg, run_dir=tmp_path, stop_after=1, log=lambda s: None)
  # What a kill during orbax's write of epoch 2 leaves: an unfinished temporary directory.
  (tmp_path / "2.orbax-checkpoint-tmp-123").mkdir()
  logs = []
  train.fit(tr, None, cfg, run_dir=tmp_path, resume=True, log=logs.append)
  assert any("resumed from epoch 1" in line for line in logs)


def test_save_load_roundtrip(tmp_path, tiny_classifier, faces):
  path = jaxplain.save_classifier(tiny_classifier, tmp_path / "clf")
  loaded = jaxplain.load_classifier(path)
  x = data.to_float(faces.images[:5])
  np.testing.assert_array_equal(loaded.forward(x), tiny_classifier.forward(x))
  assert loaded.class_names == jaxplain.CLASS_NAMES
  assert loaded.layer_names == tiny_classifier.layer_names
  with pytest.raises(ValueError, match="exists"):
    jaxplain.save_classifier(tiny_classifier, path)
  assert [p.name for p in tmp_path.iterdir()] == ["clf"]  # no temporary left behind


def test_load_errors(tmp_path, tiny_classifier):
  with pytest.raises(ValueError, match="no such checkpoint"):
    jaxplain.load_classifier(tmp_path / "missing")
  (tmp_path / "empty").mkdir()
  with pytest.raises(ValueError, match="not a jaxplain checkpoint"):
    jaxplain.load_classifier(tmp_path / "empty")
  path = jaxplain.save_classifier(tiny_classifier, tmp_path / "clf")
  # another architecture's config beside these weights
  meta = json.loads((path / checkpoint.META_FILE).read_text())
  meta["config"]["widths"] = [8, 32]
  other = tmp_path / "other"
  shutil.copytree(path, other)
  (other / checkpoint.META_FILE).write_text(json.dumps(meta))
  with pytest.raises(ValueError, match="do not fit the architecture.*wrong shapes"):
    jaxplain.load_classifier(other)
  # truncated: weights gone, or damaged
  trunc = tmp_path / "trunc"
  shutil.copytree(path, trunc)
  shutil.rmtree(trunc / "variables")
  with pytest.raises(ValueError, match="truncated"):
    jaxplain.load_classifier(trunc)
  damaged = tmp_path / "damaged"
  shutil.copytree(path, damaged)
  for f in (damaged / "variables").rglob("*"):
    if f.is_file():
      f.write_bytes(f.read_bytes()[: len(f.read_bytes()) // 3])
  with pytest.raises(ValueError, match="variables/.*sha256 differs.*is damaged"):
    jaxplain.load_classifier(damaged)
  # without recorded checksums (an older jaxplain's checkpoint) orbax's own error is reported
  meta = json.loads((damaged / checkpoint.META_FILE).read_text())
  del meta["sha256"]
  (damaged / checkpoint.META_FILE).write_text(json.dumps(meta))
  with pytest.warns(UserWarning, match="no checksums"), \
      pytest.raises(ValueError, match="truncated or damaged|do not fit"):
    jaxplain.load_classifier(damaged)


def test_cli_train_and_evaluate(tmp_path, tiny_faces, capsys):
  rows = ["emotion,pixels,Usage"] + [
      f"{l},{' '.join(map(str, im.ravel()))},{u}"
      for im, l, u in zip(tiny_faces.images, tiny_faces.labels, tiny_faces.usage)]
  csv = tmp_path / "tiny.csv"
  csv.write_text("\n".join(rows) + "\n")
  out = tmp_path / "model"
  assert cli.main(["train", "--data", str(csv), "--epochs", "1", "--batch-size", "32",
                   "--widths", "8,16", "--depths", "1,1", "--hidden", "16",
                   "--run-dir", str(tmp_path / "run"), "--out", str(out)]) == 0
  assert "accuracy" in capsys.readouterr().out
  assert cli.main(["evaluate", "--checkpoint", str(out), "--data", str(csv), "--split",
                   "PublicTest", "--out", str(tmp_path / "ev")]) == 0
  printed = capsys.readouterr().out
  assert "confusion matrix" in printed and "32 faces" in printed
  assert (tmp_path / "ev" / "confusion_matrix.png").stat().st_size > 1000
  assert cli.main(["evaluate", "--checkpoint", str(tmp_path / "nope")]) == 2
  # A warm restart takes the saved architecture, whatever the architecture flags say.
  again = tmp_path / "again"
  assert cli.main(["train", "--data", str(csv), "--epochs", "1", "--batch-size", "32",
                   "--init-from", str(out), "--run-dir", str(tmp_path / "run2"),
                   "--out", str(again)]) == 0
  assert jaxplain.load_classifier(again).metadata["config"]["widths"] == [8, 16]
  assert cli.main(["train", "--data", str(csv), "--init-from", str(tmp_path / "nope")]) == 2


def test_shipped_checkpoint(faces):
  clf = jaxplain.load_classifier(jaxplain.shipped_checkpoint())
  logits = clf.forward(data.to_float(faces.images))
  assert logits.shape == (35, 7)
  acc = (np.asarray(logits).argmax(-1) == faces.labels).mean()
  assert acc > 0.5  # sample faces are training faces: a trained model gets most right


@pytest.fixture(scope="module")
def public_test_accuracy(shared_csv):
  clf = jaxplain.load_classifier(jaxplain.shipped_checkpoint())
  test = data.load_csv(shared_csv, usage="PublicTest")
  return clf, train.evaluate(clf, test.images, test.labels).accuracy


@pytest.mark.slow
def test_shipped_checkpoint_accuracy_is_the_recorded_one(public_test_accuracy):
  clf, accuracy = public_test_accuracy
  recorded = clf.metadata["evaluation"]["PublicTest"]["accuracy"]
  assert accuracy == pytest.approx(recorded, abs=1e-6)


@pytest.mark.slow
def test_shipped_checkpoint_reaches_target_accuracy(public_test_accuracy):
  assert public_test_accuracy[1] >= 0.64
