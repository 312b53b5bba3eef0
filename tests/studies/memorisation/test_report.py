"""The memorisation study: sweep stages, the config's schedules, and the
report hook on hand-written runs with known curves."""

from __future__ import annotations

import json
import os

import pytest

from cvlg_jax import config as config_lib
from studies.memorisation import report as mr
from launch import report, spec
from cvlg_jax.step.plan import make_plan

SWEEP = os.path.join(spec.REPO, "studies/memorisation/sweep.py")


def _runs(root, arg=""):
  return spec.expand(spec.load_sweep(SWEEP + (f":{arg}" if arg else "")), root,
                     config_lib.validate)


def test_sweep_stages_share_runs_and_schedules_reach_the_config(tmp_path):
  root = str(tmp_path)
  select, main = _runs(root, "stage=select"), _runs(root)
  assert len(select) == 6 and len(main) == 36 + 2
  methods = {mr.method_of(r.overrides, r.steps) for r in select}
  assert methods == {mr.Method("clip", None), mr.Method("self", "paper"),
                     *(mr.Method(t, s) for t in ("ema", "bank")
                       for s in ("paper", "early"))}
  # The main grid's runs of the chosen schedules are the selection's runs
  # (same workdir), so the second stage does not redo them.
  # The main stage also holds the two schedules not chosen (so its report
  # shows the selection): every selection run is a main-stage run.
  shared = {r.workdir for r in select} & {r.workdir for r in main}
  assert len(shared) == 6
  grid = _runs(root, "noises=0.0+0.2")  # no selection runs without noise 0.4
  assert len(grid) == 24
  bank = next(r for r in main if r.overrides.get("loss.psd.teacher") == "bank")
  cfg = spec.apply_overrides(spec.load_config("configs/memorisation.py"),
                             bank.overrides)
  assert (cfg.loss.psd.alpha_final, cfg.loss.psd.subset_fraction,
          cfg.loss.psd.ramp_fraction, cfg.loss.psd.ramp_steps) == (0.8, 1.0, 0.25, -1)
  assert make_plan(cfg, 8).ramp_steps == 200  # a quarter of 800, at the start
  assert cfg.data.num_train == 2048 and cfg.data.num_heldout == 256
  # The EMA's horizon is one epoch, resolved when the run starts.
  assert cfg.train.steps == 800 and cfg.loss.psd.ema_horizon_epochs == 1.0
  assert make_plan(cfg, 8).ema_decay == 1 - 1 / 16
  assert set(cfg.eval) == {"synthetic", "memorisation", "heldout", "probe"}
  assert len(_runs(root, "seeds=1,noises=0.4")) == 4 + 2
  with pytest.raises(ValueError, match="schedule='fast'"):
    spec.load_config("configs/memorisation.py:schedule=fast")
  with pytest.raises(ValueError, match="stage='both'"):
    spec.load_sweep(SWEEP + ":stage=both")


def _write_run(run, zs_curve, mem_curve, heldout_final):
  os.makedirs(run.workdir)
  with open(os.path.join(run.workdir, "metrics.jsonl"), "w") as f:
    for i, step in enumerate(range(50, run.steps + 1, 50)):
      f.write(json.dumps({"step": step, "loss": 1.0,
                          "synthetic/zeroshot_top1": zs_curve(i),
                          "synthetic/i2t_R@1": zs_curve(i) / 2,
                          "synthetic/t2i_R@1": zs_curve(i) / 2,
                          "memorisation/memorised": mem_curve(i),
                          "heldout/mean_top1": heldout_final}) + "\n")
  with open(os.path.join(run.workdir, "config.json"), "w") as f:
    json.dump({"data": {"source": "synthetic"}}, f)


def _fake_study(root):
  """CLIP peaks at 0.30 (evaluation 4) and falls to 0.20; each PSD teacher
  adds a per-method offset and memorises less; seeds shift CLIP by
  0.01 (seed - 1). Selection: ``early`` beats ``paper`` on held-out pairs."""
  runs = {r.workdir: r for r in _runs(root, "stage=select") + _runs(root)}
  offset = {"clip": 0.0, "self": 0.0, "ema": 0.02, "bank": 0.05}
  for run in runs.values():
    m = mr.method_of(run.overrides, run.steps)
    seed = run.overrides["train.seed"]
    shift = offset[m.name] + (0.01 * (seed - 1) if m.name == "clip" else 0)
    peak = lambda i, s=shift: (0.30 - 0.02 * abs(i - 4) * (i > 4) - 0.05 * (i < 4)
                               + s)
    mem = lambda i, n=m.name: min(1.0, 0.1 * i) * (0.5 if n == "bank" else 1.0)
    _write_run(run, peak, mem, 0.10 if m.schedule in (None, "early") else 0.05)
  return list(runs.values())


def test_report_has_final_best_gaps_and_the_selection(tmp_path):
  root = str(tmp_path / "root")
  runs = _fake_study(root)
  paths = mr.write(report.collect(runs), root)
  assert [os.path.basename(p) for p in paths] == [
      "memorisation.md", "headline.md", "memorisation_curves.png"]
  md = open(paths[0]).read()
  # 16 evaluations: CLIP's final = 0.30 - 0.02 x 11 = 0.08 (+ seed shift);
  # best = 0.30 at evaluation 4; seeds -0.01, 0, +0.01 -> ± 1.0.
  assert ("| CLIP | 3/3 | 8.0 ± 1.0 | 30.0 ± 1.0 | 4.0 ± 0.5 | 15.0 ± 0.5 | "
          "4.0 ± 0.5 | 15.0 ± 0.5 | 100.0 ± 0.0 | 10.0 ± 0.0 |") in md
  assert "| PSD, bank teacher | 3/3 | 13.0 ± 0.0 | 35.0 ± 0.0 |" in md
  # Paired by seed: bank - CLIP = 0.05 - 0.01 (seed - 1) -> +5.0 ± 1.0; the
  # bank memorises half as much at the end (50 % vs 100 %).
  assert ("| PSD, bank teacher − CLIP | paired | +5.0 ± 1.0 | +5.0 ± 1.0 | "
          "+2.5 ± 0.5 | +2.5 ± 0.5 | +2.5 ± 0.5 | +2.5 ± 0.5 | -50.0 ± 0.0 | "
          "+0.0 ± 0.0 |") in md
  assert md.count("#### Caption noise") == 3
  # Selection: the early schedule wins for ema and bank (held-out 10 vs 5).
  assert "| PSD, bank teacher | early | 10.0 | 10.0 | 13.0 | ← chosen |" in md
  assert "| PSD, bank teacher | paper | 5.0 | 5.0 | 13.0 |  |" in md
  assert "PSD, EMA teacher: `early`, PSD, bank teacher: `early`" in md
  head = open(paths[1]).read()
  assert ("| PSD, bank teacher | 13.0 / 35.0, 50 % | 13.0 / 35.0, 50 % | "
          "13.0 / 35.0, 50 % |") in head


def test_report_without_finished_runs_says_pending(tmp_path):
  paths = mr.write(report.collect(_runs(str(tmp_path))), str(tmp_path))
  assert len(paths) == 2
  assert "results pending" in open(paths[0]).read()


def test_report_of_a_clip_and_bank_grid_has_no_other_teachers(tmp_path):
  root = str(tmp_path / "root")
  runs = [r for r in _fake_study(root)
          if mr.method_of(r.overrides).name in ("clip", "bank")]
  paths = mr.write(report.collect(runs), root)
  md, head = open(paths[0]).read(), open(paths[1]).read()
  assert "EMA" not in md and "self" not in md and "EMA" not in head
  assert [line.split(" |")[0] for line in head.splitlines()[2:]] == [
      "| CLIP", "| PSD, bank teacher"]
