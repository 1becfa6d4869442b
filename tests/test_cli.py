"""The ``jaxplain`` command as a user runs it: every subcommand and every registered method end to
end on the bundled faces (tiny settings), and the mistakes people make, each answered by one line
on stderr and an exit code, with the files on disk checked before and after."""

import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from jaxplain import cli
from jaxplain.attribution import registry

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, tiny_classifier):
  import jaxplain
  return jaxplain.save_classifier(tiny_classifier, tmp_path_factory.mktemp("cli") / "ckpt")


def run(*args, timeout=600, **env_vars):
  """``python -m jaxplain.cli ARGS`` in a subprocess: (exit code, stdout, stderr)."""
  env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu", **env_vars)
  p = subprocess.run([sys.executable, "-m", "jaxplain.cli", *map(str, args)], cwd=ROOT, env=env,
                     capture_output=True, text=True, timeout=timeout)
  return p.returncode, p.stdout, p.stderr


def one_error_line(stderr: str) -> str:
  lines = [line for line in stderr.strip().splitlines() if line.strip()]
  assert len(lines) == 1, stderr
  assert "Traceback" not in stderr
  return lines[0]


def user_folder(root: pathlib.Path) -> dict:
  """A folder of a user's files that jaxplain must never delete; returns its contents."""
  root.mkdir(parents=True, exist_ok=True)
  (root / "thesis.tex").write_text("\\chapter{FER}")
  (root / "sub").mkdir(exist_ok=True)
  (root / "sub" / "results.csv").write_text("a,b\n1,2\n")
  return snapshot(root)


def snapshot(root: pathlib.Path) -> dict:
  return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------------- smoke


@pytest.mark.parametrize("method", registry.names())
def test_explain_every_registered_method(ckpt, tmp_path, method):
  out = tmp_path / method
  args = ["explain", "--checkpoint", str(ckpt), "--method", method, "--per-class", "1",
          "--out", str(out), "-q"]
  options = {"smoothgrad": ["--samples", "2"], "integrated_gradients": ["--steps", "4"],
             "occlusion": ["--window", "16", "--stride", "16"]}
  args += options.get(method, [])
  if registry.get(method).kind == "perturbation" and method != "occlusion":
    args += [a for o in ("samples=8",) for a in ("--option", o)] \
        if "samples" in registry.get(method).options else []
  assert cli.main(args) == 0
  saved = np.load(out / f"{method}.npz")
  assert saved["attributions"].shape == (7, 48, 48, 1)
  assert np.isfinite(saved["attributions"]).all()
  assert (out / f"{method}_000.png").stat().st_size > 1000


def test_explain_ig_with_tolerance_and_aliases(ckpt, tmp_path):
  # 'ig' used to crash: `attribute_many() got multiple values for keyword argument 'method'`
  assert cli.main(["explain", "--checkpoint", str(ckpt), "--method", "ig", "--rule",
                   "riemann_trapezoid", "--steps", "8", "--out", str(tmp_path / "a"), "-q"]) == 0
  assert (tmp_path / "a" / "integrated_gradients.npz").is_file()
  assert cli.main(["explain", "--checkpoint", str(ckpt), "--method", "ig", "--tol", "0.05",
                   "--out", str(tmp_path / "b"), "-q"]) == 0
  saved = np.load(tmp_path / "b" / "integrated_gradients.npz")
  assert (saved["steps"] >= 1).all()
  diff = np.abs(saved["gaps"]) <= 0.05 * np.abs(saved["attributions"].sum((1, 2, 3))
                                                 - saved["gaps"]) + 1e-4
  assert diff.all()


def test_evaluate_lime_filters_write_their_files(ckpt, tmp_path, capsys):
  assert cli.main(["evaluate", "--checkpoint", str(ckpt), "--out", str(tmp_path / "ev")]) == 0
  assert "surprise" in capsys.readouterr().out  # not cut to 'surpris'
  assert (tmp_path / "ev" / "confusion_matrix.png").is_file()
  assert cli.main(["lime", "--checkpoint", str(ckpt), "--per-class", "1", "--num-samples", "20",
                   "--out", str(tmp_path / "lime"), "-q"]) == 0
  assert {"lime.npz", "lime.json", "lime_classes.png"} <= set(os.listdir(tmp_path / "lime"))
  assert cli.main(["filters", "--checkpoint", str(ckpt), "--filters", "0:2", "--steps", "4",
                   "--out", str(tmp_path / "f"), "-q"]) == 0
  assert any(p.suffix == ".png" for p in (tmp_path / "f").iterdir())


def test_evaluate_without_data_says_it_uses_the_bundled_faces(ckpt, capsys):
  assert cli.main(["evaluate", "--checkpoint", str(ckpt)]) == 0
  assert "bundled sample faces" in capsys.readouterr().err


# ------------------------------------------------------------------------------ errors


@pytest.mark.parametrize("args, message", [
    (["explain", "--method", "saliency", "--per-class", "-1"], "per-class must be >= 0"),
    (["explain", "--method", "saliency", "--steps", "5"], "--steps does not apply"),
    (["explain", "--method", "grad_cam", "--layer", "nope"], "layer 'nope'"),
    (["explain", "--method", "smoothgrad", "--stdev", "nan"], "`stdev` must be a finite"),
    (["explain", "--method", "saliency", "--images-per-batch", "0"], "images-per-batch"),
    (["lime", "--n-segments", "0"], "n-segments must be a positive number"),
    (["lime", "--num-samples", "1"], "num-samples must be >= 2"),
    (["filters", "--steps", "0"], "steps must be a positive number"),
    (["report", "--methods", "nope"], "unknown attribution method 'nope'"),
])
def test_bad_options_are_one_line_errors_before_any_file(ckpt, tmp_path, args, message, capsys):
  out = tmp_path / "out"
  argv = [args[0], "--checkpoint", str(ckpt), *args[1:], "--out", str(out)]
  assert cli.main(argv) == 2
  line = one_error_line(capsys.readouterr().err)
  assert message in line and line.startswith(f"jaxplain {args[0]}: error:")
  assert not out.exists()


@pytest.mark.parametrize("command", [
    ["explain", "--method", "saliency"], ["lime", "--num-samples", "20"], ["evaluate"],
    ["report", "--filters", "1"]])
def test_out_never_replaces_a_users_folder(ckpt, tmp_path, command, capsys):
  out = tmp_path / "mine"
  before = user_folder(out)
  for extra in ([], ["--overwrite"]):
    assert cli.main([command[0], "--checkpoint", str(ckpt), *command[1:], "--out", str(out),
                     *extra]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "--overwrite" in line or "not written by jaxplain" in line
    assert snapshot(out) == before


def test_out_naming_a_file_is_refused(ckpt, tmp_path, capsys):
  target = tmp_path / "notes.txt"
  target.write_text("keep me")
  assert cli.main(["explain", "--checkpoint", str(ckpt), "--method", "saliency", "--out",
                   str(target)]) == 2
  one_error_line(capsys.readouterr().err)
  assert target.read_text() == "keep me"


def test_overwrite_replaces_only_jaxplain_output(ckpt, tmp_path, capsys):
  out = tmp_path / "run"
  argv = ["explain", "--checkpoint", str(ckpt), "--method", "saliency", "--out", str(out), "-q"]
  assert cli.main(argv) == 0
  assert cli.main(argv) == 2  # exists: needs --overwrite
  assert "--overwrite" in one_error_line(capsys.readouterr().err)
  assert cli.main(argv + ["--method", "input_x_gradient", "--overwrite"]) == 0
  assert (out / "input_x_gradient.npz").is_file() and not (out / "saliency.npz").exists()


def test_unwritable_out_is_named(ckpt, tmp_path, capsys):
  if os.geteuid() == 0:
    parent = pathlib.Path("/proc/jaxplain-cannot-write-here")
  else:
    parent = tmp_path / "ro"
    parent.mkdir()
    parent.chmod(0o500)
  assert cli.main(["evaluate", "--checkpoint", str(ckpt), "--out", str(parent / "x")]) in (1, 2)
  line = one_error_line(capsys.readouterr().err)
  assert "jaxplain-cannot-write-here" in line or "ro" in line


def test_subprocess_errors_are_one_line_with_exit_codes(ckpt, tmp_path):
  code, _, err = run("explain", "--checkpoint", ckpt, "--method", "saliency", "--per-class",
                     "-1", "--out", tmp_path / "x")
  assert code == 2 and "per-class" in one_error_line(err)
  code, _, err = run("evaluate", "--checkpoint", tmp_path / "missing")
  assert code == 2 and "missing" in one_error_line(err)


def test_ctrl_c_during_report_is_one_line_and_leaves_nothing(ckpt, tmp_path):
  out = tmp_path / "report"
  env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
  # A suite started in the background (`pytest &`) passes SIGINT on ignored, and Python keeps
  # it ignored: the child restores Ctrl-C's KeyboardInterrupt before running the CLI.
  start = ("import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
           "sys.argv = ['jaxplain'] + sys.argv[1:]; runpy.run_module('jaxplain.cli', "
           "run_name='__main__')")
  p = subprocess.Popen([sys.executable, "-c", start, "report", "--checkpoint", str(ckpt),
                        "--out", str(out)], cwd=ROOT, env=env,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 120
  while time.time() < deadline and p.poll() is None and not any(tmp_path.iterdir()):
    time.sleep(0.2)  # until the report's temporary folder shows that the work has started
  time.sleep(2.0)
  p.send_signal(signal.SIGINT)
  _, err = p.communicate(timeout=120)
  assert p.returncode == 130, err
  assert "Traceback" not in err
  problems = [line for line in err.splitlines() if "error" in line or "interrupted" in line]
  assert len(problems) == 1 and "interrupted" in problems[0], err
  assert not list(tmp_path.iterdir())  # neither the report nor its temporary folder


@pytest.mark.parametrize("setting", ["folder", "off"])
def test_compilation_cache_setting(tmp_path, monkeypatch, setting):
  from jaxplain import cli
  before = jax.config.jax_compilation_cache_dir
  monkeypatch.setenv("JAXPLAIN_COMPILATION_CACHE",
                     str(tmp_path / "xla") if setting == "folder" else "off")
  try:
    cli._use_compilation_cache()
    want = str(tmp_path / "xla") if setting == "folder" else before
    assert jax.config.jax_compilation_cache_dir == want
    assert (tmp_path / "xla").is_dir() == (setting == "folder")
  finally:
    jax.config.update("jax_compilation_cache_dir", before)


@pytest.mark.slow
def test_second_run_reuses_the_compilation_cache(tmp_path, ckpt):
  cache = tmp_path / "xla"
  args = ("explain", "--checkpoint", ckpt, "--method", "integrated_gradients", "--steps", "64",
          "--per-class", "1")
  # every program, however fast it compiles (the CLI's default keeps those over 0.5 s)
  env = dict(JAXPLAIN_COMPILATION_CACHE=str(cache), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
  code, _, err = run(*args, "--out", tmp_path / "a", **env)
  assert code == 0, err
  stored = sorted(p.name for p in cache.iterdir())
  assert stored, "nothing was cached"
  code, _, err = run(*args, "--out", tmp_path / "b", **env)
  assert code == 0, err
  assert sorted(p.name for p in cache.iterdir()) == stored  # every program came from the cache
