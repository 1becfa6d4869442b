"""jaxplain.convert against PyTorch itself: outputs, gradients, taps and guided gradients (Captum).

Every synthetic model runs in eval mode with randomised BatchNorm statistics; the real test case
is the pretrained FER2013 NetworkV2 of facial_emotion_recognition 0.3.4 (tests/reference_models).
"""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional

from jaxplain import checkpoint, cli, convert, data  # noqa: E402

import reference_models  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _randomise(module, seed=0):
  """Random weights and BatchNorm running statistics (so eval-mode BN is not the identity)."""
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for m in module.modules():
      if isinstance(m, nn.modules.batchnorm._BatchNorm):
        m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.3)
        m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
        if m.affine:
          m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
          m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.2)
      if isinstance(m, nn.PReLU):
        m.weight.copy_(torch.rand(m.weight.shape, generator=g) * 0.5)
  return module.eval()


def _images(n, shape, seed=0):
  c, h, w = shape
  return np.random.default_rng(seed).uniform(size=(n, h, w, c)).astype(np.float32)


def _torch_out(module, images, mean=0.0, std=1.0, dtype=torch.float32):
  mean = np.asarray(mean, np.float64).reshape(1, 1, 1, -1)
  std = np.asarray(std, np.float64).reshape(1, 1, 1, -1)
  x = convert._to_torch(((images - mean) / std).transpose(0, 3, 1, 2), dtype, "cpu")
  with torch.no_grad():
    return module(x).double().numpy()


def _check(module, shape, *, mean=0.0, std=1.0, atol=1e-4, n=3, **kwargs):
  module = _randomise(module)
  # check=False: this test does the comparison with PyTorch itself (and saves a compilation)
  clf = convert.from_torch(module, input_shape=shape, mean=mean, std=std, check=False, **kwargs)
  x = _images(n, shape)
  got = np.asarray(jax.jit(clf.forward)(jnp.asarray(x)), np.float64)
  want = _torch_out(module, x, mean, std)
  want = want.reshape(want.shape[:2]) if want.ndim > 2 else want
  assert got.shape == want.shape
  np.testing.assert_allclose(got, want, atol=atol, rtol=1e-4)
  return clf


# --- synthetic models, one per family of layers ---------------------------------------------


class Convs(nn.Module):
  def __init__(self):
    super().__init__()
    self.a = nn.Conv2d(3, 8, 3, padding="same")
    self.b = nn.Conv2d(8, 8, (3, 5), stride=(2, 1), padding=(1, 2), dilation=(1, 2), bias=False)
    self.c = nn.Conv2d(8, 8, 3, groups=2, padding=1, padding_mode="reflect")
    self.d = nn.Conv2d(8, 8, 3, groups=8, padding=1, padding_mode="replicate")  # depthwise
    self.e = nn.Conv2d(8, 6, 4, padding="same", dilation=2, padding_mode="circular")
    self.f = nn.Conv2d(6, 4, 3, stride=2, padding="valid")
    self.head = nn.Linear(4 * 2 * 4, 5)

  def forward(self, x):
    x = self.f(self.e(self.d(self.c(self.b(self.a(x))))))
    return self.head(torch.flatten(x, 1))


class BNs(nn.Module):
  def __init__(self):
    super().__init__()
    self.features = nn.Sequential(
        nn.Conv2d(1, 6, 3), nn.BatchNorm2d(6), nn.ReLU(),          # BN before the activation
        nn.Conv2d(6, 6, 3), nn.ReLU(), nn.BatchNorm2d(6, affine=False),  # and after
        nn.MaxPool2d(2), nn.Dropout2d(0.3))
    self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(6 * 5 * 5, 16), nn.BatchNorm1d(16),
                                    nn.ELU(), nn.Dropout(0.5), nn.Linear(16, 7))

  def forward(self, x):
    return self.classifier(self.features(x))


def _activation_modules(c):
  return [nn.ReLU(), nn.ReLU6(), nn.LeakyReLU(0.1), nn.PReLU(c), nn.PReLU(), nn.ELU(0.7),
          nn.SELU(), nn.GELU(), nn.GELU("tanh"), nn.SiLU(), nn.Sigmoid(), nn.Tanh(),
          nn.Softmax(dim=1), nn.LogSoftmax(dim=1), nn.Hardtanh(-0.5, 0.5), nn.Hardswish(),
          nn.Mish(), nn.Softplus(2.0, 1.0), nn.CELU(0.5), nn.Hardsigmoid(), nn.LogSigmoid()]


class ActivationModules(nn.Module):
  def __init__(self):
    super().__init__()
    self.conv = nn.Conv2d(2, 4, 3, padding=1)
    self.acts = nn.ModuleList(_activation_modules(4))
    self.head = nn.Linear(4, 3)

  def forward(self, x):
    h = self.conv(x) * 3.0
    y = sum(act(h) for act in self.acts)
    return self.head(y.mean((2, 3)))


class ActivationFunctions(nn.Module):
  def __init__(self):
    super().__init__()
    self.conv = nn.Conv2d(2, 4, 3, padding=1)
    self.slope = nn.Parameter(torch.full((4,), 0.2))
    self.head = nn.Linear(4, 3)

  def forward(self, x):
    h = self.conv(x) * 3.0
    ys = [F.relu(h), torch.relu(h), h.relu(), F.relu6(h), F.leaky_relu(h, 0.2),
          F.prelu(h, self.slope), F.elu(h, alpha=0.5), F.selu(h), F.gelu(h),
          F.gelu(h, approximate="tanh"), F.silu(h), torch.sigmoid(h), F.sigmoid(h), h.sigmoid(),
          torch.tanh(h), F.tanh(h), h.tanh(), F.softmax(h, dim=1), h.softmax(1),
          torch.softmax(h, 1), F.log_softmax(h, dim=1), h.log_softmax(dim=1),
          torch.log_softmax(h, 1), F.hardtanh(h), F.hardswish(h), F.mish(h), F.softplus(h),
          F.celu(h), F.hardsigmoid(h), F.logsigmoid(h), -h]
    y = ys[0]
    for t in ys[1:]:
      y = y + t
    return self.head(torch.mean(y, dim=[2, 3]))


class Pools(nn.Module):
  def __init__(self):
    super().__init__()
    self.conv = nn.Conv2d(1, 3, 3)
    self.p1 = nn.MaxPool2d(3, 2, padding=1, ceil_mode=True)
    self.p2 = nn.AvgPool2d(3, 2, padding=1, ceil_mode=True)
    self.p3 = nn.AvgPool2d(3, 2, padding=1, ceil_mode=True, count_include_pad=False)
    self.p4 = nn.MaxPool2d(2, 1, dilation=2)
    self.p5 = nn.AvgPool2d((2, 3), stride=(1, 2), divisor_override=4)
    self.a1 = nn.AdaptiveAvgPool2d((3, 2))
    self.a2 = nn.AdaptiveMaxPool2d(5)
    self.a3 = nn.AdaptiveAvgPool2d(1)
    self.a4 = nn.AdaptiveAvgPool2d((None, 4))

  def forward(self, x):
    h = self.conv(x)                                    # 17 x 17
    outs = [self.a1(self.p1(h)), self.a2(self.p2(h)), self.a1(self.p3(h)), self.a2(self.p4(h)),
            self.a3(self.p5(h)), F.max_pool2d(h, 3, stride=2, ceil_mode=True),
            F.avg_pool2d(h, 2, padding=1, count_include_pad=False),
            F.adaptive_avg_pool2d(h, (7, 3)), F.adaptive_max_pool2d(h, 6), self.a4(h)]
    return torch.cat([o.flatten(1) for o in outs], dim=1)


class Reshapes(nn.Module):
  def __init__(self):
    super().__init__()
    self.conv = nn.Conv2d(2, 3, 3, stride=2)
    self.fc1 = nn.Linear(3 * 4 * 5, 4)
    self.fc2 = nn.Linear(3 * 4 * 5, 4)
    self.fc3 = nn.Linear(3 * 4 * 5, 4)
    self.fc4 = nn.Linear(3 * 4 * 5, 4)
    self.unflat = nn.Unflatten(1, (2, 2))

  def forward(self, x):
    h = self.conv(x)                                    # (N, 3, 4, 5): NCHW element order matters
    a = self.fc1(h.view(h.size(0), -1))
    b = self.fc2(h.reshape(h.shape[0], -1))
    c = self.fc3(h.flatten(start_dim=1))
    d = self.fc4(h.permute(0, 2, 3, 1).contiguous().view(-1, 60))  # NHWC order, explicitly
    e = self.unflat(a).transpose(1, 2).reshape(-1, 4)
    return torch.cat([a, b, c, d, e.unsqueeze(-1).squeeze(-1)], 1)


class Pads(nn.Module):
  def __init__(self):
    super().__init__()
    self.pads = nn.Sequential(nn.ReflectionPad2d((1, 2, 0, 1)), nn.ZeroPad2d(2),
                              nn.ConstantPad2d(1, 0.5), nn.ReplicationPad2d((0, 1, 2, 0)))
    self.conv = nn.Conv2d(1, 2, 5)

  def forward(self, x):
    h = self.conv(self.pads(x))
    h = F.pad(h, (1, 1, 2, 0), mode="reflect") + F.pad(h, (1, 1, 2, 0), value=-1.0)
    return h.sum(dim=(2, 3))


class SEBlock(nn.Module):
  def __init__(self, c):
    super().__init__()
    self.fc = nn.Sequential(nn.Linear(c, c // 2), nn.ReLU(inplace=True), nn.Linear(c // 2, c),
                            nn.Sigmoid())

  def forward(self, x):
    s = self.fc(x.mean((2, 3)))
    return x * s.view(x.size(0), -1, 1, 1)


class Residual(nn.Module):
  def __init__(self, c):
    super().__init__()
    self.body = nn.Sequential(nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c),
                              nn.ReLU(inplace=True), nn.Conv2d(c, c, 3, padding=1, bias=False),
                              nn.BatchNorm2d(c))
    self.se = SEBlock(c)
    self.relu = nn.ReLU(inplace=True)

  def forward(self, x):
    return self.relu(self.se(self.body(x)) + x)


class Net(nn.Module):
  """Nested Sequential / ModuleList / custom blocks, residual +, *, cat, spatial mean."""

  def __init__(self, k=7):
    super().__init__()
    self.stem = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
    self.blocks = nn.ModuleList([nn.Sequential(Residual(8), nn.MaxPool2d(2)) for _ in range(2)])
    self.side = nn.Conv2d(8, 4, 1)
    self.head = nn.Sequential(nn.Linear(12 + 12, k))

  def forward(self, x):
    x = self.stem(x)
    for block in self.blocks:
      x = block(x)
    x = torch.cat([x, self.side(x)], dim=1)               # (N, 12, 4, 4)
    pooled = torch.cat([torch.mean(x, dim=[2, 3]), torch.amax(x, dim=(2, 3))], 1)
    return self.head(pooled)


class FullyConv(nn.Module):
  def __init__(self):
    super().__init__()
    self.net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 7, 1),
                             nn.AdaptiveAvgPool2d(1), nn.Softmax(dim=1))

  def forward(self, x):
    return self.net(x)


class KaggleStyle(nn.Module):
  """One gray channel, one ReLU module reused, view(size(0), -1), in-place +=, LogSoftmax."""

  def __init__(self):
    super().__init__()
    self.cnn1, self.cnn2 = nn.Conv2d(1, 4, 3, bias=False), nn.Conv2d(4, 4, 3, padding=1)
    self.bn1, self.relu, self.pool = nn.BatchNorm2d(4), nn.ReLU(inplace=True), nn.MaxPool2d(2)
    self.fc = nn.Linear(4 * 3 * 3, 7)
    self.log_softmax = nn.LogSoftmax(dim=1)

  def forward(self, x):
    x = self.relu(self.bn1(self.cnn1(x)))
    out = self.cnn2(x)
    out += x
    x = self.pool(self.relu(out))
    x = x.view(x.size(0), -1)
    return self.log_softmax(self.fc(F.dropout(x, 0.5, training=self.training)))


@pytest.mark.parametrize("make, shape", [
    (Convs, (3, 12, 14)), (BNs, (1, 14, 14)), (ActivationModules, (2, 6, 6)),
    (ActivationFunctions, (2, 6, 6)), (Pools, (1, 19, 19)), (Reshapes, (2, 9, 11)),
    (Pads, (1, 8, 7)), (Net, (1, 16, 16)), (FullyConv, (1, 8, 8)), (KaggleStyle, (1, 8, 8))],
    ids=lambda v: getattr(v, "__name__", ""))
def test_matches_pytorch(make, shape):
  torch.manual_seed(0)
  _check(make(), shape)


def test_per_channel_normalisation_and_outputs_squeezed():
  torch.manual_seed(0)
  clf = _check(Convs(), (3, 12, 14), mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
  assert clf.input_shape == (12, 14, 3) and clf.num_classes == 5
  assert clf.class_names == ("0", "1", "2", "3", "4")
  torch.manual_seed(0)
  clf = _check(FullyConv(), (1, 8, 8))
  assert clf.forward(jnp.zeros((2, 8, 8, 1))).shape == (2, 7)  # (N, 7, 1, 1) -> (N, 7)


def test_strip_final_activation_gives_pytorch_pre_activation():
  torch.manual_seed(0)
  module = _randomise(FullyConv())
  clf = convert.from_torch(module, input_shape=(1, 8, 8), output_activation="strip")
  x = _images(3, (1, 8, 8))
  want = _torch_out(module.net[:4], x).reshape(3, 7)
  np.testing.assert_allclose(clf.forward(jnp.asarray(x)), want, atol=1e-5)
  assert "net.4" not in clf.layer_names and "net.4" in convert.from_torch(
      module, input_shape=(1, 8, 8), check=False).layer_names
  diff = convert.torch_difference(module, clf, x)
  assert diff["max_abs_diff"] < 1e-5 and diff["argmax_agree"] == 3


def test_layer_names_taps_and_delta_match_pytorch_hooks():
  torch.manual_seed(0)
  module = _randomise(Net())
  clf = convert.from_torch(module, input_shape=(1, 16, 16), check=False)
  leaf_calls = []
  hooks = [m.register_forward_hook(lambda m, i, o, name=name: leaf_calls.append(name))
           for name, m in module.named_modules() if not list(m.children())]
  x = _images(2, (1, 16, 16))
  xt = torch.as_tensor(x.transpose(0, 3, 1, 2))
  with torch.no_grad():
    module(xt)
  for h in hooks:
    h.remove()
  assert list(clf.layer_names) == leaf_calls           # execution order, PyTorch paths

  layer = "blocks.1.0.body.3"                           # a conv inside nested custom blocks
  store = {}

  def keep(m, i, o):
    o.retain_grad()
    store["out"] = o
  hook = module.get_submodule(layer).register_forward_hook(keep)
  xt.requires_grad_(True)
  out = module(xt)
  out[:, 3].sum().backward()
  hook.remove()
  logits, act = jax.jit(clf.tapped(layer))(jnp.asarray(x), None)
  want = store["out"].detach().numpy().transpose(0, 2, 3, 1)   # NHWC, like jaxplain's CNN
  np.testing.assert_allclose(act, want, atol=1e-5)
  np.testing.assert_allclose(logits, out.detach().numpy(), atol=1e-5)
  g = jax.jit(jax.grad(lambda d: clf.tapped(layer)(jnp.asarray(x), d)[0][:, 3].sum()))(
      jnp.zeros_like(act))
  np.testing.assert_allclose(g, store["out"].grad.numpy().transpose(0, 2, 3, 1), atol=1e-5)
  with pytest.raises(ValueError, match="unknown layer 'nope'.*stem.0"):
    clf.apply_fn(clf.variables, jnp.asarray(x), tap="nope")
  with pytest.raises(ValueError, match="delta"):
    clf.apply_fn(clf.variables, jnp.asarray(x), tap=layer, delta=jnp.zeros((1, 2, 3, 4)))


def test_reused_module_gets_numbered_taps():
  class Twice(nn.Module):
    def __init__(self):
      super().__init__()
      self.conv, self.act, self.fc = nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.Linear(2, 3)

    def forward(self, x):
      return self.fc(self.act(self.conv(self.act(x - 0.5))).mean((2, 3)))

  clf = _check(Twice(), (1, 5, 5))
  assert clf.layer_names == ("act", "conv", "act#2", "fc")
  _, a1 = clf.apply_fn(clf.variables, jnp.ones((1, 5, 5, 1)) * 0.25, tap="act")
  assert float(jnp.abs(a1).max()) == 0.0                # relu(0.25 - 0.5)


def test_jit_equals_eager_and_gradient_matches_torch_autograd():
  torch.manual_seed(0)
  module = _randomise(Net())
  clf = convert.from_torch(module, input_shape=(1, 16, 16), check=False)
  x = jnp.asarray(_images(3, (1, 16, 16)))
  np.testing.assert_allclose(jax.jit(clf.forward)(x), clf.forward(x), atol=1e-6)
  g = jax.jit(jax.grad(lambda v: clf.forward(v)[:, 2].sum()))(x)
  xt = torch.tensor(np.asarray(x).transpose(0, 3, 1, 2), requires_grad=True)
  module(xt)[:, 2].sum().backward()
  np.testing.assert_allclose(g, xt.grad.numpy().transpose(0, 2, 3, 1), atol=1e-5)


def test_forward_holds_linear_weights_transposed_with_the_same_outputs_and_gradients():
  # Classifier.forward runs TorchGraph.prepare's layout ((in, out) linear weights, kept once per
  # classifier); variables keep PyTorch's, and gradients w.r.t. them through a traced forward
  # are PyTorch's.
  torch.manual_seed(0)
  module = _randomise(nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(),
                                    nn.Linear(4 * 14 * 14, 8), nn.ReLU(), nn.Linear(8, 5)))
  clf = convert.from_torch(module, input_shape=(1, 16, 16), check=False)
  held = clf.forward.args[0]
  assert clf.forward.args[0] is held  # computed once, not per access
  flat = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_flatten_with_path(held)[0]}
  for name, shape in (("3", (8, 784)), ("5", (5, 8))):
    assert f"['{name}']['weight_t']" in flat and f"['{name}']['weight']" not in flat
    np.testing.assert_array_equal(flat[f"['{name}']['weight_t']"],
                                  np.asarray(clf.variables[name]["weight"]).T)
    assert clf.variables[name]["weight"].shape == shape
  x = jnp.asarray(_images(3, (1, 16, 16)))
  np.testing.assert_allclose(clf.forward(x), clf.apply_fn(clf.variables, x), atol=1e-6)
  clf.variables["5"]["weight"] = clf.variables["5"]["weight"] * 2  # a weight replaced in place
  with torch.no_grad():
    module[5].weight *= 2
  assert clf.forward.args[0] is not held
  np.testing.assert_allclose(clf.forward(x), clf.apply_fn(clf.variables, x), atol=1e-6)
  held = clf.forward.args[0]

  def loss(c):
    return c.forward(x)[:, 1].sum()
  grads = jax.grad(loss)(clf).variables  # the variables are tracers: prepared in the trace
  xt = torch.as_tensor(np.asarray(x).transpose(0, 3, 1, 2))
  module.zero_grad()
  module(xt)[:, 1].sum().backward()
  for name in ("3", "5"):
    np.testing.assert_allclose(grads[name]["weight"], module[int(name)].weight.grad.numpy(),
                               atol=1e-5)


def test_a_linear_weight_another_op_reads_keeps_its_layout():
  class Tied(nn.Module):
    def __init__(self):
      super().__init__()
      self.fc, self.fc2 = nn.Linear(16 * 16, 7), nn.Linear(7, 7)

    def forward(self, x):
      h = self.fc(x.flatten(1))
      return self.fc2(h) + F.linear(h, self.fc2.weight)  # fc2's weight read twice

  torch.manual_seed(0)
  module = Tied().eval()
  clf = convert.from_torch(module, input_shape=(1, 16, 16), check=False)
  held = clf.forward.args[0]
  assert "weight_t" in held["fc"] and "weight" in held["fc2"] and "weight_t" not in held["fc2"]
  x = _images(3, (1, 16, 16))
  np.testing.assert_allclose(clf.forward(jnp.asarray(x)), _torch_out(module, x), atol=1e-5)


def test_guided_gradients_match_captum_guided_backprop():
  captum_attr = pytest.importorskip("captum.attr")
  torch.manual_seed(0)
  module = _randomise(nn.Sequential(
      nn.Conv2d(1, 6, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(6, 8, 3), nn.BatchNorm2d(8),
      nn.ReLU(), nn.Flatten(), nn.Linear(8 * 3 * 3, 16), nn.ReLU(), nn.Linear(16, 7)))
  clf = convert.from_torch(module, input_shape=(1, 12, 12), check=False)
  x = _images(4, (1, 12, 12))
  target = np.array([0, 3, 5, 6])
  xt = torch.as_tensor(x.transpose(0, 3, 1, 2))
  want = captum_attr.GuidedBackprop(module).attribute(xt, target=torch.as_tensor(target))
  g = jax.grad(lambda v: clf.guided_forward(v)[jnp.arange(4), target].sum())(jnp.asarray(x))
  np.testing.assert_allclose(g, want.detach().numpy().transpose(0, 2, 3, 1), atol=1e-5)
  np.testing.assert_allclose(clf.guided_forward(jnp.asarray(x)), clf.forward(jnp.asarray(x)))
  plain = jax.grad(lambda v: clf.forward(v)[jnp.arange(4), target].sum())(jnp.asarray(x))
  assert not np.allclose(g, plain)


def test_float64_module_converts_to_float64():
  torch.manual_seed(0)
  module = _randomise(Net()).double()
  with jax.enable_x64(True):
    clf = convert.from_torch(module, input_shape=(1, 16, 16), check=False)
    assert {str(v.dtype) for v in jax.tree.leaves(clf.variables)} == {"float64"}
    x = _images(2, (1, 16, 16)).astype(np.float64)
    forward = jax.jit(clf.forward)
    got = forward(jnp.asarray(x))
    assert got.dtype == jnp.float64
    np.testing.assert_allclose(got, _torch_out(module, x, dtype=torch.float64), atol=1e-12)
    assert forward(jnp.asarray(x, jnp.float32)).dtype == jnp.float32  # input dtype kept


# --- errors ---------------------------------------------------------------------------------


class Upsampler(nn.Module):
  def __init__(self):
    super().__init__()
    self.up = nn.PixelShuffle(2)

  def forward(self, x):
    return self.up(x)


class Exp(nn.Module):
  def forward(self, x):
    return torch.cumsum(x, 1)


class Branchy(nn.Module):
  def __init__(self):
    super().__init__()
    self.fc = nn.Linear(4, 2)

  def forward(self, x):
    if x.sum() > 0:
      x = -x
    return self.fc(x.flatten(1))


@pytest.mark.parametrize("module, match", [
    (lambda: nn.Sequential(nn.Conv2d(1, 4, 3), Upsampler()),
     r"unsupported op 'pixel_shuffle'.* at '1\.up'"),
    (lambda: nn.Sequential(nn.Conv2d(1, 2, 3), nn.Sequential(nn.ReLU(), Exp())),
     r"unsupported op 'cumsum'.* at '1\.1'"),
    (Branchy, "cannot trace Branchy"),
    (lambda: nn.Sequential(nn.Conv2d(1, 2, 3)), r"must return \(N, K\)"),
    (lambda: nn.Sequential(nn.Flatten(), nn.BatchNorm1d(36, track_running_stats=False)),
     "track_running_stats"),
])
def test_unsupported_raises_naming_op_and_path(module, match):
  with pytest.raises(ValueError, match=match):
    convert.from_torch(module(), input_shape=(1, 2, 2) if module is Branchy else (1, 6, 6))


def test_argument_errors():
  m = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
  with pytest.raises(ValueError, match="output_activation"):
    convert.from_torch(m, input_shape=(1, 2, 2), output_activation="softmax")
  with pytest.raises(ValueError, match=r"input_shape.*\(C, H, W\)"):
    convert.from_torch(m, input_shape=(2, 2))
  with pytest.raises(ValueError, match="std"):
    convert.from_torch(m, input_shape=(1, 2, 2), std=0.0)
  with pytest.raises(ValueError, match="mean"):
    convert.from_torch(m, input_shape=(1, 2, 2), mean=(0.1, 0.2))
  clf = convert.from_torch(m, input_shape=(1, 2, 2))
  with pytest.raises(ValueError, match=r"shape \(3, 3, 1\)"):
    clf.forward(jnp.zeros((1, 3, 3, 1)))


# --- weights ----------------------------------------------------------------------------------


class Small(nn.Module):
  def __init__(self, width=3):
    super().__init__()
    self.conv = nn.Conv2d(1, width, 3)
    self.bn = nn.BatchNorm2d(width)
    self.fc = nn.Linear(width, 2)

  def forward(self, x):
    return self.fc(self.bn(self.conv(x)).mean((2, 3)))


def test_load_torch_weights(tmp_path):
  src = _randomise(Small())
  torch.save({"network": src.state_dict(), "epochs": 3}, tmp_path / "ckpt.pt")
  dst = convert.load_torch_weights(Small(), tmp_path / "ckpt.pt", key="network")
  for k, v in src.state_dict().items():
    assert torch.equal(v, dst.state_dict()[k])
  with pytest.raises(ValueError, match=r"no entry 'net'.*\['epochs', 'network'\]"):
    convert.load_torch_weights(Small(), tmp_path / "ckpt.pt", key="net")
  auto = convert.load_torch_weights(Small(), tmp_path / "ckpt.pt")  # "network": a usual entry
  assert torch.equal(auto.conv.weight, src.conv.weight)
  torch.save({"ema": src.state_dict(), "online": src.state_dict()}, tmp_path / "two.pt")
  with pytest.raises(ValueError, match="key="):
    convert.load_torch_weights(Small(), tmp_path / "two.pt")
  sd = dict(src.state_dict())
  sd["extra.weight"] = sd.pop("fc.bias")
  torch.save(sd, tmp_path / "bad.pt")
  with pytest.raises(ValueError) as e:
    convert.load_torch_weights(Small(width=4), tmp_path / "bad.pt")
  for part in ("missing keys ['fc.bias']", "unexpected keys ['extra.weight']",
               "'conv.weight: file (3, 1, 3, 3) != module (4, 1, 3, 3)'"):
    assert part in str(e.value)


def test_pickled_code_refused_unless_trusted(tmp_path):
  src = _randomise(Small())
  torch.save(src, tmp_path / "whole.pt")                  # pickles the class itself
  with pytest.raises(ValueError, match="pickled Python objects.*trusted=True"):
    convert.load_torch_weights(Small(), tmp_path / "whole.pt")
  dst = convert.load_torch_weights(Small(), tmp_path / "whole.pt", trusted=True)
  assert torch.equal(dst.conv.weight, src.conv.weight)


def test_import_class(tmp_path):
  (tmp_path / "pkg").mkdir()
  (tmp_path / "pkg" / "__init__.py").write_text("raise ImportError('package init must not run')")
  (tmp_path / "pkg" / "nets.py").write_text("import torch.nn as nn\nclass A(nn.Linear): pass\n")
  assert convert.import_class(f"{tmp_path / 'pkg' / 'nets.py'}:A").__name__ == "A"
  assert convert.import_class("torch.nn:Conv2d") is nn.Conv2d
  with pytest.raises(ValueError, match="has no 'B'"):
    convert.import_class(f"{tmp_path / 'pkg' / 'nets.py'}:B")
  with pytest.raises(ValueError, match="ClassName"):
    convert.import_class("torch.nn.Conv2d")


# --- checkpoints and CLI ----------------------------------------------------------------------


_LOAD_WITHOUT_TORCH = """
import sys
sys.modules["torch"] = None                               # any import of torch now fails
import numpy as np, jaxplain
clf = jaxplain.load_classifier(sys.argv[1])
np.save(sys.argv[2], np.asarray(clf.predict(np.load(sys.argv[3]))))
print(clf.layer_names)
"""


def test_save_load_roundtrip_without_torch_and_jit_cache_hits(tmp_path):
  torch.manual_seed(0)
  module = _randomise(Net())
  clf = convert.from_torch(module, input_shape=(1, 16, 16), mean=0.5, std=0.25, check=False)
  x = _images(3, (1, 16, 16))
  checkpoint.save_classifier(clf, tmp_path / "clf")
  np.save(tmp_path / "x.npy", x)
  out = subprocess.run([sys.executable, "-c", _LOAD_WITHOUT_TORCH, str(tmp_path / "clf"),
                        str(tmp_path / "y.npy"), str(tmp_path / "x.npy")],
                       capture_output=True, text=True, cwd=tmp_path)
  assert out.returncode == 0, out.stderr
  np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), clf.predict(x))

  loaded = checkpoint.load_classifier(tmp_path / "clf")
  assert loaded.apply_fn == clf.apply_fn and hash(loaded.apply_fn) == hash(clf.apply_fn)
  assert loaded.layer_names == clf.layer_names
  traces = []

  @jax.jit
  def run(forward, v):
    traces.append(1)
    return forward(v)
  a, b = run(clf.forward, x), run(loaded.forward, x)
  assert len(traces) == 1
  np.testing.assert_array_equal(a, b)


def test_cli_convert_synthetic(tmp_path, capsys):
  (tmp_path / "nets.py").write_text(
      "import torch.nn as nn\n"
      "class Tiny(nn.Module):\n"
      "  def __init__(self, c=4, k=7):\n"
      "    super().__init__()\n"
      "    self.f = nn.Sequential(nn.Conv2d(1, c, 5, stride=4), nn.ReLU(), nn.Flatten(),\n"
      "                           nn.Linear(c * 11 * 11, k))\n"
      "  def forward(self, x):\n"
      "    return self.f(x)\n")
  module = _randomise(convert.import_class(f"{tmp_path / 'nets.py'}:Tiny")(c=3))
  torch.save({"model": module.state_dict()}, tmp_path / "w.pt")
  rc = cli.main(["convert", "--model", f"{tmp_path / 'nets.py'}:Tiny", "--model-args",
                 '{"c": 3}', "--weights", str(tmp_path / "w.pt"), "--key", "model",
                 "--mean", "0.5", "--std", "0.5", "--out", str(tmp_path / "out")])
  printed = capsys.readouterr().out
  assert rc == 0, printed
  diff = float(printed.split("max |torch - jax| = ")[1].split(",")[0])
  assert diff < 1e-5 and "agree on 35/35" in printed
  clf = checkpoint.load_classifier(tmp_path / "out")
  faces = data.to_float(data.sample_faces().images)
  np.testing.assert_allclose(clf.forward(faces), _torch_out(module, faces, 0.5, 0.5), atol=1e-5)
  meta = json.loads((tmp_path / "out" / "jaxplain.json").read_text())
  assert meta["kind"] == "torch_graph" and meta["converted_from"]["key"] == "model"
  assert cli.main(["convert", "--model", f"{tmp_path / 'nets.py'}:Tiny", "--model-args",
                   '{"c": 3}', "--weights", str(tmp_path / "w.pt"), "--key", "model",
                   "--mean", "0.5", "--std", "0.5", "--frontend", "export",
                   "--out", str(tmp_path / "out_export")]) == 0
  via_export = checkpoint.load_classifier(tmp_path / "out_export")
  assert via_export.metadata["frontend"] == "export"
  np.testing.assert_allclose(via_export.forward(faces), clf.forward(faces), atol=1e-6)
  torch.save({"ema": module.state_dict(), "online": module.state_dict()}, tmp_path / "w2.pt")
  assert cli.main(["convert", "--model", f"{tmp_path / 'nets.py'}:Tiny", "--model-args",
                   '{"c": 3}', "--weights", str(tmp_path / "w2.pt"), "--out",
                   str(tmp_path / "out2")]) == 2
  assert "--key" in capsys.readouterr().err


# --- the real pretrained FER2013 CNN (facial_emotion_recognition 0.3.4) ------------------------


def test_network_v2_matches_pytorch_on_real_faces(faces):
  module, clf = reference_models.network_v2()
  x = data.to_float(faces.images)
  got = np.asarray(clf.predict(x), np.float64)
  want = _torch_out(module, x, 0.5, 0.5)
  assert np.abs(got - want).max() <= 1e-4
  np.testing.assert_array_equal(got.argmax(1), want.argmax(1))
  assert clf.layer_names[:4] == ("conv_1.0", "conv_1.1", "conv_1.2", "conv_1.3")
  _, act = clf.tapped("conv_2.3")(jnp.asarray(x[:2]), None)
  assert act.shape == (2, 24, 24, 64)


def test_network_v2_float64(faces):
  with jax.enable_x64(True):
    module, clf = reference_models.network_v2(dtype="float64", output_activation="strip")
    x = data.to_float(faces.images).astype(np.float64)
    got = np.asarray(jax.jit(clf.forward)(jnp.asarray(x)))
    assert got.dtype == np.float64
    want = _torch_out(module, x, 0.5, 0.5, dtype=torch.float64)
    np.testing.assert_allclose(1 / (1 + np.exp(-got)), want, atol=1e-10, rtol=0)
    np.testing.assert_array_equal(got.argmax(1), want.argmax(1))


@pytest.mark.slow
def test_cli_convert_network_v2(tmp_path, capsys):
  root = reference_models.network_v2_dir()
  if root is None:
    pytest.skip("facial_emotion_recognition 0.3.4 not fetched: run "
                "`python scripts/fetch_reference_models.py`")
  rc = cli.main(["convert", "--model", f"{root / 'networks.py'}:NetworkV2", "--model-args",
                 '{"in_c": 1, "nl": 32, "out_f": 7}', "--weights",
                 str(root / "model" / "model.pkl"), "--key", "network", "--input-shape",
                 "1,48,48", "--mean", "0.5", "--std", "0.5", "--out", str(tmp_path / "nv2")])
  printed = capsys.readouterr().out
  assert rc == 0 and "agree on 35/35" in printed
  assert float(printed.split("max |torch - jax| = ")[1].split(",")[0]) <= 1e-4
