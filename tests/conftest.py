import ctypes
import gc
import os

import jax
import numpy as np
import pytest

jax.config.update("jax_numpy_rank_promotion", "raise")
# The CLI keeps compiled programs in ~/.cache/jaxplain/xla; tests run without it (hermetic), and
# tests/test_cli.py checks it on a folder of its own.
os.environ.setdefault("JAXPLAIN_COMPILATION_CACHE", "off")

try:  # torchvision (and grad-cam, zennit, quantus) must import even without its C ops
  import torch  # noqa: F401
except ImportError:
  pass
else:
  from torch_compat import import_torchvision
  try:
    import_torchvision()
  except ImportError:
    pass


try:
  _trim = ctypes.CDLL("libc.so.6").malloc_trim  # glibc: hand freed heap pages back to the OS
except (OSError, AttributeError):
  _trim = None


@pytest.fixture(autouse=True, scope="module")
def _free_memory_after_module():
  """Drops every compiled program and garbage after each test file.

  Each file compiles its own models and shapes; kept, they add up to 8 GB over the suite. Freed
  between files, the suite's peak is the largest single file's (about 3 GB) and it recompiles
  only the few programs that files share.
  """
  yield
  jax.clear_caches()
  gc.collect()
  if _trim is not None:
    _trim(0)


@pytest.fixture
def key():
  return jax.random.key(0)


@pytest.fixture(scope="session")
def tiny_classifier():
  """A small random jaxplain CNN (untrained): fast to run, real architecture."""
  from jaxplain import train
  cfg = train.TrainConfig(model=dict(widths=(8, 16), depths=(1, 1), hidden=16))
  model, _, state = train.init_state(cfg, 1)
  return train._classifier(model, state, cfg)


@pytest.fixture(scope="session")
def faces():
  """The bundled sample faces (uint8 (N, 48, 48), labels)."""
  from jaxplain import data
  return data.sample_faces()


SHARED_CSV = __import__("pathlib").Path(__file__).resolve().parents[1].parent / \
    "shared/data/fer2013/fer2013_train_public.csv.gz"


@pytest.fixture(scope="session")
def shared_csv():
  if not SHARED_CSV.is_file():
    pytest.skip(f"{SHARED_CSV} not present")
  return SHARED_CSV
