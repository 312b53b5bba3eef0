"""The on-disk image-text record: one msgpack map per ArrayRecord record.

``{"key": str, "image": bytes (JPEG), "caption": str | list[str][, "id": int]}``
(``id``: the converter's input row number, so that an example -- e.g. a row of
the embedding bank, which the pipeline keys by source index -- can be traced
back to its input row). msgpack
rather than tf.train.Example so that reading needs neither TensorFlow nor a
schema, and a record stays one self-describing value.
"""

from __future__ import annotations

import glob
import os
import re
from typing import Any

import msgpack

SHARD_SUFFIX = ".array_record"
_SHARD_RE = re.compile(r"^(?P<prefix>.+)-(?P<index>\d{5})-of-(?P<count>\d{5})"
                       + re.escape(SHARD_SUFFIX) + "$")


def encode_record(key: str, image: bytes, caption: str | list[str], *,
                  row_id: int | None = None) -> bytes:
  """Serialises one example; captions may be one string or several."""
  if not isinstance(image, (bytes, bytearray)):
    raise TypeError(f"image must be encoded bytes, got {type(image).__name__}")
  if not isinstance(caption, (str, bytes, list, tuple)):
    raise TypeError(f"caption must be str or list of str, got {type(caption).__name__}")
  record = {"key": str(key), "image": bytes(image),
            "caption": list(caption) if isinstance(caption, tuple) else caption}
  if row_id is not None:
    record["id"] = int(row_id)
  return msgpack.packb(record, use_bin_type=True)


def decode_record(data: bytes) -> dict[str, Any]:
  """Inverse of `encode_record`; raises ValueError on anything else.

  A caption stored with invalid UTF-8 comes back as ``bytes`` (not an error
  here) so the decoder can reject just that example as ``bad_utf8``.
  """
  try:
    try:
      record = msgpack.unpackb(data, raw=False)
    except UnicodeDecodeError:
      record = msgpack.unpackb(data, raw=True)
      if isinstance(record, dict):
        record = {k.decode("utf-8", "replace") if isinstance(k, bytes) else k: v
                  for k, v in record.items()}
        if isinstance(record.get("key"), bytes):
          record["key"] = record["key"].decode("utf-8", "replace")
  except (ValueError, msgpack.UnpackException) as e:
    raise ValueError(f"not a msgpack record: {e}") from e
  if not isinstance(record, dict) or not isinstance(record.get("image"), bytes):
    raise ValueError("record is not a map with an 'image' bytes field")
  if "caption" not in record:
    raise ValueError("record has no 'caption' field")
  return record


def shard_name(prefix: str, index: int, count: int) -> str:
  """``<prefix>-00003-of-00010.array_record``."""
  if not 0 <= index < count:
    raise ValueError(f"shard index {index} outside [0, {count})")
  return f"{prefix}-{index:05d}-of-{count:05d}{SHARD_SUFFIX}"


def parse_shard_name(path: str) -> tuple[str, int, int] | None:
  """(prefix, index, count) for a shard file name, else None."""
  m = _SHARD_RE.match(os.path.basename(path))
  if not m:
    return None
  return m["prefix"], int(m["index"]), int(m["count"])


def list_shards(pattern_or_dir: str) -> list[str]:
  """Sorted shard paths from a directory, a glob, or one file.

  For a directory, shards named ``-NNNNN-of-MMMMM`` must be complete: a
  missing one usually means an unfinished conversion, which should fail
  loudly rather than train on less. A glob may pick a subset on purpose.
  """
  if os.path.isdir(pattern_or_dir):
    paths = glob.glob(os.path.join(pattern_or_dir, "*" + SHARD_SUFFIX))
  elif glob.has_magic(pattern_or_dir):
    paths = glob.glob(pattern_or_dir)
  else:
    paths = [pattern_or_dir] if os.path.exists(pattern_or_dir) else []
  paths = sorted(paths)
  if not paths:
    raise FileNotFoundError(f"no ArrayRecord shards at {pattern_or_dir!r}")
  if os.path.isdir(pattern_or_dir):
    _check_complete(paths)
  return paths


def _check_complete(paths: list[str]) -> None:
  groups: dict[tuple[str, int], set[int]] = {}
  for p in paths:
    parsed = parse_shard_name(p)
    if parsed:
      prefix, index, count = parsed
      groups.setdefault((os.path.join(os.path.dirname(p), prefix), count),
                        set()).add(index)
  for (prefix, count), present in groups.items():
    missing = sorted(set(range(count)) - present)
    if missing:
      raise FileNotFoundError(
          f"{prefix}-*-of-{count:05d}: {len(missing)} of {count} shards missing "
          f"(first: {missing[0]}); is the conversion finished?")
