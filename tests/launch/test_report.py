"""The sweep report pools seeds into mean and std."""

import csv
import json
import os


from launch import report, spec
from launch.spec import Sweep, grid


def _fake_run(workdir, rows, config=None, eval_=None):
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
    for row in rows:
      f.write(json.dumps(row) + "\n")
  if eval_ is not None:
    os.makedirs(os.path.join(workdir, "eval"))
    for step, res in eval_.items():
      with open(os.path.join(workdir, "eval", f"{step}.json"), "w") as f:
        json.dump(res, f)


def test_report_pools_seeds_into_mean_and_std(tmp_path):
  runs = spec.expand(Sweep("configs/demo.py:tiny", grid(**{
      "loss.name": ["clip", "psd"], "train.seed": [0, 1]})), str(tmp_path))
  zs = {("clip", 0): 0.2, ("clip", 1): 0.4, ("psd", 0): 0.5, ("psd", 1): 0.6}
  for run in runs:
    key = (run.overrides["loss.name"], run.overrides["train.seed"])
    if key == ("psd", 1):
      continue  # never started
    _fake_run(run.workdir, [
        {"step": 10, "loss": 3.0, "synthetic/zeroshot_top1": 0.0},
        {"step": 20, "loss": 2.0 + key[1], "synthetic/zeroshot_top1": zs[key]}],
        eval_={10: {"step": 10, "results": {"imagenet": {"top1": 0.1}}},
               20: {"step": 20, "results": {"imagenet": {"top1": zs[key]}},
                    "skipped": {"cifar10": "missing"}}})
  csv_path, md_path, markdown = report.write(str(tmp_path), runs)
  lines = list(csv.reader(open(csv_path)))
  assert lines[0] == ["run", "loss.name", "train.seed", "status", "step",
                      "eval/imagenet/top1", "loss", "synthetic/zeroshot_top1"]
  assert lines[1] == [runs[0].name, "clip", "0", "finished", "20", "0.2", "2.0",
                      "0.2"]
  assert lines[4] == [runs[3].name, "psd", "1", "missing", "", "", "", ""]
  assert open(md_path).read() == markdown
  table = markdown.splitlines()
  assert table[0] == ("| loss.name | seeds | loss | eval/imagenet/top1 | "
                      "synthetic/zeroshot_top1 |")
  # clip: mean(0.2, 0.4) = 0.3, sample std = 0.1414; losses 2 and 3.
  assert table[2] == ("| clip | 2/2 | 2.5000 ± 0.7071 | 0.3000 ± 0.1414 | "
                      "0.3000 ± 0.1414 |")
  assert table[3] == "| psd | 1/2 | 2.0000 | 0.5000 | 0.5000 |"
  assert "sample std" in markdown
