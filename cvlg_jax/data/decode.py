"""Raw record -> training example, or a typed rejection (never an exception).

Web-scale image-text data always holds some broken rows; one of them must cost
one example, not a run. `decode_example` therefore returns a `Rejection` for
bad input, and `skipping.SkipAndCount` drops those and counts them per reason.
The checks here are shared with the converter so both agree on what is bad.
"""

from __future__ import annotations

import dataclasses
import io
import math
from typing import Any, Sequence

import numpy as np
from PIL import Image

from cvlg_jax.data import transforms

SKIP_REASONS = (
    "undecodable_image",
    "truncated_image",
    "empty_image_bytes",
    "extreme_aspect_ratio",
    "empty_caption",
    "bad_utf8",
    "malformed_record",  # not a msgpack map with image + caption
)


class BadExample(ValueError):
  """Raised by the checks below; ``reason`` is one of SKIP_REASONS."""

  def __init__(self, reason: str, detail: str = ""):
    if reason not in SKIP_REASONS:
      raise ValueError(f"unknown skip reason {reason!r}; known: {SKIP_REASONS}")
    super().__init__(f"{reason}: {detail}" if detail else reason)
    self.reason, self.detail = reason, detail


@dataclasses.dataclass(frozen=True)
class Rejection:
  """What `decode_example` returns instead of an example for bad input."""
  reason: str
  key: str = ""
  detail: str = ""


# ---------------------------------------------------------------- captions ---

def to_text(value: Any) -> str:
  """str or UTF-8 bytes -> str; invalid UTF-8 (incl. lone surrogates) -> bad_utf8."""
  if isinstance(value, (bytes, bytearray, np.bytes_)):
    try:
      return bytes(value).decode("utf-8")
    except UnicodeDecodeError as e:
      raise BadExample("bad_utf8", str(e)) from None
  if not isinstance(value, str):
    raise BadExample("malformed_record", f"caption of type {type(value).__name__}")
  try:  # Lone surrogates come from files read with errors="surrogateescape".
    value.encode("utf-8")
  except UnicodeEncodeError as e:
    raise BadExample("bad_utf8", str(e)) from None
  return value


def clean_caption(value: Any) -> str:
  """Decodes (UTF-8, strict), strips and collapses whitespace; rejects empty."""
  text = " ".join(to_text(value).split())
  if not text:
    raise BadExample("empty_caption")
  return text


def caption_candidates(value: Any) -> list[str]:
  """All usable captions of a record (str, bytes, list, or a TFDS array).

  Empty alternatives are dropped; a record is rejected only when none is left
  (bad UTF-8 wins over empty, as it points at a data problem upstream).
  """
  if isinstance(value, np.ndarray):
    value = value.tolist()
  if not isinstance(value, (list, tuple)):
    return [clean_caption(value)]
  good, errors = [], []
  for v in value:
    try:
      good.append(clean_caption(v))
    except BadExample as e:
      errors.append(e)
  if good:
    return good
  if any(e.reason == "bad_utf8" for e in errors):
    raise BadExample("bad_utf8")
  raise BadExample("empty_caption", "no non-empty caption")


def choose_caption(captions: Sequence[str],
                   rng: np.random.Generator | None) -> str:
  """Random caption in training (``rng`` given), the first one in eval."""
  if rng is None or len(captions) == 1:
    return captions[0]
  return captions[int(rng.integers(len(captions)))]


# ------------------------------------------------------------------ images ---

def open_image(data: Any) -> Image.Image:
  """Parses the header only (cheap): size and format, no pixel decode."""
  if data is None or len(data) == 0:
    raise BadExample("empty_image_bytes")
  if not isinstance(data, (bytes, bytearray, memoryview)):
    raise BadExample("malformed_record", f"image of type {type(data).__name__}")
  try:
    image = Image.open(io.BytesIO(data))
  except MemoryError:
    raise
  except Exception as e:  # PIL plugins raise many types on garbage input.
    raise BadExample(_load_error_reason(e), f"{type(e).__name__}: {e}") from None
  if min(image.size) < 1:
    raise BadExample("undecodable_image", f"size {image.size}")
  return image


def check_aspect_ratio(width: int, height: int, max_aspect_ratio: float) -> None:
  if max(width, height) > max_aspect_ratio * min(width, height):
    raise BadExample("extreme_aspect_ratio", f"{width}x{height}")


def load_pixels(image: Image.Image) -> Image.Image:
  """Decodes the pixels of an opened image (BadExample if they do not)."""
  try:
    image.load()
  except MemoryError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    raise BadExample(_load_error_reason(e), f"{type(e).__name__}: {e}") from None
  return image


def load_rgb(image: Image.Image) -> Image.Image:
  """Decodes the pixels of an opened image and converts them to RGB."""
  return transforms.to_rgb(load_pixels(image))


def _load_error_reason(error: Exception) -> str:
  """PIL reports data that ends early in words, not with an exception type."""
  msg = str(error).lower()
  if "truncat" in msg or "broken data stream" in msg or isinstance(error, EOFError):
    return "truncated_image"
  return "undecodable_image"


def _draft(image: Image.Image, width: int, height: int) -> float:
  """JPEG DCT-domain downscale to >= (width, height); returns the factor.

  Decoding at 1/2..1/8 resolution is several times cheaper than a full decode
  followed by a resize, and the result still covers the output resolution.
  """
  if image.format != "JPEG":
    return 1.0
  w0 = image.size[0]
  result = image.draft(image.mode, (max(1, width), max(1, height)))
  return 1.0 if result is None else result[1][2] / w0


def preprocess_image(data: Any, rng: np.random.Generator | None, *,
                     train: bool, image_size: int,
                     crop_scale: tuple[float, float] = (0.08, 1.0),
                     crop_ratio: tuple[float, float] = (3 / 4, 4 / 3),
                     flip: bool = False,
                     max_aspect_ratio: float = 10.0,
                     fast: bool = True) -> np.ndarray:
  """Encoded bytes or a decoded uint8 array -> uint8 [S, S, 3] RGB.

  Train: random-resized-crop, optional flip. Eval: resize + centre crop.
  The crop box is drawn on the header size, before any pixel is decoded, so
  ``fast`` changes pixels, never which crop is taken: it decodes a JPEG at
  the smallest DCT scale (1/2, 1/4, 1/8) that still leaves the crop at least
  the output size, and (train) box-reduces by the integer part of the
  remaining downscale before the bicubic pass (transforms.crop_resize).
  ``fast=False`` is the exact path (full decode, one bicubic resize: the math
  of open_clip's PIL transform); the two differ by < 1 grey level per pixel
  on average (tests/data/test_decode.py), for 1.15x (500x375) to 2.1x
  (1024x768) less CPU time at crop scale 0.9-1 (benchmarks/data_pipeline.py).
  """
  if train and rng is None:
    raise ValueError("train=True needs an rng")
  if isinstance(data, np.ndarray):
    image = _array_to_pil(data)
  else:
    image = open_image(data)
  width, height = image.size
  check_aspect_ratio(width, height, max_aspect_ratio)
  if not train:
    short = min(width, height)
    if fast:
      _draft(image, math.ceil(width * image_size / short),
             math.ceil(height * image_size / short))
    return transforms.resize_center_crop(np.asarray(load_rgb(image)), image_size)
  top, left, h, w = transforms.sample_crop_box(height, width, rng, crop_scale,
                                               crop_ratio)
  f = _draft(image, math.ceil(width * image_size / w),
             math.ceil(height * image_size / h)) if fast else 1.0
  mirror = flip and rng.random() < 0.5  # drawn as transforms.random_flip does
  return transforms.crop_resize(load_rgb(image), (top * f, left * f, h * f, w * f),
                                image_size, fast=fast, mirror=mirror)


def _array_to_pil(array: np.ndarray) -> Image.Image:
  if array.size == 0:
    raise BadExample("empty_image_bytes", "empty array")
  if array.ndim == 3 and array.shape[-1] == 1:
    array = array[..., 0]
  if array.dtype != np.uint8 or array.ndim not in (2, 3) or (
      array.ndim == 3 and array.shape[-1] not in (3, 4)):
    raise BadExample("undecodable_image", f"array {array.dtype}{list(array.shape)}")
  return Image.fromarray(array)


# ---------------------------------------------------------------- examples ---

def decode_example(record: dict[str, Any] | Rejection,
                   rng: np.random.Generator | None = None, *, train: bool,
                   image_size: int, **image_kwargs) -> dict[str, Any] | Rejection:
  """Raw record -> ``{"image": uint8 [S,S,3], "caption": str[, "label"]}``.

  ``image_kwargs`` go to `preprocess_image` (crop_scale, crop_ratio, flip,
  max_aspect_ratio, fast). Captions are checked before the image is decoded, so a
  bad caption costs no decode. Returns a `Rejection` for bad input.
  """
  if isinstance(record, Rejection):
    return record
  key = str(record.get("key", "")) if isinstance(record, dict) else ""
  try:
    if not isinstance(record, dict) or "image" not in record:
      raise BadExample("malformed_record", "no image field")
    out = {}
    if "caption" in record:
      out["caption"] = choose_caption(caption_candidates(record["caption"]),
                                      rng if train else None)
    out["image"] = preprocess_image(record["image"], rng, train=train,
                                    image_size=image_size, **image_kwargs)
    if "label" in record:
      out["label"] = np.int32(record["label"])
    if "example_id" in record:  # set by the pipeline (data.pipeline)
      out["example_id"] = record["example_id"]
    return out
  except BadExample as e:
    return Rejection(e.reason, key, str(e))
