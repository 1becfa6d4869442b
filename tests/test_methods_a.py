"""DeepLift, DeepLiftShap, GradientShap, deconvolution, guided Grad-CAM, LRP and the layer
methods against Captum and Zennit on identical weights, on real faces, plus known answers.

Two models, as in test_attribution_captum.py: the PyTorch twin of jaxplain's CNN and the
pretrained FER2013 ``NetworkV2`` converted with ``jaxplain.convert`` (its comparisons marked
slow). Float64: max |ours − reference| / max |reference| ≤ 1e-6; float32 ≤ 1e-4.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import importlib

from jaxplain import attribution as A
from jaxplain.attribution import rules
from jaxplain.attribution.shap import gradient_shap_draws
from jaxplain.attribution._common import select

lrp_module = importlib.import_module("jaxplain.attribution.lrp")  # `A.lrp` is the function
torch = pytest.importorskip("torch")
captum_attr = pytest.importorskip("captum.attr")

from test_attribution_captum import (  # noqa: E402  (tests/ is on sys.path under pytest)
    _captum_noise,
    check,
    inputs_for,
    network_v2_pair,
    nhwc,
    twin_pair,
)

PAIRS = [("twin", "float64"),
         pytest.param(("twin", "float32"), marks=pytest.mark.slow),
         pytest.param(("network_v2", "float64"), marks=pytest.mark.slow),
         pytest.param(("network_v2", "float32"), marks=pytest.mark.slow)]
# LRP names compared with Zennit in the default run (all of them in the slow run)
QUICK_LRP = ("epsilon_plus_flat", "epsilon_gamma_box", "epsilon_alpha2_beta1", "w_square")


@pytest.fixture(params=PAIRS, ids=lambda p: f"{p[0]}-{p[1]}")
def pair(request, tiny_classifier):
  model, dtype = request.param
  with jax.enable_x64(dtype == "float64"):
    yield twin_pair(tiny_classifier, dtype) if model == "twin" else network_v2_pair(dtype)


@pytest.fixture(scope="module")
def face_batch(faces):
  """Four real faces of different classes and their labels."""
  idx = [int(np.flatnonzero(faces.labels == c)[0]) for c in (0, 3, 4, 5)]
  from jaxplain import data
  return data.to_float(faces.images[idx]), faces.labels[idx].astype(np.int32)


def _x64(pair):
  return jax.enable_x64(pair.dtype == "float64")


def _torch(a):
  return torch.as_tensor(np.asarray(a).transpose(0, 3, 1, 2).copy())


def _baselines(x):
  return 0.5 * np.asarray(x)[::-1].copy()  # other faces, dimmed


def _has_max_pool(pair):
  return any(isinstance(m, torch.nn.MaxPool2d) for m in pair.torch.modules())


# ---------------------------------------------------------------------------------------------
# Known answers
# ---------------------------------------------------------------------------------------------


def _linear_forward(x):
  w = jnp.linspace(-1.0, 1.0, 48 * 48 * 3).reshape(48 * 48, 3).astype(x.dtype)
  return x.reshape(x.shape[0], -1) @ w + jnp.asarray([[0.1, -0.2, 0.3]], x.dtype)


def _relu_net(x):
  """A bias-free two-layer ReLU network."""
  w1 = jnp.cos(jnp.arange(48 * 48 * 16, dtype=x.dtype)).reshape(48 * 48, 16)
  w2 = jnp.sin(jnp.arange(16 * 3, dtype=x.dtype)).reshape(16, 3)
  return jax.nn.relu(x.reshape(x.shape[0], -1) @ w1) @ w2


@pytest.mark.parametrize("forward", [_linear_forward, _relu_net], ids=["linear", "relu_net"])
def test_lrp_epsilon_is_gradient_times_input(face_batch, forward):
  """LRP-0 on a linear model (and a bias-free ReLU network) is gradient × input; Zennit's
  one-hot start divides it by the target's output."""
  x, t = face_batch
  with jax.enable_x64(True):
    x = jnp.asarray(x, jnp.float64)
    t = t % 3
    ours = A.lrp(forward, x, t, composite="epsilon", epsilon=0.0)
    scale = select(forward(x), jnp.asarray(t))[:, None, None, None]
    np.testing.assert_allclose(ours * scale, A.input_x_gradient(forward, x, t), rtol=1e-9,
                               atol=1e-12)


def test_deep_lift_sums_to_delta(tiny_classifier, face_batch):
  """Summation-to-delta on jaxplain's CNN (ReLU, max-pool, BatchNorm, mean, dense)."""
  x, t = face_batch
  with jax.enable_x64(True):
    clf = jax.tree.map(lambda v: jnp.asarray(v, jnp.float64), tiny_classifier)
    x = jnp.asarray(x, jnp.float64)
    b = jnp.asarray(_baselines(x))
    attr = A.deep_lift(clf.forward, x, t, baselines=b)
    delta = select(clf.forward(x), jnp.asarray(t)) - select(clf.forward(b), jnp.asarray(t))
    np.testing.assert_allclose(attr.reshape(len(x), -1).sum(1), delta, rtol=1e-9, atol=1e-12)
    # Captum's effective max-pool rule (the gradient) does not sum to delta here
    plain = A.deep_lift(clf.forward, x, t, baselines=b, max_pool_rule="gradient")
    assert np.max(np.abs(plain.reshape(len(x), -1).sum(1) - delta)) > 1e-3


def test_deep_lift_on_relu_free_forward_raises(face_batch):
  x, t = face_batch
  with pytest.raises(ValueError, match="no ReLU"):
    A.deep_lift(_linear_forward, x, t % 3)


def test_same_forward_values_and_jit(tiny_classifier, face_batch):
  """The rewritten forward computes the original values; methods compile once."""
  x, t = face_batch
  f = tiny_classifier.forward
  lrp_rules = rules.RuleSet(relu="pass", layers=lrp_module._Composite(
      "epsilon_plus_flat", 1e-6, 0.25, 1e-6, 2.0, 1.0, 0.0, 1.0))
  np.testing.assert_array_equal(rules.modified(f, jnp.asarray(x), lrp_rules), f(x))
  a = A.lrp(tiny_classifier, x, t)
  compiled = lrp_module._lrp._cache_size()
  b = A.lrp(tiny_classifier, x[::-1], t[::-1])
  assert lrp_module._lrp._cache_size() == compiled
  np.testing.assert_allclose(b, a[::-1], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("call,match", [
    (lambda c, x, t: A.lrp(c.forward, x, t, composite="nope"), "composite"),
    (lambda c, x, t: A.lrp(c.forward, x, t, composite="alpha_beta", alpha=3.0), "alpha"),
    (lambda c, x, t: A.gradient_shap(c.forward, x, t, key=None), "key"),
    (lambda c, x, t: A.deep_lift_shap(c.forward, x, t, baselines=np.zeros((2, 9, 9, 1))),
     "baselines"),
    (lambda c, x, t: A.deep_lift(c.forward, x, t, max_pool_rule="max"), "max_pool_rule"),
    (lambda c, x, t: A.layer_conductance(c, x, t, layer="nope"), "layer"),
    (lambda c, x, t: A.layer_integrated_gradients(c, x, t, layer="features",
                                                  interpolate_mode="nearest"), "spatial"),
    (lambda c, x, t: A.guided_grad_cam(c.forward, x, t, layer="conv1_1"), "Classifier"),
])
def test_bad_options_raise(tiny_classifier, face_batch, call, match):
  x, t = face_batch
  with pytest.raises(ValueError, match=match):
    call(tiny_classifier, x, t)


@pytest.mark.slow
def test_attribute_dispatches_input_sized_maps(tiny_classifier, face_batch, key):
  x, t = face_batch
  for name in ("deep_lift", "lrp", "deconvolution", "guided_grad_cam", "gradient_shap",
               "layer_gradient_x_activation"):
    out = A.attribute(tiny_classifier, x[:2], t[:2], method=name, key=key)
    assert out.shape[:3] == x[:2].shape[:3] and out.dtype == np.float32, name


# ---------------------------------------------------------------------------------------------
# Captum
# ---------------------------------------------------------------------------------------------


def test_deep_lift(pair, face_batch):
  x, t, xt, tt = inputs_for(pair, face_batch)
  b = _baselines(x)
  # Captum's ReLU hooks read a following max pool's unmodified gradient: its numbers are our
  # max_pool_rule="gradient" where the network max-pools (the twin), the default elsewhere.
  rule = "gradient" if _has_max_pool(pair) else "deeplift"
  with _x64(pair):
    ours = A.deep_lift(pair.clf.forward, x, t, baselines=jnp.asarray(b), max_pool_rule=rule)
  ref = captum_attr.DeepLift(pair.torch).attribute(xt, baselines=_torch(b), target=tt)
  check(ours, nhwc(ref), pair)


def test_deep_lift_shap(pair, face_batch):
  x, t, xt, tt = inputs_for(pair, face_batch)
  background = np.stack([np.zeros_like(x[0]), np.full_like(x[0], 0.5), _baselines(x)[0]])
  rule = "gradient" if _has_max_pool(pair) else "deeplift"
  with _x64(pair):
    ours = A.deep_lift_shap(pair.clf.forward, x, t, baselines=jnp.asarray(background),
                            max_pool_rule=rule, batch_size=2)
  ref = captum_attr.DeepLiftShap(pair.torch).attribute(xt, baselines=_torch(background),
                                                       target=tt)
  check(ours, nhwc(ref), pair)


def test_gradient_shap_same_draws(pair, face_batch, monkeypatch, key):
  x, t, xt, tt = inputs_for(pair, face_batch)
  samples, stdev = 3, 0.1
  background = np.stack([np.zeros_like(x[0]), np.full_like(x[0], 0.5), _baselines(x)[0]])
  with _x64(pair):
    draws = gradient_shap_draws(key, x, jnp.asarray(background), samples=samples,
                                       stdev=stdev)
    ours = A.gradient_shap(pair.clf.forward, x, t, key=None, baselines=jnp.asarray(background),
                           draws=draws, batch_size=2)
  index, alphas, noise = (np.asarray(d) for d in draws)
  fed = {"choice": index.T.reshape(-1), "uniform": alphas.T.reshape(-1),
         "normal": _captum_noise(noise)}
  calls = []

  def fake(name):
    def draw(*args, **kwargs):
      calls.append(name)
      return fed[name]
    return draw

  monkeypatch.setattr(np.random, "choice", fake("choice"))
  monkeypatch.setattr(np.random, "uniform", fake("uniform"))
  monkeypatch.setattr(torch, "normal", fake("normal"))
  ref = captum_attr.GradientShap(pair.torch).attribute(
      xt, baselines=_torch(background), n_samples=samples, stdevs=stdev, target=tt)
  assert sorted(calls) == ["choice", "normal", "uniform"]
  check(ours, nhwc(ref), pair)


@pytest.mark.slow
def test_gradient_shap_key_draws_in_distribution(tiny_classifier, face_batch, key):
  """Drawn from ``key``: the mean over many draws is the expected gradient, which Captum's
  estimator (any seed) also approaches; here checked against a fine quadrature of it."""
  x, t = face_batch
  x, t = x[:2], t[:2]
  f = tiny_classifier.forward
  drawn = A.gradient_shap(f, x, t, key=key, baselines=np.zeros((1, 48, 48, 1), np.float32),
                          samples=512, batch_size=128)
  # one black baseline, no noise: E_α[x ⊙ ∇f(αx)] is integrated gradients from black
  exact = A.integrated_gradients(f, x, t, steps=64)
  err = np.abs(np.asarray(drawn) - np.asarray(exact)).sum() / np.abs(np.asarray(exact)).sum()
  assert err < 0.1, err
  again = A.gradient_shap(f, x, t, key=key, baselines=np.zeros((1, 48, 48, 1), np.float32),
                          samples=512, batch_size=128)
  np.testing.assert_array_equal(drawn, again)


def test_deconvolution(pair, face_batch):
  x, t, xt, tt = inputs_for(pair, face_batch)
  with _x64(pair):
    ours = A.deconvolution(pair.clf.forward, x, t)
  ref = captum_attr.Deconvolution(pair.torch).attribute(xt.requires_grad_(), target=tt)
  check(ours, nhwc(ref), pair)


def test_guided_grad_cam(pair, face_batch):
  x, t, xt, tt = inputs_for(pair, face_batch)
  layer, module = list(pair.layers.items())[-1]
  with _x64(pair):
    ours = A.guided_grad_cam(pair.clf, x, t, layer=layer)
  ref = captum_attr.GuidedGradCam(pair.torch, module).attribute(xt.requires_grad_(), target=tt)
  check(ours, nhwc(ref), pair)


def _layer_ref(ref):
  return nhwc(ref) if ref.ndim == 4 else ref.detach().numpy()


def test_layer_gradient_x_activation(pair, face_batch):
  x, t, xt, tt = inputs_for(pair, face_batch)
  for layer, module in pair.layers.items():
    with _x64(pair):
      ours = A.layer_gradient_x_activation(pair.clf, x, t, layer=layer)
    ref = captum_attr.LayerGradientXActivation(pair.torch, module).attribute(xt, target=tt)
    check(ours, _layer_ref(ref), pair)


def test_layer_integrated_gradients(pair, face_batch):
  x, t, xt, tt = inputs_for(pair, face_batch)
  b = _baselines(x)
  layer, module = list(pair.layers.items())[-1]
  with _x64(pair):
    ours = A.layer_integrated_gradients(pair.clf, x, t, layer=layer, baselines=jnp.asarray(b),
                                        steps=8, batch_size=4)
  ref = captum_attr.LayerIntegratedGradients(pair.torch, module).attribute(
      xt, baselines=_torch(b), target=tt, n_steps=8)
  check(ours, _layer_ref(ref), pair, tol=1e-6 if pair.dtype == "float64" else 1e-3)


def test_layer_conductance(pair, face_batch):
  x, t, xt, tt = inputs_for(pair, face_batch)
  b = _baselines(x)
  layer, module = list(pair.layers.items())[-1]
  with _x64(pair):
    ours = A.layer_conductance(pair.clf, x, t, layer=layer, baselines=jnp.asarray(b), steps=8)
  ref = captum_attr.LayerConductance(pair.torch, module).attribute(
      xt, baselines=_torch(b), target=tt, n_steps=8)
  # float32: differences of nearby activations; Captum's own float32 error is ~1e-4 of it
  check(ours, _layer_ref(ref), pair, tol=1e-6 if pair.dtype == "float64" else 1e-3)


# ---------------------------------------------------------------------------------------------
# Zennit
# ---------------------------------------------------------------------------------------------


def _zennit():
  zennit = pytest.importorskip("zennit")
  del zennit
  from zennit import canonizers, composites, rules as zrules, types  # noqa: F401
  return canonizers, composites, zrules, types


def _exact_merge(base):
  """Zennit's BatchNorm merge with the emptied BatchNorm an exact identity: Zennit leaves its
  ``eps`` in place (so it scales by 1/sqrt(1 + eps)); we set it to 0 while merged."""

  class Exact(base):
    def register(self, linears, batch_norm):
      super().register(linears, batch_norm)
      self.__dict__.setdefault("_eps", []).append((batch_norm, batch_norm.eps))
      batch_norm.eps = 0.0

    def remove(self):
      super().remove()
      for bn, eps in self.__dict__.pop("_eps", []):
        bn.eps = eps

  return Exact


def _zennit_composite(name, pair):
  canonizers, composites, zrules, types = _zennit()
  if isinstance(pair.torch, torch.nn.Module) and hasattr(pair.torch, "layers"):  # the twin
    names = [n[:-len("_conv")] for n in pair.torch.layers if n.endswith("_conv")]
    canon = _exact_merge(canonizers.NamedMergeBatchNorm)(
        [([f"layers.{n}_conv"], f"layers.{n}_bn") for n in names])
    mean, std = pair.torch.mean, pair.torch.std
  else:
    canon = _exact_merge(canonizers.SequentialMergeBatchNorm)()
    mean, std = 0.5, 0.5
  single = {"epsilon": zrules.Epsilon(), "gamma": zrules.Gamma(), "z_plus": zrules.ZPlus(),
            "alpha_beta": zrules.AlphaBeta(), "flat": zrules.Flat(), "w_square": zrules.WSquare()}
  if name in single:
    rule = single[name]
    return composites.LayerMapComposite(
        layer_map=composites.layer_map_base() + [(types.Convolution, rule),
                                                 (torch.nn.Linear, rule)], canonizers=[canon])
  cls = {"epsilon_plus_flat": composites.EpsilonPlusFlat,
         "epsilon_gamma_box": composites.EpsilonGammaBox,
         "epsilon_plus": composites.EpsilonPlus,
         "epsilon_alpha2_beta1": composites.EpsilonAlpha2Beta1,
         "epsilon_alpha2_beta1_flat": composites.EpsilonAlpha2Beta1Flat}[name]
  if name == "epsilon_gamma_box":  # Zennit's bounds are in the normalised space
    return cls(low=(0 - mean) / std, high=(1 - mean) / std, canonizers=[canon])
  return cls(canonizers=[canon])


@pytest.mark.parametrize("name", [n if n in QUICK_LRP else pytest.param(n, marks=pytest.mark.slow)
                                  for n in lrp_module.COMPOSITES + lrp_module.RULES])
def test_lrp_equals_zennit(pair, face_batch, name):
  from zennit.attribution import Gradient
  if pair.dtype == "float32" and name not in QUICK_LRP:
    pytest.skip("float32 LRP is compared for the composites of QUICK_LRP only (CI time)")
  x, t, xt, tt = inputs_for(pair, face_batch)
  with _x64(pair):
    ours = A.lrp(pair.clf.forward, x, t, composite=name)
  with Gradient(model=pair.torch, composite=_zennit_composite(name, pair)) as attributor:
    _, ref = attributor(xt.clone().requires_grad_(), torch.eye(7, dtype=xt.dtype)[tt])
  # float32 LRP-ε with ε = 1e-6 divides by near-zero outputs: rounding is amplified
  tol = 2e-3 if (pair.dtype == "float32" and name == "epsilon") else None
  check(ours, nhwc(ref), pair, tol=tol)


def test_deconvolution_without_relu_raises(face_batch):
  x, t = face_batch
  with pytest.raises(ValueError, match="no ReLU"):
    A.deconvolution(_linear_forward, x, t % 3)
