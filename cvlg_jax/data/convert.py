r"""Converts image-text data to ArrayRecord shards of `records` msgpack records.

  python -m cvlg_jax.data.convert --input_format=tsv --input=cc3m.tsv \
      --image_root=/data/cc3m --image_column=1 --caption_column=0 \
      --output_dir=/data/cc3m_ar --prefix=cc3m --num_workers=16

Rows are assigned to shards by position (shard k holds rows [k*m, (k+1)*m)),
so a re-run skips finished shards and redoes only the rest. Each shard is
written under a temporary name and renamed when complete, after its stats; a
crash never leaves a partial shard under a final name. Bad rows are skipped
and counted by reason in ``<prefix>-report.json`` next to the shards.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures as cf
import dataclasses
import glob
import itertools
import json
import math
import multiprocessing
import os
import sys
import time
from typing import Any, Iterable, Iterator, Sequence

from absl import logging
from PIL import Image

from cvlg_jax.data import convert_inputs, decode, records
from cvlg_jax.data.convert_inputs import Row

SKIP_REASONS = ("missing_file",) + decode.SKIP_REASONS
_EXIF_ORIENTATION = 0x0112
_TRANSPOSE = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
              4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
              6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
              8: Image.Transpose.ROTATE_90}


@dataclasses.dataclass(frozen=True)
class ImageOptions:
  max_short_side: int = 384
  max_aspect_ratio: float = 10.0
  jpeg_quality: int = 95


def prepare_image(data: bytes, opts: ImageOptions) -> tuple[bytes, bool]:
  """Validated JPEG bytes, and whether they had to be re-encoded.

  Every image is fully decoded (that is the only way to catch truncation).
  A baseline RGB JPEG that is small enough and upright is kept byte for byte:
  re-encoding would only lose quality.
  """
  image = decode.open_image(data)
  width, height = image.size
  decode.check_aspect_ratio(width, height, opts.max_aspect_ratio)
  fmt, mode = image.format, image.mode
  try:
    orientation = image.getexif().get(_EXIF_ORIENTATION, 1)
  except Exception:  # pylint: disable=broad-except  # Corrupt EXIF: pixels may be fine.
    orientation = 1
  short = min(width, height)
  if short > opts.max_short_side and fmt == "JPEG":  # Cheap DCT-domain downscale.
    s = opts.max_short_side / short
    image.draft(mode, (math.ceil(width * s), math.ceil(height * s)))
  rgb = decode.load_rgb(image)
  if (fmt == "JPEG" and mode == "RGB" and short <= opts.max_short_side
      and orientation in (None, 1)):
    return bytes(data), False
  if orientation in _TRANSPOSE:
    rgb = rgb.transpose(_TRANSPOSE[orientation])
  w, h = rgb.size
  if min(w, h) > opts.max_short_side:
    s = opts.max_short_side / min(w, h)
    rgb = rgb.resize((max(1, round(w * s)), max(1, round(h * s))), Image.BICUBIC)
  out = _BytesSink()
  rgb.save(out, format="JPEG", quality=opts.jpeg_quality)
  return out.getvalue(), True


class _BytesSink(list):
  """Minimal write-only file for PIL's save (avoids a BytesIO copy)."""

  def write(self, b) -> int:
    self.append(bytes(b))
    return len(b)

  def getvalue(self) -> bytes:
    return b"".join(self)


def _read_caption(row: Row, multiline: bool) -> str | list[str]:
  if row.caption_blob is not None:
    raw = row.caption_blob.read()
    if row.caption_json:
      try:
        value = json.loads(raw).get("caption")
      except (ValueError, AttributeError) as e:
        raise decode.BadExample("malformed_record", f"caption json: {e}") from None
      if value is None:
        raise decode.BadExample("empty_caption", "json without 'caption'")
    else:
      value = raw
  else:
    value = row.caption if row.caption is not None else ""
  if multiline:
    return decode.caption_candidates(decode.to_text(value).splitlines())
  return decode.clean_caption(value)


def convert_row(row: Row, opts: ImageOptions, multiline: bool = False,
                row_id: int | None = None) -> tuple[bytes | None, str]:
  """One row -> (record bytes, "copied" | "reencoded") or (None, skip reason).

  ``row_id`` (the row's position in the input) is stored as the record's id.
  """
  if row.error:
    return None, row.error
  try:
    caption = _read_caption(row, multiline)
    image, reencoded = prepare_image(row.image.read(), opts)
  except decode.BadExample as e:
    return None, e.reason
  except OSError:  # Missing or unreadable (permissions, a directory, ...).
    return None, "missing_file"
  except Exception as e:  # pylint: disable=broad-except
    # A PIL corner case must not end a long conversion; it is counted, and
    # logged so that a bug (every row failing) is visible, not silent.
    logging.warning("row %r: %s: %s (counted as undecodable_image)", row.key,
                    type(e).__name__, e)
    return None, "undecodable_image"
  return (records.encode_record(row.key, image, caption, row_id=row_id),
          "reencoded" if reencoded else "copied")


@dataclasses.dataclass(frozen=True)
class ShardTask:
  index: int
  count: int
  rows: Sequence[Row]
  output_dir: str
  prefix: str
  opts: ImageOptions
  multiline: bool = False
  first_row: int = 0   # input position of rows[0]: record ids are positions

  @property
  def path(self) -> str:
    return os.path.join(self.output_dir, records.shard_name(self.prefix, self.index,
                                                            self.count))

  @property
  def stats_path(self) -> str:
    return os.path.join(self.output_dir, f"{self.prefix}-stats",
                        f"{self.index:05d}-of-{self.count:05d}.json")


def _write_json(path: str, value: Any) -> None:
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(value, f, indent=1, sort_keys=True)
  os.replace(tmp, path)


def convert_shard(task: ShardTask) -> dict[str, Any]:
  """Writes one shard (temp name, then rename) and returns its counts."""
  from array_record.python.array_record_module import ArrayRecordWriter
  counts: collections.Counter[str] = collections.Counter()
  tmp = task.path + ".tmp"
  writer = ArrayRecordWriter(tmp, "group_size:1")  # Fast single-record reads.
  try:
    for i, row in enumerate(task.rows):
      record, outcome = convert_row(row, task.opts, task.multiline,
                                    row_id=task.first_row + i)
      counts[outcome] += 1
      if record is not None:
        writer.write(record)
  finally:
    writer.close()
  stats = {"rows": len(task.rows), "written": counts["copied"] + counts["reencoded"],
           "copied": counts["copied"], "reencoded": counts["reencoded"],
           "skipped": {r: counts[r] for r in SKIP_REASONS}}
  _write_json(task.stats_path, stats)  # Stats first: a final shard implies stats.
  os.replace(tmp, task.path)
  return stats


def _chunks(rows: Iterable[Row], size: int) -> Iterator[list[Row]]:
  it = iter(rows)
  while chunk := list(itertools.islice(it, size)):
    yield chunk


def _check_manifest(path: str, manifest: dict[str, Any]) -> None:
  if os.path.exists(path):
    with open(path) as f:
      old = json.load(f)
    if old != manifest:
      diff = {k: (old.get(k), v) for k, v in manifest.items() if old.get(k) != v}
      raise RuntimeError(
          f"{path} describes a different conversion {diff} (old, new); use a new "
          "--output_dir or --prefix, or delete the old shards")
  else:
    _write_json(path, manifest)


def run(args: argparse.Namespace) -> dict[str, Any]:
  """Converts everything; returns (and writes) the report."""
  from tqdm import tqdm
  start = time.time()
  row_kwargs = dict(image_column=args.image_column, caption_column=args.caption_column,
                    image_root=args.image_root, has_header=args.has_header)
  num_rows = sum(1 for _ in convert_inputs.iter_rows(args.input_format, args.input,
                                                      **row_kwargs))
  if num_rows == 0:
    raise ValueError(f"no rows found in {args.input!r}")
  num_shards = args.num_shards or math.ceil(num_rows / args.rows_per_shard)
  num_shards = min(num_shards, num_rows)
  per_shard = math.ceil(num_rows / num_shards)
  num_shards = math.ceil(num_rows / per_shard)  # No empty trailing shards.
  opts = ImageOptions(args.max_short_side, args.max_aspect_ratio, args.jpeg_quality)
  os.makedirs(os.path.join(args.output_dir, f"{args.prefix}-stats"), exist_ok=True)
  _check_manifest(os.path.join(args.output_dir, f"{args.prefix}-manifest.json"), {
      "input_format": args.input_format, "input": os.path.abspath(args.input),
      "rows": num_rows, "shards": num_shards, "multiline_captions": args.multiline_captions,
      **dataclasses.asdict(opts), **row_kwargs})
  stale_pattern = records.shard_name(args.prefix, 0, num_shards).replace(
      "00000-of", "[0-9][0-9][0-9][0-9][0-9]-of") + ".tmp"
  for stale in glob.glob(os.path.join(args.output_dir, stale_pattern)):
    os.remove(stale)  # Left by an interrupted run; its shard is redone below.

  shard_stats: list[dict[str, Any]] = []
  resumed = 0
  bar = tqdm(total=num_rows, unit="row", desc=f"converting to {num_shards} shards")
  workers = max(1, args.num_workers)
  pool = (cf.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
          if workers > 1 else None)
  pending: set[cf.Future] = set()

  def collect(done):
    for fut in done:
      stats = fut.result()
      shard_stats.append(stats)
      bar.update(stats["rows"])

  try:
    rows = convert_inputs.iter_rows(args.input_format, args.input, **row_kwargs)
    for index, chunk in enumerate(_chunks(rows, per_shard)):
      task = ShardTask(index, num_shards, chunk, args.output_dir, args.prefix, opts,
                       args.multiline_captions, first_row=index * per_shard)
      if os.path.exists(task.path) and os.path.exists(task.stats_path):
        with open(task.stats_path) as f:
          shard_stats.append(json.load(f))
        resumed += 1
        bar.update(len(chunk))
        continue
      if pool is None:
        collect([_done_future(convert_shard(task))])
        continue
      pending.add(pool.submit(convert_shard, task))
      if len(pending) >= 2 * workers:  # Bounded: rows are listed lazily.
        done, pending = cf.wait(pending, return_when=cf.FIRST_COMPLETED)
        collect(done)
    collect(cf.wait(pending)[0])
  finally:
    bar.close()
    if pool is not None:
      pool.shutdown(cancel_futures=True)

  if len(shard_stats) != num_shards:
    raise RuntimeError(f"listed {len(shard_stats)} shards, expected {num_shards}: "
                       "did the input change during the conversion?")
  skipped = {r: sum(s["skipped"][r] for s in shard_stats) for r in SKIP_REASONS}
  report = {"rows": num_rows, "shards": num_shards, "resumed_shards": resumed,
            "written": sum(s["written"] for s in shard_stats),
            "copied": sum(s["copied"] for s in shard_stats),
            "reencoded": sum(s["reencoded"] for s in shard_stats),
            "skipped": skipped, "skipped_total": sum(skipped.values()),
            "seconds": round(time.time() - start, 2)}
  _write_json(os.path.join(args.output_dir, f"{args.prefix}-report.json"), report)
  return report


def _done_future(value: Any) -> cf.Future:
  fut: cf.Future = cf.Future()
  fut.set_result(value)
  return fut


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
  p = argparse.ArgumentParser(prog="python -m cvlg_jax.data.convert",
                              description=__doc__.split("\n")[0])
  p.add_argument("--input_format", required=True, choices=convert_inputs.INPUT_FORMATS)
  p.add_argument("--input", required=True,
                 help="TSV/CSV file or glob; image folder; dir or glob of .tar")
  p.add_argument("--output_dir", required=True)
  p.add_argument("--prefix", default="data", help="shard name prefix")
  p.add_argument("--image_column", default="1", help="name or 0-based index")
  p.add_argument("--caption_column", default="0", help="name or 0-based index")
  p.add_argument("--has_header", action="store_true",
                 help="skip a header row even when columns are indices")
  p.add_argument("--image_root", default=None,
                 help="base for relative image paths (default: the table's dir)")
  p.add_argument("--multiline_captions", action="store_true",
                 help="caption text files hold one caption per line")
  p.add_argument("--rows_per_shard", type=int, default=10_000)
  p.add_argument("--num_shards", type=int, default=0, help="overrides rows_per_shard")
  p.add_argument("--max_short_side", type=int, default=384)
  p.add_argument("--max_aspect_ratio", type=float, default=10.0)
  p.add_argument("--jpeg_quality", type=int, default=95)
  p.add_argument("--num_workers", type=int, default=os.cpu_count() or 1)
  args = p.parse_args(argv)
  for name in ("rows_per_shard", "max_short_side", "max_aspect_ratio"):
    if getattr(args, name) <= 0:
      p.error(f"--{name} must be positive")
  if not 1 <= args.jpeg_quality <= 100 or args.num_shards < 0:
    p.error("--jpeg_quality must be in [1, 100] and --num_shards >= 0")
  return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  report = run(parse_args(argv))
  print(json.dumps(report, indent=1))
  return report


if __name__ == "__main__":
  try:
    main(sys.argv[1:])
  except (RuntimeError, ValueError, OSError) as e:
    sys.exit(f"error: {e}")
