import jax
import numpy as np
import pytest

jax.config.update("jax_numpy_rank_promotion", "raise")

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
