"""An in-memory object store behind every ``gs://`` path, for tests.

Installed through etils' own test hook (``epath.testing.mock_epath``, with
epath's "use TensorFlow's gfile" switch off, so it routes ``gs://`` to its
backend table), it
gives ``epath.Path("gs://...")`` GCS's semantics without a network: flat
objects, a "folder" exists while an object is under it (or a marker made by
mkdir, as gfile makes), listing, rename as copy + delete, and no appends.
Code that reaches around ``cvlg_jax.fileio`` to ``os``/``open`` sees nothing
at these paths (or creates a local ``gs:`` folder, which the fixture checks).
"""

from __future__ import annotations

import contextlib
import fnmatch
import io
import os

from etils import epath
from etils.epath import gpath, stat_utils

PREFIX = "gs://"


class _Writer(io.BytesIO):

  def __init__(self, store, key, text):
    super().__init__()
    self._store, self._key, self._text = store, key, text

  def write(self, data):
    return super().write(data.encode() if self._text else data)

  def close(self):
    if not self.closed:
      self._store.objects[self._key] = self.getvalue()
    super().close()


class FakeGcs:
  """``objects``: path -> bytes; keys ending in "/" are folder markers."""

  def __init__(self):
    self.objects: dict[str, bytes] = {}

  # -- queries --------------------------------------------------------------
  @staticmethod
  def _key(path) -> str:
    return os.fspath(path).rstrip("/")

  def _under(self, path) -> list[str]:
    prefix = self._key(path) + "/"
    return [k for k in self.objects if k.startswith(prefix)]

  def isdir(self, path) -> bool:
    return bool(self._under(path))

  def exists(self, path) -> bool:
    return self._key(path) in self.objects or self.isdir(path)

  def listdir(self, path) -> list[str]:
    if not self.isdir(path):
      raise FileNotFoundError(f"{path}: no such folder")
    prefix = self._key(path) + "/"
    return sorted({k[len(prefix):].split("/")[0] for k in self._under(path)} - {""})

  def glob(self, pattern) -> list[str]:
    """Objects and folders matching ``pattern``, ``*`` within one segment."""
    names = set()
    for key in self.objects:
      parts = key.rstrip("/")[len(PREFIX):].split("/")
      names |= {PREFIX + "/".join(parts[:i]) for i in range(1, len(parts) + 1)}
    want = os.fspath(pattern).split("/")
    return sorted(n for n in names if len(n.split("/")) == len(want) and all(
        fnmatch.fnmatchcase(a, b) for a, b in zip(n.split("/"), want)))

  def stat(self, path) -> stat_utils.StatResult:
    key = self._key(path)
    if key in self.objects:
      return stat_utils.StatResult(is_directory=False, length=len(self.objects[key]),
                                   mtime=0, owner=None, group=None, mode=None)
    if self.isdir(path):
      return stat_utils.StatResult(is_directory=True, length=0, mtime=0,
                                   owner=None, group=None, mode=None)
    raise FileNotFoundError(path)

  def walk(self, top, top_down=True, on_error=None):
    del top_down, on_error
    names = self.listdir(top)
    dirs = [n for n in names if self.isdir(f"{self._key(top)}/{n}")]
    files = [n for n in names if n not in dirs]
    yield self._key(top), dirs, files
    for d in dirs:
      yield from self.walk(f"{self._key(top)}/{d}")

  # -- changes --------------------------------------------------------------
  def open(self, path, mode):
    key = self._key(path)
    if "a" in mode or "+" in mode:
      raise OSError(f"{path}: an object store cannot append (mode {mode!r})")
    if "r" in mode:
      if key not in self.objects:
        raise FileNotFoundError(path)
      data = self.objects[key]
      return io.BytesIO(data) if "b" in mode else io.StringIO(data.decode())
    return _Writer(self, key, "b" not in mode)

  def mkdir(self, path, exist_ok=False):
    if self.exists(path) and not exist_ok:
      raise FileExistsError(path)
    self.objects.setdefault(self._key(path) + "/", b"")

  def remove(self, path):
    if self.objects.pop(self._key(path), None) is None:
      raise FileNotFoundError(path)

  def rmtree(self, path):
    for k in self._under(path) + [self._key(path)]:
      self.objects.pop(k, None)

  def rename(self, src, dst, overwrite=False):
    src, dst = self._key(src), self._key(dst)
    if self.exists(dst) and not overwrite:
      raise FileExistsError(dst)
    if src in self.objects:
      self.objects[dst] = self.objects.pop(src)
      return
    moved = self._under(src)
    if not moved:
      raise FileNotFoundError(src)
    for k in moved:
      self.objects[dst + k[len(src):]] = self.objects.pop(k)

  def copy(self, src, dst, overwrite=False):
    if self.exists(dst) and not overwrite:
      raise FileExistsError(dst)
    self.objects[self._key(dst)] = self.objects[self._key(src)]

  # -- installation ---------------------------------------------------------
  @contextlib.contextmanager
  def installed(self, monkeypatch):
    """Every epath call on a ``gs://`` path lands here; others run as usual."""
    # EPATH_USE_TF=false is read once and cached, so set the answer itself.
    monkeypatch.setattr(gpath, "_is_tf_installed", lambda: False)
    def route(method):
      def call(original, path, *args, **kwargs):
        if os.fspath(path).startswith(PREFIX):
          return method(path, *args, **kwargs)
        return original(path, *args, **kwargs)
      return call
    hooks = dict(
        open=route(self.open), exists=route(self.exists), isdir=route(self.isdir),
        listdir=route(self.listdir), glob=route(self.glob), stat=route(self.stat),
        walk=route(self.walk), remove=route(self.remove), rmtree=route(self.rmtree),
        mkdir=route(lambda p, exist_ok=False: self.mkdir(p, exist_ok)),
        makedirs=route(lambda p, exist_ok=False: self.mkdir(p, True)),
        rename=route(lambda s, d: self.rename(s, d)),
        replace=route(lambda s, d: self.rename(s, d, overwrite=True)),
        copy=route(lambda s, d, overwrite=False: self.copy(s, d, overwrite)))
    with epath.testing.mock_epath(**hooks):
      yield self
