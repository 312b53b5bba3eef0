"""Converter: every input format round-trips, bad rows are counted, resume is exact."""

from __future__ import annotations

import io
import json
import os
import tarfile

import numpy as np
from PIL import Image
import pytest

from image_fixtures import encode_image as _encode

from cvlg_jax.data import convert, records
from cvlg_jax.data.sources import ArrayRecordImageText




def _noise(h, w, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _flat(h, w, rgb):
  return np.broadcast_to(np.array(rgb, np.uint8), (h, w, 3)).copy()


def _read_all(out_dir) -> dict[str, dict]:
  src = ArrayRecordImageText(str(out_dir))
  recs = [src[i] for i in range(len(src))]
  return {r["key"]: r for r in recs}


def _decoded(record) -> np.ndarray:
  image = Image.open(io.BytesIO(record["image"]))
  assert image.format == "JPEG" and image.mode == "RGB"
  return np.asarray(image)


def _args(tmp_path, fmt, inp, **extra):
  argv = [f"--input_format={fmt}", f"--input={inp}", f"--output_dir={tmp_path / 'out'}",
          "--num_workers=1", "--max_short_side=32"]
  argv += [f"--{k}" if v is True else f"--{k}={v}" for k, v in extra.items()]
  return convert.parse_args(argv)


def _bad_images(root):
  """One fixture per image-side skip reason, as files under ``root``."""
  good = _encode(_noise(40, 48, 1), "JPEG")
  files = {"garbage.jpg": b"\x00not an image at all" * 5,
           "trunc.jpg": good[: len(good) // 2],
           "zero.jpg": b"",
           "thin.png": _encode(_flat(50, 1, (9, 9, 9)), "PNG")}
  for name, data in files.items():
    (root / name).write_bytes(data)


def test_tsv_round_trip_counts_every_reason(tmp_path):
  img = tmp_path / "img"
  img.mkdir()
  small = _encode(_noise(24, 30), "JPEG", quality=90)  # RGB JPEG within size.
  (img / "small.jpg").write_bytes(small)
  (img / "big.jpg").write_bytes(_encode(_noise(64, 96, 2), "JPEG"))
  (img / "rgba.png").write_bytes(_encode(np.zeros((20, 20, 4), np.uint8), "PNG"))
  (img / "gray.jpg").write_bytes(_encode(_flat(20, 20, (100, 100, 100)), "JPEG",
                                         mode="L"))
  (img / "cmyk.jpg").write_bytes(_encode(_flat(20, 20, (200, 30, 30)), "JPEG",
                                         mode="CMYK"))
  _bad_images(img)
  lines = [b"a  cat\n\tsmall.jpg", b"big one\tbig.jpg", b"clear\trgba.png",
           b"grey\tgray.jpg", b"cmyk\tcmyk.jpg", b"g\tgarbage.jpg", b"t\ttrunc.jpg",
           b"z\tzero.jpg", b"thin\tthin.png", b"   \tsmall.jpg",
           b"bad \xff\xfe utf8\tsmall.jpg", b"gone\tmissing.jpg",
           b"url\thttp://example.com/x.jpg"]
  (tmp_path / "cc.tsv").write_bytes(b"\n".join(lines).replace(b"\n\t", b"\t") + b"\n")
  report = convert.run(_args(tmp_path, "tsv", tmp_path / "cc.tsv",
                             image_root=img, rows_per_shard=4))

  assert report["rows"] == 13 and report["shards"] == 4
  assert report["written"] == 5 and report["copied"] == 1
  assert report["skipped"] == {
      "missing_file": 2, "undecodable_image": 1, "truncated_image": 1,
      "empty_image_bytes": 1, "extreme_aspect_ratio": 1, "empty_caption": 1,
      "bad_utf8": 1, "malformed_record": 0}
  with open(tmp_path / "out" / "data-report.json") as f:
    assert json.load(f) == report

  recs = _read_all(tmp_path / "out")
  assert sorted(recs) == ["big.jpg", "cmyk.jpg", "gray.jpg", "rgba.png", "small.jpg"]
  assert recs["small.jpg"]["image"] == small  # Copied byte for byte.
  assert recs["small.jpg"]["caption"] == "a cat"  # Whitespace collapsed.
  assert _decoded(recs["big.jpg"]).shape == (32, 48, 3)  # Short side 64 -> 32.
  assert _decoded(recs["rgba.png"]).min() >= 250  # Transparent -> white.
  gray = _decoded(recs["gray.jpg"]).astype(int)
  assert np.abs(gray - 100).max() <= 3
  cmyk = _decoded(recs["cmyk.jpg"]).astype(int).mean((0, 1))
  np.testing.assert_allclose(cmyk, (200, 30, 30), atol=12)


def test_csv_by_column_name(tmp_path):
  (tmp_path / "x.jpg").write_bytes(_encode(_noise(20, 20), "JPEG"))
  (tmp_path / "t.csv").write_text('id,caption,file\n7,"a, quoted caption",x.jpg\n')
  report = convert.run(_args(tmp_path, "csv", tmp_path / "t.csv",
                             image_column="file", caption_column="caption"))
  assert report["written"] == 1
  assert _read_all(tmp_path / "out")["x.jpg"]["caption"] == "a, quoted caption"


def test_folder_with_sidecars(tmp_path):
  root = tmp_path / "folder"
  (root / "sub").mkdir(parents=True)
  (root / "one.png").write_bytes(_encode(_flat(10, 12, (0, 255, 0)), "PNG"))
  (root / "one.txt").write_text("first\n")
  (root / "sub" / "two.jpg").write_bytes(_encode(_noise(20, 20), "JPEG"))
  (root / "sub" / "two.txt").write_text("line one\n\nline two\n")
  (root / "sub" / "lonely.jpg").write_bytes(_encode(_noise(20, 20), "JPEG"))
  (root / "notes.md").write_text("ignored")
  report = convert.run(_args(tmp_path, "folder", root, multiline_captions=True))
  assert report["rows"] == 3 and report["written"] == 2
  assert report["skipped"]["missing_file"] == 1
  recs = _read_all(tmp_path / "out")
  assert recs["one"]["caption"] == ["first"]
  assert recs[os.path.join("sub", "two")]["caption"] == ["line one", "line two"]
  np.testing.assert_allclose(_decoded(recs["one"]).mean((0, 1)), (0, 255, 0), atol=8)


def test_webdataset_tars(tmp_path):
  members = {"0000.jpg": _encode(_noise(20, 20), "JPEG"), "0000.txt": b"from txt",
             "0001.png": _encode(_noise(20, 20), "PNG"),
             "0001.json": json.dumps({"caption": "from json", "url": "u"}).encode(),
             "0002.jpg": _encode(_noise(20, 20), "JPEG"),
             "0002.json": b'{"caption": null}',
             "0003.txt": b"no image"}
  (tmp_path / "shards").mkdir()
  with tarfile.open(tmp_path / "shards" / "00000.tar", "w") as tar:
    for name, data in members.items():
      info = tarfile.TarInfo(name)
      info.size = len(data)
      tar.addfile(info, io.BytesIO(data))
  report = convert.run(_args(tmp_path, "webdataset", tmp_path / "shards"))
  assert report["rows"] == 4 and report["written"] == 2
  assert report["skipped"]["empty_caption"] == 1 and report["skipped"]["missing_file"] == 1
  recs = _read_all(tmp_path / "out")
  assert recs["00000/0000"]["image"] == members["0000.jpg"]
  assert recs["00000/0001"]["caption"] == "from json"


def _shard_bytes(out_dir) -> dict[str, bytes]:
  return {p.name: p.read_bytes() for p in sorted(out_dir.glob("*.array_record"))}


def test_resume_is_exact_and_parallel_matches_serial(tmp_path):
  img = tmp_path / "img"
  img.mkdir()
  lines = []
  for i in range(9):
    (img / f"{i}.png").write_bytes(_encode(_noise(16 + i, 20, i), "PNG"))
    lines.append(f"caption {i}\t{i}.png")
  (tmp_path / "t.tsv").write_text("\n".join(lines) + "\n")
  args = _args(tmp_path, "tsv", tmp_path / "t.tsv", image_root=img, rows_per_shard=2)
  args.num_workers = 2  # Real worker processes.
  first = convert.run(args)
  out = tmp_path / "out"
  reference = _shard_bytes(out)
  assert first["shards"] == 5 and len(reference) == 5 and first["written"] == 9

  # A crash: one shard lost, another half-written under its temp name.
  names = sorted(reference)
  os.remove(out / names[1])
  os.remove(out / names[3])
  (out / (names[3] + ".tmp")).write_bytes(b"half a shard")
  args.num_workers = 1
  second = convert.run(args)
  assert second["resumed_shards"] == 3
  assert _shard_bytes(out) == reference
  assert not list(out.glob("*.tmp"))
  assert {k: v for k, v in second.items() if k not in ("resumed_shards", "seconds")} \
      == {k: v for k, v in first.items() if k not in ("resumed_shards", "seconds")}
  assert len(ArrayRecordImageText(str(out))) == 9

  args.max_short_side = 8  # Different settings must not mix into these shards.
  with pytest.raises(RuntimeError, match="different conversion"):
    convert.run(args)


def test_incomplete_output_is_refused(tmp_path):
  for i in (0, 2):
    path = tmp_path / records.shard_name("x", i, 3)
    path.write_bytes(b"")
  with pytest.raises(FileNotFoundError, match="1 of 3 shards missing"):
    records.list_shards(str(tmp_path))
