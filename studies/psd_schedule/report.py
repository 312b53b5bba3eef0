"""Tables of the schedule study (studies/psd_schedule/sweep.py).

``write(results, root)`` (the sweep's report hook) writes ``psd_schedule.md``
under the root: per stage (run length, data size, many-to-many captions) and
caption noise, each method's final and best clean metrics, the held-out
score and the linear probe, mean ± std over seeds, and each schedule's gap
to CLIP paired by seed; for the length stage also the verdict of the
default rule (docs/design.md, "The default schedule"): a schedule qualifies
when, at every length, its mean paired gap to CLIP is >= 0 on the held-out
pairs and on zero-shot, and its held-out score is within ``TOLERANCE`` of the
best schedule's. Every number comes from the runs' ``metrics.jsonl``; only
finished runs count. ``python -m studies.psd_schedule.report --root=ROOT``
splices the report into docs/robustness.md (section ``psd_schedule``).
"""

from __future__ import annotations

import json
import os
from typing import NamedTuple

from studies.memorisation import report as mr
from studies.noise_robustness import report as rr

REPORT = "psd_schedule.md"
FIGURE = "psd_schedule_length.png"
SCALE_FIGURE = "psd_schedule_scale.png"
TOLERANCE = 0.01          # "within 1 point of the best schedule"
PROBE = "probe/top1"
NUM_TRAIN, KINDS = "data.num_train", "data.noise_kinds"


class Setting(NamedTuple):
  method: mr.Method
  noise: float
  epochs: float
  num_train: int | None   # None: the config's default
  kinds: str               # "" = the default mixture


def _per_epoch(result) -> int | None:
  try:
    with open(os.path.join(result.run.workdir, "run_info.json")) as f:
      return json.load(f)["resolved"]["steps_per_epoch"] or None
  except (OSError, KeyError, ValueError):
    return None


def methods_of(result, per_epoch: int, swept) -> list[mr.Method]:
  """The run's own method, then every other schedule of the sweep
  (``swept``: its ``sweep.methods(...)[1:]`` pairs) that trains the same run
  at its length (the sweep trains such a run once)."""
  from studies.psd_schedule import sweep
  o = result.run.overrides
  own = mr.method_of(o)
  out = [own]
  if own.name == "bank":
    what = sweep.effective(o, result.run.steps, per_epoch)
    for name, method in swept:
      if name != own.schedule and sweep.effective(
          method, result.run.steps, per_epoch) == what:
        out.append(mr.Method("bank", name))
  return out


def settings(results, schedules=None) -> dict[Setting, list]:
  """Setting -> its finished runs, one per seed (a schedule's own run before
  a shared one); ``schedules``: the PSD schedules the sweep ran (default
  all), the only ones a shared run is counted for."""
  from configs import common
  from studies.psd_schedule import sweep
  by_seed: dict[Setting, dict] = {}
  swept = sweep.methods(sorted(set(schedules or common.PSD_SCHEDULES)))[1:]
  for r in results:
    o = r.run.overrides
    per_epoch = _per_epoch(r)
    if per_epoch is None:
      continue
    for i, method in enumerate(methods_of(r, per_epoch, swept)):
      key = Setting(method, float(o.get(mr.NOISE, 0.0)),
                    round(r.run.steps / per_epoch, 1), o.get(NUM_TRAIN),
                    o.get(KINDS, ""))
      seeds = by_seed.setdefault(key, {})
      seed = o.get(mr.SEED)
      if r.status == "finished" and (seed not in seeds or i == 0):
        seeds[seed] = r
  return {k: list(v.values()) for k, v in by_seed.items()}


def shared_note(g: dict) -> str:
  """Which schedules share another's runs, and at which lengths."""
  shared: dict[tuple[str, str], set] = {}
  for s, runs in g.items():
    for r in runs:
      own = mr.method_of(r.run.overrides)
      if own != s.method:
        shared.setdefault((s.method.schedule, own.schedule), set()).add(s.epochs)
  if not shared:
    return ""
  return ("Shared runs (the plan resolves the same ramp, so it is the same "
          "run): " + "; ".join(
              f"`{a}` is `{b}` at {', '.join(f'{e:g}' for e in sorted(ep))} "
              "epochs" for (a, b), ep in sorted(shared.items())) + ".")


def _label(method: mr.Method) -> str:
  return "CLIP" if method.name == "clip" else f"PSD bank, `{method.schedule}`"


def _order(method: mr.Method) -> tuple:
  from configs import common
  names = list(common.PSD_SCHEDULES)
  return (method.name != "clip",
          names.index(method.schedule) if method.schedule in names else 99)


def _columns(results) -> list[tuple[str, str, int]]:
  """(header, metric key, 0 = final | 1 = best) of every table."""
  zs = mr.clean_keys(results)
  cols = [("held-out final", mr.HELDOUT, 0)]
  for label, key in zs[:1]:
    cols += [(f"{label} final", key, 0), (f"{label} best", key, 1)]
  cols += [("probe final", PROBE, 0), ("probe best", PROBE, 1)]
  for label, key in zs[1:2]:
    cols += [(f"{label} final", key, 0)]
  return cols + [("memorised final", mr.MEMORISED, 0)]


def _values(runs, key, which) -> list[float]:
  return list(mr._per_seed(runs, key, which).values())


def group_table(g: dict, rows_of, row_label: str, cols) -> list[str]:
  """Rows of (row value, method) with paired gap rows under each PSD row."""
  header = [row_label, "method", "seeds", *(f"{c[0]} (%)" for c in cols)]
  rows = []
  for value in sorted({rows_of(s) for s in g}, key=lambda v: (v is None, v)):
    here = {s.method: runs for s, runs in g.items() if rows_of(s) == value}
    clip = here.get(mr.Method("clip", None), [])
    for method in sorted(here, key=_order):
      runs = here[method]
      rows.append([f"{value:g}" if isinstance(value, (int, float)) else str(value),
                   _label(method), str(len(runs)),
                   *(mr._cell(_values(runs, k, w)) for _, k, w in cols)])
      if method.name != "clip" and clip and runs:
        rows.append(["", "− CLIP", "paired",
                     *(mr._cell(mr._paired(runs, clip, k, w), signed=True)
                       for _, k, w in cols)])
  return rr._table(header, rows)


def verdict(g: dict, zs_key: str | None) -> tuple[list[str], list[str]]:
  """Per length, each schedule's paired held-out / zero-shot gaps to CLIP and
  shortfall to the best schedule's held-out score; and the schedules that
  meet the rule at every length, and those within TOLERANCE of the best
  held-out score at every length."""
  lengths = sorted({s.epochs for s in g})
  schedules = sorted({s.method for s in g if s.method.name != "clip"}, key=_order)
  header = ["epochs", *(f"`{m.schedule}`: held-out / zero-shot − CLIP, "
                        "below best" for m in schedules)]
  rows, passing = [], {m: True for m in schedules}
  near = {m: True for m in schedules}
  for epochs in lengths:
    here = {s.method: runs for s, runs in g.items() if s.epochs == epochs}
    clip = here.get(mr.Method("clip", None), [])
    means = {m: rr.mean_std(_values(here.get(m, []), mr.HELDOUT, 0))
             for m in schedules}
    best = max((v[0] for v in means.values() if v), default=None)
    cells = [f"{epochs:g}"]
    for m in schedules:
      runs = here.get(m, [])
      gaps = [rr.mean_std(mr._paired(runs, clip, k, 0)) if k else None
              for k in (mr.HELDOUT, zs_key)]
      if not runs or not clip or None in gaps or means[m] is None:
        cells.append("–")
        passing[m] = False
        continue
      short = best - means[m][0]
      ok = gaps[0][0] >= 0 and gaps[1][0] >= 0 and short <= TOLERANCE
      passing[m] &= ok
      near[m] &= short <= TOLERANCE
      cells.append(f"{100 * gaps[0][0]:+.1f} / {100 * gaps[1][0]:+.1f}, "
                   f"{100 * short:.1f} {'✓' if ok else '✗'}")
    for m in schedules:  # a schedule with no run at a length is not near
      near[m] &= bool(here.get(m)) and means[m] is not None
    rows.append(cells)
  return (rr._table(header, rows),
          [m.schedule for m, ok in passing.items() if ok],
          [m.schedule for m, ok in near.items() if ok])


def render(results, schedules=None, g=None) -> str:
  """The report's markdown; ``g``: ``settings(results, schedules)`` when the
  caller has it already."""
  finished = sum(r.status == "finished" for r in results)
  lines = ["<!-- generated by `python -m launch.sweep --report` "
           "(studies/psd_schedule/report.py); do not edit the numbers by hand -->",
           f"Data: {rr._dataset(results)}. {finished}/{len(results)} runs "
           "finished. *final* = last evaluation, *best* = best during "
           "training; mean ± sample std over seeds; `− CLIP` rows are "
           "per-seed differences (same data, same noise draw); probe = linear "
           "probe on frozen image features, clean classes.", ""]
  g = settings(results, schedules) if g is None else g
  if not any(g.values()):
    return "\n".join(lines + ["No finished runs yet: results pending.", ""])
  cols = _columns(results)
  zs = (mr.clean_keys(results) or [(None, None)])[0][1]
  parts = _length_parts(g)
  note = shared_note(g)
  if note:
    lines += [note, ""]
  for noise, part in parts.items():
    table, ok, near = verdict(part, zs)
    lines += [f"#### Run length, caption noise {noise:g}", "",
              *group_table(part, lambda s: s.epochs, "epochs", cols), "",
              f"Rule at noise {noise:g} (held-out and zero-shot ≥ CLIP, held-out "
              f"within {100 * TOLERANCE:g} point of the best schedule):", "",
              *table, "", "Schedules meeting it at every length: "
              + (", ".join(f"`{s}`" for s in ok) or "none") + ". Within "
              f"{100 * TOLERANCE:g} point of the best held-out score at every "
              "length: " + (", ".join(f"`{s}`" for s in near) or "none") + ".",
              ""]
  if parts:
    lines += [f"![paired gap to CLIP against run length]({FIGURE})", ""]
  sized = {s: r for s, r in g.items() if s.num_train is not None and r}
  if sized:
    lines += ["#### Data scale (caption noise "
              + ", ".join(sorted({f"{s.noise:g}" for s in sized})) + ", "
              + ", ".join(sorted({f"{s.epochs:g}" for s in sized})) + " epochs)",
              "", *group_table(sized, lambda s: s.num_train, "training pairs",
                               cols), ""]
    if _scale_parts(g):
      lines += [f"![paired gap to CLIP against data size]({SCALE_FIGURE})", ""]
  m2m = {s: r for s, r in g.items() if s.kinds and r}
  if m2m:
    lines += [f"#### Many-to-many captions (noise kinds `{next(iter(m2m)).kinds}`)",
              "", *group_table(m2m, lambda s: s.noise, "noise", cols), ""]
  return "\n".join(lines)


def _parts(g: dict, keep, x) -> dict[float, dict]:
  """Caption noise -> the settings ``keep`` selects at that noise, where
  they span at least two values of ``x`` (a curve needs two points)."""
  parts = {}
  for s, runs in g.items():
    if keep(s) and runs:
      parts.setdefault(s.noise, {})[s] = runs
  return {n: p for n, p in sorted(parts.items()) if len({x(s) for s in p}) >= 2}


def _length_parts(g: dict) -> dict[float, dict]:
  """The length stage: default data size and noise kinds, by epochs."""
  return _parts(g, lambda s: s.num_train is None and not s.kinds,
                lambda s: s.epochs)


def _scale_parts(g: dict) -> dict[float, dict]:
  """The scale stage: settings with a data size, by data size."""
  return _parts(g, lambda s: s.num_train is not None, lambda s: s.num_train)


def length_figure(results, g: dict):
  """Paired gap to CLIP against run length; ``g``: ``settings``."""
  return gap_figure(results, _length_parts(g), lambda s: s.epochs, "epochs")


def scale_figure(results, g: dict):
  """Paired gap to CLIP against the number of training pairs."""
  return gap_figure(results, _scale_parts(g), lambda s: s.num_train,
                    "training pairs")


def gap_figure(results, parts: dict, x, xlabel: str):
  """Paired gap to CLIP (held-out, zero-shot, and the linear probe where
  run; final) against ``x(setting)``, one line per schedule, one column per
  caption noise (``parts``: noise -> settings -> runs)."""
  from matplotlib import ticker
  from matplotlib.figure import Figure
  clean = mr.clean_keys(results)
  keys = dict(clean)
  zs = (clean or [(None, None)])[0]
  panels = [("held-out top-1", mr.HELDOUT), (zs[0], zs[1])]
  if "linear probe" in keys:
    panels.append(("linear probe", keys["linear probe"]))
  fig = Figure(figsize=(4.2 * max(1, len(parts)), 2.8 * len(panels)))
  axes = fig.subplots(len(panels), max(1, len(parts)), squeeze=False,
                      sharex=True)
  for col, (noise, part) in enumerate(parts.items()):
    values = sorted({x(s) for s in part})
    for row, (label, key) in enumerate(panels):
      ax = axes[row][col]
      for m in sorted({s.method for s in part if s.method.name != "clip"},
                      key=_order):
        xs, ys, es = [], [], []
        for value in values:
          here = {s.method: r for s, r in part.items() if x(s) == value}
          gap = rr.mean_std(mr._paired(here.get(m, []),
                                       here.get(mr.Method("clip", None), []),
                                       key, 0)) if key else None
          if gap:
            xs.append(value)
            ys.append(100 * gap[0])
            es.append(100 * gap[1])
        if xs:
          ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3,
                      label=f"`{m.schedule}`")
      ax.axhline(0, color="k", lw=0.8)
      ax.set_xscale("log")
      ax.set_xticks(values, [f"{v:g}" for v in values])
      ax.xaxis.set_minor_locator(ticker.NullLocator())
      ax.set_title(f"{label} − CLIP, noise {noise:g}", fontsize="medium")
      ax.grid(alpha=0.3)
      if col == 0:
        ax.set_ylabel("paired gap (points)")
      if row == len(panels) - 1:
        ax.set_xlabel(xlabel)
  axes[0][0].legend(fontsize="small")
  fig.tight_layout()
  return fig


def write(results, root: str, schedules=None) -> list[str]:
  """The sweep's report hook (``schedules``: those it ran, default all)."""
  g = settings(results, schedules)
  paths = [rr._write(root, REPORT, render(results, g=g).encode())]
  if _length_parts(g):
    paths.append(rr._write(root, FIGURE, rr._png(length_figure(results, g))))
  if _scale_parts(g):
    paths.append(rr._write(root, SCALE_FIGURE,
                           rr._png(scale_figure(results, g))))
  return paths


if __name__ == "__main__":
  rr.cli("psd_schedule", REPORT, (FIGURE, SCALE_FIGURE))
