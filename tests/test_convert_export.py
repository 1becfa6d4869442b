"""The torch.export front end: modules torch.fx cannot trace, checked against PyTorch itself.

``from_torch(frontend="auto")`` falls back to torch.export where symbolic tracing fails; the
result must equal PyTorch's logits, its input gradients (autograd) and, on ResNet-18, the fx
front end's conversion, with the same module-path layer names.
"""

from __future__ import annotations

import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
nn = torch.nn

from jaxplain import convert  # noqa: E402


def _images(n, shape, seed=0):
  c, h, w = shape
  return np.random.default_rng(seed).uniform(size=(n, h, w, c)).astype(np.float32)


def _torch(module, x):
  return torch.as_tensor(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


class ShapeBranch(nn.Module):
  """``if`` on a size: torch.fx's proxies cannot decide it, torch.export specialises it."""

  def __init__(self):
    super().__init__()
    self.conv = nn.Conv2d(3, 8, 3, padding=1)
    self.bn = nn.BatchNorm2d(8)
    self.pool = nn.MaxPool2d(2)
    self.head = nn.Linear(8, 5)

  def forward(self, x):
    h = torch.relu(self.bn(self.conv(x)))
    if x.shape[-1] > 32:      # symbolic tracing fails here
      h = self.pool(h)
    else:
      h = h * 2.0
    return self.head(h.mean((2, 3)))


class RangeLoop(nn.Module):
  """A Python loop over a size and an in-place ``+=``: fx cannot iterate a proxy."""

  def __init__(self):
    super().__init__()
    self.convs = nn.ModuleList(nn.Conv2d(1, 4, 3, padding=1) for _ in range(3))
    self.fc = nn.Linear(4 * 6 * 6, 3)

  def forward(self, x):
    out = 0
    for i in range(x.shape[1]):
      out = out + torch.nn.functional.silu(self.convs[i](x[:, i:i + 1]))
    return self.fc(torch.flatten(out, 1))


def _randomise(module):
  g = torch.Generator().manual_seed(0)
  with torch.no_grad():
    for m in module.modules():
      if isinstance(m, nn.BatchNorm2d):
        m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.3)
        m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
  return module.eval()


@pytest.mark.parametrize("make, shape", [(ShapeBranch, (3, 40, 40)), (ShapeBranch, (3, 24, 24)),
                                         (RangeLoop, (3, 6, 6))])
def test_untraceable_module_converts_through_export_and_matches_pytorch(make, shape):
  torch.manual_seed(0)
  module = _randomise(make())
  with pytest.raises(ValueError, match="cannot trace"):
    convert.from_torch(module, input_shape=shape, frontend="fx")
  clf = convert.from_torch(module, input_shape=shape)            # auto: fx fails, export runs
  assert clf.metadata["frontend"] == "export"
  x = _images(3, shape, seed=1)
  with torch.no_grad():
    want = module(_torch(module, x)).numpy()
  np.testing.assert_allclose(jax.jit(clf.forward)(jnp.asarray(x)), want, atol=1e-5, rtol=1e-5)
  xt = _torch(module, x).requires_grad_(True)
  module(xt)[:, 1].sum().backward()
  g = jax.jit(jax.grad(lambda v: clf.forward(v)[:, 1].sum()))(jnp.asarray(x))
  np.testing.assert_allclose(g, xt.grad.numpy().transpose(0, 2, 3, 1), atol=1e-5, rtol=1e-4)


def test_export_taps_are_leaf_module_paths_matching_hooks():
  torch.manual_seed(0)
  module = _randomise(ShapeBranch())
  clf = convert.from_torch(module, input_shape=(3, 40, 40), frontend="export")
  assert clf.layer_names == ("conv", "bn", "pool", "head")
  x = _images(2, (3, 40, 40))
  store = {}
  hook = module.bn.register_forward_hook(lambda m, i, o: store.setdefault("bn", o.detach()))
  with torch.no_grad():
    module(_torch(module, x))
  hook.remove()
  _, act = jax.jit(clf.tapped("bn"))(jnp.asarray(x), None)
  np.testing.assert_allclose(act, store["bn"].numpy().transpose(0, 2, 3, 1), atol=1e-5)


def test_frontend_option():
  module = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8, 3)).eval()
  fx_clf = convert.from_torch(module, input_shape=(1, 4, 4))
  assert fx_clf.metadata["frontend"] == "fx"
  ex_clf = convert.from_torch(module, input_shape=(1, 4, 4), frontend="export")
  assert ex_clf.metadata["frontend"] == "export"
  assert ex_clf.layer_names == fx_clf.layer_names == ("0", "1", "2", "3")
  x = jnp.asarray(_images(3, (1, 4, 4)))
  np.testing.assert_allclose(ex_clf.forward(x), fx_clf.forward(x), atol=1e-6)
  with pytest.raises(ValueError, match="`frontend` must be one of"):
    convert.from_torch(module, input_shape=(1, 4, 4), frontend="onnx")


def test_both_front_ends_failing_names_both():
  class ValueBranch(nn.Module):
    def forward(self, x):
      return x.flatten(1) if x.sum() > 0 else -x.flatten(1)   # data-dependent: neither traces

  with pytest.raises(ValueError, match="cannot trace ValueBranch.*torch.export front end"):
    convert.from_torch(ValueBranch(), input_shape=(1, 2, 2))


def test_resnet18_export_equals_fx():
  sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
  from test_convert_torchvision import build
  module, _ = build("resnet18")
  shape = (3, 32, 32)
  a = convert.from_torch(module, input_shape=shape, check=False, frontend="fx")
  b = convert.from_torch(module, input_shape=shape, frontend="export")   # checked vs PyTorch
  assert a.layer_names == b.layer_names
  x = jnp.asarray(_images(2, shape, seed=2))
  np.testing.assert_allclose(jax.jit(b.apply_fn)(b.variables, x),
                             jax.jit(a.apply_fn)(a.variables, x), rtol=1e-6, atol=1e-6)
  _, ta = a.apply_fn(a.variables, x, tap="layer3.1.bn2")
  _, tb = b.apply_fn(b.variables, x, tap="layer3.1.bn2")
  np.testing.assert_allclose(tb, ta, rtol=1e-6, atol=1e-6)


class Pools3d(nn.Module):
  """LocalResponseNorm (ATen: pad + avg_pool3d) and 1-D / 3-D average pools."""

  def __init__(self):
    super().__init__()
    self.conv = nn.Conv2d(3, 6, 3)
    self.lrn = nn.LocalResponseNorm(3, alpha=0.5, beta=0.6, k=1.5)
    self.fc = nn.Linear(6 * 4 + 4, 4)

  def forward(self, x):
    h = self.lrn(self.conv(x))                                   # (N, 6, 6, 6)
    a = torch.nn.functional.avg_pool1d(h.flatten(2), 12, ceil_mode=True, count_include_pad=False,
                                       padding=2)                # (N, 6, 4)
    b = torch.nn.functional.avg_pool3d(h.unsqueeze(1), (2, 3, 3), stride=(2, 2, 3), padding=1)
    return self.fc(torch.cat([a.flatten(1), b.mean((3, 4)).flatten(1)], 1))


@pytest.mark.parametrize("frontend", ["fx", "export"])
def test_local_response_norm_and_nd_average_pools(frontend):
  torch.manual_seed(0)
  module = Pools3d().eval()
  clf = convert.from_torch(module, input_shape=(3, 8, 8), frontend=frontend)
  x = _images(3, (3, 8, 8), seed=4)
  with torch.no_grad():
    want = module(_torch(module, x)).numpy()
  np.testing.assert_allclose(jax.jit(clf.apply_fn)(clf.variables, jnp.asarray(x)), want,
                             atol=1e-5, rtol=1e-5)
  assert "lrn" in clf.layer_names


def test_shapes_run_with_fake_tensors_still_sees_the_batch_size():
  """The batch of 3 runs on FakeTensors: sizes and input-free tensors are still real values."""
  class SizeUser(nn.Module):
    def __init__(self, bad):
      super().__init__()
      self.fc, self.bad = nn.Linear(12, 4), bad

    def forward(self, x):
      h = self.fc(x.view(x.size(0), -1)) + torch.linspace(0, 1, 4)   # constant, real in both
      if self.bad:
        h = h + torch.arange(x.size(0))[:, None]                    # a tensor of the batch size
      return h

  good = SizeUser(False).eval()
  clf = convert.from_torch(good, input_shape=(3, 2, 2), frontend="fx")
  x = _images(5, (3, 2, 2))                             # a batch size the conversion never saw
  with torch.no_grad():
    want = good(_torch(good, x)).numpy()
  np.testing.assert_allclose(clf.forward(jnp.asarray(x)), want, atol=1e-6)
  with pytest.raises(ValueError, match="'arange'"):     # refused, not frozen at a batch of 2
    convert.from_torch(SizeUser(True).eval(), input_shape=(3, 2, 2), frontend="fx")
