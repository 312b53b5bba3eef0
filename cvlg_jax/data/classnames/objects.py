"""Generic-object sets: CIFAR-10/100 and STL-10 (names written here, because
TFDS only knows them once the data is downloaded) and Caltech-101 (derived
from TFDS's label names, with a few folder names reworded)."""

from __future__ import annotations

from cvlg_jax.data.classnames import readable

CIFAR10_CLASSNAMES = (
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
)

# CIFAR-100 fine labels in label order (alphabetical, as released).
CIFAR100_CLASSNAMES = (
    "apple", "aquarium fish", "baby", "bear", "beaver", "bed", "bee", "beetle",
    "bicycle", "bottle", "bowl", "boy", "bridge", "bus", "butterfly", "camel",
    "can", "castle", "caterpillar", "cattle", "chair", "chimpanzee", "clock",
    "cloud", "cockroach", "couch", "crab", "crocodile", "cup", "dinosaur",
    "dolphin", "elephant", "flatfish", "forest", "fox", "girl", "hamster",
    "house", "kangaroo", "keyboard", "lamp", "lawn mower", "leopard", "lion",
    "lizard", "lobster", "man", "maple tree", "motorcycle", "mountain", "mouse",
    "mushroom", "oak tree", "orange", "orchid", "otter", "palm tree", "pear",
    "pickup truck", "pine tree", "plain", "plate", "poppy", "porcupine",
    "possum", "rabbit", "raccoon", "ray", "road", "rocket", "rose", "sea",
    "seal", "shark", "shrew", "skunk", "skyscraper", "snail", "snake", "spider",
    "squirrel", "streetcar", "sunflower", "sweet pepper", "table", "tank",
    "telephone", "television", "tiger", "tractor", "train", "trout", "tulip",
    "turtle", "wardrobe", "whale", "willow tree", "wolf", "woman", "worm",
)

STL10_CLASSNAMES = (
    "airplane", "bird", "car", "cat", "deer",
    "dog", "horse", "monkey", "ship", "truck",
)

# Caltech-101 folder names that do not read as an object name.
_CALTECH_REWORD = {
    "airplanes": "airplane",
    "background_google": "random background scene",
    "binocular": "binoculars",
    "car_side": "side view of a car",
    "faces": "face",
    "faces_easy": "centred face",
    "headphone": "headphones",
    "leopards": "leopard",
    "motorbikes": "motorbike",
    "water_lilly": "water lily",
}


def caltech101_classnames(tfds_names) -> tuple[str, ...]:
  return tuple(_CALTECH_REWORD.get(n, readable(n)) for n in tfds_names)


CIFAR_TEMPLATES = (
    "a photo of a {}.",
    "a blurry photo of a {}.",
    "a low resolution photo of a {}.",
    "a small photo of the {}.",
    "a pixelated photo of a {}.",
    "a photo of the {}.",
)

OBJECT_TEMPLATES = (
    "a photo of a {}.",
    "a photo of the {}.",
    "a close-up photo of a {}.",
    "a bright photo of a {}.",
    "a dark photo of the {}.",
    "a drawing of a {}.",
    "a painting of the {}.",
)
