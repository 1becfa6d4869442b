import os
import re
import shutil
import subprocess

import jax
import numpy as np
import pytest

from jaxplain import cli, data, report

SMALL = report.ReportConfig(
    method_options={"smoothgrad": {"samples": 3}, "integrated_gradients": {"steps": 8}},
    ig_tol=0.05, filters=4, filter_steps=16, lime_samples=40, lime_per_class=1, per_class=2,
    measure_ig_steps=4, trust_metrics=True)


def test_band_shares_analytic():
  uniform = np.ones((2, 48, 48))
  s = report.band_shares(uniform)
  for name, (r0, r1) in report.BANDS.items():
    np.testing.assert_allclose(s[name], (r1 - r0) / 48)
  np.testing.assert_allclose(sum(s.values()), 1.0)
  eyes_only = np.zeros((48, 48))
  eyes_only[15:20, 10:20] = 3.0
  s = report.band_shares(eyes_only)
  assert s["eyes"] == pytest.approx(1.0) and s["mouth"] == 0 and s["other"] == pytest.approx(0)


def test_class_mean_maps_pads_and_averages_per_class():
  images = np.zeros((5, 48, 48), np.uint8)
  images[:, 0, 0] = [10, 20, 30, 40, 50]
  labels = np.array([0, 1, 0, 1, 1])
  calls = []

  def method(key, x, t):  # attribution = the image itself
    calls.append(x.shape)
    return x

  maps, counts = report.class_mean_maps(method, jax.random.key(0), images, labels,
                                        num_classes=3, batch_size=2)
  assert calls == [(2, 48, 48, 1)] * 3  # fixed shape: the last batch is padded
  np.testing.assert_array_equal(counts, [2, 3, 0])
  np.testing.assert_allclose(maps[0, 0, 0], (10 + 30) / 2 / 255, rtol=1e-6)
  np.testing.assert_allclose(maps[1, 0, 0], (20 + 40 + 50) / 3 / 255, rtol=1e-6)
  assert np.isnan(maps[2]).all()


def test_last_spatial_layer(tiny_classifier):
  assert report.last_spatial_layer(tiny_classifier) == "pool2"  # 12x12 >= 48/8


@pytest.fixture(scope="module")
def small_report(tmp_path_factory, tiny_classifier):
  faces = data.sample_faces()
  out = tmp_path_factory.mktemp("rep") / "report"
  page = report.report(tiny_classifier, faces, out, config=SMALL, measure=faces,
                       checkpoint_name="tiny", log=lambda s: None)
  return page


def test_report_writes_every_figure(small_report):
  html = small_report.read_text()
  sources = re.findall(r"<img src='([^']+)'", html)
  assert {"attributions.png", "integrated_gradients.png", "filters.png", "filter_outputs.png",
          "lime.png", "lime_package.png", "confusion_matrix.png", "class_mean_maps.png",
          "band_shares.png", "deletion_insertion.png", "sanity_check.png"} <= set(sources)
  titles = re.findall(r"<h2>(\d)\. ", html)
  assert titles == ["1", "2", "3", "4"]  # the questions in order
  settings = html[html.index("<h2>Settings</h2>"):]
  assert "None" not in settings and "conv" in settings or "pool" in settings
  for src in sources:
    assert (small_report.parent / src).stat().st_size > 1000
  assert "completeness" in html.lower() and "Settings" in html
  trust = html[html.index("Which explanation to trust?"):]
  for method in ("saliency", "occlusion", "lime"):  # a row per method, with scores
    assert re.search(rf"<td>{method}</td><td>-?\d\.\d{{3}} ± \d\.\d{{3}}</td>", trust), method
  assert not list(small_report.parent.parent.glob(".report.*"))  # no temporary left


def test_report_renders_in_headless_chromium(small_report, tmp_path):
  browser = shutil.which("chromium") or shutil.which("chromium-browser") or \
      shutil.which("google-chrome")
  if browser is None:
    if os.environ.get("CI"):  # CI installs it (.ci/run): a missing browser is a failure there
      pytest.fail("no headless Chromium in CI: .ci/run must install it")
    pytest.skip("no headless Chromium (apt-get install chromium)")
  dom = subprocess.run(
      [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
       "--no-first-run", "--disable-background-networking", "--disable-component-update",
       "--disable-sync", f"--user-data-dir={tmp_path}", "--virtual-time-budget=10000",
       "--dump-dom", small_report.as_uri()],
      capture_output=True, text=True, timeout=120).stdout
  images = re.findall(r"<img [^>]*>", dom)
  assert len(images) >= 8
  for tag in images:
    assert 'data-loaded="1"' in tag and "data-broken" not in tag, tag


def test_cli_report_with_user_images(tmp_path, tiny_classifier, monkeypatch):
  from PIL import Image
  import jaxplain
  ckpt = jaxplain.save_classifier(tiny_classifier, tmp_path / "ckpt")
  rng = np.random.default_rng(0)
  photos = []
  for i, size in enumerate([(120, 90, 3), (64, 64)]):
    photos.append(tmp_path / f"p{i}.png")
    Image.fromarray(rng.integers(0, 256, size, dtype=np.uint8)).save(photos[-1])
  assert cli.main(["report", "--checkpoint", str(ckpt), "--images", *map(str, photos),
                   "--filters", "2", "--lime-samples", "20", "--ig-tol", "0.1",
                   "--out", str(tmp_path / "out")]) == 0
  html = (tmp_path / "out" / "index.html").read_text()
  assert "face 0" in html and "face 1" in html
