"""The catalogue of labelled image data: classification and retrieval sets by
name, and how to open each one.

Every source is a random-access sequence of ``(uint8 HWC RGB image, target)``
pairs -- target is an int class index for classification, a list of captions
for retrieval -- whether the data comes from ``tfds.data_source`` (array_record
files prepared with ``tfds build NAME --file_format=array_record``), a folder of
class sub-folders, or a dataset release read in place (FGVC Aircraft,
ObjectNet, Flickr30k). Evaluation reads its test splits; training on
class-name captions (data.class_captions) reads the training splits. Nothing
here downloads: missing files raise :class:`DatasetUnavailable` saying what
to fetch.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Callable, Sequence

import numpy as np

from cvlg_jax.data.classnames import fine_grained
from cvlg_jax.data.classnames import imagenet
from cvlg_jax.data.classnames import imagenet_subsets
from cvlg_jax.data.classnames import objects
from cvlg_jax.data.classnames import readable
from cvlg_jax.data.classnames import scenes
from cvlg_jax.data import synthetic
from cvlg_jax.data.local_sources import (
    DatasetUnavailable, as_rgb, check_folder, fgvc_aircraft_source,
    folder_layout, folder_source, karpathy_caption_source, objectnet_source)


_BUILD = ("run `tfds build {tfds} --file_format=array_record` (add "
          "`--data_dir=DIR` and pass the same data_dir in the eval config)")
_MANUAL = ("put the original archives in <data_dir>/downloads/manual/ first ({what}), "
           "then " + _BUILD)


@dataclasses.dataclass(frozen=True)
class ClassificationSet:
  """How to open one classification set. ``classnames`` maps the label names
  the source reports (TFDS metadata or folder names) to prompt-ready names."""
  tfds_name: str | None           # None: a local release read from data_dir
  test_split: str
  train_split: str | None         # None: no training split (shift test sets)
  templates: tuple[str, ...]
  classnames: Callable[[Sequence[str]], Sequence[str]]
  hint: str                       # how to get the files
  wnid_subset: tuple[str, ...] | None = None  # ImageNet-R/A: 200 of 1000


def _fixed(names):
  return lambda _: names


_IN = dict(templates=imagenet.IMAGENET_TEMPLATES,
           classnames=lambda _: imagenet.imagenet_classnames())

CLASSIFICATION_SETS: dict[str, ClassificationSet] = {
    "imagenet": ClassificationSet(
        "imagenet2012", "validation", "train", **_IN,
        hint=_MANUAL.format(what="ILSVRC2012_img_train.tar, ILSVRC2012_img_val.tar",
                            tfds="imagenet2012")),
    "imagenet_v2": ClassificationSet(
        "imagenet_v2/matched-frequency", "test", None, **_IN,
        hint=_BUILD.format(tfds="imagenet_v2/matched-frequency")),
    "imagenet_sketch": ClassificationSet(
        "imagenet_sketch", "test", None, **_IN,
        hint=_BUILD.format(tfds="imagenet_sketch")),
    "imagenet_r": ClassificationSet(
        "imagenet_r", "test", None, **_IN, hint=_BUILD.format(tfds="imagenet_r"),
        wnid_subset=imagenet_subsets.IMAGENET_R_WNIDS),
    "imagenet_a": ClassificationSet(
        "imagenet_a", "test", None, **_IN, hint=_BUILD.format(tfds="imagenet_a"),
        wnid_subset=imagenet_subsets.IMAGENET_A_WNIDS),
    "objectnet": ClassificationSet(  # named by ObjectNet's own labels
        None, "test", None, imagenet.IMAGENET_TEMPLATES,
        lambda n: [readable(x) for x in n],
        hint="download objectnet-1.0 from objectnet.dev, unzip it and set "
             "data_dir to the folder holding images/ and mappings/"),
    "cifar10": ClassificationSet(
        "cifar10", "test", "train", objects.CIFAR_TEMPLATES,
        _fixed(objects.CIFAR10_CLASSNAMES), _BUILD.format(tfds="cifar10")),
    "cifar100": ClassificationSet(
        "cifar100", "test", "train", objects.CIFAR_TEMPLATES,
        _fixed(objects.CIFAR100_CLASSNAMES), _BUILD.format(tfds="cifar100")),
    "stl10": ClassificationSet(
        "stl10", "test", "train", objects.OBJECT_TEMPLATES,
        _fixed(objects.STL10_CLASSNAMES), _BUILD.format(tfds="stl10")),
    "caltech101": ClassificationSet(
        "caltech101", "test", "train", objects.OBJECT_TEMPLATES,
        objects.caltech101_classnames, _BUILD.format(tfds="caltech101")),
    "food101": ClassificationSet(
        "food101", "validation", "train", fine_grained.FOOD_TEMPLATES,
        lambda n: [readable(x) for x in n], _BUILD.format(tfds="food101")),
    "flowers102": ClassificationSet(
        "oxford_flowers102", "test", "train", fine_grained.FLOWER_TEMPLATES,
        tuple, _BUILD.format(tfds="oxford_flowers102")),
    "pets": ClassificationSet(
        "oxford_iiit_pet", "test", "train", fine_grained.PET_TEMPLATES,
        fine_grained.pet_classnames, _BUILD.format(tfds="oxford_iiit_pet")),
    "cars": ClassificationSet(
        "cars196", "test", "train", fine_grained.CAR_TEMPLATES, tuple,
        _BUILD.format(tfds="cars196")),
    "fgvc_aircraft": ClassificationSet(
        None, "test", "trainval", fine_grained.AIRCRAFT_TEMPLATES, tuple,
        hint="download fgvc-aircraft-2013b.tar.gz (robots.ox.ac.uk/~vgg/data/"
             "fgvc-aircraft), unpack it and set data_dir to the folder that "
             "holds data/"),
    "dtd": ClassificationSet(
        "dtd", "test", "train", scenes.DTD_TEMPLATES, tuple,
        _BUILD.format(tfds="dtd")),
    "sun397": ClassificationSet(
        "sun397/tfds", "test", "train", scenes.SUN397_TEMPLATES,
        scenes.sun397_classnames, _BUILD.format(tfds="sun397/tfds")),
    # EuroSAT and RESISC45 ship one split; we hold out its last 20% for tests.
    "eurosat": ClassificationSet(
        "eurosat/rgb", "train[80%:]", "train[:80%]", scenes.SATELLITE_TEMPLATES,
        scenes.eurosat_classnames, _BUILD.format(tfds="eurosat/rgb")),
    "resisc45": ClassificationSet(
        "resisc45", "train[80%:]", "train[:80%]", scenes.SATELLITE_TEMPLATES,
        lambda n: [readable(x) for x in n],
        _MANUAL.format(what="NWPU-RESISC45.rar", tfds="resisc45")),
}

# Retrieval: TFDS has COCO with the Karpathy splits (coco_captions/2014:
# train / val / test / restval, 5000 test images); it has no Flickr30k
# builder, so that one reads the Karpathy JSON release in place.
RETRIEVAL_SETS = {
    "coco": dict(tfds_name="coco_captions/2014", test_split="test",
                 hint=_BUILD.format(tfds="coco_captions/2014")),
    "flickr30k": dict(tfds_name=None, test_split="test",
                      hint="set data_dir to a folder holding "
                           "dataset_flickr30k.json (Karpathy splits) and "
                           "flickr30k-images/"),
}


@dataclasses.dataclass(frozen=True)
class ClassificationData:
  """Items are (uint8 image, label in [0, len(classnames)) or -1 when the
  example's class is outside the evaluated subset)."""
  name: str
  source: Sequence
  classnames: tuple[str, ...]
  templates: tuple[str, ...]


class _Mapped(Sequence):
  """A TFDS data source seen as (rgb image, remapped target) pairs."""

  def __init__(self, ds, target_fn):
    self._ds, self._target_fn = ds, target_fn

  def __len__(self):
    return len(self._ds)

  def __getitem__(self, i):
    ex = self._ds[int(i)]
    return as_rgb(ex["image"]), self._target_fn(ex)


def _tfds_source(name: str, tfds_name: str, split: str, data_dir, hint: str):
  import tensorflow_datasets as tfds
  builder = tfds.builder(tfds_name, data_dir=data_dir)
  try:
    return builder, builder.as_data_source(split=split)
  except Exception as e:  # TFDS raises assorted types for "no files"
    if not builder.is_prepared():
      raise DatasetUnavailable(
          f"eval dataset {name!r}: TFDS {tfds_name!r} is not prepared under "
          f"{builder.data_dir}; {hint}") from e
    fmt = getattr(builder.info.file_format, "value", builder.info.file_format)
    if fmt != "array_record":
      raise DatasetUnavailable(
          f"eval dataset {name!r}: {tfds_name!r} is prepared as {fmt}, but "
          f"random access needs array_record; rebuild it: {hint}") from e
    raise


def _folder_split(name: str, split: str | None, train: bool,
                  what: str) -> tuple[str, str]:
  """(folder of class sub-folders, its name for errors) of a ``folder:`` set:
  ``<path>/<split>``, or ``<path>`` itself for a test-only folder read
  without a split. Missing folders raise DatasetUnavailable in one line
  naming the path, the split and the layout expected."""
  path = name[len("folder:"):]
  wanted = split or ("train" if train else "test")
  sub = os.path.join(path, wanted)
  what = f"{what}, split {wanted!r}"
  if os.path.isdir(sub):
    return sub, what
  expected = folder_layout(sub)
  if not (split or train):  # a test-only folder may hold the classes itself
    expected += f" (or the classes directly in {path})"
  if not os.path.isdir(path):
    raise DatasetUnavailable(f"{what}: {path} does not exist; expected {expected}")
  if split or train:  # asked for a split that is not there
    raise DatasetUnavailable(f"{what}: {sub}/ with class folders does not "
                             f"exist; expected {expected}")
  return path, what


def check_folder_split(name: str, split: str | None = None, train: bool = False,
                       what: str | None = None) -> None:
  """DatasetUnavailable (one line) unless ``folder:`` set ``name`` has that
  split with images, without listing every file: for config validation."""
  check_folder(*_folder_split(name, split, train, what or f"dataset {name!r}"))


def open_classification(name: str, split: str | None = None,
                        data_dir: str | None = None, train: bool = False,
                        what: str | None = None) -> ClassificationData:
  """Opens a registered set, ``folder:/path`` (class names = sub-folders), or
  ``synthetic`` (the built-in scenes' (colour, shape) classes).

  ``split`` defaults to the set's test split, or its train split when
  ``train`` (linear probe). For ``folder:`` the classes live in
  ``<path>/<split>`` (split defaulting to test / train), or directly in
  ``<path>`` for a test-only folder. ``what`` names the set in errors
  (default "eval dataset NAME").
  """
  if name == "synthetic":  # the built-in scenes (linear probe on the demo)
    src = synthetic.classification(split or ("probe" if train else "zeroshot"))
    return ClassificationData(name, src, synthetic.CLASS_NAMES,
                              synthetic.ZEROSHOT_TEMPLATES)
  if name.startswith("folder:"):
    root, what = _folder_split(name, split, train, what or f"eval dataset {name!r}")
    src = folder_source(root, what=what)
    return ClassificationData(name, src, tuple(readable(c) for c in src.classes),
                              objects.OBJECT_TEMPLATES)
  if name not in CLASSIFICATION_SETS:
    raise ValueError(f"eval dataset {name!r} is unknown; use folder:/path or one "
                     f"of: {', '.join(sorted(CLASSIFICATION_SETS))}")
  spec = CLASSIFICATION_SETS[name]
  if split is None:
    split = spec.train_split if train else spec.test_split
    if split is None:
      raise ValueError(f"eval dataset {name!r} has no training split; a linear "
                       "probe cannot be trained on it")

  if spec.tfds_name is None:
    if not data_dir:
      raise DatasetUnavailable(f"eval dataset {name!r} is read from its release "
                               f"files; {spec.hint}")
    if name == "objectnet":
      src = objectnet_source(data_dir)
    else:
      src = fgvc_aircraft_source(data_dir, split)
    return ClassificationData(name, src, tuple(spec.classnames(src.classes)),
                              spec.templates)

  builder, ds = _tfds_source(name, spec.tfds_name, split, data_dir, spec.hint)
  label_names = tuple(builder.info.features["label"].names)
  classnames = tuple(spec.classnames(label_names))
  if len(classnames) != len(label_names):
    raise ValueError(f"{name}: {len(classnames)} class names for "
                     f"{len(label_names)} labels")
  remap = np.arange(len(label_names))
  if spec.wnid_subset is not None:
    keep = [label_names.index(w) for w in spec.wnid_subset]
    remap = np.full(len(label_names), -1)
    remap[keep] = np.arange(len(keep))
    classnames = tuple(classnames[k] for k in keep)
  src = _Mapped(ds, lambda ex: int(remap[int(ex["label"])]))
  return ClassificationData(name, src, classnames, spec.templates)


def open_retrieval(name: str, split: str | None = None,
                   data_dir: str | None = None) -> Sequence:
  """(uint8 image, list of captions) pairs of a registered retrieval set."""
  if name not in RETRIEVAL_SETS:
    raise ValueError(f"retrieval dataset {name!r} is unknown; allowed: "
                     f"{', '.join(sorted(RETRIEVAL_SETS))}")
  spec = RETRIEVAL_SETS[name]
  split = split or spec["test_split"]
  if spec["tfds_name"] is None:
    if not data_dir:
      raise DatasetUnavailable(f"retrieval dataset {name!r}: {spec['hint']}")
    return karpathy_caption_source(data_dir, name, split)
  _, ds = _tfds_source(name, spec["tfds_name"], split, data_dir, spec["hint"])
  return _Mapped(ds, lambda ex: [_text(t) for t in ex["captions"]["text"]])


def _text(t) -> str:
  return t.decode("utf-8") if isinstance(t, bytes) else str(t)
