"""jaxplain.attribution against Captum on identical weights, on real faces.

Two models: a PyTorch twin of jaxplain's own CNN (weights copied from ``tiny_classifier``) and
the pretrained FER2013 ``NetworkV2`` converted with ``jaxplain.convert`` (skipped when not
fetched). Float64: max |ours − Captum| / max |Captum| ≤ 1e-6 for every method; float32 ≤ 1e-4
for single-gradient methods.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxplain import attribution as A
from jaxplain import data

torch = pytest.importorskip("torch")
captum_attr = pytest.importorskip("captum.attr")
from captum.attr._core import integrated_gradients as ig_module  # noqa: E402
from captum.attr._utils import approximation_methods  # noqa: E402

import reference_models  # noqa: E402  (tests/ is on sys.path under pytest)

nn = torch.nn
TOL = {"float64": 1e-6, "float32": 1e-4}


# ---------------------------------------------------------------------------------------------
# The PyTorch twin of jaxplain's CNN
# ---------------------------------------------------------------------------------------------


class Twin(nn.Module):
  """jaxplain.models.CNN in PyTorch: conv (no bias) + BatchNorm(eval) + ReLU, max-pooled."""

  def __init__(self, cfg, k):
    super().__init__()
    self.mean, self.std = cfg["mean"], cfg["std"]
    self.layers = nn.ModuleDict()
    cin = 1
    for s, (w, d) in enumerate(zip(cfg["widths"], cfg["depths"]), start=1):
      for i in range(1, d + 1):
        self.layers[f"conv{s}_{i}_conv"] = nn.Conv2d(cin, w, 3, padding=1, bias=False)
        self.layers[f"conv{s}_{i}_bn"] = nn.BatchNorm2d(w, eps=1e-5)
        self.layers[f"conv{s}_{i}"] = nn.ReLU()
        cin = w
      self.layers[f"pool{s}"] = nn.MaxPool2d(2)
    self.dense = nn.Linear(cin, cfg["hidden"])
    self.dense_relu = nn.ReLU()
    self.head = nn.Linear(cfg["hidden"], k)

  def forward(self, x):  # (N, C, H, W) in [0, 1]
    x = (x - self.mean) / self.std
    for layer in self.layers.values():
      x = layer(x)
    return self.head(self.dense_relu(self.dense(x.mean((2, 3)))))


def make_twin(clf, dtype):
  cfg = clf.metadata["config"]
  twin = Twin(cfg, clf.num_classes).eval()
  p, stats = clf.variables["params"], clf.variables["batch_stats"]
  t = lambda a: torch.as_tensor(np.asarray(a, np.float64))  # noqa: E731
  with torch.no_grad():
    for name, m in twin.layers.items():
      if name.endswith("_conv"):
        m.weight.copy_(t(p[name]["kernel"]).permute(3, 2, 0, 1))  # HWIO -> OIHW
      elif name.endswith("_bn"):
        m.weight.copy_(t(p[name]["scale"]))
        m.bias.copy_(t(p[name]["bias"]))
        m.running_mean.copy_(t(stats[name]["mean"]))
        m.running_var.copy_(t(stats[name]["var"]))
    for name in ("dense", "head"):
      getattr(twin, name).weight.copy_(t(p[name]["kernel"]).T)
      getattr(twin, name).bias.copy_(t(p[name]["bias"]))
  return twin.double() if dtype == "float64" else twin.float()


@dataclasses.dataclass
class Pair:
  """The same network in jaxplain (``clf``) and PyTorch (``torch``, NCHW [0, 1] inputs)."""

  clf: object
  torch: object
  layers: dict  # jaxplain layer name -> torch module, for Grad-CAM
  dtype: str


def twin_pair(tiny_classifier, dtype):
  clf = tiny_classifier
  if dtype == "float64":
    clf = dataclasses.replace(clf, variables=jax.tree.map(
        lambda v: jnp.asarray(np.asarray(v, np.float64)), clf.variables))
  twin = make_twin(tiny_classifier, dtype)
  return Pair(clf, twin, {"conv1_1": twin.layers["conv1_1"], "conv2_1": twin.layers["conv2_1"]},
              dtype)


def network_v2_pair(dtype):
  wrapped, module, clf = reference_models.network_v2_on_images(dtype=dtype)
  return Pair(clf, wrapped, {"conv_3.3": module.conv_3[3], "conv_4.3": module.conv_4[3]}, dtype)


MODELS = ("twin", "network_v2")


PAIRS = [(m, d) for m in MODELS for d in ("float64", "float32")]


def _make_pair(request, tiny_classifier):
  model, dtype = request.param
  with jax.enable_x64(dtype == "float64"):
    yield twin_pair(tiny_classifier, dtype) if model == "twin" else network_v2_pair(dtype)


@pytest.fixture(params=PAIRS, ids=lambda p: f"{p[0]}-{p[1]}")
def pair(request, tiny_classifier):
  yield from _make_pair(request, tiny_classifier)


@pytest.fixture(params=[pytest.param(p, marks=pytest.mark.slow) if p[0] == "network_v2" else p
                        for p in PAIRS], ids=lambda p: f"{p[0]}-{p[1]}")
def heavy_pair(request, tiny_classifier):
  """As ``pair``; the pretrained network's many-evaluation comparisons are marked slow."""
  yield from _make_pair(request, tiny_classifier)


@pytest.fixture(scope="module")
def face_batch(faces):
  """One real face per class (7 faces) and their labels."""
  idx = [int(np.flatnonzero(faces.labels == c)[0]) for c in range(7)]
  return data.to_float(faces.images[idx]), faces.labels[idx].astype(np.int32)


def inputs_for(pair, face_batch):
  x, t = face_batch
  x = x.astype(pair.dtype)
  xt = torch.as_tensor(x.transpose(0, 3, 1, 2).copy())
  return jnp.asarray(x), t, xt, torch.as_tensor(t, dtype=torch.long)


def nhwc(tensor):
  return tensor.detach().cpu().numpy().transpose(0, 2, 3, 1)


def rel_err(ours, ref):
  ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
  assert ours.shape == ref.shape, (ours.shape, ref.shape)
  return float(np.max(np.abs(ours - ref)) / np.max(np.abs(ref)))


def check(ours, ref, pair, *, tol=None):
  assert np.asarray(ours).dtype == np.dtype(pair.dtype)
  err = rel_err(ours, ref)
  assert err <= (tol or TOL[pair.dtype]), f"relative error {err:.3g}"
  return err


# ---------------------------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", A.RULES)
@pytest.mark.parametrize("steps", [2, 7, 50])
def test_approximation_points_equal_captums(method, steps):
  step_sizes, alphas = approximation_methods.approximation_parameters(method)
  a, w = A.approximation(method, steps)
  # Riemann points come from a float32 torch.linspace whose SIMD lanes round differently
  # (by CPU); ours use its scalar formula: equal to within one float32 ulp.
  np.testing.assert_allclose(a, np.asarray(alphas(steps), np.float64), rtol=0, atol=6e-8)
  np.testing.assert_array_equal(w, torch.tensor(step_sizes(steps)).float().double().numpy())


def test_models_agree(pair, face_batch):
  x, _, xt, _ = inputs_for(pair, face_batch)
  with jax.enable_x64(pair.dtype == "float64"):
    ours = pair.clf.forward(x)
  ref = pair.torch(xt).detach().numpy()
  check(ours, ref, pair)


@pytest.mark.parametrize("abs_", [True, False])
def test_saliency(pair, face_batch, abs_):
  x, t, xt, tt = inputs_for(pair, face_batch)
  with jax.enable_x64(pair.dtype == "float64"):
    ours = A.saliency(pair.clf.forward, x, t, abs=abs_)
  ref = captum_attr.Saliency(pair.torch).attribute(xt.requires_grad_(), target=tt, abs=abs_)
  check(ours, nhwc(ref), pair)


def test_input_x_gradient(pair, face_batch):
  x, t, xt, tt = inputs_for(pair, face_batch)
  with jax.enable_x64(pair.dtype == "float64"):
    ours = A.input_x_gradient(pair.clf.forward, x, t)
  ref = captum_attr.InputXGradient(pair.torch).attribute(xt.requires_grad_(), target=tt)
  check(ours, nhwc(ref), pair)


def test_guided_backprop(pair, face_batch):
  x, t, xt, tt = inputs_for(pair, face_batch)
  with jax.enable_x64(pair.dtype == "float64"):
    ours = A.guided_backprop(pair.clf.forward, x, t)
    rewritten = A.guided_backprop(lambda z: pair.clf.forward(z), x, t)  # jaxpr rewrite path
  ref = nhwc(captum_attr.GuidedBackprop(pair.torch).attribute(xt.requires_grad_(), target=tt))
  check(ours, ref, pair)
  check(rewritten, ref, pair)


@pytest.mark.parametrize("relu", [True, False])
@pytest.mark.parametrize("mode", ["nearest", "bilinear"])
def test_grad_cam(pair, face_batch, relu, mode):
  x, t, xt, tt = inputs_for(pair, face_batch)
  for layer, module in pair.layers.items():
    with jax.enable_x64(pair.dtype == "float64"):
      ours = A.grad_cam(pair.clf, x, t, layer=layer, relu=relu, interpolate_mode=mode)
    cam = captum_attr.LayerGradCam(pair.torch, module).attribute(
        xt, target=tt, relu_attributions=relu)
    ref = captum_attr.LayerAttribution.interpolate(cam, (48, 48), interpolate_mode=mode)
    check(ours, nhwc(ref), pair)


@pytest.mark.parametrize("window,stride", [(8, 4), (6, 5), ((5, 9), (3, 4))])
def test_occlusion(heavy_pair, face_batch, window, stride):
  pair = heavy_pair
  x, t, xt, tt = inputs_for(pair, face_batch)
  with jax.enable_x64(pair.dtype == "float64"):
    ours = A.occlusion(pair.clf.forward, x, t, window=window, stride=stride, baseline=0.25)
  w = (window, window) if isinstance(window, int) else window
  s = (stride, stride) if isinstance(stride, int) else stride
  ref = captum_attr.Occlusion(pair.torch).attribute(
      xt, sliding_window_shapes=(1,) + tuple(w), strides=(1,) + tuple(s), baselines=0.25,
      target=tt, perturbations_per_eval=16)
  check(ours, nhwc(ref), pair)


@pytest.mark.parametrize("method", A.RULES)
def test_integrated_gradients(heavy_pair, face_batch, method, monkeypatch):
  pair = heavy_pair
  if pair.dtype == "float32" and method != "gausslegendre":
    pytest.skip("float32 IG is compared only loosely (ReLU masks flip within rounding)")
  x, t, xt, tt = inputs_for(pair, face_batch)
  baselines = 0.5 * np.asarray(x)[::-1].copy()  # another face, dimmed
  with jax.enable_x64(pair.dtype == "float64"):
    ours = A.integrated_gradients(pair.clf.forward, x, t, baselines=jnp.asarray(baselines),
                                  steps=20, rule=method, batch_size=8)
  # The points are Captum's (test_approximation_points_equal_captums) up to PyTorch's SIMD
  # rounding of one float32 ulp, which can flip a ReLU on the path; feed Captum exactly ours.
  a, w = A.approximation(method, 20)
  monkeypatch.setattr(ig_module, "approximation_parameters",
                      lambda m: (lambda n: list(w), lambda n: list(a)))
  ref = captum_attr.IntegratedGradients(pair.torch).attribute(
      xt, baselines=torch.as_tensor(baselines.transpose(0, 3, 1, 2).copy()), target=tt,
      n_steps=20, method=method)
  # float32: many gradients summed; Captum itself is ~1e-3 from its float64 result.
  check(ours, nhwc(ref), pair, tol=1e-6 if pair.dtype == "float64" else 2e-2)


def _captum_noise(noise):
  """Our noise (S, N, H, W, C) in NoiseTunnel's layout: row i·S + s, NCHW."""
  s, n = noise.shape[:2]
  return torch.as_tensor(np.asarray(noise).transpose(1, 0, 4, 2, 3).reshape(
      (n * s,) + (noise.shape[4], noise.shape[2], noise.shape[3])).copy())


@pytest.mark.parametrize("kind", ["smoothgrad", "smoothgrad_sq", "vargrad"])
def test_smoothgrad_same_noise(heavy_pair, face_batch, kind, monkeypatch, key):
  pair = heavy_pair
  x, t, xt, tt = inputs_for(pair, face_batch)
  samples = 4
  with jax.enable_x64(pair.dtype == "float64"):
    noise = 0.1 * jax.random.normal(key, (samples,) + x.shape, x.dtype)
    ours = A.smoothgrad(pair.clf.forward, x, t, key=None, kind=kind, noise=noise)
  fed = _captum_noise(noise)
  calls = []

  def fake_normal(mean, std, *args, **kwargs):
    assert tuple(std.shape) == tuple(fed.shape)
    calls.append(1)
    return fed

  monkeypatch.setattr(torch, "normal", fake_normal)
  ref = captum_attr.NoiseTunnel(captum_attr.Saliency(pair.torch)).attribute(
      xt, nt_type=kind, nt_samples=samples, stdevs=0.1, target=tt)
  assert calls == [1]
  check(ours, nhwc(ref), pair)


def test_smoothgrad_key_noise_matches_noise_argument(face_batch, tiny_classifier, key):
  x, t = face_batch
  drawn = A.smoothgrad(tiny_classifier.forward, x, t, key=key, samples=3, stdev=0.2)
  noise = 0.2 * jax.random.normal(key, (3,) + x.shape, jnp.float32)
  given = A.smoothgrad(tiny_classifier.forward, x, t, key=None, noise=noise)
  np.testing.assert_allclose(drawn, given, rtol=1e-6, atol=1e-7)
