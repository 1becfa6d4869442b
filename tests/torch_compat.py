"""Imports for the PyTorch reference libraries that work where torchvision's C ops do not load.

torchvision's Python models need none of its C ops, but ``import torchvision`` registers fake
kernels for ``torchvision::nms``/``qnms`` and fails when the compiled library did not load (a
torch build that does not match the torchvision wheel). Defining the two schemas first lets the
import and every model (and grad-cam, zennit and quantus, which import torchvision) work; the
detection ops themselves stay unavailable.
"""

from __future__ import annotations


def import_torchvision():
  """``torchvision``, importable even where its C ops are missing (see module doc)."""
  import sys

  import torch
  try:  # a matching build (a GPU machine's): its C library registers the ops itself
    import torchvision
    return torchvision
  except RuntimeError:  # "operator torchvision::nms does not exist": the C library did not load
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
      del sys.modules[name]
  lib = torch.library.Library("torchvision", "FRAGMENT")
  lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
  lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
  _LIBS.append(lib)  # a Library unregisters its definitions when collected
  import torchvision
  return torchvision


_LIBS: list = []
