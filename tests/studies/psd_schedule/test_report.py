"""The schedule study: its stages reach the config as intended, and the
report's tables and default-rule verdict on hand-written runs."""

from __future__ import annotations

import json
import os

import pytest

from cvlg_jax import config as config_lib
from cvlg_jax.step.plan import make_plan
from launch import report, spec
from studies.memorisation import report as mr
from studies.psd_schedule import report as pr

SWEEP = os.path.join(spec.REPO, "studies/psd_schedule/sweep.py")


def _runs(root, arg=""):
  return spec.expand(spec.load_sweep(SWEEP + (f":{arg}" if arg else "")), root,
                     config_lib.validate)


def _config(run):
  return spec.apply_overrides(spec.load_config("configs/memorisation.py"),
                              run.overrides)


def test_stages_cover_lengths_sizes_and_many_to_many(tmp_path):
  root = str(tmp_path)
  length = _runs(root)
  # 3 seeds x noise {0, 0.4} x (CLIP + 4 schedules at 4 epochs, 3 at 10 and
  # 25 epochs, where 'guarded' is 'early', 2 at 50, where 'epochs' is too).
  assert len(length) == 3 * 2 * (5 + 4 + 4 + 3)  # by_length: always shared
  assert {r.steps for r in length} == {64, 160, 400, 800}  # 16 steps / epoch
  methods = {mr.method_of(r.overrides) for r in length}
  assert methods == {mr.Method("clip", None), *(mr.Method("bank", s) for s in (
      "paper", "early", "epochs", "guarded"))}  # by_length is epochs or early
  assert {mr.method_of(r.overrides).schedule for r in length
          if r.steps == 800} == {None, "paper", "early"}
  four = next(r for r in length if r.steps == 64
              and mr.method_of(r.overrides).schedule == "epochs")
  plan = make_plan(_config(four), 8)
  # The epoch ramp outlasts a 4-epoch run; warm-up is 7.5 % of every run.
  assert (plan.ramp_steps, plan.warmup_steps) == (200, 5)
  scale = _runs(root, "stage=scale")
  assert len(scale) == 3 * 3 * 4  # 'guarded' is 'early' at 30 epochs
  big = next(r for r in scale if r.overrides["data.num_train"] == 8192)
  assert big.steps == 30 * 8192 // 128
  assert make_plan(_config(big), 8).steps_per_epoch == 64
  m2m = _runs(root, "stage=m2m,seeds=1")
  assert len(m2m) == 2 * 3 and {r.steps for r in m2m} == {800}
  assert {_config(r).data.noise_kinds for r in m2m} == {"partial"}
  digits = spec.expand(spec.load_sweep(  # not validated: no folder here
      SWEEP + ":dataset=folder:/tmp/d,flip=0,per_epoch=7,noises=0.4,seeds=1,"
      "lengths=4+50"), root)
  assert sorted({r.steps for r in digits}) == [28, 350]
  assert len(digits) == 5 + 3
  with pytest.raises(ValueError, match="needs per_epoch"):
    spec.load_sweep(SWEEP + ":dataset=folder:/tmp/d")
  with pytest.raises(ValueError, match="stage='all'"):
    spec.load_sweep(SWEEP + ":stage=all")


def _write(run, heldout, zeroshot, probe=0.5):
  """A finished run: evaluations every 50 steps and at the end, each at the
  given final values (best = final + 0.01, at the first evaluation)."""
  os.makedirs(run.workdir)
  steps = sorted({*range(50, run.steps, 50), run.steps})
  with open(os.path.join(run.workdir, "metrics.jsonl"), "w") as f:
    for i, step in enumerate(steps):
      bump = 0.01 if i == 0 and len(steps) > 1 else 0.0
      f.write(json.dumps({"step": step, "loss": 1.0,
                          "synthetic/zeroshot_top1": zeroshot + bump,
                          "synthetic/i2t_R@1": zeroshot / 2,
                          "heldout/mean_top1": heldout,
                          "probe/top1": probe + bump,
                          "memorisation/memorised": 0.5}) + "\n")
  with open(os.path.join(run.workdir, "config.json"), "w") as f:
    json.dump({"data": {"source": "synthetic"}}, f)
  with open(os.path.join(run.workdir, "run_info.json"), "w") as f:
    per_epoch = run.overrides.get("data.num_train", 2048) // 128
    json.dump({"resolved": {"steps_per_epoch": per_epoch}}, f)


def test_report_tables_and_the_verdict_of_the_default_rule(tmp_path):
  """CLIP scores 0.20 held-out / 0.30 zero-shot at every length (+0.01 x
  seed). ``early`` is +0.05 on both but -0.04 at 4 epochs (it fails the
  rule there); ``epochs`` is +0.045 everywhere and ``guarded`` +0.046 at 4
  epochs and ``early`` (the same run) at 25: both pass; ``paper`` +0.01 is
  more than a point short of the best."""
  root = str(tmp_path)
  runs = _runs(root, "noises=0.4,lengths=4+25")
  assert len(runs) == 3 * (5 + 4)
  gain = {None: 0.0, "paper": 0.01, "epochs": 0.045, "guarded": 0.046}
  for run in runs:
    m = mr.method_of(run.overrides)
    seed = run.overrides["train.seed"]
    g = gain.get(m.schedule, 0.05 if run.steps > 64 else -0.04)
    _write(run, 0.20 + 0.01 * seed + g, 0.30 + 0.01 * seed + g)
  md = pr.render(report.collect(runs))
  assert "27/27 runs finished" in md
  assert "#### Run length, caption noise 0.4" in md
  assert ("`by_length` is `early` at 25 epochs; `by_length` is `epochs` at 4 "
          "epochs; `guarded` is `early` at 25 epochs") in md
  # CLIP at 4 epochs: 2 evaluations (step 50 and 64), best = final + 1 pt.
  assert ("| 4 | CLIP | 3 | 21.0 ± 1.0 | 31.0 ± 1.0 | 32.0 ± 1.0 | 50.0 ± 0.0 "
          "| 51.0 ± 0.0 |") in md
  assert "|  | − CLIP | paired | -4.0 ± 0.0 | -4.0 ± 0.0 |" in md
  assert "| 25 | PSD bank, `epochs` | 3 | 25.5 ± 1.0 |" in md
  assert "| 25 | PSD bank, `guarded` | 3 | 26.0 ± 1.0 |" in md
  # Verdict rows: held-out / zero-shot gaps, shortfall to the best schedule.
  assert ("| 4 | +1.0 / +1.0, 3.6 ✗ | -4.0 / -4.0, 8.6 ✗ | "
          "+4.5 / +4.5, 0.1 ✓ | +4.6 / +4.6, 0.0 ✓ | +4.5 / +4.5, 0.1 ✓ |") in md
  assert ("| 25 | +1.0 / +1.0, 4.0 ✗ | +5.0 / +5.0, 0.0 ✓ | "
          "+4.5 / +4.5, 0.5 ✓ | +5.0 / +5.0, 0.0 ✓ | +5.0 / +5.0, 0.0 ✓ |") in md
  assert ("Schedules meeting it at every length: `epochs`, `guarded`, "
          "`by_length`. Within 1 point of the best held-out score at every "
          "length: `epochs`, `guarded`, `by_length`.") in md
  paths = pr.write(report.collect(runs), root)
  assert [os.path.basename(p) for p in paths] == [pr.REPORT, pr.FIGURE]
  assert open(paths[1], "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_report_of_scale_and_many_to_many_runs(tmp_path):
  root = str(tmp_path)
  runs = (_runs(root, "stage=scale,seeds=1,sizes=512+2048")
          + _runs(root, "stage=m2m,seeds=1,noises=0.4"))
  for run in runs:
    m = mr.method_of(run.overrides)
    _write(run, 0.2, 0.3 + (0.02 if m.name == "bank" else 0))
  md = pr.render(report.collect(runs))
  assert "#### Data scale (caption noise 0.4, 30 epochs)" in md
  assert "| 512 | CLIP | 1 |" in md and "| 2048 | PSD bank, `early` | 1 |" in md
  assert "#### Many-to-many captions (noise kinds `partial`)" in md
  # Each size: 5 schedules (guarded and by_length share early's run); m2m
  # at 50 epochs: epochs, guarded and by_length share early's.
  assert md.count("|  | − CLIP | paired | +0.0 | +2.0 |") == 5 * 2 + 5
  assert f"]({pr.SCALE_FIGURE})" in md
  paths = pr.write(report.collect(runs), root)
  assert [os.path.basename(p) for p in paths] == [pr.REPORT, pr.SCALE_FIGURE]
  assert open(paths[1], "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_report_without_finished_runs_says_pending(tmp_path):
  md = pr.render(report.collect(_runs(str(tmp_path), "seeds=1")))
  assert "results pending" in md


def test_schedules_key_runs_clip_against_the_named_schedules_only(tmp_path):
  """``schedules=by_length``: CLIP and the default, no other schedule's
  runs, and the report counts the default's runs for it alone (not also as
  ``early``, which it is at 30 epochs)."""
  root = str(tmp_path)
  runs = _runs(root, "stage=scale,seeds=1,sizes=512,schedules=by_length")
  assert [mr.method_of(r.overrides).schedule for r in runs] == [None,
                                                                "by_length"]
  for run in runs:
    bank = mr.method_of(run.overrides).name == "bank"
    _write(run, 0.2, 0.3 + (0.02 if bank else 0))
  sweep = spec.load_sweep(SWEEP + ":stage=scale,seeds=1,sizes=512,"
                          "schedules=by_length")
  sweep.report(report.collect(runs), root)
  md = open(os.path.join(root, pr.REPORT)).read()
  assert "| 512 | PSD bank, `by_length` | 1 |" in md
  assert "`early`" not in md and "Shared runs" not in md
  assert md.count("|  | − CLIP | paired |") == 1
  # The full sweep's report still counts the shared run for every schedule.
  assert "| 512 | PSD bank, `early` | 1 |" in pr.render(report.collect(runs))
  with pytest.raises(ValueError, match=r"schedules \['fast'\] unknown"):
    spec.load_sweep(SWEEP + ":schedules=fast")


def test_report_entry_point_splices_the_report_and_figure(tmp_path):
  """``python -m studies.psd_schedule.report`` (the shared ``rr.cli``)."""
  import subprocess
  import sys
  root = str(tmp_path / "runs")
  runs = _runs(root, "noises=0.4,lengths=4+25,seeds=1")
  for run in runs:
    _write(run, 0.2, 0.3)
  pr.write(report.collect(runs), root)
  doc = tmp_path / "docs" / "robustness.md"
  doc.parent.mkdir()
  doc.write_text("# R\n<!-- results:length_0:begin -->\nold\n"
                 "<!-- results:length_0:end -->\ntail\n")
  out = subprocess.run(
      [sys.executable, "-m", "studies.psd_schedule.report", f"--root={root}",
       f"--doc={doc}", "--section=length_0"], cwd=spec.REPO,
      capture_output=True, text=True, check=True).stdout
  assert f"updated {doc}" in out
  text = doc.read_text()
  assert "old" not in text and text.endswith("tail\n")
  assert "#### Run length, caption noise 0.4" in text
  assert f"](robustness/length_0/{pr.FIGURE})" in text
  assert (doc.parent / "robustness" / "length_0" / pr.FIGURE).is_file()
