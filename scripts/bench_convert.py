"""Benchmark rows: a converted PyTorch FER CNN under jax.jit vs the same module in PyTorch.

Rows: forward of 256 faces, and the input gradient of the predicted class for 32 (what saliency
and integrated gradients need). Uses the pretrained NetworkV2 of facial_emotion_recognition 0.3.4
when ``scripts/fetch_reference_models.py`` has fetched it, else a random twin of it.

    python scripts/bench.py --modules convert [--quick]
"""

from __future__ import annotations

import functools
import pathlib
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from _bench_common import Workload, faces, row, torch_device


def _twin():
  import torch.nn as nn

  def block(i, o, s):
    return nn.Sequential(nn.ReflectionPad2d(1), nn.Conv2d(i, o, 3, stride=s), nn.BatchNorm2d(o),
                         nn.ReLU(inplace=True))

  class NetworkV2Twin(nn.Module):
    def __init__(self):
      super().__init__()
      self.conv_1, self.conv_2 = block(1, 32, 1), block(32, 64, 2)
      self.conv_3, self.conv_4 = block(64, 128, 2), block(128, 256, 2)
      self.linear = nn.Sequential(nn.Linear(256 * 6 * 6, 256), nn.ReLU(inplace=True),
                                  nn.Linear(256, 7), nn.Sigmoid())

    def forward(self, x):
      x = self.conv_4(self.conv_3(self.conv_2(self.conv_1(x))))
      return self.linear(x.reshape((x.shape[0], -1)))
  return NetworkV2Twin()


@functools.cache
def _module():
  from jaxplain import convert
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
  import fetch_reference_models as fetch
  root = fetch.cache_dir() / fetch.FER_DIR / "facial_emotion_recognition"
  if (root / "model" / "model.pkl").is_file():
    module = convert.import_class(f"{root / 'networks.py'}:NetworkV2")(in_c=1, nl=32, out_f=7)
    convert.load_torch_weights(module, root / "model" / "model.pkl", key="network")
    return module.eval(), "pretrained NetworkV2"
  return _twin().eval(), "random NetworkV2 twin (reference model not fetched)"


@functools.cache
def _converted():
  import time

  from jaxplain import convert
  module, what = _module()
  t0 = time.perf_counter()
  clf = convert.from_torch(module, input_shape=(1, 48, 48), mean=0.5, std=0.5)
  return module.to(torch_device()), clf, f"{what}, conversion {time.perf_counter() - t0:.1f}s"


def _torch_inputs(x):
  import torch
  return torch.as_tensor(np.ascontiguousarray(((x - 0.5) / 0.5).transpose(0, 3, 1, 2))).to(
      torch_device())


@row("forward NetworkV2 (converted) N=256")
def _forward(quick):
  import torch
  module, clf, what = _converted()
  n = 64 if quick else 256
  x, _ = faces(n)
  xj, xt = jnp.asarray(x), _torch_inputs(x)
  fwd = jax.jit(lambda f, v: f(v))

  def peer():
    with torch.no_grad():
      return module(xt)
  return Workload(lambda: fwd(clf.forward, xj), peer, f"torch {torch.__version__} no_grad", n,
                  f"{what}; {n} faces")


@row("input gradient NetworkV2 (converted) N=32")
def _gradient(quick):
  import torch
  module, clf, what = _converted()
  n = 32
  x, _ = faces(n)
  xj, xt = jnp.asarray(x), _torch_inputs(x)
  target = np.asarray(clf.forward(xj)).argmax(1)
  grad = jax.jit(jax.grad(lambda f, v: f(v)[jnp.arange(n), target].sum(), argnums=1))
  tt = torch.as_tensor(target).to(torch_device())

  def peer():
    v = xt.clone().requires_grad_(True)
    out = module(v)
    return torch.autograd.grad(out[torch.arange(n), tt].sum(), v)
  return Workload(lambda: grad(clf.forward, xj), peer, f"torch {torch.__version__} autograd", n,
                  what)


def conversion_time(name: str = "resnet50", size: int = 224) -> dict:
  """Seconds to convert a torchvision model (random weights), the numeric check included.

  Issue 14's target: ResNet-50 at 224×224 in ≤ 30 s on a 2-core CPU.
  """
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "tests"))
  from torch_compat import import_torchvision
  from jaxplain import convert
  tv = import_torchvision()
  module = tv.models.get_model(name, weights=None, num_classes=7).eval()
  t0 = time.perf_counter()
  convert.from_torch(module, input_shape=(3, size, size), check=False)
  unchecked = time.perf_counter() - t0
  module = tv.models.get_model(name, weights=None, num_classes=7).eval()  # no jit cache hit
  t0 = time.perf_counter()
  convert.from_torch(module, input_shape=(3, size + 1, size + 1))  # other shape: fresh compile
  checked = time.perf_counter() - t0
  return {"model": name, "size": size, "convert_s": unchecked, "convert_and_check_s": checked}


if __name__ == "__main__":
  if "--resnet50" in sys.argv:
    print(conversion_time())
  else:
    print("rows of this file run through scripts/bench.py --modules bench_convert; --resnet50 times a conversion")
