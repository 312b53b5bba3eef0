"""The noise-robustness study: sweep expansion, class-caption data with label
noise in a run, the report hook on hand-written runs, and a tiny real-data
run (the class-caption source itself: test_data_class_captions.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from cvlg_jax import config as config_lib
from cvlg_jax.data.class_captions import ClassCaptions
from launch import report, spec, sweep as sweep_cli
from studies.noise_robustness import report as robustness_report

SWEEP = "studies/noise_robustness/sweep.py"
REPO = spec.REPO
KNOBS = {("loss.psd.subset_fraction", 0.25), ("loss.psd.subset_fraction", 1.0),
         ("loss.psd.alpha_final", 0.8), ("loss.psd.teacher", "ema"),
         ("loss.psd.teacher_temperature", 0.5)}


def _sweep_path(arg=""):
  return os.path.join(REPO, SWEEP) + (f":{arg}" if arg else "")


# ------------------------------------------------------------------ sweep ---

def test_sweep_is_the_study_grid_plus_ablations(tmp_path):
  sweep = spec.load_sweep(_sweep_path())
  runs = spec.expand(sweep, str(tmp_path), config_lib.validate)
  assert sweep.config == "configs/robustness.py"
  assert sweep.report is robustness_report.write
  assert len(runs) == 33 and len({r.name for r in runs}) == 33
  main = [r.overrides for r in runs if set(r.overrides) ==
          {"loss.name", "data.caption_noise", "train.seed"}]
  assert sorted((o["loss.name"], o["data.caption_noise"], o["train.seed"])
                for o in main) == [(l, n, s) for l in ("clip", "psd")
                                   for n in (0.0, 0.2, 0.4) for s in (0, 1, 2)]
  ablations = [r for r in runs if len(r.overrides) == 4]
  assert len(ablations) == 15
  seen = {}
  for r in ablations:
    o = dict(r.overrides)
    assert (o.pop("loss.name"), o.pop("data.caption_noise")) == ("psd", 0.4)
    seed = o.pop("train.seed")
    (knob,) = o.items()
    seen.setdefault(knob, set()).add(seed)
  assert seen == {k: {0, 1, 2} for k in KNOBS}
  # The knob really reaches the run's config.
  r = next(r for r in ablations if r.overrides.get("loss.psd.teacher") == "ema")
  cfg = spec.apply_overrides(spec.load_config(sweep.config), r.overrides)
  assert cfg.loss.psd.teacher == "ema" and cfg.loss.name == "psd"
  assert cfg.data.source == "synthetic" and r.steps == cfg.train.steps == 600
  assert r.workdir == os.path.join(str(tmp_path), r.name)


def test_sweep_argument_selects_real_data_and_its_own_root(tmp_path):
  arg = "dataset=cifar10,tiny"
  sweep = spec.load_sweep(_sweep_path(arg))
  assert sweep.config == f"configs/robustness.py:{arg}"
  runs = spec.expand(sweep, str(tmp_path), config_lib.validate)
  assert len(runs) == 33
  cfg = spec.apply_overrides(spec.load_config(sweep.config), runs[0].overrides)
  assert cfg.data.source == "tfds_class_captions" and cfg.data.tfds_name == "cifar10"
  assert cfg.data.tfds_split == "train"
  assert cfg.eval.to_dict() == {"zeroshot": {"type": "zeroshot", "dataset": "cifar10",
                                         "data_dir": None, "max_examples": None}}
  assert sweep_cli.default_root(SWEEP) == os.path.join("runs", "noise_robustness")
  assert sweep_cli.default_root(f"{SWEEP}:{arg}") == os.path.join(
      "runs", "noise_robustness-dataset=cifar10,tiny")
  other = sweep_cli.default_root(f"{SWEEP}:dataset=cifar10,data_dir=/data/tfds")
  assert "/data" not in other[len("runs/"):] and other.startswith("runs/noise_rob")
  with pytest.raises(spec.SweepError, match="takes no argument"):
    spec.load_sweep(os.path.join(REPO, "launch/sweeps/demo_clip_vs_psd.py:x=1"))
  with pytest.raises(ValueError, match="unknown arg"):
    spec.load_config("configs/robustness.py:datset=cifar10")


def test_sweep_own_args_subset_the_study_and_are_not_passed_on(tmp_path):
  from studies.noise_robustness import sweep as study
  assert study.split_arg("seeds=2,dataset=folder:/x/y,ablations=0,flip=0") == (
      {"seeds": "2", "ablations": "0"}, "dataset=folder:/x/y,flip=0")
  assert study.split_arg(None) == ({}, "")
  sweep = spec.load_sweep(_sweep_path("seeds=2,ablations=0,dataset=folder:/d,flip=0"))
  assert sweep.config == "configs/robustness.py:dataset=folder:/d,flip=0"
  # Keys and types checked; /d need not exist for that.
  runs = spec.expand(sweep, str(tmp_path),
                     lambda c: config_lib.validate(c, paths=False))
  assert sorted((r.overrides["loss.name"], r.overrides["data.caption_noise"],
                 r.overrides["train.seed"]) for r in runs) == [
      (l, n, s) for l in ("clip", "psd") for n in (0.0, 0.2, 0.4) for s in (0, 1)]
  # Seed-major: every setting's seed 0 comes before any seed 1.
  assert [r.overrides["train.seed"] for r in runs] == [0] * 6 + [1] * 6
  cfg = spec.apply_overrides(spec.load_config(sweep.config), runs[0].overrides)
  assert cfg.data.tfds_name == "folder:/d" and cfg.data.tfds_split == "train"
  assert cfg.data.flip is False and cfg.eval.zeroshot.dataset == "folder:/d"
  assert spec.load_config("configs/robustness.py:dataset=cifar10").data.flip
  runs = spec.expand(spec.load_sweep(_sweep_path("noises=0.4,seeds=1,ablations=0,"
                                                 "steps=1500")), str(tmp_path))
  assert [(r.overrides["loss.name"], r.overrides["data.caption_noise"], r.steps)
          for r in runs] == [("clip", 0.4, 1500), ("psd", 0.4, 1500)]
  for bad in ("seeds=0", "seeds=4", "ablations=no", "noises=0.2+2"):
    with pytest.raises(ValueError, match="noise_robustness"):
      spec.load_sweep(_sweep_path(bad))


# ------------------------------------------------------------ report hook ---

def _base(loss, noise, extra):
  clip = 0.5 - 0.5 * noise                 # 0.5, 0.4, 0.3
  if loss == "clip":
    return clip
  bonus = {(): 0.0, ("loss.psd.subset_fraction", 0.25): -0.03,
           ("loss.psd.subset_fraction", 1.0): 0.02,
           ("loss.psd.alpha_final", 0.8): 0.04, ("loss.psd.teacher", "ema"): -0.01,
           ("loss.psd.teacher_temperature", 0.5): 0.05}
  return clip + 0.25 * noise + bonus[extra[0] if extra else ()]


def _fake_runs(root, steps=600):
  """Hand-written metrics.jsonl for every run of the study; seed s adds
  0.02 x (s - 1) (CLIP) or 0.03 x (1 - s) (PSD) to the zero-shot accuracy,
  so pairing by seed and pairing sorted values give different gaps. One run
  is missing (CLIP, noise 0, seed 2), one stopped at step 400 (PSD, 0.2,
  seed 2)."""
  runs = spec.expand(spec.load_sweep(_sweep_path()), root)
  for run in runs:
    o = run.overrides
    loss, noise, seed = o["loss.name"], o["data.caption_noise"], o["train.seed"]
    if (loss, noise, seed) == ("clip", 0.0, 2) and len(o) == 3:
      continue
    last = 400 if (loss, noise, seed) == ("psd", 0.2, 2) and len(o) == 3 else steps
    zs = _base(loss, noise, robustness_report._extra(o)) + (
        0.02 * (seed - 1) if loss == "clip" else 0.03 * (1 - seed))
    os.makedirs(run.workdir)
    with open(os.path.join(run.workdir, "metrics.jsonl"), "w") as f:
      for step in range(25, last + 1, 25):
        mass = 1.0 if loss == "clip" else 1.0 - 0.2 * step / steps * (1 + noise)
        row = {"step": step, "loss": 2.0, "positive_mass": mass + 0.01 * seed}
        if step % 200 == 0:  # only the last evaluation may count
          final = step == last
          row.update({"synthetic/zeroshot_top1": zs if final else 0.01,
                      "synthetic/i2t_R@1": zs - 0.1 if final else 0.01,
                      "synthetic/t2i_R@1": zs - 0.05 if final else 0.01})
        f.write(json.dumps(row) + "\n")
    if loss == "psd" and len(o) == 3:
      with open(os.path.join(run.workdir, "config.json"), "w") as f:
        json.dump({"data": {"source": "synthetic"}, "loss": {"psd": {
            "subset_fraction": 0.5, "alpha_final": 0.5, "teacher": "self"}}}, f)
  return runs


def test_report_hook_tables_have_known_means_and_stds(tmp_path):
  root = str(tmp_path / "sweep")
  runs = _fake_runs(root)
  paths = robustness_report.write(report.collect(runs), root)
  assert [os.path.basename(p) for p in paths] == [
      "robustness.md", "accuracy_vs_noise.png", "positive_mass.png"]
  md = open(paths[0]).read()
  # CLIP at 0.4: 0.28, 0.30, 0.32 -> 30.0 ± 2.0 (R@1s 0.1 / 0.05 lower).
  assert "| 0.4 | CLIP | 3/3 | 30.0 ± 2.0 | 20.0 ± 2.0 | 25.0 ± 2.0 | 1.010 ± 0.010 |" in md
  # PSD at 0.4: 0.43, 0.40, 0.37; per-seed gaps 0.15, 0.10, 0.05.
  assert "| 0.4 | PSD | 3/3 | 40.0 ± 3.0 | 30.0 ± 3.0 | 35.0 ± 3.0 |" in md
  assert "| 0.4 | PSD − CLIP | paired | +10.0 ± 5.0 | +10.0 ± 5.0 | +10.0 ± 5.0 |" in md
  # Missing and partial runs are left out: CLIP 0.0 has seeds 0, 1 (0.48, 0.50);
  # PSD 0.2 has seeds 0, 1 (0.48, 0.45), its partial seed-2 values unused.
  assert "| 0 | CLIP | 2/3 | 49.0 ± 1.4 |" in md
  assert "| 0.2 | PSD | 2/3 | 46.5 ± 2.1 |" in md
  assert "| 0 | PSD − CLIP | paired | +2.5 ± 3.5 |" in md
  # Ablations at 0.4, each with its paired gap to the main PSD run.
  assert "#### PSD ablations at caption noise 0.4" in md
  assert ("| PSD (r = 0.5, α_T = 0.5, teacher = self) | 3/3 | 40.0 ± 3.0 | 30.0 ± 3.0 "
          "| 35.0 ± 3.0 |") in md
  tail = "| 0.730 ± 0.010 |"  # PSD's final mass at 0.4: 1 - 0.2 x 1.4 + 0.01 s
  assert f"| r = 0.25 | 3/3 | 37.0 ± 3.0 | 27.0 ± 3.0 | 32.0 ± 3.0 {tail} -3.0 ± 0.0 |" in md
  assert f"| r = 1.0 | 3/3 | 42.0 ± 3.0 | 32.0 ± 3.0 | 37.0 ± 3.0 {tail} +2.0 ± 0.0 |" in md
  assert f"| α_T = 0.8 | 3/3 | 44.0 ± 3.0 | 34.0 ± 3.0 | 39.0 ± 3.0 {tail} +4.0 ± 0.0 |" in md
  assert f"| teacher = ema | 3/3 | 39.0 ± 3.0 | 29.0 ± 3.0 | 34.0 ± 3.0 {tail} -1.0 ± 0.0 |" in md
  assert "| CLIP | 3/3 | 30.0 ± 2.0 | 20.0 ± 2.0 | 25.0 ± 2.0 | 1.010 ± 0.010 | -10.0 ± 5.0 |" in md
  assert "Data: `synthetic`. 31/33 runs finished" in md
  from matplotlib import image
  for path, width in zip(paths[1:], (3 * 4.2 * 110, 10 * 110)):
    with open(path, "rb") as f:
      assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    pixels = image.imread(path)
    assert abs(pixels.shape[1] - width) <= 2 and pixels[..., :3].std() > 0.01


def test_report_without_finished_runs_says_pending(tmp_path):
  runs = spec.expand(spec.load_sweep(_sweep_path()), str(tmp_path))
  paths = robustness_report.write(report.collect(runs), str(tmp_path))
  assert len(paths) == 1
  assert "No finished runs yet: results pending." in open(paths[0]).read()


def test_sweep_report_command_calls_the_hook_and_publish_splices(tmp_path):
  root = str(tmp_path / "sweep")
  _fake_runs(root)
  out = subprocess.run(
      [sys.executable, "-m", "launch.sweep", f"--sweep={SWEEP}", "--report",
       f"--root={root}"], cwd=REPO, capture_output=True, text=True, timeout=120)
  assert out.returncode == 0, out.stderr
  for name in ("report.md", "robustness.md", "accuracy_vs_noise.png",
               "positive_mass.png"):
    assert os.path.getsize(os.path.join(root, name)) > 0
  assert f"wrote {os.path.join(root, 'robustness.md')}" in out.stdout
  doc = tmp_path / "docs" / "robustness.md"
  doc.parent.mkdir()
  doc.write_text("# Study\n\n<!-- results:synthetic:begin -->\nresults pending\n"
                 "<!-- results:synthetic:end -->\n\nReading.\n")
  robustness_report.publish(root, str(doc), "synthetic")
  text = doc.read_text()
  assert "results pending" not in text and text.endswith("\n\nReading.\n")
  assert "| 0.4 | PSD − CLIP | paired | +10.0 ± 5.0 |" in text
  assert "](robustness/synthetic/accuracy_vs_noise.png)" in text
  assert (tmp_path / "docs/robustness/synthetic/positive_mass.png").stat().st_size > 0
  with pytest.raises(ValueError, match="markers"):
    robustness_report.publish(root, str(doc), "cifar10")


# ------------------------------------------- real data, end to end (mock) ---

def test_real_data_run_trains_on_class_captions_and_evaluates_zeroshot(tmp_path):
  tfds = pytest.importorskip("tensorflow_datasets")
  from cvlg_jax.run import loop
  from cvlg_jax.data import pipeline
  sweep = spec.load_sweep(_sweep_path("dataset=cifar10,tiny"))
  root = str(tmp_path / "sweep")
  run = next(r for r in spec.expand(sweep, root) if r.overrides == {
      "loss.name": "psd", "data.caption_noise": 0.4, "train.seed": 0})
  cfg = spec.apply_overrides(spec.load_config(sweep.config), run.overrides)
  with tfds.testing.mock_data(num_examples=48):
    src = pipeline.train_source(cfg)
    assert isinstance(src, ClassCaptions) and len(src) == 48
    assert sum(src.is_noisy(i) for i in range(48)) == round(0.4 * 48)
    ex = src[0]
    named = src.classnames[src.caption_class(0, int(ex["label"]))]
    assert ex["caption"][0] == f"a photo of a {named}."
    loop.run(cfg, run.workdir)
  rows = [json.loads(l) for l in open(os.path.join(run.workdir, "metrics.jsonl"))]
  last = rows[-1]
  assert last["step"] == run.steps == 6
  assert last["zeroshot/num_examples"] == 48 and 0 <= last["zeroshot/top1"] <= 1
  assert last["data/skipped_undecodable_image"] == 0 and last["distilled"] == 0.5
  assert 0 < last["positive_mass"] < 1  # PSD moved target mass off the positive
  results = report.collect([run])
  assert results[0].status == "finished"
  md = open(robustness_report.write(results, root)[0]).read()
  assert "class-name captions of `cifar10`" in md
  assert "| 0.4 | PSD | 1/1 |" in md and "i2t R@1" not in md
