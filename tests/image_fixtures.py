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
