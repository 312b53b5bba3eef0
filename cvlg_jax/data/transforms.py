"""Image transforms shared by training, evaluation and the synthetic source.

Images travel through the pipeline as uint8 HWC RGB and become float32
CLIP-normalised arrays only at the end, so workers ship 4x fewer bytes.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073], np.float32)
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711], np.float32)


def normalize(image: np.ndarray) -> np.ndarray:
  """uint8 [..., H, W, 3] -> float32 CLIP-normalised."""
  return (np.asarray(image, np.float32) / 255.0 - CLIP_MEAN) / CLIP_STD


def resize_center_crop(image: np.ndarray, size: int) -> np.ndarray:
  """Eval transform: resize the short side to ``size`` (bicubic), centre-crop.

  Sizes and offsets are rounded as torchvision's ``Resize`` + ``CenterCrop``
  (CLIP's and open_clip's eval preprocessing) round them, so released models
  see the same pixels here as in their reference evaluation.
  """
  pil = Image.fromarray(np.asarray(image, np.uint8))
  w, h = pil.size
  if w <= h:
    new_w, new_h = size, int(size * h / w)
  else:
    new_w, new_h = int(size * w / h), size
  if (new_w, new_h) != (w, h):
    pil = pil.resize((new_w, new_h), Image.BICUBIC)
  left, top = int(round((new_w - size) / 2)), int(round((new_h - size) / 2))
  return np.asarray(pil.crop((left, top, left + size, top + size)), np.uint8)


def eval_preprocess(image: np.ndarray, size: int) -> np.ndarray:
  """uint8 HWC RGB of any size -> float32 [size, size, 3] normalised."""
  return normalize(resize_center_crop(image, size))


# ---------------------------------------------------------------- training ---

_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")


def to_rgb(image: Image.Image) -> Image.Image:
  """Any PIL mode -> RGB, compositing transparency onto white.

  Dropping alpha instead (``convert("RGB")``) turns the transparent parts of
  logos and product shots, common in web data, into arbitrary colours.
  """
  mode = image.mode
  if mode == "RGB":
    return image
  if mode == "P" and "transparency" in image.info:
    image, mode = image.convert("RGBA"), "RGBA"
  if mode in _ALPHA_MODES:
    rgba = image.convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba).convert("RGB")
  if mode.startswith("I") or mode == "F":  # 16/32-bit grey: rescale, not clip.
    a = np.asarray(image, np.float64)
    peak = 65535.0 if mode.startswith("I;16") else max(float(a.max(initial=0)), 255.0)
    a = np.clip(a * (255.0 / peak), 0, 255).round().astype(np.uint8)
    return Image.fromarray(a, "L").convert("RGB")
  return image.convert("RGB")


def sample_crop_box(height: int, width: int, rng: np.random.Generator,
                    scale: tuple[float, float] = (0.08, 1.0),
                    ratio: tuple[float, float] = (3 / 4, 4 / 3),
                    ) -> tuple[int, int, int, int]:
  """Inception-style random crop ``(top, left, h, w)``.

  Area fraction ~ U(scale), log aspect ratio ~ U(log ratio); ten tries, then a
  centre crop with the ratio clamped into range (the torchvision recipe, so
  results are comparable with CLIP/open_clip training).
  """
  if not (0 < scale[0] <= scale[1] <= 1):
    raise ValueError(f"scale must satisfy 0 < lo <= hi <= 1, got {scale}")
  if not (0 < ratio[0] <= ratio[1]):
    raise ValueError(f"ratio must satisfy 0 < lo <= hi, got {ratio}")
  area = height * width
  # Scalar math via `math` (numpy's scalar ufuncs cost ~1 us each, a third of
  # this function); the same IEEE functions, so the same boxes.
  log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
  for _ in range(10):
    target = area * rng.uniform(scale[0], scale[1])
    aspect = math.exp(rng.uniform(log_lo, log_hi))
    w = int(round(math.sqrt(target * aspect)))
    h = int(round(math.sqrt(target / aspect)))
    if 0 < w <= width and 0 < h <= height:
      top = int(rng.integers(0, height - h + 1))
      left = int(rng.integers(0, width - w + 1))
      return top, left, h, w
  in_ratio = width / height
  if in_ratio < ratio[0]:
    w, h = width, int(round(width / ratio[0]))
  elif in_ratio > ratio[1]:
    h, w = height, int(round(height * ratio[1]))
  else:
    h, w = height, width
  h, w = max(1, min(h, height)), max(1, min(w, width))
  return (height - h) // 2, (width - w) // 2, h, w


# Reducing gap of the fast resize: a crop more than 1x the output size is first
# averaged down by the integer part of the ratio (PIL's ``reduce``, a box
# filter, much cheaper per input pixel than bicubic taps), then bicubic-
# resized by the remaining factor in [1, 2). Costs < 1 grey level of mean abs
# difference against one exact bicubic pass (tests/data/test_decode.py).
FAST_REDUCING_GAP = 1.0


def crop_resize(image: Image.Image, box: tuple[float, float, float, float],
                size: int, *, fast: bool = False, mirror: bool = False
                ) -> np.ndarray:
  """Crops ``box`` = (top, left, h, w) and resizes it to size x size (bicubic).

  One PIL call with ``box=`` so only the crop is resampled; the box may be
  fractional (after a JPEG draft-mode downscale). ``fast``: box-reduce by the
  integer part of the downscale first (``FAST_REDUCING_GAP``). ``mirror``
  flips left-right in PIL (10x cheaper than a reversed numpy copy of HWC).
  """
  top, left, h, w = box
  out = image.resize((size, size), Image.BICUBIC,
                     box=(left, top, left + w, top + h),
                     reducing_gap=FAST_REDUCING_GAP if fast else None)
  if mirror:
    out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
  return np.asarray(out, np.uint8)


def random_resized_crop(image: np.ndarray, rng: np.random.Generator, size: int,
                        scale: tuple[float, float] = (0.08, 1.0),
                        ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> np.ndarray:
  """uint8 HWC RGB array -> random crop resized to [size, size, 3]."""
  image = np.asarray(image, np.uint8)
  box = sample_crop_box(image.shape[0], image.shape[1], rng, scale, ratio)
  return crop_resize(Image.fromarray(image), box, size)


def random_flip(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """Horizontal flip with probability 1/2 (always draws, keeping RNG streams aligned)."""
  return np.ascontiguousarray(image[:, ::-1]) if rng.random() < 0.5 else image
