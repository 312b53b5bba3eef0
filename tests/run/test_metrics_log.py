"""metrics.jsonl after a resume: rows past the resume step are dropped."""

from cvlg_jax import fileio
from cvlg_jax.run import metrics_log


def test_metrics_log_drops_rows_after_resume_step(tmp_path, monkeypatch):
  monkeypatch.setattr(fileio, "is_remote", lambda path: True)
  log = metrics_log.MetricsLog(str(tmp_path))
  for step in (10, 20, 30):
    log.write(step, {"loss": float(step)})
  resumed = metrics_log.MetricsLog(str(tmp_path), resume_step=20)
  resumed.write(30, {"loss": 3.0})
  rows = metrics_log.read_jsonl(str(tmp_path / "metrics.jsonl"))
  assert [(r["step"], r["loss"]) for r in rows] == [(10, 10.0), (20, 20.0), (30, 3.0)]
