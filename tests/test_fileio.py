"""Local and object-store file access (cvlg_jax.fileio)."""

from cvlg_jax import fileio


def test_local_roundtrip(tmp_path):
  path = str(tmp_path / "sub" / "f.txt")
  fileio.makedirs(str(tmp_path / "sub"))
  fileio.write_text_atomic(path, "a\n")
  fileio.append_text(path, "b\n")
  assert fileio.read_text(path) == "a\nb\n"
  assert fileio.exists(path) and not fileio.isdir(path)
  assert not (tmp_path / "sub" / "f.txt.tmp").exists()
  assert fileio.absolute("gs://bucket/run") == "gs://bucket/run"
  assert not fileio.exists("") and not fileio.isdir("")
  # write_file makes the missing local folders, for text and bytes alike.
  fileio.write_file(str(tmp_path / "new" / "deeper" / "r.md"), "table\n")
  fileio.write_file(str(tmp_path / "new" / "f.png"), b"\x89PNG")
  assert (tmp_path / "new" / "deeper" / "r.md").read_text() == "table\n"
  assert (tmp_path / "new" / "f.png").read_bytes() == b"\x89PNG"


def test_object_store_appends_by_rewriting(tmp_path, monkeypatch):
  monkeypatch.setattr(fileio, "is_remote", lambda path: True)
  path = str(tmp_path / "m.txt")
  fileio.append_text(path, "1\n")
  fileio.append_text(path, "2\n")
  assert fileio.read_text(path) == "1\n2\n"
