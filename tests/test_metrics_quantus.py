"""jaxplain.metrics against Quantus 0.6 and Captum on identical weights, on real faces.

Two models, the same weights on both sides: the pretrained FER2013 ``NetworkV2`` converted with
``jaxplain.convert`` (skipped when not fetched), and a small PyTorch CNN on 12×12 faces
converted the same way (for metrics with one model call per feature). Float32 on both sides;
deterministic metrics agree within 1e-5, random ones are fed the same draws (NumPy's global
stream replayed in the order Quantus consumes it, or Captum's perturbations passed in).
"""

from __future__ import annotations

import copy
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxplain import attribution as A
from jaxplain import convert, data
from jaxplain import metrics as M

torch = pytest.importorskip("torch")
quantus = pytest.importorskip("quantus")
captum_metrics = pytest.importorskip("captum.metrics")

import reference_models  # noqa: E402  (tests/ is on sys.path under pytest)

nn = torch.nn
TOL = 1e-5


# ---------------------------------------------------------------------------------------------
# Models, faces, explanations on both sides
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def v2():
  """(torch model on [0, 1] NCHW, jaxplain classifier) of the pretrained NetworkV2."""
  wrapped, _, clf = reference_models.network_v2_on_images()
  return wrapped, clf


def tiny_torch(seed=0):
  torch.manual_seed(seed)
  return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(400, 3)).eval()


@pytest.fixture(scope="module")
def tiny():
  """A 12×12, 3-class CNN without padding (Quantus's input-invariance compensation is exact)."""
  module = tiny_torch()
  return module, convert.from_torch(module, input_shape=(1, 12, 12))


@pytest.fixture(scope="module")
def batch(faces):
  """Four real faces of four classes and their labels, picked where NetworkV2's sigmoid output
  is not saturated (on many bundled faces its float32 gradient is exactly zero, and Quantus
  turns an all-zero map into NaN)."""
  idx = [0, 11, 20, 33]
  return data.to_float(faces.images[idx]), faces.labels[idx].astype(np.int64)


@pytest.fixture(scope="module")
def small_batch(batch):
  """The faces shrunk to 12×12 (4×4 block means) and classes mod 3, for the tiny model."""
  x, t = batch
  return x.reshape(len(x), 12, 4, 12, 4, 1).mean((2, 4)), t % 3


def nchw(x):
  return np.ascontiguousarray(np.asarray(x).transpose(0, 3, 1, 2))


def torch_saliency(model, inputs, targets, abs=True, **kwargs):  # noqa: A002
  """Quantus explain_func: |d output[target] / d input|, NCHW NumPy, in the model's dtype."""
  dtype = next(model.parameters()).dtype
  x = torch.as_tensor(np.asarray(inputs), dtype=dtype).requires_grad_()
  with torch.enable_grad():
    out = model(x)
    out[torch.arange(len(x)), torch.as_tensor(np.asarray(targets), dtype=torch.long)].sum(
        ).backward()
  g = x.grad.detach().numpy()
  return np.abs(g) if abs else g


def torch_input_x_gradient(model, inputs, targets, **kwargs):
  return torch_saliency(model, inputs, targets, abs=False) * np.asarray(inputs)


@pytest.fixture(scope="module")
def maps(v2, batch):
  """Signed gradient × input of NetworkV2, with a 1e-6 jitter to break its ties (black pixels
  give zeros): Quantus's unstable sort orders ties arbitrarily, ours by index."""
  _, clf = v2
  x, t = batch
  a = np.asarray(A.input_x_gradient(clf.forward, x, t))
  a = a + 1e-6 * np.abs(a).max() * np.random.default_rng(0).standard_normal(a.shape).astype(
      np.float32)
  assert len(np.unique(a.reshape(len(a), -1)[0])) == a[0].size
  return a


def close(ours, ref, tol=TOL):
  ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
  assert ours.shape == ref.shape, (ours.shape, ref.shape)
  np.testing.assert_allclose(ours, ref, rtol=tol, atol=tol)


PER_FACE = {"normalise_func_kwargs": {"normalise_axes": [1, 2, 3]}}  # Quantus, per-face maxima


def q_call(metric, model, x, t, a=None, **kwargs):
  return metric(model=model, x_batch=nchw(x), y_batch=np.asarray(t),
                a_batch=None if a is None else nchw(a), channel_first=True, device="cpu",
                **kwargs)


# ---------------------------------------------------------------------------------------------
# Faithfulness
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("baseline", ["black", pytest.param(0.5, marks=pytest.mark.slow)])
def test_pixel_flipping(v2, batch, maps, baseline):
  model, clf = v2
  x, t = batch
  ours = M.pixel_flipping(clf.forward, x, t, maps, features_in_step=48, perturb_baseline=baseline)
  curves = q_call(quantus.PixelFlipping(features_in_step=48, perturb_baseline=baseline,
                                        disable_warnings=True), model, x, t, maps)
  close(ours.curve, curves)
  close(ours.auc, [np.trapezoid(c) for c in curves], tol=1e-4)


@pytest.mark.parametrize("order, patch", [pytest.param("morf", 8, marks=pytest.mark.slow),
                                          ("lerf", 10)])  # 48 = 4·10 + 8: padded
def test_region_perturbation(v2, batch, maps, order, patch):
  model, clf = v2
  x, t = batch
  ours = M.region_perturbation(clf.forward, x, t, maps, patch_size=patch, order=order,
                               regions_evaluation=12)
  ref = q_call(quantus.RegionPerturbation(patch_size=patch, order=order, regions_evaluation=12,
                                          disable_warnings=True), model, x, t, maps)
  close(ours.curve, ref)


def test_faithfulness_correlation_same_draws(v2, batch, maps):
  model, clf = v2
  x, t = batch
  n, d, runs, size = len(x), x[0].size, 10, 224
  np.random.seed(3)
  draws = []
  for _ in range(runs):  # Quantus's order: the N subsets, then one uniform draw per baseline call
    draws.append([np.random.choice(d, size, replace=False) for _ in range(n)])
    np.random.uniform(size=n)
  indices = np.asarray(draws).transpose(1, 0, 2)
  ours = M.faithfulness_correlation(clf.forward, x, t, maps, indices=indices)
  np.random.seed(3)
  ref = q_call(quantus.FaithfulnessCorrelation(nr_runs=runs, subset_size=size,
                                               return_aggregate=False, disable_warnings=True),
               model, x, t, maps)
  close(ours, ref, tol=1e-4)  # a Pearson correlation of 10 small output differences


def test_monotonicity_correlation_same_draws(v2, batch, maps):
  model, clf = v2
  x, t = batch
  n, f, samples = len(x), 576, 2
  steps = x[0].size // f
  np.random.seed(4)
  values = np.stack([[np.random.uniform(0, 1, n) for _ in range(samples)] for _ in range(steps)])
  ours = M.monotonicity_correlation(clf.forward, x, t, maps, features_in_step=f,
                                    values=values.transpose(2, 0, 1))
  np.random.seed(4)
  ref = q_call(quantus.MonotonicityCorrelation(features_in_step=f, nr_samples=samples,
                                               disable_warnings=True), model, x, t, maps)
  close(ours, ref)


def test_linear_imputation_equals_quantus_spsolve(batch):
  from quantus.functions.perturb_func import noisy_linear_imputation
  x, _ = batch
  img = x[0]
  rng = np.random.default_rng(0)
  for share in (0.3, 0.95):
    idx = rng.choice(img.size, int(img.size * share), replace=False)
    ref = noisy_linear_imputation(nchw(img[None])[0].astype(np.float64), idx, noise=0.0)
    mask = np.zeros(img.size, bool)
    mask[idx] = True
    with jax.enable_x64(True):
      ours = M.faithfulness.linear_imputation(jnp.asarray(img, jnp.float64),
                                              jnp.asarray(mask.reshape(img.shape)))
    close(np.asarray(ours)[None].transpose(0, 3, 1, 2)[0], ref, tol=1e-9)
    ours32 = M.faithfulness.linear_imputation(jnp.asarray(img), jnp.asarray(mask.reshape(
        img.shape)))
    close(np.asarray(ours32).transpose(2, 0, 1), ref, tol=2e-5)


def test_road_without_noise(v2, batch, maps):
  model, clf = v2
  x, t = batch
  pct = [5, 25, 50, 75, 95]
  ours = M.road(clf.forward, x, t, maps, percentages=pct, noise=0.0)
  ref = q_call(quantus.ROAD(percentages=pct, noise=0.0, disable_warnings=True), model, x, t,
               maps)
  close(np.asarray(ours.curve).mean(0), [ref[p] for p in pct])


def test_infidelity_same_perturbations(v2, batch, maps):
  model, clf = v2
  x, t = batch
  samples = 5
  noise = np.random.default_rng(1).normal(0, 0.05, (len(x), samples) + x.shape[1:]).astype(
      np.float32)
  flat_noise = torch.as_tensor(nchw(noise.reshape((-1,) + x.shape[1:])))

  def perturb(inputs):
    return flat_noise, inputs - flat_noise

  for normalize in (False, True):
    ours = M.infidelity(clf.forward, x, t, maps, perturbations=noise, normalize=normalize)
    ref = captum_metrics.infidelity(model, perturb, torch.as_tensor(nchw(x)),
                                    torch.as_tensor(nchw(maps)), target=torch.as_tensor(t),
                                    n_perturb_samples=samples, normalize=normalize)
    close(ours, ref.numpy(), tol=1e-4)


# ---------------------------------------------------------------------------------------------
# Robustness
# ---------------------------------------------------------------------------------------------


def _uniform_draws(seed, samples, shape, lb):
  np.random.seed(seed)
  return np.stack([np.random.uniform(-lb, lb, (shape[0], int(np.prod(shape[1:]))))
                   for _ in range(samples)]).reshape((samples,) + shape).astype(np.float32)


@pytest.mark.parametrize("name", ["MaxSensitivity",
                                  pytest.param("AvgSensitivity", marks=pytest.mark.slow)])
def test_sensitivity_same_noise(v2, batch, name):
  model, clf = v2
  x, t = batch
  a = np.asarray(A.saliency(clf.forward, x, t))
  draws = _uniform_draws(5, 3, x.shape, 0.2)
  fn = M.max_sensitivity if name == "MaxSensitivity" else M.avg_sensitivity
  ours = fn(clf.forward, x, t, a, method=A.saliency, noise=draws)
  np.random.seed(5)
  ref = q_call(getattr(quantus, name)(nr_samples=3, disable_warnings=True), model, x, t, a,
               explain_func=torch_saliency)
  close(ours, ref, tol=1e-4)  # relative changes of gradients of float32 models


def test_local_lipschitz_same_noise(v2, batch):
  model, clf = v2
  x, t = batch
  a = np.asarray(A.saliency(clf.forward, x, t))
  np.random.seed(6)
  draws = np.stack([np.random.normal(0, 0.1, (len(x), x[0].size)) for _ in range(3)])
  draws = draws.reshape((3,) + x.shape).astype(np.float32)
  ours = M.local_lipschitz_estimate(clf.forward, x, t, a, method=A.saliency, noise=draws)
  np.random.seed(6)
  ref = q_call(quantus.LocalLipschitzEstimate(nr_samples=3, disable_warnings=True, **PER_FACE),
               model, x, t, a, explain_func=torch_saliency)
  close(ours, ref, tol=1e-4)


def test_sensitivity_max_same_noise_as_captum(v2, batch):
  model, clf = v2
  x, t = batch
  samples = 4
  noise = np.random.default_rng(2).uniform(-0.02, 0.02, (samples,) + x.shape).astype(np.float32)
  flat_noise = torch.as_tensor(nchw(noise.transpose(1, 0, 2, 3, 4).reshape((-1,) + x.shape[1:])))

  def perturb(inputs):
    return inputs + flat_noise

  def explain(inputs, target):
    inputs = inputs[0] if isinstance(inputs, tuple) else inputs  # Captum passes a tuple
    return (torch.as_tensor(torch_saliency(model, inputs.detach().numpy(), target.numpy())),)

  ours = M.sensitivity_max(clf.forward, x, t, method=A.saliency, noise=noise)
  ref = captum_metrics.sensitivity_max(explain, torch.as_tensor(nchw(x)), perturb_func=perturb,
                                       n_perturb_samples=samples, target=torch.as_tensor(t))
  close(ours, ref.numpy(), tol=1e-4)


# ---------------------------------------------------------------------------------------------
# Randomisation
# ---------------------------------------------------------------------------------------------


def _variables_of(module):
  """The converted classifier's variables (PyTorch layout, nested by module path) of a torch
  model wrapped by ``reference_models.network_v2_on_images``."""
  out = {}
  for name, value in module.state_dict().items():
    if name.endswith("num_batches_tracked"):
      continue
    parts = name.split(".")[1:]  # drop "module."
    node = out
    for p in parts[:-1]:
      node = node.setdefault(p, {})
    node[parts[-1]] = jnp.asarray(value.detach().numpy())
  return out


def _quantus_random_models(model, clf, order):
  from quantus.helpers.model.pytorch_model import PyTorchModel
  wrapped = PyTorchModel(model, channel_first=True, softmax=False, device="cpu")
  return [(name.removeprefix("module."),
           dataclasses.replace(clf, variables=_variables_of(m)))
          for name, m in wrapped.get_random_layer_generator(order=order, seed=42)]


@pytest.fixture(scope="module")
def v2_64():
  """NetworkV2 in float64 on both sides: randomised layers leave ReLUs near zero, where the
  two frameworks' float32 roundings flip a few units and move a rank correlation by 1e-3."""
  with jax.enable_x64(True):
    wrapped, _, clf = reference_models.network_v2_on_images(dtype="float64")
  return wrapped, clf


@pytest.mark.parametrize("order", ["top_down", pytest.param("independent", marks=pytest.mark.slow)])
def test_mprt_same_random_weights(v2_64, batch, order):
  model, clf = v2_64
  x, t = batch
  x, t = x[:2].astype(np.float64), t[:2]
  with jax.enable_x64(True):
    a = np.asarray(A.saliency(clf.forward, x, t))
    models = _quantus_random_models(model, clf, order)
    ours = M.model_parameter_randomisation(A.saliency, clf, x, t, attributions=a, models=models)
  ref = q_call(quantus.MPRT(layer_order=order, disable_warnings=True), model, x, t, a,
               explain_func=torch_saliency)
  assert list(ours.layers) == [k.removeprefix("module.") for k in ref if k != "original"]
  assert len(ours.layers) == 10
  close(ours.original, ref["original"])
  close(ours.scores, [ref["module." + k] for k in ours.layers])


def test_ssim_flat_is_quantus_ssim(maps):
  """Quantus's ``ssim`` (what MPRT and RandomLogit call; Quantus's MPRT itself fails on its
  list output) on flattened maps."""
  from quantus.functions.similarity_func import ssim
  a, b = np.abs(maps[:2]), np.abs(maps[2:])
  ref = ssim(a.reshape(2, -1).astype(np.float64), b.reshape(2, -1).astype(np.float64),
             batched=True)
  close(M.similarity(jnp.asarray(a), jnp.asarray(b), "ssim_flat"), ref, tol=1e-5)


def test_random_logit_same_classes(v2, batch):
  model, clf = v2
  x, t = batch
  a = np.asarray(A.saliency(clf.forward, x, t))
  np.random.seed(42)
  draw = np.random.randint(0, 6, len(x))
  off = draw + (draw >= t)
  ours = M.random_logit(A.saliency, clf, x, t, attributions=a, off_target=off,
                        similarity="ssim_flat")
  ref = q_call(quantus.RandomLogit(num_classes=7, disable_warnings=True, **PER_FACE), model, x,
               t, a, explain_func=torch_saliency)
  close(ours, ref, tol=1e-4)


def test_ssim_2d_is_scikit_image(maps):
  from skimage.metrics import structural_similarity
  a, b = np.abs(maps[0, ..., 0]), np.abs(maps[1, ..., 0])
  r = max(a.max(), b.max()) - min(a.min(), b.min())
  ref = structural_similarity(a.astype(np.float64), b.astype(np.float64), data_range=r)
  ours = M.similarity(jnp.asarray(a)[None, ..., None], jnp.asarray(b)[None, ..., None], "ssim")
  close(ours, [ref], tol=1e-5)


@pytest.mark.slow
def test_random_layer_weights_have_torchs_init_distribution(v2):
  """Our draws follow PyTorch's reset_parameters: U(±1/sqrt(fan_in)) for conv/linear, and
  batch norm reset to the identity."""
  model, clf = v2
  (_, randomised), = M.randomised_classifiers(clf, key=jax.random.key(0), layers=["conv_3.1"])
  ours = np.asarray(randomised.variables["conv_3"]["1"]["weight"])
  ref = copy.deepcopy(model.module.conv_3[1])
  ref.reset_parameters()
  ref = ref.weight.detach().numpy()
  bound = 1 / np.sqrt(64 * 9)
  assert np.abs(ours).max() <= bound and np.abs(ref).max() <= bound
  assert abs(ours.std() - ref.std()) < 0.02 * ref.std()
  (_, bn), = M.randomised_classifiers(clf, key=jax.random.key(0), layers=["conv_3.2"])
  v = bn.variables["conv_3"]["2"]
  fresh = nn.BatchNorm2d(128)
  np.testing.assert_array_equal(v["running_var"], fresh.running_var.numpy())
  np.testing.assert_array_equal(v["weight"], fresh.weight.detach().numpy())


# ---------------------------------------------------------------------------------------------
# Complexity, axiomatic
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["Sparseness", "Complexity", "EffectiveComplexity"])
def test_complexity_family(v2, batch, maps, name):
  model, clf = v2
  x, t = batch
  fn = {"Sparseness": M.sparseness, "Complexity": M.complexity,
        "EffectiveComplexity": M.effective_complexity}[name]
  kwargs = {"eps": 0.01} if name == "EffectiveComplexity" else {}
  ours = fn(clf.forward, x, t, maps, **kwargs)
  ref = q_call(getattr(quantus, name)(disable_warnings=True, **kwargs, **PER_FACE), model, x, t,
               maps)
  close(ours, ref, tol=1e-4 if name != "EffectiveComplexity" else 0)


def test_non_sensitivity(tiny, small_batch):
  model, clf = tiny
  x, t = small_batch
  a = np.array(A.saliency(clf.forward, x, t))
  a[:, :, :6] = 0  # half of each map says "no effect"
  ours = M.non_sensitivity(clf.forward, x, t, a)
  ref = q_call(quantus.NonSensitivity(disable_warnings=True, **PER_FACE), model, x, t, a)
  np.testing.assert_array_equal(ours, ref)
  assert np.all(np.asarray(ours) >= 60)  # the zeroed half still moves the output


@pytest.mark.parametrize("method, torch_method, expected",
                         [(A.saliency, torch_saliency, True),
                          (A.input_x_gradient, torch_input_x_gradient, False)])
def test_input_invariance(tiny, small_batch, method, torch_method, expected):
  """Against Quantus's pieces: its bias-compensated model (exact for this unpadded first
  convolution), explained at ``x + shift`` on every feature, compared with ``np.isclose``."""
  from quantus.helpers.model.pytorch_model import PyTorchModel
  model, clf = tiny
  x, t = small_batch
  x = np.round(x * 256) / 256  # dyadic: x - 1 + 1 == x exactly in float32
  ours = M.input_invariance(clf.forward, x, t, method=method)
  wrapped = PyTorchModel(model, channel_first=True, softmax=False, device="cpu")
  shifted = wrapped.add_mean_shift_to_first_layer(-1.0, (1, 1, 12, 12))
  a = torch_method(model, nchw(x), t)
  b = torch_method(shifted, nchw(x) - 1.0, t)
  ref = np.all(np.isclose(a, b, atol=1e-4), axis=(1, 2, 3))
  np.testing.assert_array_equal(ours, ref)
  assert np.all(np.asarray(ours) == expected)


def test_quantus_input_invariance_leaves_the_first_feature_unshifted(tiny, small_batch):
  """Quantus's ``perturb_batch`` passes ``indices[i][1:]``, so feature 0 of every image keeps
  its value: where the model reads that pixel Quantus reports a gradient as not invariant. The
  paper shifts every feature, as ``input_invariance`` does."""
  model, clf = tiny
  x, t = small_batch
  x = np.round(x * 256) / 256
  seen = []

  def explain(model, inputs, targets, **kwargs):
    seen.append(np.asarray(inputs).copy())
    return torch_saliency(model, inputs, targets)

  q_call(quantus.InputInvariance(disable_warnings=True), model, x, t,
         torch_saliency(model, nchw(x), t).transpose(0, 2, 3, 1), explain_func=explain)
  shifted = seen[-1].reshape(len(x), -1)
  np.testing.assert_array_equal(shifted[:, 0], nchw(x).reshape(len(x), -1)[:, 0])
  np.testing.assert_allclose(shifted[:, 1:], nchw(x).reshape(len(x), -1)[:, 1:] - 1.0)
  assert np.all(np.asarray(M.input_invariance(clf.forward, x, t, method=A.saliency)))


def test_input_invariance_follows_the_paper_where_quantus_pads():
  """Kindermans et al.: f'(x + shift) = f(x) for every x. Quantus's first-layer bias fix is
  exact only without zero padding: on a padded convolution its shifted model differs at the
  border; ours (the shift undone before the model) is exact."""
  from quantus.helpers.model.pytorch_model import PyTorchModel
  torch.manual_seed(0)
  padded = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.Flatten(), nn.Linear(2 * 36, 2)).eval()
  x = np.random.default_rng(0).uniform(size=(2, 1, 6, 6)).astype(np.float32)
  wrapped = PyTorchModel(padded, channel_first=True, softmax=False, device="cpu")
  q_shifted = wrapped.add_mean_shift_to_first_layer(-1.0, (1, 1, 6, 6))
  with torch.no_grad():
    original = padded(torch.as_tensor(x)).numpy()
    quantus_out = q_shifted(torch.as_tensor(x - 1.0)).numpy()
  assert np.abs(quantus_out - original).max() > 1e-2  # Quantus's f' is not f at the borders
  clf = convert.from_torch(padded, input_shape=(1, 6, 6))
  xs = x.transpose(0, 2, 3, 1)
  ours = M.axiomatic.shifted(clf, -1.0).forward(jnp.asarray(xs - 1.0))
  close(ours, original, tol=1e-5)
  shifted_fwd = M.axiomatic.shifted(clf.forward, -1.0)
  close(shifted_fwd(jnp.asarray(xs - 1.0)), original, tol=1e-5)
