"""jaxplain.convert's weight files and error messages: safetensors, usual checkpoint layouts,
damaged files, NaN weights, constructor arguments, and the diverging-op report."""

from __future__ import annotations

import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
nn = torch.nn

from jaxplain import convert, graph  # noqa: E402


class Small(nn.Module):
  def __init__(self, width=3, classes=2):
    super().__init__()
    self.conv = nn.Conv2d(1, width, 3)
    self.bn = nn.BatchNorm2d(width)
    self.fc = nn.Linear(width, classes)

  def forward(self, x):
    return self.fc(self.bn(self.conv(x)).mean((2, 3)))


def _src():
  torch.manual_seed(0)
  m = Small()
  with torch.no_grad():
    m.bn.running_mean.uniform_(-0.5, 0.5)
  return m


def _same(a, b):
  return all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())


def test_safetensors_and_usual_layouts(tmp_path):
  st = pytest.importorskip("safetensors.torch")
  src = _src()
  sd = src.state_dict()
  st.save_file(dict(sd), tmp_path / "w.safetensors")
  torch.save(sd, tmp_path / "plain.pth")
  torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}, "epoch": 3},
             tmp_path / "dp.ckpt")                               # DataParallel under state_dict
  torch.save({"model": sd, "optimizer": {"lr": 0.1}}, tmp_path / "model.pt")
  torch.save({"state_dict": {f"model.{k}": v for k, v in sd.items()}}, tmp_path / "pl.ckpt")
  torch.save({f"backbone.{k}": v for k, v in sd.items()} | {"head.w": torch.ones(1)},
             tmp_path / "prefixed.pt")
  for name in ("w.safetensors", "plain.pth", "dp.ckpt", "model.pt", "pl.ckpt"):
    assert _same(src, convert.load_torch_weights(Small(), tmp_path / name)), name
  assert _same(src, convert.load_torch_weights(Small(), tmp_path / "prefixed.pt",
                                               prefix="backbone."))
  with pytest.raises(ValueError, match=r"unexpected keys .*'head.w'.*pass prefix='backbone.'"):
    convert.load_torch_weights(Small(), tmp_path / "prefixed.pt")


def _message(excinfo) -> str:
  text = str(excinfo.value)
  assert "\n" not in text, text                                   # one line
  return text


def test_damaged_files_get_one_line_errors_without_the_unsafe_hint(tmp_path):
  src = _src()
  (tmp_path / "empty.pt").write_bytes(b"")
  with pytest.raises(ValueError, match="empty") as e:
    convert.load_torch_weights(Small(), tmp_path / "empty.pt")
  _message(e)
  (tmp_path / "random.pt").write_bytes(np.random.default_rng(0).bytes(4096))
  with pytest.raises(ValueError, match="not a weight file") as e:
    convert.load_torch_weights(Small(), tmp_path / "random.pt")
  assert "trusted" not in _message(e)
  torch.save(src.state_dict(), tmp_path / "ok.pt")
  raw = bytearray((tmp_path / "ok.pt").read_bytes())
  mid = bytes(raw).find(src.conv.weight.detach().numpy().tobytes())  # inside a tensor's data
  assert mid > 0
  raw[mid:mid + 64] = bytes(b ^ 0xFF for b in raw[mid:mid + 64])  # XOR 64 bytes
  (tmp_path / "xor.pt").write_bytes(bytes(raw))
  try:
    dst = convert.load_torch_weights(Small(), tmp_path / "xor.pt")
  except ValueError as err:                                       # the archive noticed
    assert "trusted" not in str(err) and "\n" not in str(err)
  else:                                                           # or the values changed
    assert not _same(src, dst)
  (tmp_path / "bad.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
  with pytest.raises(ValueError, match="safetensors") as e:
    convert.load_torch_weights(Small(), tmp_path / "bad.safetensors")
  assert "trusted" not in _message(e)
  with pytest.raises(ValueError, match="no such file"):
    convert.load_torch_weights(Small(), tmp_path / "missing.pt")
  torch.save(src, tmp_path / "whole.pt")                        # a real pickle of a class
  with pytest.raises(ValueError, match=r"pickled Python objects \(.*Small\).*trusted=True"):
    convert.load_torch_weights(Small(), tmp_path / "whole.pt")


def test_nan_weights_are_named_not_blamed_on_in_place_ops(tmp_path):
  src = _src()
  sd = src.state_dict()
  sd["fc.weight"] = sd["fc.weight"].clone()
  sd["fc.weight"][0, 0] = float("nan")
  sd["bn.running_var"] = sd["bn.running_var"].clone()
  sd["bn.running_var"][1] = float("inf")
  torch.save(sd, tmp_path / "nan.pt")
  with pytest.raises(ValueError) as e:
    convert.load_torch_weights(Small(), tmp_path / "nan.pt")
  text = _message(e)
  assert "fc.weight (1 NaN, 0 Inf of 6)" in text and "bn.running_var (0 NaN, 1 Inf" in text
  assert "in place" not in text
  with torch.no_grad():
    src.conv.bias[1] = float("nan")
  with pytest.raises(ValueError, match=r"NaN or infinite weights: \['conv.bias \(1 NaN") as e:
    convert.from_torch(src, input_shape=(1, 6, 6))
  assert "in place" not in str(e.value)


def test_build_module_names_unknown_arguments(tmp_path):
  (tmp_path / "nets.py").write_text(
      "import torch.nn as nn\n"
      "class Net(nn.Module):\n"
      "  def __init__(self, width=4, classes=7):\n"
      "    super().__init__()\n"
      "    self.fc = nn.Linear(width, classes)\n")
  spec = f"{tmp_path / 'nets.py'}:Net"
  m = convert.build_module(spec, '{"width": 3}')
  assert m.fc.in_features == 3
  assert convert.build_module(spec, [5, 2]).fc.out_features == 2
  assert convert.build_module(spec, None).fc.in_features == 4
  with pytest.raises(ValueError) as e:
    convert.build_module(spec, '{"widht": 3}')
  assert _message(e) == ("`model_args`: unknown argument 'widht' for Net; it accepts "
                         "(width=4, classes=7)")
  with pytest.raises(ValueError, match="not JSON"):
    convert.build_module(spec, "{width: 3}")
  with pytest.raises(ValueError, match="accepts"):
    convert.build_module(spec, [1, 2, 3])
  with pytest.raises(ValueError, match="accepts .*in_features"):
    convert.build_module("torch.nn:Linear", {"in_features": 2, "outfeatures": 3})


class Wrong(nn.Module):
  def __init__(self):
    super().__init__()
    self.stem = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU())
    self.mid = nn.Sequential(nn.Conv2d(4, 4, 3), nn.Hardswish())
    self.fc = nn.Linear(4, 3)

  def forward(self, x):
    return self.fc(self.mid(self.stem(x)).mean((2, 3)))


def test_check_names_the_first_diverging_layer(monkeypatch):
  torch.manual_seed(0)
  module = Wrong()
  convert.from_torch(module, input_shape=(1, 9, 9), std=0.2)  # converts (another shape: no jit cache hit)
  monkeypatch.setitem(graph.OPS, "hardswish", graph.OPS["silu"])  # a deliberately wrong op
  with pytest.raises(ValueError) as e:
    convert.from_torch(module, input_shape=(1, 8, 8), std=0.2)
  text = _message(e)
  assert "differs from PyTorch" in text and "'hardswish'" in text and "at 'mid.1'" in text


def test_in_place_mutation_is_located():
  class InPlace(nn.Module):
    def __init__(self):
      super().__init__()
      self.act = nn.ReLU(inplace=True)
      self.fc = nn.Linear(4, 2)

    def forward(self, x):
      h = x.flatten(1) - 0.5
      y = self.act(h)                                   # h is now relu'd too
      return self.fc(y + h)

  with pytest.raises(ValueError, match=r"differs from PyTorch.*first op that differs is 'add'.*"
                                       r"in place"):
    convert.from_torch(InPlace(), input_shape=(1, 2, 2))
  convert.from_torch(InPlace(), input_shape=(1, 2, 2), check=False)  # the user's choice


def test_random_bytes_under_a_torch_zip_header(tmp_path):
  junk = b"PK\x03\x04" + os.urandom(2000)
  (tmp_path / "zip.pt").write_bytes(junk)
  with pytest.raises(ValueError, match="damaged") as e:
    convert.load_torch_weights(Small(), tmp_path / "zip.pt")
  assert "trusted" not in _message(e)
