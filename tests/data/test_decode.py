"""Image/caption decoding: crops, colour modes, captions, every rejection reason."""

from __future__ import annotations

import functools
import io

import numpy as np
from PIL import Image
import pytest

from image_fixtures import encode_image as _encode, photo_like

from cvlg_jax.data import decode, records, transforms
from cvlg_jax.data.decode import Rejection, SKIP_REASONS, decode_example




def _gradient(h, w):
  y, x = np.mgrid[0:h, 0:w]
  return np.stack([x * 255 // max(1, w - 1), y * 255 // max(1, h - 1),
                   np.full_like(x, 128)], -1).astype(np.uint8)


def test_sample_crop_box_respects_scale_ratio_and_bounds():
  rng = np.random.default_rng(0)
  for _ in range(500):
    top, left, h, w = transforms.sample_crop_box(300, 400, rng, (0.25, 0.5), (0.5, 2.0))
    assert 0 <= top and top + h <= 300 and 0 <= left and left + w <= 400
    # Rounding to whole pixels moves area and ratio only slightly.
    assert 0.24 <= h * w / (300 * 400) <= 0.51
    assert 0.49 <= w / h <= 2.02
  # Impossible ratio -> centre crop with the ratio clamped into range.
  assert transforms.sample_crop_box(10, 1000, rng, (0.9, 1.0), (1.0, 2.0)) == (0, 490, 10, 20)


def test_random_resized_crop_known_answers():
  image = _gradient(60, 80)
  rng = np.random.default_rng(0)
  # Whole-image crop (scale 1, ratio = image ratio) == plain bicubic resize.
  out = transforms.random_resized_crop(image, rng, 32, (1.0, 1.0), (4 / 3, 4 / 3))
  expected = np.asarray(Image.fromarray(image).resize((32, 32), Image.BICUBIC))
  np.testing.assert_array_equal(out, expected)
  a = transforms.random_resized_crop(image, np.random.default_rng(5), 16)
  b = transforms.random_resized_crop(image, np.random.default_rng(5), 16)
  np.testing.assert_array_equal(a, b)  # Same seed, same crop.
  flips = [transforms.random_flip(image, np.random.default_rng(s)) for s in range(20)]
  assert any((f == image[:, ::-1]).all() for f in flips)
  assert any((f == image).all() for f in flips)


@pytest.mark.parametrize("mode,expected", [
    ("RGBA", (255, 255, 255)), ("LA", (255, 255, 255)), ("CMYK", (10, 200, 30)),
    ("L", None), ("P", (10, 200, 30))])
def test_to_rgb_modes(mode, expected):
  base = np.zeros((4, 4, 3), np.uint8) + np.array([10, 200, 30], np.uint8)
  image = Image.fromarray(base).convert(mode, palette=Image.Palette.ADAPTIVE)
  if mode in ("RGBA", "LA"):
    image.putalpha(0)  # Fully transparent -> white, not black.
  out = np.asarray(transforms.to_rgb(image))
  assert out.shape == (4, 4, 3) and out.dtype == np.uint8
  if expected is None:
    assert (out[..., 0] == out[..., 1]).all()
  else:
    np.testing.assert_allclose(out[0, 0], expected, atol=3)
  wide = Image.fromarray(np.full((2, 2), 65535, np.uint16))  # 16-bit grey: scaled.
  assert (np.asarray(transforms.to_rgb(wide)) == 255).all()


def test_captions():
  assert decode.clean_caption(b"  a\tdog \n runs ") == "a dog runs"
  assert decode.caption_candidates(["", "  x ", b"y", "  "]) == ["x", "y"]
  assert decode.caption_candidates(np.array([b"p", b"q"], object)) == ["p", "q"]
  for bad, reason in [("  \n", "empty_caption"), (b"\xff\xfe", "bad_utf8"),
                      ("ok\udcff", "bad_utf8"), ([" ", b"\xc3("], "bad_utf8"),
                      ([], "empty_caption")]:
    with pytest.raises(decode.BadExample) as e:
      decode.caption_candidates(bad)
    assert e.value.reason == reason
  rng = np.random.default_rng(0)
  picks = {decode.choose_caption(["a", "b", "c"], rng) for _ in range(50)}
  assert picks == {"a", "b", "c"}
  assert decode.choose_caption(["a", "b", "c"], None) == "a"


def test_decode_example_train_and_eval():
  jpeg = _encode(_gradient(90, 120))
  record = {"key": "k", "image": jpeg, "caption": ["first", "second"]}
  rng = np.random.default_rng(0)
  out = decode_example(record, rng, train=True, image_size=32, flip=True)
  assert set(out) == {"image", "caption"}
  assert out["image"].shape == (32, 32, 3) and out["image"].dtype == np.uint8
  ev = decode_example(record, None, train=False, image_size=64)  # Too big to draft.
  assert ev["caption"] == "first"
  full = np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"))
  np.testing.assert_array_equal(ev["image"], transforms.resize_center_crop(full, 64))
  # Decoded TFDS-style arrays and labels go through the same path.
  arr = decode_example({"image": _gradient(40, 40)[..., :1], "label": 3}, None,
                       train=False, image_size=16)
  assert arr["image"].shape == (16, 16, 3) and arr["label"] == 3


def test_jpeg_draft_decode_matches_full_decode():
  big = _encode(_gradient(960, 1280), quality=95)
  image = decode.open_image(big)
  assert decode._draft(image, 300, 225) == 0.25  # pylint: disable=protected-access
  fast = decode_example({"image": big, "caption": "c"}, None, train=False,
                        image_size=224)["image"].astype(float)
  full = np.asarray(Image.open(io.BytesIO(big)).convert("RGB"))
  slow = transforms.resize_center_crop(full, 224).astype(float)
  assert np.abs(fast - slow).mean() < 2.0
  rng_a, rng_b = np.random.default_rng(1), np.random.default_rng(1)
  crop = decode_example({"image": big, "caption": "c"}, rng_a, train=True,
                        image_size=64, crop_scale=(0.5, 0.5))["image"].astype(float)
  top, left, h, w = transforms.sample_crop_box(960, 1280, rng_b, (0.5, 0.5))
  ref = transforms.crop_resize(Image.fromarray(full), (top, left, h, w), 64)
  assert np.abs(crop - ref).mean() < 2.0


@pytest.mark.parametrize("width,height", [(500, 375), (1024, 768)])
def test_fast_decode_is_statistically_the_exact_path(width, height):
  """fast=True (DCT-scale decode + box-reduce) vs fast=False (full decode, one
  bicubic pass) on the same seeds: the same crop box and flip (boxes are drawn
  before decoding), and pixels within the stated tolerance: mean abs
  difference < 1 grey level (worst image < 1.5), mean brightness shift
  < 0.3 levels (PIL rounds box averages half up: +0.25), same contrast."""
  rng = np.random.default_rng(0)
  images = [photo_like(rng, width, height) for _ in range(2)]
  for scale in (0.9, 0.08):
    mad, shift, std_ratio = [], [], []
    for seed in range(16):
      record = {"image": images[seed % 2], "caption": "c"}
      out = {}
      for fast in (True, False):
        ex = decode_example(record, np.random.default_rng(seed), train=True,
                            image_size=224, crop_scale=(scale, 1.0), flip=True,
                            fast=fast)
        out[fast] = ex["image"].astype(np.float64)
      diff = out[True] - out[False]
      mad.append(np.abs(diff).mean())
      shift.append(diff.mean())
      std_ratio.append(out[True].std() / out[False].std())
    assert np.mean(mad) < 1.0 and max(mad) < 1.5, (scale, mad)
    assert abs(np.mean(shift)) < 0.3, (scale, shift)
    assert 0.98 < np.mean(std_ratio) < 1.02, (scale, std_ratio)
  # A crop box that allows no shortcut gives bit-identical pixels.
  small = photo_like(rng, 240, 180)
  for fast in (True, False):
    out[fast] = decode_example({"image": small, "caption": "c"},
                               np.random.default_rng(3), train=True,
                               image_size=224, crop_scale=(0.9, 1.0), fast=fast)
  np.testing.assert_array_equal(out[True]["image"], out[False]["image"])


def test_flip_in_pil_equals_numpy_flip():
  jpeg = _encode(_gradient(90, 120))
  for seed in range(8):
    kw = dict(train=True, image_size=32, crop_scale=(0.5, 1.0))
    plain = decode.preprocess_image(jpeg, np.random.default_rng(seed), **kw)
    flipped = decode.preprocess_image(jpeg, np.random.default_rng(seed), flip=True, **kw)
    rng = np.random.default_rng(seed)
    transforms.sample_crop_box(90, 120, rng, (0.5, 1.0))
    expect = plain[:, ::-1] if rng.random() < 0.5 else plain
    np.testing.assert_array_equal(flipped, expect)


def _bad_records():
  good = _encode(_gradient(40, 48))
  return {
      "undecodable_image": {"image": b"GIF89a garbage" * 3, "caption": "c"},
      "truncated_image": {"image": good[: len(good) // 2], "caption": "c"},
      "empty_image_bytes": {"image": b"", "caption": "c"},
      "extreme_aspect_ratio": {"image": _encode(_gradient(50, 1), "PNG"),
                               "caption": "c"},
      "empty_caption": {"image": good, "caption": " \t "},
      "bad_utf8": {"image": good, "caption": b"caf\xe9"},
      "malformed_record": {"caption": "no image"},
  }


def test_every_reason_is_a_typed_rejection():
  bad = _bad_records()
  assert set(bad) == set(SKIP_REASONS)
  for reason, record in bad.items():
    record = {"key": reason, **record}
    for train in (True, False):
      out = decode_example(record, np.random.default_rng(0), train=train, image_size=16)
      assert isinstance(out, Rejection) and out.reason == reason, (reason, out)
      assert out.key == reason


def test_records_round_trip_and_raw_bad_utf8():
  data = records.encode_record("k", b"\xff\xd8jpeg", ["a", "b"])
  assert records.decode_record(data) == {"key": "k", "image": b"\xff\xd8jpeg",
                                         "caption": ["a", "b"]}
  import msgpack  # A str field with invalid UTF-8, as a foreign writer might emit.
  pack = functools.partial(msgpack.packb, use_bin_type=True)
  raw = (b"\x83" + pack("key") + pack("k") + pack("image") + pack(b"x")
         + pack("caption") + b"\xa2\xff\xfe")  # fixstr of 2 invalid bytes.
  rec = records.decode_record(raw)
  assert rec["caption"] == b"\xff\xfe" and rec["key"] == "k"
  out = decode_example(rec, None, train=False, image_size=8)
  assert isinstance(out, Rejection) and out.reason == "bad_utf8"
  for garbage in (b"\x00\x01", msgpack.packb([1, 2]), msgpack.packb({"image": b"x"})):
    with pytest.raises(ValueError):
      records.decode_record(garbage)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncation_anywhere_is_truncated_image(fmt):
  data = _encode(np.random.default_rng(0).integers(0, 256, (64, 64, 3), np.uint8), fmt)
  for frac in (0.1, 0.5, 0.95):
    out = decode_example({"image": data[: int(len(data) * frac)], "caption": "c"},
                         None, train=False, image_size=8)
    assert isinstance(out, Rejection) and out.reason == "truncated_image", (frac, out)
