"""Labelled image data read in place from local files: a folder of class
sub-folders (``folder:/path``), and releases with no TFDS builder (FGVC
Aircraft, ObjectNet, Karpathy-split Flickr30k). Sources are random-access
sequences of ``(uint8 HWC RGB image, target)`` pairs, like the TFDS ones."""

from __future__ import annotations

import os
import re
from typing import Sequence

import numpy as np

from cvlg_jax.data import decode


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


def read_rgb(path: str) -> np.ndarray:
  """uint8 HWC RGB of one image file, decoded with the training decoder's
  checks (data.decode): a file that is not a whole image raises BadExample
  with the reason an ArrayRecord record would get (undecodable_image,
  truncated_image, empty_image_bytes) and the path, so that readers can
  skip and count it like any bad record."""
  with open(path, "rb") as f:
    data = f.read()
  try:
    image = decode.load_pixels(decode.open_image(data))
  except decode.BadExample as e:  # PIL names the in-memory buffer, not the file
    detail = re.sub(r" ?<_io\.BytesIO object at \w+>", "", e.detail)
    raise decode.BadExample(e.reason, f"{path}: {detail}" if detail
                            else path) from None
  return np.asarray(image.convert("RGB"))


class FileSource(Sequence):
  """Image files with targets; ``crop`` = pixels cut (top, bottom, left,
  right), for releases whose images carry a banner or border. An item whose
  file does not decode raises decode.BadExample (see read_rgb)."""

  def __init__(self, files, targets, classes=(), crop=(0, 0, 0, 0)):
    if not files:
      raise DatasetUnavailable("no image files found")
    self.files, self.targets = list(files), list(targets)
    self.classes, self._crop = tuple(classes), crop

  def __len__(self):
    return len(self.files)

  def __getitem__(self, i):
    image = read_rgb(self.files[int(i)])
    top, bottom, left, right = self._crop
    h, w = image.shape[:2]
    return image[top:h - bottom, left:w - right], self.targets[int(i)]


def _need(path: str, what: str, expected: str = "") -> str:
  if not os.path.exists(path):
    raise DatasetUnavailable(f"{what}: {path} does not exist"
                             + (f"; expected {expected}" if expected else ""))
  return path


def _is_image(name: str) -> bool:
  return name.lower().endswith(_IMAGE_EXTS)


def _images_in(folder: str) -> list[str]:
  out = []
  for dirpath, dirnames, filenames in os.walk(folder):
    dirnames.sort()
    out += [os.path.join(dirpath, f) for f in sorted(filenames) if _is_image(f)]
  return out


def _class_folders(root: str) -> list[str]:
  return sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))


def folder_layout(root: str) -> str:
  """What a folder of classes must hold, for error messages."""
  return f"{root}/<class name>/<image files: {', '.join(_IMAGE_EXTS)}>"


def _no_images(root: str, what: str) -> DatasetUnavailable:
  return DatasetUnavailable(f"{what}: no image files in class sub-folders of "
                            f"{root}; expected {folder_layout(root)}")


def check_folder(root: str, what: str = "folder dataset") -> None:
  """What folder_source would refuse, without listing every file: cheap
  enough for config validation on a large folder."""
  _need(root, what, folder_layout(root))
  for c in _class_folders(root):
    for _, _, filenames in os.walk(os.path.join(root, c)):
      if any(_is_image(f) for f in filenames):
        return
  raise _no_images(root, what)


def folder_source(root: str, only: Sequence[str] | None = None,
                  what: str = "folder dataset", crop=(0, 0, 0, 0)) -> FileSource:
  """Class = immediate sub-folder (sorted), images found recursively in it."""
  _need(root, what, folder_layout(root))
  classes = _class_folders(root)
  if only is not None:
    classes = [c for c in classes if c in set(only)]
  files, labels = [], []
  for label, c in enumerate(classes):
    found = _images_in(os.path.join(root, c))
    files += found
    labels += [label] * len(found)
  if not files:
    raise _no_images(root, what)
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
