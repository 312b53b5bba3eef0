"""Class-name captions of a classification set, with injected label noise.

Real image-caption data with a *known* amount of caption noise: an image of
class c gets the captions that CLIP's zero-shot prompts would give c ("a
photo of a cat.", ...), and a fraction ``caption_noise`` of the images name a
wrong class instead, drawn uniformly from the other classes -- the controlled
analogue of a web caption that describes something else. Every class shares
its captions, so a batch holds many interchangeable pairs: the many-to-many
structure PSD's soft targets are meant for.

Which images are mislabelled, and which wrong class each names, is a pure
function of (seed, index, number of images): every worker, epoch and resumed
run sees the same noisy data set. The noisy images are the first
round(p * N) of one seeded permutation, so for one seed the images noisy at
p = 0.2 are also noisy (and name the same wrong class) at p = 0.4, and a noise
sweep adds corrupted pairs without re-drawing the others. Each record offers
every template as an alternative caption (``decode.choose_caption`` picks
one per read): template choice is augmentation, not noise.

Class names and templates are the registered zero-shot ones
(``data.catalog``), so training captions and evaluation prompts agree;
training reads the set's registered training split, never its test split.
"""

from __future__ import annotations

from typing import Any, Sequence, SupportsIndex

import numpy as np

from cvlg_jax.data import catalog
from cvlg_jax.data.decode import BadExample, Rejection
from cvlg_jax.data.prompts import Template, fill_template

_SALT = 0x5eed_c1a5  # keeps these draws apart from other users of the seed


class ClassCaptions:
  """Random-access ``{"key", "image", "caption": [str], "label"}`` records.

  ``source[i]`` is an (image, class index) pair, as the evaluation data sets
  give them (uint8 array or encoded bytes; both decode in the pipeline).
  ``label`` is the true class; :meth:`caption_class` the one the captions
  name. An image file that does not decode (decode.BadExample from a
  ``folder:`` source) comes back as a ``Rejection``, which the pipeline
  skips and counts (data.skipping), as it does a bad ArrayRecord record.
  """

  def __init__(self, source: Sequence, classnames: Sequence[str],
               templates: Sequence[Template], *, caption_noise: float = 0.0,
               seed: int = 0, name: str = "class_captions"):
    if not 0.0 <= caption_noise <= 1.0:
      raise ValueError(f"caption_noise must be in [0, 1], got {caption_noise}")
    if len(classnames) < 2:
      raise ValueError(f"{name}: need at least 2 classes to name a wrong one, "
                       f"got {len(classnames)}")
    if not templates:
      raise ValueError(f"{name}: no caption templates")
    self.source, self.name = source, name
    self.caption_noise, self.seed = caption_noise, seed
    self.classnames = tuple(classnames)
    self._captions = [[fill_template(t, c) for t in templates]
                      for c in self.classnames]
    n, k = len(source), len(self.classnames)
    rng = np.random.default_rng((seed, _SALT, n))
    order = rng.permutation(n)
    self._noisy = np.zeros(n, bool)
    self._noisy[order[:int(round(caption_noise * n))]] = True
    # true class + offset in [1, k) mod k: uniform over the wrong classes.
    self._offset = rng.integers(1, k, n)

  def __len__(self) -> int:
    return len(self.source)

  def is_noisy(self, index: int) -> bool:
    return bool(self._noisy[index])

  # The noise protocol of training sources (as data.synthetic).
  def noise_kind(self, index: int) -> str:
    """"label" when the captions name a wrong class, else ""."""
    return "label" if self._noisy[index] else ""

  def _label(self, index: int) -> int:
    """The true class, without decoding the image where the source lists
    its targets (file sources do)."""
    targets = getattr(self.source, "targets", None)
    return int(targets[index] if targets is not None else self.source[index][1])

  def clean_captions(self, index: int) -> list[str]:
    """The captions of the example's true class."""
    return list(self._captions[self._label(index)])

  def caption_class(self, index: int, label: int) -> int:
    """The class the captions of example ``index`` (true class ``label``) name."""
    if not self._noisy[index]:
      return label
    return int((label + self._offset[index]) % len(self.classnames))

  def __getitem__(self, index: SupportsIndex) -> dict[str, Any] | Rejection:
    index = index.__index__()
    if not 0 <= index < len(self):
      raise IndexError(f"{self.name}: index {index} outside [0, {len(self)})")
    try:
      image, label = self.source[index]
    except BadExample as e:  # one bad image file costs one example, not a run
      return Rejection(e.reason, f"{self.name}/{index}", str(e))
    label = int(label)
    if not 0 <= label < len(self.classnames):
      raise ValueError(f"{self.name}: example {index} has label {label}, not "
                       f"in [0, {len(self.classnames)})")
    return {"key": f"{self.name}/{index}", "image": image,
            "caption": list(self._captions[self.caption_class(index, label)]),
            "label": np.int32(label)}

  def __repr__(self) -> str:
    return (f"ClassCaptions({self.name}, {len(self)} examples, "
            f"{len(self.classnames)} classes, noise={self.caption_noise})")


def check_split(name: str, split: str) -> None:
  """Refuses training splits that overlap the set's zero-shot test split."""
  if name.startswith("folder:"):
    if split == "test":
      raise ValueError(f"class captions of {name!r}: split 'test' is the "
                       "evaluation split; train on 'train'")
    return
  if name not in catalog.CLASSIFICATION_SETS:
    raise ValueError(f"class captions: {name!r} is not a registered "
                     "classification set; use folder:/path or one of: "
                     f"{', '.join(sorted(catalog.CLASSIFICATION_SETS))}")
  spec = catalog.CLASSIFICATION_SETS[name]
  if spec.train_split is None or spec.wnid_subset is not None:
    raise ValueError(f"class captions: {name!r} is a test-only set; pick one "
                     "with a training split")
  base = split.split("[", 1)[0]
  if split != spec.train_split and base == spec.test_split.split("[", 1)[0]:
    raise ValueError(
        f"class captions of {name!r}: split {split!r} overlaps the zero-shot "
        f"test split {spec.test_split!r}; train on {spec.train_split!r}")


def open_class_captions(name: str, split: str, data_dir: str | None = None, *,
                        caption_noise: float = 0.0, seed: int = 0) -> ClassCaptions:
  """Class captions of a registered set (or ``folder:/path``) and split."""
  check_split(name, split)
  data = catalog.open_classification(name, split, data_dir or None, train=True,
                                     what=f"training set {name!r}")
  return ClassCaptions(data.source, data.classnames, data.templates,
                       caption_noise=caption_noise, seed=seed,
                       name=f"{name}/{split}")


def check_folder(name: str, split: str) -> None:
  """For config validation: a ``folder:`` training set's split exists and
  holds images (DatasetUnavailable in one line otherwise)."""
  catalog.check_folder_split(name, split, train=True,
                             what=f"training set {name!r}")
