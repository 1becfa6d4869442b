"""FER2013 readers: the Kaggle CSV, the course's ``train.csv`` and image folders.

Every reader returns a :class:`Faces` holding uint8 images ``(N, 48, 48)`` and int32 labels
``(N,)`` in FER order. Malformed input raises ``ValueError`` naming the file, the line and the
problem; ``skip_bad=True`` drops bad rows instead and reports how many in ``Faces.skipped``.
"""

from __future__ import annotations

import csv
import dataclasses
import gzip
import io
import os
import pathlib
import warnings
from collections.abc import Sequence

import numpy as np

CLASS_NAMES = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
SIZE = 48
NUM_PIXELS = SIZE * SIZE
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")

__all__ = [
    "CLASS_NAMES",
    "Faces",
    "load",
    "load_csv",
    "load_image_folder",
    "load_images",
    "parse_pixels",
    "sample_faces",
    "to_float",
]


@dataclasses.dataclass(frozen=True)
class Faces:
  """A set of faces.

  Attributes:
    images: uint8 ``(N, 48, 48)``.
    labels: int32 ``(N,)`` in ``0..6`` (FER order, see ``CLASS_NAMES``).
    usage: the split of each row (``"Training"``, ``"PublicTest"``, ...), ``(N,)`` str.
    skipped: how many malformed rows were dropped (only with ``skip_bad=True``).
    source: where the faces came from.
  """

  images: np.ndarray
  labels: np.ndarray
  usage: np.ndarray
  skipped: int = 0
  source: str = ""

  def __len__(self) -> int:
    return len(self.labels)

  def split(self, usage: str | Sequence[str] | None) -> "Faces":
    """The rows whose usage is ``usage`` (one name or several); all rows for ``None``."""
    if usage is None:
      return self
    names = (usage,) if isinstance(usage, str) else tuple(usage)
    known = sorted(set(self.usage.tolist()))
    missing = [n for n in names if n not in known]
    if missing:
      raise ValueError(f"{self.source}: no rows with usage {missing}; the file has {known}")
    keep = np.isin(self.usage, names)
    return dataclasses.replace(
        self, images=self.images[keep], labels=self.labels[keep], usage=self.usage[keep])

  def take(self, index) -> "Faces":
    return dataclasses.replace(
        self, images=self.images[index], labels=self.labels[index], usage=self.usage[index])


def to_float(images: np.ndarray) -> np.ndarray:
  """uint8 ``(N, 48, 48)`` → float32 ``(N, 48, 48, 1)`` in [0, 1]: jaxplain's input convention."""
  images = np.asarray(images)
  if images.dtype != np.uint8:
    raise ValueError(f"`images` must be uint8 0-255, got {images.dtype}")
  return (images.astype(np.float32) / 255.0)[..., None]


def _open_text(path: pathlib.Path) -> str:
  raw = path.read_bytes()
  if raw[:2] == b"\x1f\x8b":
    try:
      raw = gzip.decompress(raw)
    except (OSError, EOFError, gzip.BadGzipFile) as e:
      raise ValueError(f"{path}: not a readable gzip file ({e})") from None
  try:
    return raw.decode("utf-8-sig")
  except UnicodeDecodeError as e:
    raise ValueError(f"{path}: not UTF-8 text (byte {e.start}); expected a FER2013 CSV") from None


def parse_pixels(rows: Sequence[str]) -> tuple[np.ndarray, list[tuple[int, str]]]:
  """Parses space-separated pixel strings into uint8 ``(N, 48, 48)``.

  Each row is parsed by NumPy's C text reader (about 60 µs a row), so the 35k-row CSV parses in
  about two seconds.

  Args:
    rows: ``N`` strings of 2,304 integers 0-255.

  Returns:
    ``(images, bad)``: uint8 ``(N, 48, 48)`` (zeros for bad rows) and a list of
    ``(row index, message)`` for rows that do not hold 2,304 integers in 0-255.
  """
  images = np.zeros((len(rows), NUM_PIXELS), np.uint8)
  bad = []
  with warnings.catch_warnings():
    warnings.simplefilter("error")  # NumPy warns (here: raises) on text it cannot read
    for i, row in enumerate(rows):
      try:
        values = np.fromstring(row, dtype=np.int64, sep=" ")
      except (ValueError, DeprecationWarning):
        token = next((t for t in row.split() if not t.isdigit()), row[:20])
        bad.append((i, f"non-numeric pixel value {token[:20]!r}"))
        continue
      if values.size != NUM_PIXELS:
        bad.append((i, f"{values.size} pixel values, expected {NUM_PIXELS} (48x48)"))
      elif values.size and not 0 <= values.min() <= values.max() <= 255:
        # The text, not the parsed value: NumPy saturates 99999999999999999999 to int64's max.
        at = int(np.flatnonzero((values < 0) | (values > 255))[0])
        tokens = row.split()
        wrong = tokens[at] if len(tokens) == values.size else str(values[at])
        bad.append((i, f"pixel value {wrong[:30]} outside 0-255"))
      else:
        images[i] = values
  return images.reshape(-1, SIZE, SIZE), bad


def _parse_label(value: str) -> int | str:
  try:
    label = int(value.strip())
  except ValueError:
    return f"label {value!r} is not an integer"
  if not 0 <= label < len(CLASS_NAMES):
    return f"label {label} outside 0-6"
  return label


def load_csv(path: str | os.PathLike, *, usage: str | Sequence[str] | None = None,
             val_fraction: float = 0.0, seed: int = 0, skip_bad: bool = False) -> Faces:
  """Reads a FER2013 CSV: Kaggle ``emotion,pixels,Usage`` or course ``label,feature``.

  Plain or gzipped. The course layout has no usage column: rows get usage ``"Training"``, and a
  ``val_fraction`` of them (picked with ``seed``) get ``"PublicTest"``.

  Args:
    path: the CSV file.
    usage: keep only rows of this usage (e.g. ``"Training"``); ``None`` keeps all.
    val_fraction: for the course layout, the fraction held out as ``"PublicTest"``.
    seed: for the course layout, the seed of that hold-out.
    skip_bad: drop malformed rows (counted in ``Faces.skipped``) instead of raising.

  Returns:
    The faces.

  Raises:
    ValueError: an empty file, a missing column, or a malformed row (naming file and line).
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise ValueError(f"{path}: no such file; pass the path of a FER2013 CSV")
  text = _open_text(path)
  try:
    reader = list(csv.reader(io.StringIO(text, newline="")))
  except csv.Error as e:
    raise ValueError(f"{path}: not a CSV file ({e})") from None
  if not reader or not any(reader[0]):
    raise ValueError(f"{path}: empty file; expected a header 'emotion,pixels,Usage' "
                     "or 'label,feature'")
  header = [h.strip().lower() for h in reader[0]]
  if "emotion" in header and "pixels" in header:
    label_col, pixel_col = header.index("emotion"), header.index("pixels")
    usage_col = header.index("usage") if "usage" in header else None
  elif "label" in header and "feature" in header:
    label_col, pixel_col, usage_col = header.index("label"), header.index("feature"), None
  else:
    raise ValueError(f"{path}: line 1: header {reader[0]} lacks the columns "
                     "'emotion,pixels[,Usage]' (Kaggle) or 'label,feature' (course)")
  width = max(label_col, pixel_col, usage_col or 0) + 1
  body = [(i + 2, row) for i, row in enumerate(reader[1:]) if any(c.strip() for c in row)]
  if not body:
    raise ValueError(f"{path}: no data rows after the header")
  problems: dict[int, str] = {}
  labels = np.zeros(len(body), np.int32)
  pixels = []
  for k, (line, row) in enumerate(body):
    if len(row) < width:
      problems[k] = f"{len(row)} columns, expected {len(header)}"
      pixels.append("")
      continue
    label = _parse_label(row[label_col])
    if isinstance(label, str):
      problems[k] = label
    else:
      labels[k] = label
    pixels.append(row[pixel_col])
  images, bad = parse_pixels(pixels)
  for k, message in bad:
    problems.setdefault(k, message)
  if usage_col is not None:
    usages = np.array([row[usage_col].strip() if len(row) > usage_col else ""
                       for _, row in body])
  else:
    usages = np.full(len(body), "Training", dtype=object).astype(str)
    if not 0.0 <= val_fraction < 1.0:
      raise ValueError(f"`val_fraction` must be in [0, 1), got {val_fraction}")
    n_val = int(round(val_fraction * len(body)))
    held = np.random.default_rng(seed).permutation(len(body))[:n_val]
    usages = usages.astype("<U10")
    usages[held] = "PublicTest"
    warnings.warn(f"{path}: no Usage column, so all {len(body)} rows are 'Training'"
                  + (f" but {n_val} held out as 'PublicTest' (val_fraction={val_fraction})"
                     if n_val else "; pass val_fraction to hold some out as 'PublicTest'"),
                  stacklevel=2)
  if problems and not skip_bad:
    k = min(problems)
    more = f" (and {len(problems) - 1} more bad rows)" if len(problems) > 1 else ""
    raise ValueError(f"{path}: line {body[k][0]}: {problems[k]}{more}; fix the row or pass "
                     "skip_bad=True (--skip-bad) to drop malformed rows")
  keep = np.ones(len(body), bool)
  keep[list(problems)] = False
  faces = Faces(images[keep], labels[keep], usages[keep], skipped=len(problems), source=str(path))
  return faces.split(usage)


def _to_gray48(image, *, crop: bool = True) -> np.ndarray:
  """Any PIL image → uint8 (48, 48) gray: centred square crop, then resize.

  16-bit gray (PIL modes ``I;16*``, or ``I`` holding values above 255) is scaled to 8 bit
  (``round(v / 257)``); PIL's own ``convert("L")`` clips it to 255, so faces came out white.
  """
  from PIL import Image
  if image.mode.startswith("I;16") or image.mode == "I":
    wide = np.asarray(image).astype(np.int64)
    if image.mode.startswith("I;16") or (wide.size and wide.max() > 255):
      wide = np.rint(wide.clip(0, 65535) / 257.0)
    image = Image.fromarray(wide.clip(0, 255).astype(np.uint8), "L")
  image = image.convert("L")
  if crop:
    w, h = image.size
    s = min(w, h)
    left, top = (w - s) // 2, (h - s) // 2
    image = image.crop((left, top, left + s, top + s))
  if image.size != (SIZE, SIZE):
    image = image.resize((SIZE, SIZE), Image.Resampling.BILINEAR)
  return np.asarray(image, np.uint8)


def load_images(paths: Sequence[str | os.PathLike]) -> np.ndarray:
  """Reads image files of any size and colour into uint8 ``(N, 48, 48)`` gray (centred crop)."""
  from PIL import Image, UnidentifiedImageError
  out = []
  for p in paths:
    try:
      with Image.open(p) as im:
        out.append(_to_gray48(im))
    except (OSError, UnidentifiedImageError) as e:
      raise ValueError(f"{p}: cannot read as an image ({e})") from None
  if not out:
    raise ValueError("no image files given")
  return np.stack(out)


def load_image_folder(root: str | os.PathLike, *, usage: str | Sequence[str] | None = None,
                      skip_bad: bool = False) -> Faces:
  """Reads ``<root>/<split>/<class name>/*.png|jpg`` (or ``<root>/<class name>/...``).

  Class folders are matched to FER names case-insensitively (``Angry``, ``angry``) or may be the
  digits ``0``-``6``. Images of any size or colour become 48×48 gray.
  """
  from PIL import Image, UnidentifiedImageError
  root = pathlib.Path(root)
  if not root.is_dir():
    raise ValueError(f"{root}: no such folder; expected <root>/<split>/<class>/*.png")
  lookup = {n: i for i, n in enumerate(CLASS_NAMES)} | {str(i): i for i in range(7)}

  def class_dirs(d):
    return [c for c in sorted(d.iterdir()) if c.is_dir() and c.name.lower() in lookup]

  splits = [(root.name, root)] if class_dirs(root) else [
      (d.name, d) for d in sorted(root.iterdir()) if d.is_dir() and class_dirs(d)]
  if not splits:
    raise ValueError(f"{root}: no class folders ({', '.join(CLASS_NAMES)}) found")
  images, labels, usages, skipped = [], [], [], 0
  for split, d in splits:
    for c in class_dirs(d):
      for f in sorted(c.iterdir()):
        if f.suffix.lower() not in IMAGE_SUFFIXES:
          continue
        try:
          with Image.open(f) as im:
            images.append(_to_gray48(im))
        except (OSError, UnidentifiedImageError) as e:
          if not skip_bad:
            raise ValueError(f"{f}: cannot read as an image ({e}); remove it or pass "
                             "skip_bad=True") from None
          skipped += 1
          continue
        labels.append(lookup[c.name.lower()])
        usages.append(split)
  if not images:
    raise ValueError(f"{root}: the class folders hold no images")
  faces = Faces(np.stack(images), np.array(labels, np.int32), np.array(usages),
                skipped=skipped, source=str(root))
  return faces.split(usage)


def load(path: str | os.PathLike, **kwargs) -> Faces:
  """Reads FER2013 from a CSV (plain or gzipped) or an image folder, by what ``path`` is."""
  if pathlib.Path(path).is_dir():
    kwargs.pop("val_fraction", None)
    kwargs.pop("seed", None)
    return load_image_folder(path, **kwargs)
  return load_csv(path, **kwargs)


def sample_faces() -> Faces:
  """The FER2013 ``Training`` faces bundled with jaxplain (a few per class)."""
  from importlib import resources
  with resources.files("jaxplain").joinpath("assets/sample_faces.npz").open("rb") as f:
    z = np.load(f)
    images, labels = z["images"], z["labels"].astype(np.int32)
  return Faces(images, labels, np.full(len(labels), "Training"), source="jaxplain sample faces")
