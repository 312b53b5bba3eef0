"""ImageNet-1k class names and the templates shared by ImageNet and its shifts.

Names are derived, not typed: TFDS's imagenet2012 builder labels classes by
WordNet id, and the installed TFDS package also ships the standard
index-ordered WordNet lemma list (``tensorflow_datasets.datasets.siscore.
labels.IMAGENET_LABELS_LIST``, e.g. "tench, Tinca tinca"). We take each
class's first lemma; where two classes would read the same (Cardigan corgi vs
cardigan, the two maillots) the later-listed lemma of the class that has one
is used instead, so no two text prompts collide.
"""

from __future__ import annotations

import collections
import functools

IMAGENET_TEMPLATES = (
    "a photo of a {}.",
    "a blurry photo of a {}.",
    "a low resolution photo of a {}.",
    "a close-up photo of a {}.",
    "a cropped photo of the {}.",
    "a bright photo of the {}.",
    "a dark photo of the {}.",
    "a photo of a large {}.",
    "a photo of a small {}.",
    "a drawing of a {}.",
    "a sketch of a {}.",
    "a painting of the {}.",
    "a rendering of a {}.",
    "a plastic toy {}.",
    "a {} in a video game.",
    "an origami {}.",
)


def _lemma_list() -> list[str]:
  try:
    from tensorflow_datasets.datasets.siscore import labels
  except ImportError as e:  # moved or removed in a future TFDS
    raise ImportError(
        "ImageNet class names are derived from TFDS's bundled lemma list "
        "(tensorflow_datasets.datasets.siscore.labels), which this TFDS "
        "version lacks; pin tensorflow-datasets 4.9.x") from e
  names = list(labels.IMAGENET_LABELS_LIST)
  if len(names) != 1000:
    raise ValueError(f"expected 1000 ImageNet lemmas, TFDS has {len(names)}")
  return names


@functools.cache
def imagenet_classnames() -> tuple[str, ...]:
  """1000 readable names in imagenet2012 label order."""
  lemmas = [[w.strip() for w in entry.split(",")] for entry in _lemma_list()]
  names = [ls[0] for ls in lemmas]
  counts = collections.Counter(n.lower() for n in names)
  for i, ls in enumerate(lemmas):
    if counts[names[i].lower()] > 1 and len(ls) > 1:
      counts[names[i].lower()] -= 1
      names[i] = ls[1]
  dupes = [n for n, c in collections.Counter(n.lower() for n in names).items()
           if c > 1]
  if dupes:
    raise ValueError(f"ImageNet class names still collide: {dupes}")
  return tuple(names)


@functools.cache
def imagenet_wnids() -> tuple[str, ...]:
  """WordNet ids in imagenet2012 label order, from TFDS's own label file
  (the one its imagenet2012 / _v2 / _sketch / _r / _a builders label with)."""
  from tensorflow_datasets.datasets.imagenet2012 import imagenet_common
  with open(imagenet_common.label_names_file()) as f:
    wnids = tuple(f.read().split())
  if len(wnids) != 1000:
    raise ValueError(f"expected 1000 ImageNet wnids, TFDS has {len(wnids)}")
  return wnids
