"""Encoded-image fixtures shared by the data tests."""

import io

from PIL import Image


def encode_image(array, fmt="JPEG", mode=None, **kw) -> bytes:
  """uint8 array -> encoded bytes (optionally converted to ``mode`` first)."""
  image = Image.fromarray(array)
  if mode:
    image = image.convert(mode)
  buf = io.BytesIO()
  image.save(buf, format=fmt, **kw)
  return buf.getvalue()


def photo_like(rng, width: int, height: int, quality: int = 90) -> bytes:
  """A JPEG with smooth gradients, hard-edged discs and sensor-like noise:
  the high frequencies where resampling shortcuts differ most."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  y, x = np.mgrid[0:height, 0:width].astype(np.float32)
  k = 500 / width
  base = (rng.uniform(0, 255, 3) + rng.uniform(-0.3, 0.3, 3) * k * x[..., None]
          + rng.uniform(-0.3, 0.3, 3) * k * y[..., None])
  for _ in range(6):
    cx, cy, r = rng.uniform(0, width), rng.uniform(0, height), rng.uniform(20, 120) / k
    base[(x - cx) ** 2 + (y - cy) ** 2 < r * r] = rng.uniform(0, 255, 3)
  base += rng.normal(0, 6, base.shape)
  return encode_image(np.clip(base, 0, 255).astype(np.uint8), quality=quality)
