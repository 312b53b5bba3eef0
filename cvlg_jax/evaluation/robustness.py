"""Effective robustness (Taori et al. 2020; Radford et al. 2021, Sec. 3.3).

Across many standard ImageNet models, accuracy under distribution shift is
close to a linear function of in-distribution accuracy once both are put
through a logit. Effective robustness (ER) of a model is how far its shift
accuracy sits above that baseline trend, read in accuracy space:

  ER = shift_acc - sigmoid(a * logit(in_dist_acc) + b)

with (a, b) the least-squares line through the baseline points in logit space.
All accuracies here are fractions in (0, 1); the trend is only meaningful if
the evaluated models' ``shift_acc`` averages the same shifts as the baselines'.

CLI::

  python -m cvlg_jax.evaluation.robustness --results=ours.csv \\
      [--baselines=baselines.csv] --out=DIR

writes DIR/robustness.md (table), DIR/robustness.json and DIR/robustness.png.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import json
import os
from typing import Sequence

import numpy as np

from cvlg_jax import fileio

DEFAULT_BASELINES = os.path.join(os.path.dirname(__file__), "baselines",
                                 "imagenet_shift_baselines.csv")
_EPS = 1e-6  # accuracies are clipped to [eps, 1 - eps] before the logit


@dataclasses.dataclass(frozen=True)
class Point:
  name: str
  in_dist_acc: float
  shift_acc: float


@dataclasses.dataclass(frozen=True)
class Trend:
  """logit(shift) = slope * logit(in_dist) + intercept."""
  slope: float
  intercept: float
  num_points: int
  r2: float  # in logit space

  def predict(self, in_dist_acc) -> np.ndarray:
    return _sigmoid(self.slope * logit(in_dist_acc) + self.intercept)


def logit(p) -> np.ndarray:
  p = np.clip(np.asarray(p, np.float64), _EPS, 1 - _EPS)
  return np.log(p) - np.log1p(-p)


def _sigmoid(z) -> np.ndarray:
  return 1.0 / (1.0 + np.exp(-np.asarray(z, np.float64)))


def fit_trend(points: Sequence[Point]) -> Trend:
  """Least-squares line through the points in logit-logit space."""
  if len(points) < 2:
    raise ValueError(f"need at least 2 baseline points, got {len(points)}")
  x = logit([p.in_dist_acc for p in points])
  y = logit([p.shift_acc for p in points])
  if np.ptp(x) == 0:
    raise ValueError("baseline points all share one in-distribution accuracy; "
                     "a trend cannot be fitted")
  design = np.stack([x, np.ones_like(x)], axis=1)
  (slope, intercept), *_ = np.linalg.lstsq(design, y, rcond=None)
  resid = y - (slope * x + intercept)
  ss_tot = np.sum((y - y.mean()) ** 2)
  r2 = 1.0 - np.sum(resid ** 2) / ss_tot if ss_tot > 0 else 1.0
  return Trend(float(slope), float(intercept), len(points), float(r2))


def effective_robustness(points: Sequence[Point], trend: Trend) -> list[dict]:
  """Per model: accuracies, the trend's predicted shift accuracy and ER."""
  rows = []
  for p in points:
    pred = float(trend.predict(p.in_dist_acc))
    rows.append({"name": p.name, "in_dist_acc": p.in_dist_acc,
                 "shift_acc": p.shift_acc, "predicted_shift_acc": pred,
                 "effective_robustness": p.shift_acc - pred})
  return rows


def markdown_table(rows: Sequence[dict], trend: Trend) -> str:
  """Percentages, one row per evaluated model, plus the fit it was read from."""
  lines = [
      f"Baseline trend: logit(shift) = {trend.slope:.4f} * logit(in_dist) "
      f"{'+' if trend.intercept >= 0 else '-'} {abs(trend.intercept):.4f} "
      f"({trend.num_points} baseline points, R^2 = {trend.r2:.3f} in logit "
      "space).",
      "",
      "| model | in-dist acc (%) | shift acc (%) | trend prediction (%) | "
      "effective robustness (pp) |",
      "|---|---:|---:|---:|---:|",
  ]
  for r in rows:
    lines.append(f"| {r['name']} | {100 * r['in_dist_acc']:.2f} | "
                 f"{100 * r['shift_acc']:.2f} | "
                 f"{100 * r['predicted_shift_acc']:.2f} | "
                 f"{100 * r['effective_robustness']:+.2f} |")
  return "\n".join(lines) + "\n"


def plot(baselines: Sequence[Point], models: Sequence[Point], trend: Trend,
         path: str) -> None:
  """Scatter on logit-scaled axes, where the trend is a straight line."""
  # Figure + Agg canvas directly: no pyplot global state, no display needed.
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure
  from matplotlib.ticker import FuncFormatter

  everything = list(baselines) + list(models)
  accs = np.array([[p.in_dist_acc, p.shift_acc] for p in everything])
  lo = max(float(accs.min()) * 0.8, 1e-3)
  hi = min(1 - (1 - float(accs.max())) * 0.8, 1 - 1e-3)

  fig = Figure(figsize=(6, 5), dpi=120)
  FigureCanvasAgg(fig)
  ax = fig.add_subplot()
  ax.set_xscale("logit")
  ax.set_yscale("logit")
  xs = _sigmoid(np.linspace(logit(lo), logit(hi), 200))
  ax.plot(xs, xs, ls="--", c="0.6", lw=1, label="y = x")
  ax.plot(xs, trend.predict(xs), c="C0", lw=1.5,
          label=f"baseline trend ({trend.num_points} models)")
  if baselines:
    ax.scatter([p.in_dist_acc for p in baselines],
               [p.shift_acc for p in baselines], s=12, c="C0", alpha=0.5)
  for i, p in enumerate(models):
    ax.scatter([p.in_dist_acc], [p.shift_acc], s=40, marker="*",
               c=f"C{(i % 9) + 1}", label=p.name, zorder=3)
  pct = FuncFormatter(lambda v, _: f"{100 * v:g}")
  ax.xaxis.set_major_formatter(pct)
  ax.yaxis.set_major_formatter(pct)
  ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
  ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
  ax.set_xlim(lo, hi)
  ax.set_ylim(lo, hi)
  ax.set_xlabel("in-distribution accuracy (%, logit scale)")
  ax.set_ylabel("average shift accuracy (%, logit scale)")
  ax.grid(True, which="major", alpha=0.3)
  ax.legend(fontsize=7, loc="upper left")
  fig.tight_layout()
  buf = io.BytesIO()
  fig.savefig(buf, format="png")
  fileio.write_file(path, buf.getvalue())


def _point(name, in_dist, shift, source) -> Point:
  try:
    p = Point(str(name), float(in_dist), float(shift))
  except (TypeError, ValueError) as e:
    raise ValueError(f"{source}: bad accuracies for {name!r}: {e}") from None
  for v in (p.in_dist_acc, p.shift_acc):
    if not 0.0 <= v <= 1.0:
      raise ValueError(f"{source}: accuracies must be fractions in [0, 1]; got "
                       f"{v} for {name!r} (divide percentages by 100)")
  return p


def load_points(path: str) -> list[Point]:
  """CSV with header ``name,in_dist_acc,shift_acc`` (``#`` lines are comments;
  extra columns ignored), or JSON: a list of such objects or a
  ``{name: {"in_dist_acc": .., "shift_acc": ..}}`` mapping."""
  text = fileio.read_text(path)
  if path.endswith(".json"):
    data = json.loads(text)
    if isinstance(data, dict):
      data = [{"name": k, **v} for k, v in data.items()]
    try:
      points = [_point(d["name"], d["in_dist_acc"], d["shift_acc"], path)
                for d in data]
    except KeyError as e:
      raise ValueError(f"{path}: every entry needs {e}") from None
  else:
    lines = [l for l in text.splitlines() if l.strip() and not l.startswith("#")]
    reader = csv.DictReader(lines)
    missing = {"name", "in_dist_acc", "shift_acc"} - set(reader.fieldnames or ())
    if missing:
      raise ValueError(f"{path}: CSV header lacks {sorted(missing)}; expected "
                       "name,in_dist_acc,shift_acc")
    points = [_point(r["name"], r["in_dist_acc"], r["shift_acc"], path)
              for r in reader]
  if not points:
    raise ValueError(f"{path}: no points")
  return points


def report(results: Sequence[Point], baselines: Sequence[Point],
           out_dir: str) -> list[dict]:
  """Fits the trend, writes robustness.{md,json,png} to ``out_dir``."""
  trend = fit_trend(baselines)
  rows = effective_robustness(results, trend)
  fileio.write_file(os.path.join(out_dir, "robustness.md"),
                    markdown_table(rows, trend))
  fileio.write_file(os.path.join(out_dir, "robustness.json"), json.dumps(
      {"trend": dataclasses.asdict(trend), "models": rows}, indent=2))
  plot(baselines, results, trend, os.path.join(out_dir, "robustness.png"))
  return rows


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(
      prog="python -m cvlg_jax.evaluation.robustness",
      description="Effective robustness against a logit-linear baseline trend.")
  parser.add_argument("--results", required=True,
                      help="CSV/JSON of name,in_dist_acc,shift_acc (fractions)")
  parser.add_argument("--baselines", default=DEFAULT_BASELINES,
                      help="CSV/JSON of baseline models (default: %(default)s)")
  parser.add_argument("--out", required=True, help="output directory")
  args = parser.parse_args(argv)
  report(load_points(args.results), load_points(args.baselines), args.out)
  print(fileio.read_text(os.path.join(args.out, "robustness.md")), end="")


if __name__ == "__main__":
  main()
