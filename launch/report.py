"""Sweep report: every run's final metrics in one CSV, seeds pooled in a table.

``report.csv`` has one row per run: its overrides, status (finished /
partial / missing), last step, the last logged value of every metric and the
newest ``eval/<step>.json`` results (prefixed ``eval/``). ``report.md`` groups
runs that differ only in ``train.seed`` and shows mean ± sample std (n-1) of
the loss and the evaluation metrics over the seeds that have results.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import statistics

from cvlg_jax import fileio
from launch import plot
from launch import spec

SEED_KEY = "train.seed"


@dataclasses.dataclass(frozen=True)
class Result:
  run: spec.Run
  status: str            # finished | partial | missing
  step: int | None       # last logged step
  metrics: dict          # last value of each metric, plus eval/... results


def collect(runs: list[spec.Run]) -> list[Result]:
  results = []
  for run in runs:
    rows = plot.read_metrics(run.workdir)
    last = plot.final_values(rows)
    step = last.pop("step", None)
    status = ("missing" if step is None else
              "finished" if any(r.get("step") == run.steps for r in rows)
              else "partial")
    _, evals = plot.read_eval(run.workdir)
    last.update({f"eval/{k}": v for k, v in evals.items()})
    results.append(Result(run, status, step, last))
  return results


def _numeric(v) -> bool:
  return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _union(lists) -> list[str]:
  out = []
  for keys in lists:
    out += [k for k in keys if k not in out]
  return out


def to_csv(results: list[Result]) -> str:
  axes = _union(r.run.overrides for r in results)
  metrics = sorted(_union(r.metrics for r in results))
  buf = io.StringIO()
  writer = csv.writer(buf, lineterminator="\n")
  writer.writerow(["run", *axes, "status", "step", *metrics])
  for r in results:
    writer.writerow([r.run.name, *(r.run.overrides.get(a, "") for a in axes),
                     r.status, "" if r.step is None else r.step,
                     *(r.metrics.get(m, "") for m in metrics)])
  return buf.getvalue()


def table_metrics(results: list[Result]) -> list[str]:
  """Loss plus every evaluation metric (the keys with a ``/``)."""
  keys = sorted({k for r in results for k, v in r.metrics.items()
                 if "/" in k and _numeric(v)})
  return (["loss"] if any("loss" in r.metrics for r in results) else []) + keys


def _fmt(values: list[float]) -> str:
  if not values:
    return "–"
  mean = statistics.fmean(values)
  if len(values) == 1:
    return f"{mean:.4f}"
  return f"{mean:.4f} ± {statistics.stdev(values):.4f}"


def to_markdown(results: list[Result]) -> str:
  """One line per group of runs that differ only in ``train.seed``."""
  groups: dict[tuple, list[Result]] = {}
  for r in results:
    key = tuple((k, spec.format_value(v)) for k, v in r.run.overrides.items()
                if k != SEED_KEY)
    groups.setdefault(key, []).append(r)
  axes = _union([k for k, _ in key] for key in groups)
  metrics = table_metrics(results)
  pooled = any(len(g) > 1 for g in groups.values())
  header = [*axes, "seeds" if pooled else "runs", *metrics]
  lines = ["| " + " | ".join(header) + " |",
           "|" + "|".join("---" for _ in header) + "|"]
  for key, group in groups.items():
    values = dict(key)
    cells = [values.get(a, "") for a in axes]
    cells.append(f"{sum(r.status == 'finished' for r in group)}/{len(group)}")
    cells += [_fmt([r.metrics[m] for r in group if _numeric(r.metrics.get(m))])
              for m in metrics]
    lines.append("| " + " | ".join(cells) + " |")
  note = ("Mean ± sample std over seeds. " if pooled else "") + (
      f"`{header[len(axes)]}` = finished/total; unfinished runs contribute "
      "their latest values.")
  return "\n".join(lines) + "\n\n" + note + "\n"


def write(root: str, runs: list[spec.Run]) -> tuple[str, str, str]:
  """Writes ``report.csv`` and ``report.md`` under ``root``.

  Returns (csv path, markdown path, markdown text).
  """
  results = collect(runs)
  markdown = to_markdown(results)
  paths = []
  for name, text in (("report.csv", to_csv(results)), ("report.md", markdown)):
    path = spec.join(root, name)
    fileio.write_file(path, text)
    paths.append(path)
  return paths[0], paths[1], markdown
