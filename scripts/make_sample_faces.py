"""Writes jaxplain/assets/sample_faces.npz: a few FER2013 `Training` faces per class.

    python scripts/make_sample_faces.py ../shared/data/fer2013/fer2013_train_public.csv.gz
"""

import argparse
import pathlib

import numpy as np

from jaxplain import data


def main():
  p = argparse.ArgumentParser(description=__doc__)
  p.add_argument("csv")
  p.add_argument("--per-class", type=int, default=5)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--out", default=pathlib.Path(data.__file__).parent / "assets/sample_faces.npz")
  args = p.parse_args()
  faces = data.load_csv(args.csv, usage="Training")
  rng = np.random.default_rng(args.seed)
  index = np.concatenate([rng.choice(np.flatnonzero(faces.labels == c), args.per_class,
                                     replace=False) for c in range(len(data.CLASS_NAMES))])
  np.savez_compressed(args.out, images=faces.images[index], labels=faces.labels[index],
                      rows=index)
  print(f"wrote {len(index)} faces to {args.out} ({pathlib.Path(args.out).stat().st_size} bytes)")


if __name__ == "__main__":
  main()
