"""File access that works for local paths and object stores (``gs://``).

Workdirs on TPU VMs live on GCS; ``etils.epath`` (tf.io.gfile underneath)
reads and writes them, but object stores cannot append, so :func:`append_text`
rewrites the object there. Local files keep cheap appends.

Every listing, existence check, read and write under a workdir or sweep root
goes through this module (``os.listdir``, ``open`` and friends see nothing
under ``gs://``); tests run the same calls on an in-memory object store
(tests/fake_gcs.py).
"""

from __future__ import annotations

import os

from etils import epath


def is_remote(path: str) -> bool:
  return "://" in str(path)


def absolute(path: str) -> str:
  return str(path) if is_remote(path) else os.path.abspath(path)


def exists(path: str) -> bool:
  return bool(path) and epath.Path(path).exists()


def isdir(path: str) -> bool:
  return bool(path) and epath.Path(path).is_dir()


def listdir(path: str) -> list[str]:
  """Sorted entry names in the folder ``path``; [] if there is none. (GCS
  lists sub-folders as ``name/``; the names come back without the slash.)"""
  p = epath.Path(path)
  return sorted(q.name for q in p.iterdir()) if p.is_dir() else []


def makedirs(path: str) -> None:
  epath.Path(path).mkdir(parents=True, exist_ok=True)


def read_text(path: str) -> str:
  return epath.Path(path).read_text()


def read_bytes(path: str) -> bytes:
  return epath.Path(path).read_bytes()


def write_text_atomic(path: str, text: str) -> None:
  """Write to ``path.tmp`` then rename: readers never see a torn file."""
  tmp = epath.Path(str(path) + ".tmp")
  tmp.write_text(text)
  tmp.replace(path)


def write_file(path: str, data: str | bytes) -> None:
  """Writes text or bytes, creating a local parent folder (object stores
  have none to create)."""
  p = epath.Path(path)
  if not is_remote(path):
    p.parent.mkdir(parents=True, exist_ok=True)
  if isinstance(data, bytes):
    p.write_bytes(data)
  else:
    p.write_text(data)


def append_text(path: str, text: str) -> None:
  if is_remote(path):
    old = read_text(path) if exists(path) else ""
    epath.Path(path).write_text(old + text)
    return
  with open(path, "a") as f:
    f.write(text)
    f.flush()


def rename(src: str, dst: str) -> None:
  epath.Path(src).rename(dst)
