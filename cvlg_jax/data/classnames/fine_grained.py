"""Fine-grained sets: names derived from TFDS labels (or, for FGVC Aircraft,
from the release's variants.txt at load time); templates name the domain, which
helps a contrastive model separate e.g. a dish from a restaurant."""

from __future__ import annotations

from cvlg_jax.data.classnames import readable

FOOD_TEMPLATES = (
    "a photo of {}, a type of food.",
    "a close-up photo of {}, a dish.",
    "a plate of {}.",
)

FLOWER_TEMPLATES = (
    "a photo of a {}, a type of flower.",
    "a close-up photo of a {} flower.",
)

PET_TEMPLATES = (
    "a photo of a {}, a type of pet.",
    "a photo of a {}, a breed of cat or dog.",
)

CAR_TEMPLATES = (
    "a photo of a {}.",
    "a photo of a {}, a type of car.",
    "a photo of my {}.",
    "a {} parked on the street.",
)

AIRCRAFT_TEMPLATES = (
    "a photo of a {}, a type of aircraft.",
    "a photo of the {}, an airplane.",
)


def pet_classnames(tfds_names) -> tuple[str, ...]:
  # TFDS capitalises cat breeds and not dog breeds; the text tower should not
  # be able to tell the species from the casing.
  names = [readable(n).lower() for n in tfds_names]
  return tuple("german shorthaired pointer" if n == "german shorthaired" else n
               for n in names)
