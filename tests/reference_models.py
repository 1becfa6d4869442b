"""Public pretrained PyTorch FER CNNs for tests, converted with jaxplain.convert.

Fetch them with ``python scripts/fetch_reference_models.py``; tests that need one skip when it is
absent. Other tests use :func:`network_v2` to compare jaxplain with PyTorch tools (Captum) on
identical weights.
"""

from __future__ import annotations

import functools
import importlib.util
import pathlib

import pytest

_SCRIPT = pathlib.Path(__file__).resolve().parents[1] / "scripts" / "fetch_reference_models.py"


def _fetch_module():
  spec = importlib.util.spec_from_file_location("_jaxplain_fetch_reference_models", _SCRIPT)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


def network_v2_dir() -> pathlib.Path | None:
  """The extracted facial_emotion_recognition 0.3.4 sources, or None when not fetched."""
  fetch = _fetch_module()
  root = fetch.cache_dir() / fetch.FER_DIR / "facial_emotion_recognition"
  ok = (root / "networks.py").is_file() and (root / "model" / "model.pkl").is_file()
  return root if ok else None


@functools.lru_cache(maxsize=4)
def _network_v2(dtype: str, output_activation: str, x64: bool):
  del x64  # part of the cache key: float64 weights exist only under jax_enable_x64
  from jaxplain import convert
  root = network_v2_dir()
  module = convert.import_class(f"{root / 'networks.py'}:NetworkV2")(in_c=1, nl=32, out_f=7)
  convert.load_torch_weights(module, root / "model" / "model.pkl", key="network")
  module.eval()
  if dtype == "float64":
    module.double()
  clf = convert.from_torch(module, input_shape=(1, 48, 48), mean=0.5, std=0.5,
                           output_activation=output_activation)
  return module, clf


def network_v2(*, dtype: str = "float32", output_activation: str = "keep"):
  """``(torch_module, jaxplain_classifier)`` of the pretrained FER2013 ``NetworkV2``.

  facial_emotion_recognition 0.3.4 (PyPI): 48×48 gray faces, mean 0.5, std 0.5, 7 FER classes;
  the torch module ends in a Sigmoid (``output_activation="strip"`` removes it from the jaxplain
  side only). Layer names are the PyTorch paths (``conv_1.3`` is the first block's ReLU).

  Args:
    dtype: "float32", or "float64" (a ``.double()`` module; call inside ``jax.enable_x64(True)``
      so the converted weights stay float64).
    output_activation: passed to ``jaxplain.convert.from_torch``.

  Skips the calling test when torch or the fetched model is missing. Cached per arguments: do not
  modify the returned module.
  """
  pytest.importorskip("torch")
  if network_v2_dir() is None:
    pytest.skip("facial_emotion_recognition 0.3.4 not fetched: run "
                "`python scripts/fetch_reference_models.py`")
  if dtype not in ("float32", "float64"):
    raise ValueError(f"`dtype` must be 'float32' or 'float64', got {dtype!r}")
  import jax
  return _network_v2(dtype, output_activation, bool(jax.config.jax_enable_x64))


def network_v2_on_images(*, dtype: str = "float32"):
  """``(wrapped, module, classifier)``: :func:`network_v2` as the PyTorch tools take it.

  ``wrapped`` is a torch model on [0, 1] NCHW images (it normalises with mean 0.5, std 0.5
  inside, as the jaxplain classifier does), ``wrapped.module`` the network, a copy whose ReLUs
  are not in place (Captum's hooks refuse in-place ReLUs; the values are the same).
  """
  import copy

  from torch import nn
  module, clf = network_v2(dtype=dtype)
  module = copy.deepcopy(module)
  for m in module.modules():
    if isinstance(m, nn.ReLU):
      m.inplace = False

  class Normalised(nn.Module):
    def __init__(self, module, mean, std):
      super().__init__()
      self.module, self.mean, self.std = module, mean, std

    def forward(self, x):
      return self.module((x - self.mean) / self.std)

  return Normalised(module, 0.5, 0.5).eval(), module, clf
