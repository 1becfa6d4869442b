"""Every torchvision classification model, converted and compared with PyTorch's logits.

Random weights (no downloads), ``num_classes=7``, eval mode, BatchNorm running statistics and
norm-layer affines randomised (so eval-mode normalisation matters), 64×64 RGB unless the model
needs more. Logits must agree within 1e-4 of their scale in float32 (and 1e-10 in float64 for a
few models).

Tiers: a fast sample of small models in the default run; one model per family under
``-m slow``; the full sweep (all of ``torchvision.models.list_models``) under ``-m slow`` with
``JAXPLAIN_FULL=1`` (``scripts/test.sh --full``). Run as a script to sweep named models (or all)
and print a table: ``python tests/test_convert_torchvision.py [--export] [name ...]``
(``--export``: through the torch.export front end).
"""

from __future__ import annotations

import gc
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")

RTOL32, RTOL64 = 1e-4, 1e-10
FAST = ("shufflenet_v2_x0_5", "mobilenet_v3_small", "squeezenet1_1")
FAMILIES = ("alexnet", "efficientnet_b0", "convnext_tiny", "densenet121", "googlenet", "inception_v3", "mnasnet0_5",
            "mobilenet_v2", "regnet_x_400mf", "regnet_y_400mf", "resnet18", "resnext50_32x4d",
            "swin_t", "swin_v2_t", "vgg11_bn", "vit_b_32", "efficientnet_v2_s", "maxvit_t")
FLOAT64 = ("resnet18", "mobilenet_v3_small", "shufflenet_v2_x0_5")
EXPORT = ("mobilenet_v3_small", "shufflenet_v2_x0_5", "efficientnet_b0", "convnext_tiny",
          "densenet121", "regnet_y_400mf")  # through torch.export instead of torch.fx


def _torchvision():
  sys.path.insert(0, os.path.dirname(__file__))
  from torch_compat import import_torchvision
  return import_torchvision()


def all_models() -> list[str]:
  tv = _torchvision()
  return sorted(tv.models.list_models(module=tv.models))


def build(name: str, seed: int = 0):
  """``(module in eval mode, (C, H, W))`` with random weights and randomised norm statistics."""
  tv = _torchvision()
  kwargs, size = {"num_classes": 7}, 64
  if name.startswith("vit_"):
    size = 56 if name == "vit_h_14" else 64
    kwargs["image_size"] = size
  elif name == "inception_v3":
    size, kwargs["aux_logits"], kwargs["init_weights"] = 96, False, False
  elif name == "googlenet":
    kwargs["aux_logits"], kwargs["init_weights"] = False, False
  elif name == "maxvit_t":
    size = 224
  torch.manual_seed(seed)
  module = tv.models.get_model(name, weights=None, **kwargs)
  randomise(module, seed)
  return module.eval(), (3, size, size)


def randomise(module, seed=0):
  """Random BatchNorm running statistics and norm affines (so eval-mode normalisation matters)."""
  nn = torch.nn
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for m in module.modules():
      if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
        m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.3)
        m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
      if isinstance(m, nn.Linear) and not m.weight.any():  # ViT's zero-initialised head
        m.weight.copy_(torch.randn(m.weight.shape, generator=g) * 0.05)
        if m.bias is not None:
          m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.05)
      if isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm)) and \
          getattr(m, "weight", None) is not None:
        m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
        m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.2)
  return module


def compare(name: str, dtype: str = "float32", n: int = 2, frontend: str = "auto") -> dict:
  """Converts ``name`` (through ``frontend``) and compares logits with PyTorch on random images.

  Returns ``{"rel_err", "params", "seconds"}``; raises what the conversion raises.
  """
  from jaxplain import convert
  t0 = time.perf_counter()
  module, shape = build(name)
  if dtype == "float64":
    module = module.double()
  clf = convert.from_torch(module, input_shape=shape, check=False, frontend=frontend)
  c, h, w = shape
  x = np.random.default_rng(1).uniform(size=(n, h, w, c))
  xt = convert._to_torch(x.transpose(0, 3, 1, 2), next(module.parameters()).dtype, "cpu")
  with torch.no_grad():
    want = module(xt).double().numpy()
  params = sum(p.numel() for p in module.parameters())
  del module, xt  # PyTorch's copy of the weights goes before JAX runs (regnet_y_128gf: 2.6 GB)
  gc.collect()
  # the weights go in as an argument: jit(clf.forward) would fold them into the program as
  # constants (minutes of XLA constant folding and a second copy for the largest models)
  got = np.asarray(jax.jit(lambda f, v: f(v))(clf.forward, jnp.asarray(x, dtype)), np.float64)
  rel = float(np.max(np.abs(got - want)) / max(np.max(np.abs(want)), 1e-30))
  del clf
  gc.collect()
  return {"rel_err": rel, "params": params, "seconds": time.perf_counter() - t0,
          "shape": got.shape}


def _check(name, dtype="float32", frontend="auto"):
  out = compare(name, dtype, frontend=frontend)
  assert out["shape"] == (2, 7)
  assert out["rel_err"] <= (RTOL64 if dtype == "float64" else RTOL32), (name, out)
  return out


@pytest.mark.parametrize("name", FAST)
def test_small_torchvision_models_match_pytorch(name):
  _check(name)


@pytest.mark.slow
@pytest.mark.parametrize("name", FLOAT64[:1])
def test_torchvision_float64(name):
  with jax.enable_x64(True):
    _check(name, "float64")


@pytest.mark.slow
@pytest.mark.parametrize("name", FAMILIES)
def test_one_model_per_family(name):
  _check(name)


@pytest.mark.slow
@pytest.mark.parametrize("name", EXPORT)
def test_export_front_end(name):
  _check(name, frontend="export")


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("JAXPLAIN_FULL") != "1",
                    reason="the full torchvision sweep runs with JAXPLAIN_FULL=1 "
                           "(scripts/test.sh --full)")
def test_every_torchvision_model(capsys):
  ok, failed = [], {}
  for name in all_models():
    try:
      _check(name)
      ok.append(name)
    except Exception as e:  # noqa: BLE001 - collect every failure, then report them all
      failed[name] = f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
  with jax.enable_x64(True):
    for name in FLOAT64:
      _check(name, "float64")
  with capsys.disabled():
    print(f"\n{len(ok)}/{len(ok) + len(failed)} torchvision models convert: {', '.join(ok)}")
    for name, why in failed.items():
      print(f"  {name}: {why}")
  assert not failed, failed


if __name__ == "__main__":
  args = sys.argv[1:]
  front = "export" if "--export" in args else "auto"
  names = [a for a in args if not a.startswith("--")] or all_models()
  for name in names:
    try:
      r = compare(name, frontend=front)
      status = "ok" if r["rel_err"] <= RTOL32 and r["shape"] == (2, 7) else "MISMATCH"
      print(f"{name:24s} {status:8s} rel {r['rel_err']:.2e} {r['params'] / 1e6:7.1f}M "
            f"{r['seconds']:6.1f}s", flush=True)
    except Exception as e:  # noqa: BLE001
      print(f"{name:24s} FAIL     {type(e).__name__}: {str(e).splitlines()[0][:400]}",
            flush=True)
