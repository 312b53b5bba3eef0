"""Image transforms shared by training, evaluation and the synthetic source.

Images travel through the pipeline as uint8 HWC RGB and become float32
CLIP-normalised arrays only at the end, so workers ship 4x fewer bytes.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073], np.float32)
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711], np.float32)


def normalize(image: np.ndarray) -> np.ndarray:
  """uint8 [..., H, W, 3] -> float32 CLIP-normalised."""
  return (np.asarray(image, np.float32) / 255.0 - CLIP_MEAN) / CLIP_STD


def resize_center_crop(image: np.ndarray, size: int) -> np.ndarray:
  """Eval transform: resize the short side to ``size`` (bicubic), centre-crop."""
  pil = Image.fromarray(np.asarray(image, np.uint8))
  w, h = pil.size
  scale = size / min(w, h)
  new_w, new_h = max(size, round(w * scale)), max(size, round(h * scale))
  if (new_w, new_h) != (w, h):
    pil = pil.resize((new_w, new_h), Image.BICUBIC)
  left, top = (new_w - size) // 2, (new_h - size) // 2
  return np.asarray(pil.crop((left, top, left + size, top + size)), np.uint8)


def eval_preprocess(image: np.ndarray, size: int) -> np.ndarray:
  """uint8 HWC RGB of any size -> float32 [size, size, 3] normalised."""
  return normalize(resize_center_crop(image, size))
