"""Workdir file access, local and object-store style (no appends)."""

from cvlg_jax import fileio, metrics_log


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


def test_metrics_log_drops_rows_after_resume_step(tmp_path, monkeypatch):
  monkeypatch.setattr(fileio, "is_remote", lambda path: True)
  log = metrics_log.MetricsLog(str(tmp_path))
  for step in (10, 20, 30):
    log.write(step, {"loss": float(step)})
  resumed = metrics_log.MetricsLog(str(tmp_path), resume_step=20)
  resumed.write(30, {"loss": 3.0})
  rows = metrics_log.read_jsonl(str(tmp_path / "metrics.jsonl"))
  assert [(r["step"], r["loss"]) for r in rows] == [(10, 10.0), (20, 20.0), (30, 3.0)]
