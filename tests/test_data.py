import gzip

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from jaxplain import data


def _row(label, pixels, usage="Training"):
  return f"{label},{' '.join(map(str, pixels))},{usage}\n"


@pytest.fixture
def kaggle_csv(tmp_path):
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (6, 48, 48), dtype=np.uint8)
  labels = [0, 1, 2, 3, 4, 6]
  usages = ["Training"] * 4 + ["PublicTest"] * 2
  text = "emotion,pixels,Usage\n" + "".join(
      _row(l, im.ravel(), u) for l, im, u in zip(labels, images, usages))
  path = tmp_path / "fer.csv"
  path.write_text(text)
  return path, images, np.array(labels), text


def test_kaggle_csv_roundtrip(kaggle_csv):
  path, images, labels, _ = kaggle_csv
  faces = data.load_csv(path)
  np.testing.assert_array_equal(faces.images, images)
  np.testing.assert_array_equal(faces.labels, labels)
  assert faces.images.dtype == np.uint8 and faces.labels.dtype == np.int32
  assert faces.images.shape == (6, 48, 48)
  test = data.load_csv(path, usage="PublicTest")
  np.testing.assert_array_equal(test.images, images[4:])


def test_gzipped_equals_plain(kaggle_csv, tmp_path):
  path, images, _, text = kaggle_csv
  gz = tmp_path / "fer.csv.gz"
  gz.write_bytes(gzip.compress(text.encode()))
  np.testing.assert_array_equal(data.load_csv(gz).images, images)


def test_course_layout_with_validation_split(tmp_path):
  rng = np.random.default_rng(1)
  images = rng.integers(0, 256, (10, 48, 48), dtype=np.uint8)
  text = "label,feature\n" + "".join(
      f"{i % 7},{' '.join(map(str, im.ravel()))}\n" for i, im in enumerate(images))
  path = tmp_path / "train.csv"
  path.write_text(text)
  faces = data.load_csv(path, val_fraction=0.3, seed=3)
  np.testing.assert_array_equal(faces.images, images)
  assert (faces.usage == "PublicTest").sum() == 3
  again = data.load_csv(path, val_fraction=0.3, seed=3)
  np.testing.assert_array_equal(faces.usage, again.usage)
  assert len(data.load_csv(path, val_fraction=0.3, seed=3, usage="Training")) == 7


@pytest.mark.parametrize("bad_row, message", [
    ("3," + " ".join(["1"] * 2303) + ",Training\n", "2303 pixel values"),
    ("3," + " ".join(["1"] * 2303) + " x,Training\n", "non-numeric"),
    ("3," + " ".join(["1"] * 2303) + " 256,Training\n", "outside 0-255"),
    ("9," + " ".join(["1"] * 2304) + ",Training\n", "label 9 outside 0-6"),
    ("a," + " ".join(["1"] * 2304) + ",Training\n", "not an integer"),
    ("3\n", "columns"),
])
def test_broken_row_names_file_and_line(kaggle_csv, tmp_path, bad_row, message):
  _, _, _, text = kaggle_csv
  lines = text.splitlines(keepends=True)
  lines.insert(3, bad_row)  # file line 4
  path = tmp_path / "broken.csv"
  path.write_text("".join(lines))
  with pytest.raises(ValueError, match=rf"broken\.csv: line 4: .*{message}"):
    data.load_csv(path)
  faces = data.load_csv(path, skip_bad=True)
  assert faces.skipped == 1 and len(faces) == 6


def test_empty_and_missing_columns(tmp_path):
  empty = tmp_path / "empty.csv"
  empty.write_text("")
  with pytest.raises(ValueError, match="empty file"):
    data.load_csv(empty)
  no_pixels = tmp_path / "cols.csv"
  no_pixels.write_text("emotion,Usage\n1,Training\n")
  with pytest.raises(ValueError, match="lacks the columns"):
    data.load_csv(no_pixels)
  header_only = tmp_path / "header.csv"
  header_only.write_text("emotion,pixels,Usage\n")
  with pytest.raises(ValueError, match="no data rows"):
    data.load_csv(header_only)
  with pytest.raises(ValueError, match="no such file"):
    data.load_csv(tmp_path / "nope.csv")


def test_unknown_usage(kaggle_csv):
  with pytest.raises(ValueError, match="PrivateTest"):
    data.load_csv(kaggle_csv[0], usage="PrivateTest")


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=3000))
def test_fuzz_arbitrary_bytes_only_valueerror(tmp_path_factory, blob):
  path = tmp_path_factory.mktemp("fuzz") / "f.csv"
  path.write_bytes(blob)
  try:
    data.load_csv(path)
  except ValueError:
    pass


@settings(max_examples=40, deadline=None)
@given(st.lists(st.text(alphabet="0123456789 ,-x.\n\"", max_size=60), min_size=1, max_size=5))
def test_fuzz_csv_like_text_only_valueerror(tmp_path_factory, rows):
  path = tmp_path_factory.mktemp("fuzz") / "f.csv"
  path.write_text("emotion,pixels,Usage\n" + "\n".join(rows))
  try:
    data.load_csv(path)
  except ValueError:
    pass


def test_image_folder_any_size_and_colour(tmp_path):
  from PIL import Image
  rng = np.random.default_rng(0)
  for split in ("train", "test"):
    for name in ("Angry", "happy", "6"):
      d = tmp_path / split / name
      d.mkdir(parents=True)
      Image.fromarray(rng.integers(0, 256, (64, 80, 3), dtype=np.uint8)).save(d / "a.png")
      Image.fromarray(rng.integers(0, 256, (48, 48), dtype=np.uint8)).save(d / "b.jpg")
  (tmp_path / "train" / "happy" / "notes.txt").write_text("ignored")
  faces = data.load_image_folder(tmp_path)
  assert faces.images.shape == (12, 48, 48) and faces.images.dtype == np.uint8
  assert sorted(set(faces.labels.tolist())) == [0, 3, 6]
  assert len(data.load(tmp_path, usage="test")) == 6
  (tmp_path / "train" / "happy" / "c.png").write_bytes(b"not a png")
  with pytest.raises(ValueError, match="c.png: cannot read"):
    data.load_image_folder(tmp_path)
  assert data.load_image_folder(tmp_path, skip_bad=True).skipped == 1


def test_load_images_centre_crop(tmp_path):
  from PIL import Image
  wide = np.zeros((40, 120, 3), np.uint8)
  wide[:, 40:80] = 255  # the centre square is white, the sides black
  Image.fromarray(wide).save(tmp_path / "w.png")
  out = data.load_images([tmp_path / "w.png"])
  assert out.shape == (1, 48, 48) and out.min() > 250


def test_sample_faces_bundle(faces):
  assert faces.images.shape == (35, 48, 48) and faces.images.dtype == np.uint8
  np.testing.assert_array_equal(np.bincount(faces.labels), [5] * 7)


def test_to_float_rejects_floats():
  with pytest.raises(ValueError, match="uint8"):
    data.to_float(np.zeros((1, 48, 48), np.float32))
  x = data.to_float(np.full((2, 48, 48), 255, np.uint8))
  assert x.shape == (2, 48, 48, 1) and x.dtype == np.float32 and x.max() == 1.0


@pytest.mark.slow
def test_real_fer2013_csv(shared_csv):
  import time
  t = time.time()
  faces = data.load_csv(shared_csv)
  assert time.time() - t < 30
  train, test = faces.split("Training"), faces.split("PublicTest")
  assert len(train) == 28709 and len(test) == 3589
  np.testing.assert_array_equal(np.bincount(train.labels),
                                [3995, 436, 4097, 7215, 4830, 3171, 4965])


def test_huge_pixel_is_reported_as_written(kaggle_csv, tmp_path):
  _, images, _, _ = kaggle_csv
  pixels = [str(v) for v in images[0].ravel()]
  pixels[7] = "99999999999999999999"
  path = tmp_path / "huge.csv"
  path.write_text("emotion,pixels,Usage\n" + f"0,{' '.join(pixels)},Training\n")
  with pytest.raises(ValueError, match=r"line 2: pixel value 99999999999999999999 outside 0-255"):
    data.load_csv(path)


def test_missing_usage_column_is_said(kaggle_csv, tmp_path):
  _, images, labels, _ = kaggle_csv
  path = tmp_path / "no_usage.csv"
  path.write_text("emotion,pixels\n" + "".join(
      f"{l},{' '.join(map(str, im.ravel()))}\n" for l, im in zip(labels, images)))
  with pytest.warns(UserWarning, match=r"no_usage.csv: no Usage column, so all 6 rows are "
                                       "'Training'"):
    faces = data.load_csv(path)
  assert set(faces.usage) == {"Training"}


def test_16_bit_png_is_scaled_to_8_bit(tmp_path):
  from PIL import Image
  wide = (np.arange(48 * 48, dtype=np.uint16).reshape(48, 48) * 28).astype(np.uint16)  # 0..64484
  Image.fromarray(wide).save(tmp_path / "deep.png")  # PIL writes a 16-bit gray PNG
  with Image.open(tmp_path / "deep.png") as im:
    assert im.mode.startswith("I")  # PIL reads it as 16/32-bit integers, not 8-bit gray
  got = data.load_images([tmp_path / "deep.png"])[0]
  np.testing.assert_array_equal(got, np.rint(wide / 257.0).astype(np.uint8))
  assert got.min() == 0 and got.max() == 251  # not clipped to white
