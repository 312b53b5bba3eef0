"""Labelled image data read in place from local files: a folder of class
sub-folders (``folder:/path``), and releases with no TFDS builder (FGVC
Aircraft, ObjectNet, Karpathy-split Flickr30k). Sources are random-access
sequences of ``(uint8 HWC RGB image, target)`` pairs, like the TFDS ones."""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np
from PIL import Image



class DatasetUnavailable(RuntimeError):
  """The data set's files are not on this machine; the message says what to
  download and where to put it."""

_IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def as_rgb(image) -> np.ndarray:
  """uint8 HWC with exactly 3 channels (grey repeated, alpha dropped)."""
  image = np.asarray(image, np.uint8)
  if image.ndim == 2:
    image = image[..., None]
  if image.shape[-1] == 1:
    image = np.repeat(image, 3, axis=-1)
  return image[..., :3]


class FileSource(Sequence):
  """Image files with targets; ``crop`` = pixels cut (top, bottom, left,
  right), for releases whose images carry a banner or border."""

  def __init__(self, files, targets, classes=(), crop=(0, 0, 0, 0)):
    if not files:
      raise DatasetUnavailable("no image files found")
    self.files, self.targets = list(files), list(targets)
    self.classes, self._crop = tuple(classes), crop

  def __len__(self):
    return len(self.files)

  def __getitem__(self, i):
    with Image.open(self.files[int(i)]) as im:
      image = np.asarray(im.convert("RGB"))
    top, bottom, left, right = self._crop
    h, w = image.shape[:2]
    return image[top:h - bottom, left:w - right], self.targets[int(i)]


def _need(path: str, what: str) -> str:
  if not os.path.exists(path):
    raise DatasetUnavailable(f"{what}: {path} does not exist")
  return path


def _images_in(folder: str) -> list[str]:
  out = []
  for dirpath, dirnames, filenames in os.walk(folder):
    dirnames.sort()
    out += [os.path.join(dirpath, f) for f in sorted(filenames)
            if f.lower().endswith(_IMAGE_EXTS)]
  return out


def folder_source(root: str, only: Sequence[str] | None = None,
                  what: str = "folder dataset", crop=(0, 0, 0, 0)) -> FileSource:
  """Class = immediate sub-folder (sorted), images found recursively in it."""
  _need(root, what)
  classes = sorted(d for d in os.listdir(root)
                   if os.path.isdir(os.path.join(root, d)))
  if only is not None:
    classes = [c for c in classes if c in set(only)]
  files, labels = [], []
  for label, c in enumerate(classes):
    found = _images_in(os.path.join(root, c))
    files += found
    labels += [label] * len(found)
  if not files:
    raise DatasetUnavailable(f"{what}: no images in class sub-folders of {root}")
  return FileSource(files, labels, classes, crop)


def fgvc_aircraft_source(root: str, split: str) -> FileSource:
  """The fgvc-aircraft-2013b release, variant level (100 classes). Its images
  end in a 20-pixel copyright banner, which the release asks users to crop."""
  data = os.path.join(root, "data")
  what = "eval dataset 'fgvc_aircraft'"
  with open(_need(os.path.join(data, "variants.txt"), what)) as f:
    classes = [l.strip() for l in f if l.strip()]
  index = {c: i for i, c in enumerate(classes)}
  files, labels = [], []
  with open(_need(os.path.join(data, f"images_variant_{split}.txt"), what)) as f:
    for line in f:
      if line.strip():
        image_id, variant = line.strip().split(" ", 1)
        files.append(os.path.join(data, "images", f"{image_id}.jpg"))
        labels.append(index[variant])
  return FileSource(files, labels, classes, crop=(0, 20, 0, 0))


def objectnet_source(root: str) -> FileSource:
  """objectnet-1.0 in place. With its mappings/ folder, only the 113 classes
  that overlap ImageNet-1k are kept (the usual protocol), named by ObjectNet's
  own labels; without it, every class folder under images/. A thin border is
  cropped: the release frames each image with a 1-pixel red line."""
  import json
  what = "eval dataset 'objectnet'"
  images = _need(os.path.join(root, "images"), what)
  to_label = os.path.join(root, "mappings", "folder_to_objectnet_label.json")
  to_imagenet = os.path.join(root, "mappings", "objectnet_to_imagenet_1k.json")
  if not (os.path.exists(to_label) and os.path.exists(to_imagenet)):
    return folder_source(images, what=what, crop=(3, 3, 3, 3))
  with open(to_label) as f:
    folder_to_label = json.load(f)
  with open(to_imagenet) as f:
    overlap = set(json.load(f))
  src = folder_source(images, [d for d, l in folder_to_label.items()
                               if l in overlap], what, crop=(3, 3, 3, 3))
  src.classes = tuple(folder_to_label[c] for c in src.classes)
  return src


def karpathy_caption_source(root: str, name: str, split: str) -> FileSource:
  """Karpathy-split JSON (dataset_<name>.json: images[].filename / split /
  sentences[].raw) next to the image folder <name>-images/."""
  import json
  what = f"retrieval dataset {name!r}"
  with open(_need(os.path.join(root, f"dataset_{name}.json"), what)) as f:
    entries = [e for e in json.load(f)["images"] if e["split"] == split]
  image_dir = _need(os.path.join(root, f"{name}-images"), what)
  return FileSource([os.path.join(image_dir, e["filename"]) for e in entries],
                    [[s["raw"] for s in e["sentences"]] for e in entries])
