"""The local backend end to end: a two-run tiny sweep, skip, report, plot."""

import csv
import json
import os
import statistics
import subprocess
import sys

from launch import spec

REPO = spec.REPO


def _sweep(*args):
  return subprocess.run([sys.executable, "-m", "launch.sweep", *args], cwd=REPO,
                        capture_output=True, text=True, timeout=400)


def test_two_run_tiny_sweep_skips_reports_and_plots(tmp_path):
  sweep_file = tmp_path / "tiny_seeds.py"
  sweep_file.write_text(
      "from launch.spec import Sweep, grid\n"
      "def get_sweep():\n"
      "  return Sweep('configs/demo.py:tiny', grid(**{'train.steps': [10],\n"
      "                                               'train.seed': [0, 1]}))\n")
  root = tmp_path / "root"
  args = [f"--sweep={sweep_file}", f"--root={root}"]
  first = _sweep(*args, "--parallel=2")
  assert first.returncode == 0, first.stderr[-3000:]
  names = ["train.steps=10,train.seed=0", "train.steps=10,train.seed=1"]
  assert sorted(os.listdir(root)) == names
  finals = []
  for name in names:
    workdir = root / name
    rows = [json.loads(l) for l in open(workdir / "metrics.jsonl")]
    assert [r["step"] for r in rows] == [5, 10]
    assert os.path.isdir(workdir / "checkpoints" / "10")
    assert "cvlg_jax.main" in open(workdir / "train.log").read()
    finals.append(rows[-1])
  assert json.load(open(root / names[1] / "config.json"))["train"]["seed"] == 1
  assert finals[0]["loss"] != finals[1]["loss"]  # the seeds really differ

  again = _sweep(*args, "--dry_run")
  assert again.returncode == 0, again.stderr[-3000:]
  assert [l for l in again.stdout.splitlines() if not l.startswith("# sweep")] == [
      f"# finished, skipping: {n}" for n in names]

  rep = _sweep(*args, "--report")
  assert rep.returncode == 0, rep.stderr[-3000:]
  rows = list(csv.DictReader(open(root / "report.csv")))
  assert [r["run"] for r in rows] == names
  assert [r["status"] for r in rows] == ["finished", "finished"]
  assert [float(r["loss"]) for r in rows] == [f["loss"] for f in finals]
  table = open(root / "report.md").read()
  assert table in rep.stdout.replace("\r", "") or table.splitlines()[0] in rep.stdout
  header, _, line = table.splitlines()[:3]
  cells = [c.strip() for c in line.strip("|").split("|")]
  columns = [c.strip() for c in header.strip("|").split("|")]
  assert columns[:3] == ["train.steps", "seeds", "loss"]
  assert "synthetic/zeroshot_top1" in columns
  assert cells[:2] == ["10", "2/2"]
  for key in ("loss", "synthetic/zeroshot_top1"):
    values = [f[key] for f in finals]
    assert cells[columns.index(key)] == (
        f"{statistics.fmean(values):.4f} ± {statistics.stdev(values):.4f}")

  out = tmp_path / "curves.png"
  plot = subprocess.run([sys.executable, "-m", "launch.plot",
                         *(str(root / n) for n in names), f"--out={out}"],
                        cwd=REPO, capture_output=True, text=True, timeout=120)
  assert plot.returncode == 0, plot.stderr[-3000:]
  data = out.read_bytes()
  assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
