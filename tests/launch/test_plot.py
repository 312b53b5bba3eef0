"""Training-curve plots and the run readers they share with the sweep report."""

import json
import os
import subprocess
import sys

import pytest

from launch import plot

from main_runner import REPO


def _run(workdir, loss, noise, seed, rows, torn=False):
  os.makedirs(workdir)
  with open(os.path.join(workdir, "config.json"), "w") as f:
    json.dump({"loss": {"name": loss, "psd": {"teacher": "bank"}},
               "data": {"caption_noise": noise},
               "train": {"seed": seed, "steps": 20}}, f)
  with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
    for row in rows:
      f.write(json.dumps(row) + "\n")
    if torn:
      f.write('{"step": 30, "loss": 1.')
  return str(workdir)


def _rows(alpha_final, offset, clip_loss=False):
  rows = []
  for step in (5, 10, 15, 20):
    row = {"step": step, "loss": 4.0 - step / 10 + offset,
           **({"clip_loss": 5.0 - step / 10} if clip_loss else {}),
           "alpha": alpha_final * step / 20,
           "positive_mass": 1 - 0.25 * alpha_final * step / 20}
    if step % 10 == 0:
      row["synthetic/zeroshot_top1"] = step / 100 + offset
    rows.append(row)
  return rows


@pytest.fixture
def runs(tmp_path):
  return [_run(tmp_path / "a", "psd", 0.2, 0, _rows(0.5, 0.0, clip_loss=True),
               torn=True),
          _run(tmp_path / "b", "clip", 0.2, 0, _rows(0.0, 0.1))]


def test_readers(runs, tmp_path):
  rows = plot.read_metrics(runs[0])
  assert [r["step"] for r in rows] == [5, 10, 15, 20]  # torn line dropped
  assert plot.read_metrics(str(tmp_path / "missing")) == []
  assert plot.final_values(rows)["synthetic/zeroshot_top1"] == pytest.approx(0.2)
  assert plot.series(rows, "synthetic/zeroshot_top1") == ([10, 20], [0.1, 0.2])
  assert plot.series(rows + [{"step": 25, "loss": "nan"}], "loss")[0] == [5, 10, 15, 20]
  assert plot.read_eval(runs[0]) == (None, {})
  os.makedirs(os.path.join(runs[0], "eval"))
  for step, top1 in ((5, 0.1), (20, 0.3)):  # cvlg_jax.evaluate's layout
    with open(os.path.join(runs[0], "eval", f"{step}.json"), "w") as f:
      json.dump({"step": step, "checkpoint": "/x/checkpoints/20",
                 "results": {"imagenet": {"top1": top1, "top5": 0.5}},
                 "skipped": {"cifar10": "data set not found"}}, f)
  assert plot.read_eval(runs[0]) == (20, {"imagenet/top1": 0.3, "imagenet/top5": 0.5})
  with open(os.path.join(runs[0], "eval", "30.json"), "w") as f:
    json.dump({"step": 30, "zs": {"top1": 0.4}, "note": "x"}, f)
  assert plot.read_eval(runs[0]) == (30, {"zs/top1": 0.4})


def test_labels_come_from_configs_and_are_unique(runs, tmp_path):
  assert plot.labels_for(runs) == ["psd[bank] noise=0.2 seed=0",
                                   "clip noise=0.2 seed=0"]
  twin = _run(tmp_path / "c", "psd", 0.2, 0, _rows(0.5, 0.2))
  assert plot.labels_for([runs[0], twin]) == [
      "psd[bank] noise=0.2 seed=0 (a)", "psd[bank] noise=0.2 seed=0 (c)"]
  assert plot.run_label({}, "fallback") == "fallback"


def test_draw_puts_each_run_on_every_panel(runs):
  fig = plot.draw(runs)
  axes = fig.axes
  assert [ax.get_title() for ax in axes] == [t for _, t in plot.PANELS]
  loss, zs, alpha, pos = axes
  assert [l.get_label() for l in loss.lines] == plot.labels_for(runs)
  assert list(loss.lines[1].get_xdata()) == [5, 10, 15, 20]
  # Like with like: PSD's one-hot term (clip_loss), not its mixed loss; a
  # run that logged no clip_loss (CLIP here) shows its loss, the same thing.
  assert list(loss.lines[0].get_ydata()) == pytest.approx([4.5, 4.0, 3.5, 3.0])
  assert list(loss.lines[1].get_ydata()) == pytest.approx([3.6, 3.1, 2.6, 2.1])
  assert list(zs.lines[0].get_xdata()) == [10, 20]
  assert list(alpha.lines[0].get_ydata()) == pytest.approx([0.125, 0.25, 0.375, 0.5])
  assert list(pos.lines[1].get_ydata()) == [1.0] * 4
  assert loss.get_shared_x_axes().joined(loss, pos)


def test_cli_writes_a_png(runs, tmp_path):
  out = tmp_path / "plots" / "curves.png"
  res = subprocess.run([sys.executable, "-m", "launch.plot", *runs,
                        str(tmp_path / "empty"), f"--out={out}"],
                       cwd=REPO, capture_output=True, text=True, timeout=120)
  assert res.returncode == 0, res.stderr[-2000:]
  assert "empty has no metrics yet" in res.stdout
  assert "| psd[bank] noise=0.2 seed=0 | 20 | 20.0 % |" in res.stdout
  data = out.read_bytes()
  assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
  with pytest.raises(ValueError, match="no metrics"):
    plot.draw([str(tmp_path / "empty")])


def test_summary_tabulates_each_runs_last_evaluation(runs):
  table = plot.summary(runs).splitlines()
  assert table[0] == "| run | step | synthetic/zeroshot_top1 |"
  assert table[2] == "| psd[bank] noise=0.2 seed=0 | 20 | 20.0 % |"
  assert table[3] == "| clip noise=0.2 seed=0 | 20 | 30.0 % |"
