"""jaxplain.convert's op coverage (issue 14), each op against PyTorch itself on random inputs.

Every module concatenates many small outputs, so one conversion (one compile) checks a family of
ops; PyTorch's own output is the reference, in float32 and, for the resampling ops whose index
arithmetic is easy to get subtly wrong, in float64 at 1e-10.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional

from jaxplain import convert  # noqa: E402


def _randomise(module, seed=0):
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for m in module.modules():
      if isinstance(m, (nn.LayerNorm, nn.GroupNorm, nn.InstanceNorm2d)) and m.weight is not None:
        m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
        m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.2)
      if isinstance(m, nn.modules.batchnorm._BatchNorm):
        m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.3)
        m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
  return module.eval()


def _check(module, shape, *, dtype="float32", n=3, rtol=1e-5, grad=False):
  torch.manual_seed(0)
  module = _randomise(module)
  tdtype = torch.float64 if dtype == "float64" else torch.float32
  module = module.to(tdtype)
  clf = convert.from_torch(module, input_shape=shape, check=False)
  c, h, w = shape
  x = np.random.default_rng(0).uniform(size=(n, h, w, c)).astype(dtype)
  xt = convert._to_torch(x.transpose(0, 3, 1, 2), tdtype, "cpu").requires_grad_(grad)
  want = module(xt)
  got = np.asarray(jax.jit(clf.forward)(jnp.asarray(x)), np.float64)
  ref = want.detach().double().numpy().reshape(got.shape)
  scale = np.abs(ref).max()
  np.testing.assert_allclose(got, ref, atol=rtol * scale, rtol=0)
  if grad:  # input gradient of one output = PyTorch autograd
    want[:, 1].sum().backward()
    g = jax.jit(jax.grad(lambda v: clf.forward(v)[:, 1].sum()))(jnp.asarray(x))
    gt = xt.grad.double().numpy().transpose(0, 2, 3, 1)
    np.testing.assert_allclose(np.asarray(g, np.float64), gt, atol=rtol * np.abs(gt).max(),
                               rtol=0)
  return clf


class Indexing(nn.Module):
  """getitem (ints, slices, steps, None, ..., lists), chunk, split, narrow, unbind, shuffles."""

  def __init__(self):
    super().__init__()
    self.conv = nn.Conv2d(2, 8, 3, padding=1)
    self.shuffle = nn.ChannelShuffle(2)

  def forward(self, x):
    h = self.conv(x)                                     # (N, 8, 6, 7)
    a, b = h.chunk(2, dim=1)
    p, q, r = torch.split(h, [2, 4, 2], dim=1)
    n = h.size(0)
    u = h.unbind(1)
    shuffled = h.view(n, 2, 4, 6, 7).transpose(1, 2).contiguous().view(n, -1, 6, 7)
    parts = [a * b, p.sum(1, keepdim=True) - r[:, :1], q[:, 1:3], h[:, 1:6:2, ::2, -3:],
             h[..., 0], h[:, None, 3, 1:4], h[:, [0, 5, 2]], h.narrow(2, 1, 3),
             torch.narrow(h, 3, -4, 2), torch.stack([u[0], u[3], u[1]], 1), shuffled,
             self.shuffle(h), F.channel_shuffle(h, 4), h[:, -1]]
    return torch.cat([t.flatten(1) for t in parts], 1)


class Norms(nn.Module):
  """ConvNeXt's permuted LayerNorm, F.layer_norm over (C, H, W), GroupNorm, InstanceNorm, LRN."""

  def __init__(self):
    super().__init__()
    self.conv = nn.Conv2d(3, 8, 3)
    self.ln = nn.LayerNorm(8, eps=1e-6)
    self.ln_w = nn.Parameter(torch.rand(8, 4, 4) + 0.5)
    self.gn = nn.GroupNorm(4, 8)
    self.gn_plain = nn.GroupNorm(2, 8, affine=False)
    self.inorm = nn.InstanceNorm2d(8, affine=True)
    self.inorm_plain = nn.InstanceNorm2d(8)
    self.inorm_running = nn.InstanceNorm2d(8, track_running_stats=True)
    self.lrn = nn.LocalResponseNorm(3, alpha=0.5, beta=0.75, k=2.0)

  def forward(self, x):
    h = self.conv(x)                                     # (N, 8, 4, 4)
    ln = self.ln(h.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
    parts = [ln, F.layer_norm(h, (8, 4, 4), self.ln_w), F.layer_norm(h, (4,)), self.gn(h),
             self.gn_plain(h), F.group_norm(h, 8), self.inorm(h), self.inorm_plain(h),
             self.inorm_running(h), self.lrn(h), F.local_response_norm(h, 4)]
    return torch.cat([t.flatten(1) for t in parts], 1)


class Transposed(nn.Module):
  """ConvTranspose1d/2d (stride, padding, output padding, groups, dilation), Conv1d."""

  def __init__(self):
    super().__init__()
    self.a = nn.ConvTranspose2d(3, 4, 3, stride=2, padding=1, output_padding=1)
    self.b = nn.ConvTranspose2d(4, 6, (3, 2), stride=(1, 2), groups=2, dilation=(2, 1),
                                bias=False)
    self.c = nn.ConvTranspose2d(6, 2, 4, stride=3, padding=2)
    self.d = nn.Conv1d(3, 4, 3, padding=1)
    self.e = nn.ConvTranspose1d(4, 2, 3, stride=2, output_padding=1, groups=2)

  def forward(self, x):
    h = self.c(self.b(self.a(x)))
    s = self.e(self.d(x.flatten(2)))
    up = F.conv_transpose2d(x, self.a.weight, stride=2)
    return torch.cat([h.flatten(1), s.flatten(1), up.flatten(1),
                      self.a(x, output_size=(10, 8)).flatten(1)], 1)


class Resample(nn.Module):
  """interpolate / Upsample: nearest(-exact), bilinear, bicubic; align_corners; scale and size."""

  def __init__(self):
    super().__init__()
    self.up = nn.Upsample(scale_factor=2)
    self.up_bi = nn.UpsamplingBilinear2d(size=(9, 11))
    self.up_cubic = nn.Upsample(scale_factor=1.7, mode="bicubic")

  def forward(self, x):
    h = x - 0.5
    parts = [self.up(h), self.up_bi(h), self.up_cubic(h),
             F.interpolate(h, size=(7, 4)), F.interpolate(h, scale_factor=0.6),
             F.interpolate(h, scale_factor=1.5, mode="nearest-exact"),
             F.interpolate(h, size=(3, 5), mode="nearest-exact"),
             F.interpolate(h, scale_factor=(1.5, 0.7), mode="bilinear"),
             F.interpolate(h, scale_factor=1.5, mode="bilinear", recompute_scale_factor=True),
             F.interpolate(h, size=(11, 8), mode="bilinear", align_corners=True),
             F.interpolate(h, size=(4, 3), mode="bilinear", align_corners=False),
             F.interpolate(h, size=(10, 13), mode="bicubic", align_corners=True),
             F.interpolate(h, scale_factor=0.5, mode="bicubic"),
             F.interpolate(h.flatten(2), scale_factor=2.5, mode="linear")]
    return torch.cat([t.flatten(1) for t in parts], 1)


class Sampler(nn.Module):
  """affine_grid + grid_sample: every mode × padding × align_corners, a theta from the input."""

  def __init__(self):
    super().__init__()
    self.fc = nn.Linear(3, 6)
    with torch.no_grad():
      self.fc.weight.mul_(0.3)
      self.fc.bias.copy_(torch.tensor([1.3, 0.4, 0.1, -0.3, 0.9, -0.2]))  # zoom out, rotate

  def forward(self, x):
    theta = self.fc(x.mean((2, 3))).view(-1, 2, 3)
    parts = []
    for align in (False, True):
      grid = F.affine_grid(theta, [x.size(0), 3, 7, 9], align_corners=align)
      for mode in ("bilinear", "nearest"):
        for pad in ("zeros", "border", "reflection"):
          parts.append(F.grid_sample(x, grid, mode=mode, padding_mode=pad, align_corners=align))
    return torch.cat([t.flatten(1) for t in parts], 1)


class Algebra(nn.Module):
  """max/min(x, dim), argmax, softmax on any dim, matmul/bmm/einsum, reshapes, scalars."""

  def __init__(self):
    super().__init__()
    self.conv = nn.Conv2d(2, 4, 3)
    self.w = nn.Parameter(torch.randn(5, 3))

  def forward(self, x):
    h = self.conv(x)                                     # (N, 4, 4, 5)
    v, i = torch.max(h, dim=2)
    m = h.min(-1)
    tokens = h.flatten(2).transpose(1, 2)                # (N, 20, 4)
    att = torch.bmm(tokens, tokens.transpose(1, 2)).softmax(dim=-1)
    mixed = att @ tokens
    e = torch.einsum("nchw,wk->nchk", h, self.w)
    u = h.unflatten(1, (2, 2)).sum(2).unsqueeze(1).squeeze(1)
    parts = [v, m.values, i.float(), m.indices.float(), torch.argmax(h, 1).float(),
             F.softmax(h, dim=2), F.log_softmax(h, dim=-1), torch.softmax(h, 3),
             mixed, e, torch.matmul(h, self.w), u, torch.maximum(h, -h * 0.5),
             2 - h, h / 3, 1 / (h.abs() + 1), h ** 2, torch.rsub(h, 1.5), h // 0.3,
             torch.remainder(h, 0.7), torch.clamp(h, -0.2, 0.3), torch.where(h > 0, h, 0.1 * h),
             h.mean().expand(x.size(0), 1), h.permute(0, 3, 1, 2).reshape(x.size(0), 5, -1), h.exp(),
             torch.flip(h, (2,)), torch.roll(h, 1, 3), h.std(dim=(2, 3)), h.var(1, unbiased=False),
             h.expand(-1, -1, -1, -1) + h[:, :1].expand(-1, 4, -1, -1)]
    return torch.cat([t.flatten(1) for t in parts], 1)


class Activations(nn.Module):
  def __init__(self):
    super().__init__()
    self.conv = nn.Conv2d(2, 4, 3)
    self.acts = nn.ModuleList([nn.SiLU(), nn.Hardswish(), nn.Hardsigmoid(), nn.GELU(),
                               nn.GELU("tanh"), nn.Mish(), nn.ELU(0.5), nn.SELU(), nn.PReLU(4),
                               nn.Softplus(), nn.LeakyReLU(0.2), nn.ReLU6(), nn.Softmin(1)])

  def forward(self, x):
    h = self.conv(x) * 4
    parts = [a(h) for a in self.acts] + [F.dropout(h, 0.3, training=False), F.alpha_dropout(h),
                                         F.feature_alpha_dropout(h, 0.2)]
    return torch.cat([t.flatten(1) for t in parts], 1)


@pytest.mark.parametrize("make, shape", [
    (Indexing, (2, 6, 7)), (Norms, (3, 6, 6)), (Transposed, (3, 5, 4)), (Resample, (3, 5, 6)),
    (Sampler, (3, 6, 8)), (Algebra, (2, 6, 7)), (Activations, (2, 5, 5))],
    ids=lambda v: getattr(v, "__name__", ""))
def test_ops_match_pytorch(make, shape):
  _check(make(), shape)


@pytest.mark.parametrize("make, shape", [(Resample, (3, 5, 6)), (Sampler, (3, 6, 8))],
                         ids=lambda v: getattr(v, "__name__", ""))
def test_resampling_float64(make, shape):
  with jax.enable_x64(True):
    _check(make(), shape, dtype="float64", rtol=1e-10)


def test_stochastic_depth_is_identity_in_eval():
  from torch_compat import import_torchvision
  tv = import_torchvision()

  class Block(nn.Module):
    def __init__(self):
      super().__init__()
      self.conv = nn.Conv2d(1, 3, 3)
      self.sd = tv.ops.StochasticDepth(0.5, "row")

    def forward(self, x):
      h = self.conv(x)
      return (h + self.sd(h) + tv.ops.stochastic_depth(h, 0.3, "batch", self.training)).mean(
          (2, 3))

  clf = _check(Block(), (1, 5, 5))
  assert "sd" not in clf.layer_names  # traced through: torchvision's layer, not torch.nn's


def test_new_ops_survive_save_and_load(tmp_path):
  from jaxplain import checkpoint
  torch.manual_seed(0)
  for make, shape in ((Indexing, (2, 6, 7)), (Norms, (3, 6, 6)), (Algebra, (2, 6, 7)),
                      (Sampler, (3, 6, 8))):
    clf = convert.from_torch(_randomise(make()), input_shape=shape, check=False)
    checkpoint.save_classifier(clf, tmp_path / make.__name__)
    loaded = checkpoint.load_classifier(tmp_path / make.__name__)
    assert loaded.apply_fn == clf.apply_fn                # same ops and parameters after JSON
    for a, b in zip(jax.tree.leaves(loaded.variables), jax.tree.leaves(clf.variables)):
      np.testing.assert_array_equal(a, b)
