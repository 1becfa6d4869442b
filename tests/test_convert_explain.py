"""Explanations on converted models equal PyTorch's: a spatial-transformer FER CNN (affine_grid →
grid_sample → CNN) against autograd, and saliency and Grad-CAM on a converted torchvision
ResNet-18 against Captum."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
captum_attr = pytest.importorskip("captum.attr")
nn = torch.nn
F = torch.nn.functional

from jaxplain import attribution as A  # noqa: E402
from jaxplain import convert, data  # noqa: E402


class SpatialTransformerFER(nn.Module):
  """A FER2013 STN in the style of public ones: a conv localisation net predicts an affine
  transform, ``affine_grid`` + ``grid_sample`` warp the 48×48 face, then a small CNN classifies."""

  def __init__(self):
    super().__init__()
    self.localization = nn.Sequential(nn.Conv2d(1, 8, 7), nn.MaxPool2d(2), nn.ReLU(True),
                                      nn.Conv2d(8, 10, 5), nn.MaxPool2d(2), nn.ReLU(True))
    self.fc_loc = nn.Sequential(nn.Linear(10 * 8 * 8, 32), nn.ReLU(True), nn.Linear(32, 6))
    with torch.no_grad():  # near the identity, as STNs are initialised, but not exactly it
      self.fc_loc[2].weight.mul_(0.05)
      self.fc_loc[2].bias.copy_(torch.tensor([0.9, 0.1, 0.05, -0.1, 0.95, -0.05]))
    self.features = nn.Sequential(nn.Conv2d(1, 10, 3, padding=1), nn.BatchNorm2d(10), nn.ReLU(),
                                  nn.MaxPool2d(2), nn.Conv2d(10, 16, 3, padding=1), nn.ReLU(),
                                  nn.MaxPool2d(2), nn.Dropout(0.3))
    self.classifier = nn.Linear(16 * 12 * 12, 7)

  def stn(self, x):
    xs = self.localization(x).view(-1, 10 * 8 * 8)
    theta = self.fc_loc(xs).view(-1, 2, 3)
    grid = F.affine_grid(theta, x.size(), align_corners=False)
    return F.grid_sample(x, grid, align_corners=False)

  def forward(self, x):
    x = self.features(self.stn(x))
    return self.classifier(x.flatten(1))


def _faces(n, channels=1):
  faces = data.to_float(data.sample_faces().images[:n])
  return np.repeat(faces, channels, axis=-1)


def _nhwc(t):
  return t.detach().double().numpy().transpose(0, 2, 3, 1)


def test_spatial_transformer_fer_converts_and_saliency_matches_autograd():
  torch.manual_seed(0)
  module = SpatialTransformerFER().eval()
  with torch.no_grad():
    bn = module.features[1]
    bn.running_mean.uniform_(-0.2, 0.2)
    bn.running_var.uniform_(0.5, 1.5)
  clf = convert.from_torch(module, input_shape=(1, 48, 48), mean=0.5, std=0.5)  # checks too
  x = _faces(6)
  xt = convert._to_torch(((x - 0.5) / 0.5).transpose(0, 3, 1, 2), torch.float32,
                        "cpu").requires_grad_(True)
  logits = module(xt)
  np.testing.assert_allclose(clf.forward(jnp.asarray(x)), logits.detach().numpy(), atol=1e-4,
                             rtol=1e-4)
  target = logits.argmax(1)
  logits.gather(1, target[:, None]).sum().backward()
  want = np.abs(_nhwc(xt.grad)) / 0.5                     # chain rule through (x - 0.5) / 0.5
  got = np.asarray(A.saliency(clf.forward, jnp.asarray(x), jnp.asarray(target.numpy())))
  assert got.shape == x.shape
  np.testing.assert_allclose(got, want, atol=1e-4 * want.max(), rtol=0)
  assert "stn" not in " ".join(clf.layer_names) and "fc_loc.2" in clf.layer_names


@pytest.fixture(scope="module")
def resnet18():
  from torch_compat import import_torchvision
  tv = import_torchvision()
  torch.manual_seed(0)
  module = tv.models.resnet18(weights=None, num_classes=7).eval()
  g = torch.Generator().manual_seed(0)
  with torch.no_grad():
    for m in (m for m in module.modules() if isinstance(m, nn.BatchNorm2d)):
      m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
      m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
      m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
  clf = convert.from_torch(module, input_shape=(3, 64, 64), check=False)
  return module, clf


def _inputs(n=3):
  faces = data.sample_faces()
  x = np.repeat(data.to_float(faces.images[:n]), 3, axis=-1)
  x = np.asarray(jax.image.resize(x, (n, 64, 64, 3), "linear"), np.float32)
  return x, np.asarray([0, 3, 6][:n])


@pytest.mark.slow
def test_resnet18_saliency_matches_captum(resnet18):
  module, clf = resnet18
  x, t = _inputs()
  xt = convert._to_torch(x.transpose(0, 3, 1, 2), torch.float32, "cpu").requires_grad_(True)
  want = _nhwc(captum_attr.Saliency(module).attribute(xt, target=torch.as_tensor(t)))
  got = np.asarray(jax.jit(A.saliency, static_argnums=0)(clf.forward, jnp.asarray(x),
                                                          jnp.asarray(t)))
  np.testing.assert_allclose(got, want, atol=1e-4 * want.max(), rtol=0)


@pytest.mark.slow
@pytest.mark.parametrize("layer", ["layer2.0.conv1", "layer3.1.bn2"])
def test_resnet18_grad_cam_matches_captum(resnet18, layer):
  module, clf = resnet18
  x, t = _inputs()
  xt = convert._to_torch(x.transpose(0, 3, 1, 2), torch.float32, "cpu")
  cam = captum_attr.LayerGradCam(module, module.get_submodule(layer)).attribute(
      xt, target=torch.as_tensor(t), relu_attributions=True)
  want = _nhwc(captum_attr.LayerAttribution.interpolate(cam, (64, 64)))
  got = np.asarray(A.grad_cam(clf, jnp.asarray(x), jnp.asarray(t), layer=layer))
  assert got.shape == (3, 64, 64, 1) and want.max() > 0
  np.testing.assert_allclose(got, want, atol=1e-4 * want.max(), rtol=0)
