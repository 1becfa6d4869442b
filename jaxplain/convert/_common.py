"""Small helpers shared by the converter's modules (torch imported lazily)."""

from __future__ import annotations

import numpy as np


def torch_module():
  """``torch`` (with ``torch.fx``), or an ImportError that says how to get it."""
  try:
    import torch
    import torch.fx  # noqa: F401
  except ImportError:
    raise ImportError("converting PyTorch models needs torch: pip install 'jaxplain[torch]' "
                      "(loading a converted checkpoint does not)") from None
  return torch


def is_tensor(v) -> bool:
  return type(v).__module__.startswith("torch") and hasattr(v, "dtype") and hasattr(v, "shape")


def to_torch(array, dtype, device):
  """A torch tensor with standard (row-major) strides, as a DataLoader would give.

  ``torch.as_tensor`` keeps NumPy's strides, and a transposed (N, 1, H, W) array looks
  channels-last to PyTorch, whose convs then return channels-last tensors that ``view`` rejects.
  """
  torch = torch_module()
  return torch.empty(array.shape, dtype=dtype, device=device).copy_(
      torch.from_numpy(np.asarray(array)))


def to_numpy(t) -> np.ndarray:
  return t.detach().cpu().numpy()
