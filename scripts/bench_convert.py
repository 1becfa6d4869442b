"""Benchmark: a converted PyTorch FER CNN under jax.jit vs the same module in PyTorch (CPU).

Rows: forward of a batch of faces, and the input gradient of the predicted class (what saliency
and integrated gradients need). Uses the pretrained NetworkV2 of facial_emotion_recognition 0.3.4
when ``scripts/fetch_reference_models.py`` has fetched it, else a random twin of it.
Run standalone: ``python scripts/bench_convert.py``; ``--resnet50`` times the conversion of a
torchvision ResNet-50 at 224×224 with its numeric check instead.
"""

from __future__ import annotations

import pathlib
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

BATCH = 64


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


def _time(fn, repeat=10):
  fn()
  t0 = time.perf_counter()
  for _ in range(repeat):
    fn()
  return (time.perf_counter() - t0) / repeat


def run(report):
  import torch
  from jaxplain import convert, data
  module, what = _module()
  t0 = time.perf_counter()
  clf = convert.from_torch(module, input_shape=(1, 48, 48), mean=0.5, std=0.5)
  convert_s = time.perf_counter() - t0
  faces = data.to_float(data.sample_faces().images)
  x = np.concatenate([faces] * (BATCH // len(faces) + 1))[:BATCH]
  xj = jnp.asarray(x)
  xt = convert._to_torch(((x - 0.5) / 0.5).transpose(0, 3, 1, 2), torch.float32, "cpu")

  fwd = jax.jit(clf.forward)
  t0 = time.perf_counter()
  fwd(xj).block_until_ready()
  compile_fwd = time.perf_counter() - t0
  ours = _time(lambda: fwd(xj).block_until_ready())

  def torch_fwd():
    with torch.no_grad():
      module(xt)
  peer = _time(torch_fwd)
  report("convert: forward NetworkV2", ours, peer, compile_fwd,
         f"{what}, batch {BATCH}, CPU; conversion itself {convert_s:.2f}s")

  target = np.asarray(fwd(xj)).argmax(1)
  grad = jax.jit(jax.grad(lambda f, v: f(v)[jnp.arange(BATCH), target].sum(), argnums=1))
  t0 = time.perf_counter()
  grad(clf.forward, xj).block_until_ready()
  compile_grad = time.perf_counter() - t0
  ours = _time(lambda: grad(clf.forward, xj).block_until_ready())
  tt = torch.as_tensor(target)

  def torch_grad():
    v = xt.clone().requires_grad_(True)
    out = module(v)
    torch.autograd.grad(out[torch.arange(BATCH), tt].sum(), v)
  peer = _time(torch_grad)
  report("convert: input gradient NetworkV2", ours, peer, compile_grad,
         f"{what}, batch {BATCH}, CPU; torch autograd vs jax.grad")


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
    sys.exit(0)
  def _print(name, ours_s, peer_s, compile_s, note):
    print(f"{name:36s} ours {ours_s * 1e3:8.2f} ms  torch {peer_s * 1e3:8.2f} ms  "
          f"ratio {ours_s / peer_s:5.2f}  compile {compile_s:.2f}s  ({note})")
  run(_print)
