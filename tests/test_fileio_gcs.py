"""Workdirs and sweep roots on an object store: every listing, existence
check, read and write that cvlg_jax and launch/ make there, run against an
in-memory GCS (tests/fake_gcs.py) through the same epath calls as on
``gs://``. (Orbax's array files and TensorBoard's event files use their own
GCS clients and are not covered here.)"""

import json
import os

import pytest
from etils import epath

from cvlg_jax.cli import evaluate
from cvlg_jax import fileio
from cvlg_jax.run import metrics_log, record
from launch import plot
from cvlg_jax.step import sharding
from cvlg_jax.config import base_config
from fake_gcs import FakeGcs
from launch import local, report, spec
from studies.noise_robustness import report as robustness_report

RUN = "gs://bucket/runs/r"


@pytest.fixture
def gcs(tmp_path, monkeypatch):
  """The fake store; the test runs in an empty folder, so anything written
  to a literal local ``gs:`` path instead is caught."""
  monkeypatch.chdir(tmp_path)
  with FakeGcs().installed(monkeypatch) as store:
    yield store
  assert not os.path.exists(tmp_path / "gs:"), "wrote to a local 'gs:' folder"


def test_fileio_on_an_object_store(gcs):
  fileio.write_text_atomic(f"{RUN}/a.txt", "1\n")
  fileio.append_text(f"{RUN}/a.txt", "2\n")  # rewritten: no appends there
  fileio.write_file(f"{RUN}/sub/f.bin", b"\x00\x01")
  fileio.makedirs(f"{RUN}/empty")
  assert fileio.read_text(f"{RUN}/a.txt") == "1\n2\n"
  assert fileio.read_bytes(f"{RUN}/sub/f.bin") == b"\x00\x01"
  assert fileio.listdir(RUN) == ["a.txt", "empty", "sub"]
  assert fileio.listdir(f"{RUN}/nothing") == []
  assert fileio.isdir(f"{RUN}/sub") and not fileio.isdir(f"{RUN}/a.txt")
  assert fileio.exists(f"{RUN}/a.txt") and not fileio.exists(f"{RUN}/a.txt.tmp")
  fileio.rename(f"{RUN}/sub", f"{RUN}/moved")
  assert fileio.listdir(f"{RUN}/moved") == ["f.bin"] and not fileio.exists(f"{RUN}/sub")
  with pytest.raises(OSError, match="cannot append"):  # the fake is strict
    epath.Path(f"{RUN}/a.txt").open("a")


def test_metrics_log_and_run_record_on_an_object_store(gcs):
  log = metrics_log.MetricsLog(RUN)
  for step in (10, 20, 30):
    log.write(step, {"loss": float(step)})
  metrics_log.MetricsLog(RUN, resume_step=20).write(30, {"loss": 3.0})
  assert [(r["step"], r["loss"]) for r in plot.read_metrics(RUN)] == [
      (10, 10.0), (20, 20.0), (30, 3.0)]
  config = base_config()
  record.write(config, RUN, sharding.make_mesh(config.mesh))
  assert plot.read_config(RUN)["train"]["steps"] == config.train.steps
  assert json.loads(fileio.read_text(f"{RUN}/run_info.json"))["process_count"] == 1


def _checkpoint(step, name=None, workdir=RUN):
  fileio.write_file(f"{workdir}/checkpoints/{name or step}/state/_METADATA", "{}")


def test_evaluate_finds_the_newest_committed_checkpoint_and_writes_its_report(gcs):
  for step in (5, 10):
    _checkpoint(step)
  _checkpoint(15, "15.orbax-checkpoint-tmp-1712")  # a save cut short
  _checkpoint(20, "unreadable/20-20240101")
  assert evaluate.find_checkpoint(RUN, None) == (f"{RUN}/checkpoints/10", 10)
  assert evaluate.find_checkpoint(RUN, f"{RUN}/checkpoints/5/") == (
      f"{RUN}/checkpoints/5", 5)
  with pytest.raises(FileNotFoundError, match="not a checkpoint step directory"):
    evaluate.find_checkpoint(RUN, f"{RUN}/checkpoints/7")
  with pytest.raises(FileNotFoundError, match="no committed checkpoint"):
    evaluate.find_checkpoint("gs://bucket/runs/none", None)
  report = dict(step=10, checkpoint=f"{RUN}/checkpoints/10",
                results={"synthetic": {"zeroshot_top1": 0.5}}, skipped={})
  assert evaluate.write_report(RUN, report) == f"{RUN}/eval/10.json"
  assert plot.read_eval(RUN) == (10, {"synthetic/zeroshot_top1": 0.5})


def test_sweep_root_on_an_object_store(gcs, tmp_path):
  root = "gs://bucket/sweeps/s"
  runs = [spec.Run(i, f"train.seed={i}", {"train.seed": i},
                   spec.join(root, f"train.seed={i}"), 10) for i in range(2)]
  for run, last in zip(runs, (10, 5)):  # one finished, one cut short
    log = metrics_log.MetricsLog(run.workdir)
    for step in range(5, last + 1, 5):
      log.write(step, {"loss": 1.0 / step})
    _checkpoint(last, workdir=run.workdir)
  assert [local.is_finished(r) for r in runs] == [True, False]
  csv_path, md_path, _ = report.write(root, runs)
  assert (csv_path, md_path) == (f"{root}/report.csv", f"{root}/report.md")
  assert "finished" in fileio.read_text(csv_path) and "partial" in fileio.read_text(csv_path)

  # The local backend streams a remote run's output into a local file, then
  # appends it to WORKDIR/train.log on the store.
  staged = local.log_path(runs[1])
  assert not fileio.is_remote(staged)
  os.makedirs(os.path.dirname(staged), exist_ok=True)
  with open(staged, "a") as f:
    f.write("step 10/10\n")
  where, tail = local._finish(runs[1], open(staged, "a"))
  assert where == f"{runs[1].workdir}/train.log" and tail == "step 10/10\n"
  assert fileio.read_text(where) == "step 10/10\n" and not os.path.exists(staged)

  # Sweep-report hooks: robustness.md and figures under the root, then
  # published into a local doc.
  fileio.write_file(f"{root}/robustness.md", "table ![fig](accuracy_vs_noise.png)\n")
  fileio.write_file(f"{root}/accuracy_vs_noise.png", b"\x89PNG")
  doc = tmp_path / "docs" / "robustness.md"
  doc.parent.mkdir()
  doc.write_text("<!-- results:x:begin -->\n<!-- results:x:end -->\n")
  robustness_report.publish(root, str(doc), "x")
  assert "robustness/x/accuracy_vs_noise.png" in doc.read_text()
  assert (tmp_path / "docs" / "robustness" / "x" / "accuracy_vs_noise.png").read_bytes() \
      == b"\x89PNG"


def test_effective_robustness_report_on_an_object_store(gcs):
  from cvlg_jax.evaluation import robustness
  out = "gs://bucket/er"
  fileio.write_file(f"{out}/mine.csv", "name,in_dist_acc,shift_acc\nmine,0.5,0.3\n")
  points = robustness.load_points(f"{out}/mine.csv")
  baselines = robustness.load_points(robustness.DEFAULT_BASELINES)
  rows = robustness.report(points, baselines, out)
  assert rows[0]["name"] == "mine"
  assert fileio.listdir(out) == ["mine.csv", "robustness.json", "robustness.md",
                                 "robustness.png"]
  assert fileio.read_bytes(f"{out}/robustness.png")[:4] == b"\x89PNG"
