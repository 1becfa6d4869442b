"""XLA:CPU defaults that jaxplain sets, once, before JAX starts its backends.

Recent jaxlib releases hand float32 convolutions on the CPU to YNNPACK. On this project's 2-core
CPU those kernels ran many of the CNN's layer shapes on one core: a 32→64-channel 3×3 conv over
256 faces of 24×24 took 82 ms there and 42 ms in XLA's Eigen convolution, the converted
NetworkV2's forward 469–519 ms against 184–198 ms (idle; ``scripts/bench.py`` rows). So
``import jaxplain`` adds ``--xla_cpu_experimental_ynn_fusion_type=`` to ``XLA_FLAGS`` (no
YNNPACK fusions: convolutions, and the elementwise work fused into them, go back to XLA's own
kernels), unless

- ``JAXPLAIN_XLA_FLAGS=off`` is set,
- ``XLA_FLAGS`` already names a YNNPACK setting (yours wins),
- JAX has already started a backend (flags are read once, at that moment; import jaxplain
  before your first JAX computation for the default to apply), or
- the installed jaxlib does not know the flag (XLA aborts on unknown flags, so the flag's name is
  looked up in jaxlib's library first).

Only XLA:CPU reads the flag; GPU and TPU compilations are unchanged. Results are the same
convolutions computed by another kernel (float32 rounding may differ in the last bits).
"""

from __future__ import annotations

import functools
import mmap
import os
import pathlib

FLAG = "--xla_cpu_experimental_ynn_fusion_type="
ENV = "JAXPLAIN_XLA_FLAGS"
_FLAG_NAME = FLAG.strip("-=").encode()  # what jaxlib's library holds when it knows the flag


@functools.cache
def _jaxlib_knows_flag() -> bool:
  """Whether jaxlib's XLA library registers the flag (else XLA_FLAGS with it would abort)."""
  try:
    import jaxlib
  except ImportError:
    return False
  root = pathlib.Path(jaxlib.__file__).parent
  for lib in sorted(root.glob("libjax_common*.so")) + sorted(root.glob("xla_extension*.so")):
    try:
      with open(lib, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        return m.find(_FLAG_NAME) >= 0
    except (OSError, ValueError):
      continue
  return False


def _backends_started() -> bool:
  try:
    from jax._src import xla_bridge
    return bool(xla_bridge.backends_are_initialized())
  except (ImportError, AttributeError):  # a JAX without the helper: assume the worst
    return True


def apply_cpu_defaults() -> bool:
  """Adds jaxplain's XLA:CPU flag to ``XLA_FLAGS`` where it can still act (module docs).

  Returns:
    whether the flag was added now.
  """
  if os.environ.get(ENV, "").lower() in ("off", "0", "no", "false"):
    return False
  flags = os.environ.get("XLA_FLAGS", "")
  if "ynn_fusion_type" in flags or _backends_started() or not _jaxlib_knows_flag():
    return False
  os.environ["XLA_FLAGS"] = f"{flags} {FLAG}".strip()
  return True

