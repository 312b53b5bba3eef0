"""The local backend: dry runs print runnable commands and skip finished
runs; k runs at a time, failures reported."""

import json
import os
import shlex
import sys


from launch import local, spec
from launch.spec import Sweep, grid

REPO = spec.REPO


def test_local_dry_run_prints_runnable_commands_and_skips_finished(tmp_path):
  runs = spec.expand(Sweep("configs/demo.py:tiny", grid(**{
      "train.seed": [0, 1]})), str(tmp_path / "root"))
  finished = runs[0]  # fake a finished run: last step logged + checkpointed
  os.makedirs(os.path.join(finished.workdir, "checkpoints", "20"))
  with open(os.path.join(finished.workdir, "metrics.jsonl"), "w") as f:
    f.write(json.dumps({"step": 20, "loss": 1.0}) + "\n")
  import io
  buf = io.StringIO()
  assert local.launch("configs/demo.py:tiny", runs, dry_run=True, out=buf) == []
  lines = buf.getvalue().splitlines()
  assert lines[0] == f"# finished, skipping: {finished.name}"
  assert len(lines) == 2
  argv = shlex.split(lines[1])
  log = os.path.join(runs[1].workdir, "train.log")
  assert argv[:5] == ["mkdir", "-p", runs[1].workdir, "&&", "cd"]
  assert argv[5:7] == [REPO, "&&"]
  assert argv[7:] == [sys.executable, "-m", "cvlg_jax.main",
                      "--config=configs/demo.py:tiny",
                      f"--workdir={runs[1].workdir}", "--config.train.seed=1",
                      ">>", log, "2>&1"]
  assert not os.path.exists(runs[1].workdir)  # a dry run creates nothing


def test_local_backend_runs_k_at_a_time_and_reports_failures(tmp_path, monkeypatch):
  """Stand-in trainers: run #1 fails, the others write a finished run. All
  three start (the failure stops nothing), at most 2 at once, logs kept."""
  runs = spec.expand(Sweep("configs/demo.py:tiny", grid(**{
      "train.seed": [0, 1, 2]})), str(tmp_path))
  script = (
      "import json, os, sys, time\n"
      "w = sys.argv[1]\n"
      "open(os.path.join(os.path.dirname(w), 'starts'), 'a').write(f'{time.time()} +\\n')\n"
      "time.sleep(0.5)\n"
      "open(os.path.join(os.path.dirname(w), 'starts'), 'a').write(f'{time.time()} -\\n')\n"
      "if w.endswith('seed=1'):\n"
      "  print('boom'); sys.exit(3)\n"
      "os.makedirs(os.path.join(w, 'checkpoints', '20'))\n"
      "open(os.path.join(w, 'metrics.jsonl'), 'w').write(json.dumps({'step': 20}) + '\\n')\n")
  monkeypatch.setattr(local, "command", lambda config, run: [
      sys.executable, "-c", script, run.workdir])
  failed = local.launch("configs/demo.py:tiny", runs, parallel=2, progress=False)
  assert failed == [runs[1].name]
  assert "boom" in open(os.path.join(runs[1].workdir, "train.log")).read()
  assert [local.is_finished(r) for r in runs] == [True, False, True]
  events = sorted(l.split() for l in open(tmp_path / "starts"))
  running = peak = 0
  for _, kind in events:
    running += 1 if kind == "+" else -1
    peak = max(peak, running)
  assert peak == 2 and len(events) == 6
