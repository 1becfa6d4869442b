"""Converted graphs run channels-last (NHWC) where they can: same values as PyTorch's NCHW.

``TorchGraph._run(channels_last=True)`` (what a classifier's forward runs) keeps 4-D activations
in NHWC through convolutions, norms, pools, pads, elementwise ops, channel concatenation and
spatial means, and goes back to NCHW only where an op needs PyTorch's layout. Checked against
PyTorch itself and against the same graph run op by op in NCHW, on a model that mixes both
kinds of op; and the XLA:CPU flag jaxplain sets at import (``jaxplain.xla_flags``).
"""

from __future__ import annotations

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional

from jaxplain import convert, xla_flags  # noqa: E402

from test_convert import _randomise  # noqa: E402


class Mixed(nn.Module):
  """Layout-free ops (NHWC) interleaved with ops that need NCHW (indexing, flatten, softmax)."""

  def __init__(self):
    super().__init__()
    self.stem = nn.Sequential(nn.ReflectionPad2d((1, 2, 0, 1)), nn.Conv2d(3, 8, 3),
                              nn.BatchNorm2d(8), nn.ReLU())
    self.left = nn.Conv2d(8, 8, 3, padding=1, padding_mode="replicate")
    self.right = nn.Conv2d(8, 4, 1)
    self.pool = nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True)
    self.avg = nn.AvgPool2d(2, count_include_pad=False, padding=1)
    self.bn = nn.BatchNorm2d(12)
    self.head = nn.Linear(12 * 3 * 2 + 12, 5)

  def forward(self, x):
    h = self.stem(x)
    h = torch.cat([F.silu(self.left(h)) + h, self.right(h) * 0.5], dim=1)   # 12 channels
    h = self.avg(self.pool(self.bn(h)))
    g = h.mean(dim=(2, 3))                                  # a spatial mean: (N, C) either way
    h = F.adaptive_avg_pool2d(F.pad(F.pad(h, (0, 1)), (0, 0, -1, 1), value=0.5), (3, 2))
    h = torch.flip(h, dims=(3,))                          # an op that needs NCHW
    return self.head(torch.cat([torch.flatten(h, 1), torch.softmax(g, dim=1)], dim=1))


@pytest.fixture(scope="module")
def mixed():
  torch.manual_seed(0)
  module = _randomise(Mixed())
  return module, convert.from_torch(module, input_shape=(3, 17, 14), check=False)


def _x(n=3):
  return np.random.default_rng(1).uniform(size=(n, 17, 14, 3)).astype(np.float32)


def test_channels_last_equals_pytorch_and_nchw(mixed):
  module, clf = mixed
  x = _x()
  graph = clf.apply_fn
  fast = jax.jit(lambda v, x: graph(v, x))(clf.variables, jnp.asarray(x))
  slow = graph._run(clf.variables, jnp.asarray(x), channels_last=False)[0][graph.output]
  np.testing.assert_allclose(fast, slow, atol=2e-5)
  assert convert.torch_difference(module, clf, x)["max_abs_diff"] < 2e-5
  jaxpr = str(jax.make_jaxpr(lambda x: graph(clf.variables, x))(jnp.asarray(x)))
  assert "lhs_spec=(0, 3, 1, 2)" in jaxpr             # the convolutions ran NHWC


def test_channels_last_gradient_and_taps_match_pytorch(mixed):
  module, clf = mixed
  x = _x(2)
  xt = torch.as_tensor(x.transpose(0, 3, 1, 2)).requires_grad_(True)
  store = {}

  def keep(m, i, o):
    o.retain_grad()
    store["out"] = o
  hook = module.bn.register_forward_hook(keep)
  out = module(xt)
  out[:, 2].sum().backward()
  hook.remove()
  g = jax.grad(lambda v: clf.forward(v)[:, 2].sum())(jnp.asarray(x))
  np.testing.assert_allclose(g, xt.grad.numpy().transpose(0, 2, 3, 1), atol=1e-5)
  tapped = clf.tapped("bn")
  logits, act = jax.jit(tapped)(jnp.asarray(x), None)
  np.testing.assert_allclose(act, store["out"].detach().numpy().transpose(0, 2, 3, 1), atol=1e-5)
  dg = jax.grad(lambda d: tapped(jnp.asarray(x), d)[0][:, 2].sum())(jnp.zeros_like(act))
  np.testing.assert_allclose(dg, store["out"].grad.numpy().transpose(0, 2, 3, 1), atol=1e-5)


_SCENARIOS = r"""
import json, os, sys
import jaxplain                                        # no backend started by the import
from jaxplain import xla_flags
out = {"import": os.environ.get("XLA_FLAGS", "")}
for name, env in json.loads(sys.argv[1]).items():
  for k in ("XLA_FLAGS", xla_flags.ENV):
    os.environ.pop(k, None)
  os.environ.update(env)
  xla_flags.apply_cpu_defaults()
  out[name] = os.environ.get("XLA_FLAGS", "")
print(json.dumps(out))
"""


def test_xla_cpu_flag_set_at_import_unless_user_chose():
  import json
  env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", xla_flags.ENV)}
  mine = "--xla_cpu_experimental_ynn_fusion_type=individual_convolution"
  other = "--xla_force_host_platform_device_count=2"
  scenarios = {"off": {xla_flags.ENV: "off"}, "mine": {"XLA_FLAGS": mine},
               "other": {"XLA_FLAGS": other}}
  run = subprocess.run([sys.executable, "-c", _SCENARIOS, json.dumps(scenarios)], env=env,
                       capture_output=True, text=True, check=True)
  got = json.loads(run.stdout.strip().splitlines()[-1])
  if not xla_flags._jaxlib_knows_flag():                # an unknown flag would abort XLA
    assert got == {"import": "", "off": "", "mine": mine, "other": other}
    return
  assert got == {"import": xla_flags.FLAG, "off": "", "mine": mine,
                 "other": f"{other} {xla_flags.FLAG}"}


def test_xla_cpu_flag_not_added_once_backends_started(monkeypatch):
  jnp.zeros(1).block_until_ready()                     # this process's backends are running
  monkeypatch.delenv("XLA_FLAGS", raising=False)
  monkeypatch.delenv(xla_flags.ENV, raising=False)
  assert xla_flags.apply_cpu_defaults() is False
  assert "XLA_FLAGS" not in os.environ
