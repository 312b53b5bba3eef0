"""Writes scikit-learn's bundled handwritten digits as a class-folder data set.

The one real, public image classification set that a fresh machine has on
disk without a download (the UCI optical-recognition digits, 1,797 8x8 scans
at 17 grey levels, ship inside scikit-learn), so the robustness study's
real-data path -- class-name captions with injected label noise, zero-shot
on a held-out split -- can be run end to end offline:

    pip install scikit-learn
    python -m studies.memorisation.prepare_digits --out=/tmp/digits
    python -m launch.sweep --root=runs/robustness_digits \\
        --sweep=studies/noise_robustness/sweep.py:dataset=folder:/tmp/digits,flip=0

The layout is what ``folder:`` data sets read: ``OUT/{train,test}/<class>/
<index>.png``, classes named by the digit's word ("seven"), so captions read
"a photo of a seven.". The split is stratified and seeded; images are scaled
up (bilinear) to ``--size`` so the pipeline's crops act on real pixels.
"""

from __future__ import annotations

import os

import numpy as np

DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven",
               "eight", "nine")


def stratified_split(labels: np.ndarray, test_fraction: float,
                     seed: int) -> np.ndarray:
  """Boolean mask of test examples: round(test_fraction * n_c) per class."""
  if not 0.0 < test_fraction < 1.0:
    raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
  rng = np.random.default_rng(seed)
  is_test = np.zeros(len(labels), bool)
  for c in np.unique(labels):
    idx = np.flatnonzero(labels == c)
    is_test[rng.permutation(idx)[:round(test_fraction * len(idx))]] = True
  return is_test


def write_class_folders(images: np.ndarray, labels: np.ndarray,
                        classnames: tuple[str, ...], out: str, *,
                        test_fraction: float = 1 / 3, seed: int = 0,
                        size: int = 32) -> dict[str, int]:
  """``images``: (n, h, w) or (n, h, w, 3) floats in [0, 1] or uint8.
  Returns the number of images written per split."""
  from PIL import Image
  images, labels = np.asarray(images), np.asarray(labels)
  if len(images) != len(labels):
    raise ValueError(f"{len(images)} images but {len(labels)} labels")
  if labels.min() < 0 or labels.max() >= len(classnames):
    raise ValueError(f"labels must be in [0, {len(classnames)})")
  if images.dtype != np.uint8:
    images = np.clip(np.rint(images * 255.0), 0, 255).astype(np.uint8)
  is_test = stratified_split(labels, test_fraction, seed)
  counts = {"train": 0, "test": 0}
  for i, (image, label) in enumerate(zip(images, labels)):
    split = "test" if is_test[i] else "train"
    folder = os.path.join(out, split, classnames[label])
    os.makedirs(folder, exist_ok=True)
    pil = Image.fromarray(image).convert("RGB")
    if pil.size != (size, size):
      pil = pil.resize((size, size), Image.BILINEAR)
    pil.save(os.path.join(folder, f"{i:05d}.png"))
    counts[split] += 1
  return counts


def load_digits() -> tuple[np.ndarray, np.ndarray]:
  """(images in [0, 1] of shape (1797, 8, 8), labels) from scikit-learn."""
  try:
    from sklearn import datasets
  except ImportError as e:
    raise SystemExit("studies.memorisation.prepare_digits needs scikit-learn (its digits "
                     "are bundled with it): pip install scikit-learn") from e
  digits = datasets.load_digits()
  return digits.images / 16.0, digits.target


def main(argv):
  from absl import flags
  del argv
  f = flags.FLAGS
  images, labels = load_digits()
  counts = write_class_folders(images, labels, DIGIT_NAMES, f.out,
                               test_fraction=f.test_fraction, seed=f.seed,
                               size=f.size)
  print(f"wrote {counts['train']} train and {counts['test']} test images of "
        f"{len(DIGIT_NAMES)} classes under {f.out}; use "
        f"dataset=folder:{os.path.abspath(f.out)}")


if __name__ == "__main__":
  from absl import app, flags
  flags.DEFINE_string("out", None, "Output folder (gets train/ and test/).")
  flags.DEFINE_float("test_fraction", 1 / 3, "Held-out fraction per class.")
  flags.DEFINE_integer("seed", 0, "Seed of the train/test split.")
  flags.DEFINE_integer("size", 32, "Side of the written images, in pixels.")
  flags.mark_flag_as_required("out")
  app.run(main)
