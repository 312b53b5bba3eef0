"""``python -m cvlg_jax.main`` end to end: metrics, checkpoints, resume, and a
bad config refused before compiling."""

import json
import os
import subprocess
import sys

import numpy as np


from main_runner import REPO




def _run_main(workdir, *flags):
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
             JAX_PLATFORMS="cpu")
  return subprocess.run(
      [sys.executable, "-m", "cvlg_jax.main", "--config=configs/demo.py:tiny",
       f"--workdir={workdir}", *flags],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def test_main_writes_metrics_and_checkpoints_then_resumes(tmp_path):
  workdir = tmp_path / "run"
  first = _run_main(workdir, "--config.train.steps=10")
  assert first.returncode == 0, first.stderr[-3000:]
  rows = [json.loads(l) for l in open(workdir / "metrics.jsonl")]
  assert [r["step"] for r in rows] == [5, 10]
  assert all(np.isfinite(r["loss"]) for r in rows)
  assert "synthetic/zeroshot_top1" in rows[-1]
  assert sorted(os.listdir(workdir / "checkpoints")) == ["10"]
  assert json.load(open(workdir / "config.json"))["train"]["steps"] == 10
  assert "versions" in json.load(open(workdir / "run_info.json"))
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(workdir))

  second = _run_main(workdir, "--config.train.steps=20")
  assert second.returncode == 0, second.stderr[-3000:]
  assert "Resumed from checkpoint at step 10" in second.stderr
  rows = [json.loads(l) for l in open(workdir / "metrics.jsonl")]
  assert [r["step"] for r in rows] == [5, 10, 15, 20]
  assert "20" in os.listdir(workdir / "checkpoints")


def test_main_rejects_bad_config_before_compiling(tmp_path):
  out = _run_main(tmp_path / "bad", "--config.loss.psd.alpha_final=1.5")
  assert out.returncode != 0
  assert "config.loss.psd.alpha_final=1.5 must be in [0.0, 1.0]" in out.stderr
