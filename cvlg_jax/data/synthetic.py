"""Built-in synthetic image-caption data: the offline default.

Each index deterministically draws a small scene — one or two shapes with a
colour, a size and a position on a textured background — and a caption from
templates. Nothing is stored: ``scene(i)`` re-derives example i from
``(seed, split, i)``, so any worker process can serve any index.

Caption noise (``caption_noise`` = fraction of training captions that are
noisy) imitates what makes web captions hard, each noisy caption drawing one
of these kinds:
  * ``swap``: the caption of another, unrelated image (misaligned pair);
  * ``partial``: only one of the objects is mentioned, or only its shape or
    only its colour (captions that describe part of the scene);
  * ``corrupt``: one attribute word is wrong (a near-miss description).
``noise_kinds`` picks which kinds a noisy caption draws from (all three by
default). ``("partial",)`` alone is the *many-to-many* noise of the paper's
motivation: every noisy caption is true but names only some of the scene
("a picture with a circle in it", "a picture with a red thing in it"), and
so fits hundreds of other scenes equally well, rather than being wrong.
Near-duplicate scenes with differently phrased captions also arise from the
small attribute space and the several templates. Eval splits are always
clean.

Eval splits: ``zeroshot`` — single-object images labelled by (colour, shape),
``NUM_CLASSES`` classes, with class names and prompt templates for zero-shot
classification; ``probe`` — more such images, disjoint from ``zeroshot``, to
fit a linear probe on (:func:`classification`); ``retrieval`` — held-out
scenes with their clean captions.
"""

from __future__ import annotations

import dataclasses
import itertools
import re

import numpy as np

from cvlg_jax.data.text import split_words

COLORS = {
    "red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 80, 220),
    "yellow": (230, 210, 40), "purple": (150, 60, 190), "orange": (240, 140, 30),
    "white": (245, 245, 245), "black": (15, 15, 15),
}
SHAPES = ("circle", "square", "triangle", "cross", "ring")
SIZES = ("small", "large")
POSITIONS = ("on the left", "on the right", "at the top", "at the bottom",
             "in the centre")
CLASSES = tuple(itertools.product(COLORS, SHAPES))          # (colour, shape)
NUM_CLASSES = len(CLASSES)
CLASS_NAMES = tuple(f"{c} {s}" for c, s in CLASSES)
ZEROSHOT_TEMPLATES = ("a photo of a {}.", "a picture of a {}.",
                      "a drawing of a {}.", "an image with a {} in it.")
NOISE_KINDS = ("swap", "partial", "corrupt")
SPLITS = ("train", "zeroshot", "retrieval", "probe")
_SPLIT_SALT = {"train": 0, "zeroshot": 1, "retrieval": 2, "probe": 3}
_SINGLE_OBJECT = ("zeroshot", "probe")


def check_noise_kinds(kinds) -> tuple[str, ...]:
  """``kinds`` as a tuple; ValueError unless non-empty distinct
  :data:`NOISE_KINDS` (a repeated kind would silently weight the draw)."""
  kinds = tuple(kinds)
  if not kinds or set(kinds) - set(NOISE_KINDS) or len(set(kinds)) != len(kinds):
    raise ValueError(f"noise kinds must be distinct kinds of "
                     f"{'+'.join(NOISE_KINDS)}, got {'+'.join(kinds)!r}")
  return kinds


def parse_noise_kinds(text: str) -> tuple[str, ...]:
  """``"swap+partial"`` -> ("swap", "partial"), checked by
  :func:`check_noise_kinds`."""
  return check_noise_kinds(k for k in text.split("+") if k)

_TEMPLATES_ONE = ("a {obj}.", "a photo of a {obj}.", "there is a {obj} {pos}.",
                  "a {obj} {pos}.", "an image showing a {obj}.")
_PARTIAL_PHRASES = ("a picture with a {} in it.", "{} thing")
_TEMPLATES_TWO = ("a {obj} and a {obj2}.", "a {obj} {pos} and a {obj2} {pos2}.",
                  "a photo of a {obj} next to a {obj2}.",
                  "two shapes: a {obj} and a {obj2}.")




def _vocabulary():
  """Every word a synthetic caption or prompt can contain, so the builtin
  tokenizer can give each its own id (hash collisions such as "blue" and
  "square" sharing an id would make the data ambiguous)."""
  texts = (*_TEMPLATES_ONE, *_TEMPLATES_TWO, *ZEROSHOT_TEMPLATES, *COLORS,
           *SHAPES, *SIZES, *POSITIONS, *_PARTIAL_PHRASES)
  return tuple(sorted({w for t in texts
                       for w in split_words(re.sub(r"\{\w*\}", " ", t))}))


VOCABULARY = _vocabulary()


@dataclasses.dataclass(frozen=True)
class Obj:
  color: str
  shape: str
  size: str
  position: str

  def phrase(self, with_size=True):
    size = f"{self.size} " if with_size else ""
    return f"{size}{self.color} {self.shape}"


def _centre(position, rng, size):
  lo, hi = 0.3, 0.7
  x, y = rng.uniform(lo, hi, 2)
  if position == "on the left":
    x = rng.uniform(0.18, 0.32)
  elif position == "on the right":
    x = rng.uniform(0.68, 0.82)
  elif position == "at the top":
    y = rng.uniform(0.18, 0.32)
  elif position == "at the bottom":
    y = rng.uniform(0.68, 0.82)
  return x * size, y * size


def _draw(canvas, obj: Obj, rng):
  size = canvas.shape[0]
  cx, cy = _centre(obj.position, rng, size)
  # Small shapes still span ~11 px of a 32 px image: below that, a ViT with
  # 8 px patches learned colours but hardly any shapes in demo-length runs.
  radius = size * (rng.uniform(0.16, 0.20) if obj.size == "small"
                   else rng.uniform(0.26, 0.32))
  yy, xx = np.mgrid[0:size, 0:size] + 0.5
  dx, dy = xx - cx, yy - cy
  if obj.shape == "circle":
    inside = dx ** 2 + dy ** 2 <= radius ** 2
  elif obj.shape == "ring":
    d2 = dx ** 2 + dy ** 2
    inside = (d2 <= radius ** 2) & (d2 >= (0.55 * radius) ** 2)
  elif obj.shape == "square":
    inside = (np.abs(dx) <= 0.85 * radius) & (np.abs(dy) <= 0.85 * radius)
  elif obj.shape == "triangle":
    inside = (dy <= radius * 0.8) & (dy >= -radius) & (
        np.abs(dx) <= (dy + radius) * 0.6)
  elif obj.shape == "cross":
    arm = 0.35 * radius
    inside = ((np.abs(dx) <= arm) & (np.abs(dy) <= radius)) | (
        (np.abs(dy) <= arm) & (np.abs(dx) <= radius))
  else:
    raise ValueError(f"unknown shape {obj.shape!r}")
  jitter = rng.integers(-20, 21, 3)
  colour = np.clip(np.array(COLORS[obj.color]) + jitter, 0, 255)
  canvas[inside] = colour


class SyntheticImageText:
  """Grain random-access source of ``{"image", "caption", "label"}`` dicts.

  ``image`` is uint8 [image_size, image_size, 3]; ``label`` is the (colour,
  shape) class of the first object (meaningful for the zeroshot split), and
  ``noise`` names the caption corruption applied ("" for clean).
  """

  def __init__(self, split: str = "train", num_examples: int = 10_000,
               image_size: int = 32, caption_noise: float = 0.0, seed: int = 0,
               max_objects: int = 2, noise_kinds: tuple[str, ...] = NOISE_KINDS):
    if split not in SPLITS:
      raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if not 0.0 <= caption_noise <= 1.0:
      raise ValueError(f"caption_noise must be in [0, 1], got {caption_noise}")
    self.noise_kinds = check_noise_kinds(noise_kinds)
    if split != "train":
      caption_noise = 0.0
    self.split, self.num_examples, self.image_size = split, num_examples, image_size
    self.caption_noise, self.seed = caption_noise, seed
    self.max_objects = 1 if split in _SINGLE_OBJECT else max_objects

  def __len__(self):
    return self.num_examples

  def __repr__(self):
    kinds = ("" if self.noise_kinds == NOISE_KINDS
             else f", kinds={'+'.join(self.noise_kinds)}")
    return (f"SyntheticImageText(split={self.split!r}, n={self.num_examples}, "
            f"size={self.image_size}, noise={self.caption_noise}{kinds})")

  def _rng(self, index, stream):
    return np.random.default_rng((self.seed, _SPLIT_SALT[self.split], index, stream))

  def objects(self, index) -> list[Obj]:
    rng = self._rng(index, 0)
    count = int(rng.integers(1, self.max_objects + 1))
    positions = rng.choice(len(POSITIONS), count, replace=False)
    return [Obj(str(rng.choice(list(COLORS))), str(rng.choice(SHAPES)),
                str(rng.choice(SIZES)), POSITIONS[p]) for p in positions]

  def image(self, index) -> np.ndarray:
    rng = self._rng(index, 1)
    s = self.image_size
    base = rng.integers(90, 170, 3)
    canvas = (base + rng.integers(-12, 13, (s, s, 3))).clip(0, 255).astype(np.uint8)
    for obj in self.objects(index):
      _draw(canvas, obj, rng)
    return canvas

  def clean_caption(self, index, rng=None) -> str:
    rng = self._rng(index, 2) if rng is None else rng
    objs = self.objects(index)
    fields = dict(obj=objs[0].phrase(), pos=objs[0].position)
    if len(objs) == 1:
      template = _TEMPLATES_ONE[rng.integers(len(_TEMPLATES_ONE))]
    else:
      template = _TEMPLATES_TWO[rng.integers(len(_TEMPLATES_TWO))]
      fields.update(obj2=objs[1].phrase(), pos2=objs[1].position)
    return template.format(**fields)

  def caption(self, index) -> tuple[str, str]:
    """(caption, noise kind) — the kind is "" for a clean caption."""
    rng = self._rng(index, 3)
    if rng.random() >= self.caption_noise:
      return self.clean_caption(index, rng), ""
    # Same draws as before noise_kinds existed when all kinds are allowed.
    kind = self.noise_kinds[rng.integers(len(self.noise_kinds))]
    if kind == "swap":
      other = int(rng.integers(self.num_examples - 1))
      other += other >= index
      return self.clean_caption(other, rng), kind
    objs = self.objects(index)
    obj = objs[rng.integers(len(objs))]
    if kind == "partial":
      what = rng.integers(3)
      phrase = (obj.phrase(), obj.shape, _PARTIAL_PHRASES[1].format(obj.color))[what]
      return _PARTIAL_PHRASES[0].format(phrase), kind
    # corrupt: one attribute replaced by a different value.
    if rng.random() < 0.5:
      obj = dataclasses.replace(
          obj, color=str(rng.choice([c for c in COLORS if c != obj.color])))
    else:
      obj = dataclasses.replace(
          obj, shape=str(rng.choice([s for s in SHAPES if s != obj.shape])))
    return f"a {obj.phrase()} {obj.position}.", kind

  # The noise protocol of training sources (also data.class_captions): what
  # the memorisation evaluator needs to know about each pair.
  def noise_kind(self, index) -> str:
    """How example ``index``'s caption was corrupted ("" = clean)."""
    return self.caption(index)[1]

  def clean_captions(self, index) -> list[str]:
    """Captions that describe example ``index`` correctly."""
    return [self.clean_caption(index)]

  def __getitem__(self, index):
    index = int(index)
    if not 0 <= index < self.num_examples:
      raise IndexError(index)
    caption, noise = self.caption(index)
    first = self.objects(index)[0]
    return {"image": self.image(index), "caption": caption,
            "label": np.int32(CLASSES.index((first.color, first.shape))),
            "noise": noise}


# Sizes of the classification view's splits (linear probe: fit on ``probe``,
# score on the same ``zeroshot`` images the zero-shot evaluator uses).
CLASSIFICATION_SPLITS = {"probe": 2000, "zeroshot": 1000}


class _Labelled:
  """(uint8 image, class) pairs of a single-object split."""

  def __init__(self, source: SyntheticImageText):
    self._source = source

  def __len__(self):
    return len(self._source)

  def __getitem__(self, index):
    record = self._source[index]
    return record["image"], int(record["label"])


def classification(split: str, image_size: int = 32, seed: int = 0) -> _Labelled:
  """The synthetic (colour, shape) classification set, ``probe`` (train) or
  ``zeroshot`` (test) split, as the eval catalog's (image, label) pairs."""
  if split not in CLASSIFICATION_SPLITS:
    raise ValueError(f"synthetic classification split must be one of "
                     f"{tuple(CLASSIFICATION_SPLITS)}, got {split!r}")
  return _Labelled(SyntheticImageText(split, CLASSIFICATION_SPLITS[split],
                                      image_size, seed=seed))
