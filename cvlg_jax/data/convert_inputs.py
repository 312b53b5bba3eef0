"""Input readers for the converter: each yields `Row`s in a fixed order.

Rows are cheap, picklable references (a file path, or an offset into a tar),
not bytes: the main process only lists inputs, and the workers read. The
order depends on the inputs alone, so rows map to the same shard on every run,
which is what makes resuming a half-done conversion exact.
"""

from __future__ import annotations

import csv
import dataclasses
import glob
import os
import sys
import tarfile
from typing import Iterator

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
INPUT_FORMATS = ("tsv", "csv", "folder", "webdataset")


@dataclasses.dataclass(frozen=True)
class Blob:
  """Bytes of a file, or of a byte range in one (a tar member)."""
  path: str
  offset: int = 0
  size: int = -1

  def read(self) -> bytes:
    with open(self.path, "rb") as f:
      if self.offset:
        f.seek(self.offset)
      return f.read(self.size)


@dataclasses.dataclass(frozen=True)
class Row:
  key: str
  image: Blob | None = None
  caption: str | None = None          # Inline text (TSV/CSV).
  caption_blob: Blob | None = None    # A .txt file or, with caption_json, .json.
  caption_json: bool = False
  error: str | None = None            # A reason found while listing the input.


def _expand(input_path: str, pattern: str) -> list[str]:
  if os.path.isdir(input_path):
    paths = glob.glob(os.path.join(input_path, pattern))
  else:
    paths = glob.glob(input_path) if glob.has_magic(input_path) else [input_path]
  paths = sorted(p for p in paths if os.path.isfile(p))
  if not paths:
    raise FileNotFoundError(f"no input files at {input_path!r}")
  return paths


def _column(spec: str | int, header: list[str] | None) -> int:
  if isinstance(spec, int) or str(spec).isdigit():
    return int(spec)
  if header is None or spec not in header:
    raise ValueError(f"column {spec!r} not in header {header}")
  return header.index(spec)


def table_rows(input_path: str, *, delimiter: str, image_column: str,
               caption_column: str, image_root: str | None,
               has_header: bool = False) -> Iterator[Row]:
  """CSV/TSV of (image path, caption); paths are relative to ``image_root``.

  A header row is read when a column is given by name or ``has_header``.
  Files are read with ``surrogateescape`` so a caption with invalid UTF-8
  rejects that row (bad_utf8) instead of aborting the whole file. URLs are
  not fetched (no network at conversion time): download first, e.g. with
  img2dataset, and convert its webdataset output.
  """
  by_name = not (str(image_column).isdigit() and str(caption_column).isdigit())
  csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
  quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
  for path in _expand(input_path, "*.[tc]sv"):
    root = image_root if image_root is not None else os.path.dirname(path)
    with open(path, newline="", encoding="utf-8", errors="surrogateescape") as f:
      reader = csv.reader(f, delimiter=delimiter, quoting=quoting)
      header = next(reader, None) if (by_name or has_header) else None
      img_col, cap_col = _column(image_column, header), _column(caption_column, header)
      base = os.path.basename(path)
      for line, fields in enumerate(reader, start=2 if header else 1):
        key = f"{base}:{line}"
        if len(fields) <= max(img_col, cap_col):
          yield Row(key, error="malformed_record")
          continue
        ref = fields[img_col].strip()
        if ref.startswith(("http://", "https://")) or not ref:
          yield Row(key, caption=fields[cap_col], error="missing_file")
          continue
        yield Row(ref, image=Blob(os.path.join(root, ref)), caption=fields[cap_col])


def folder_rows(root: str) -> Iterator[Row]:
  """Image files anywhere under ``root``, each with a sidecar ``<stem>.txt``."""
  if not os.path.isdir(root):
    raise NotADirectoryError(f"--input_format=folder needs a directory, got {root!r}")
  for dirpath, dirnames, filenames in os.walk(root):
    dirnames.sort()
    for name in sorted(filenames):
      stem, ext = os.path.splitext(name)
      if ext.lower() not in IMAGE_EXTENSIONS:
        continue
      key = os.path.relpath(os.path.join(dirpath, stem), root)
      yield Row(key, image=Blob(os.path.join(dirpath, name)),
                caption_blob=Blob(os.path.join(dirpath, stem + ".txt")))


def webdataset_rows(input_path: str) -> Iterator[Row]:
  """img2dataset-style tar shards: ``K.jpg`` with ``K.txt`` and/or ``K.json``.

  Only member offsets are recorded, so tars must be uncompressed (as
  img2dataset writes them); workers then read members directly.
  """
  for path in _expand(input_path, "*.tar"):
    try:
      tar = tarfile.open(path, "r:")
    except tarfile.ReadError as e:
      raise ValueError(f"{path}: not an uncompressed tar ({e})") from e
    with tar:
      groups: dict[str, dict[str, Blob]] = {}
      for m in tar:
        if not m.isfile():
          continue
        dirname, base = os.path.split(m.name)
        stem, _, ext = base.partition(".")
        groups.setdefault(os.path.join(dirname, stem), {})[ext.lower()] = Blob(
            path, m.offset_data, m.size)
    tar_name = os.path.splitext(os.path.basename(path))[0]
    for stem, members in groups.items():
      key = f"{tar_name}/{stem}"
      image = next((members[e] for e in ("jpg", "jpeg", "png", "webp")
                    if e in members), None)
      if "txt" in members:
        caption, is_json = members["txt"], False
      else:
        caption, is_json = members.get("json"), True
      if image is None and caption is None:
        continue  # Not an example (e.g. a stray metadata file).
      yield Row(key, image=image, caption_blob=caption, caption_json=is_json,
                error=None if image is not None and caption is not None
                else "missing_file")


def iter_rows(input_format: str, input_path: str, *, image_column: str = "1",
              caption_column: str = "0", image_root: str | None = None,
              has_header: bool = False) -> Iterator[Row]:
  """Dispatches on ``input_format`` (one of INPUT_FORMATS)."""
  if input_format in ("tsv", "csv"):
    return table_rows(input_path, delimiter="\t" if input_format == "tsv" else ",",
                      image_column=image_column, caption_column=caption_column,
                      image_root=image_root, has_header=has_header)
  if input_format == "folder":
    return folder_rows(input_path)
  if input_format == "webdataset":
    return webdataset_rows(input_path)
  raise ValueError(f"--input_format={input_format!r}; allowed: {INPUT_FORMATS}")
