"""Scenes, textures and remote sensing: DTD, SUN397, EuroSAT, RESISC45."""

from __future__ import annotations

from cvlg_jax.data.classnames import readable

DTD_TEMPLATES = (
    "a photo of a {} texture.",
    "a photo of a {} pattern.",
    "a close-up photo of a {} surface.",
    "a {} texture.",
)

SUN397_TEMPLATES = (
    "a photo of a {}.",
    "a photo of the {}, a type of place.",
    "a photo taken in a {}.",
)

# EuroSAT's folder names are CamelCase land-use codes; these say what is seen.
EUROSAT_CLASSNAMES = {
    "AnnualCrop": "annual crop land",
    "Forest": "forest",
    "HerbaceousVegetation": "herbaceous vegetation land",
    "Highway": "highway or road",
    "Industrial": "industrial buildings",
    "Pasture": "pasture land",
    "PermanentCrop": "permanent crop land",
    "Residential": "residential buildings",
    "River": "river",
    "SeaLake": "sea or lake",
}

SATELLITE_TEMPLATES = (
    "a satellite photo of {}.",
    "an aerial photo of {}.",
    "a satellite image showing {}.",
)


def sun397_classnames(tfds_names) -> tuple[str, ...]:
  """'/b/bakery/shop' -> 'bakery (shop)'; '/a/abbey' -> 'abbey'."""
  out = []
  for n in tfds_names:
    parts = [p for p in n.split("/") if p][1:]  # drop the initial-letter dir
    name = readable(parts[0])
    out.append(f"{name} ({readable(parts[1])})" if len(parts) > 1 else name)
  return tuple(out)


def eurosat_classnames(tfds_names) -> tuple[str, ...]:
  missing = [n for n in tfds_names if n not in EUROSAT_CLASSNAMES]
  if missing:
    raise ValueError(f"EuroSAT labels without a written name: {missing}")
  return tuple(EUROSAT_CLASSNAMES[n] for n in tfds_names)
