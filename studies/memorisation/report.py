"""Tables and curves of the memorisation study (studies/memorisation/sweep.py).

``write(results, root)`` is the sweep's report hook (``python -m
launch.sweep --sweep=studies/memorisation/sweep.py --report``); under the
root it writes

  * ``memorisation.md``: the schedule selection on held-out pairs; per caption
    noise and method (CLIP, PSD with each teacher) the clean zero-shot top-1
    and retrieval R@1 at the end of training *and* at their best evaluation
    during training, the fraction of noisy training pairs memorised, the
    held-out score, mean ± std over seeds, and each teacher's gap to CLIP
    paired by seed; a headline table (``headline.md``) for the README;
  * ``memorisation_curves.png``: the clean metrics and the memorised fraction
    over training, one column per noise level, mean over seeds ± std.

Every number comes from the runs' ``metrics.jsonl`` (all evaluations, not
just the last); only finished runs count. ``python -m
studies.memorisation.report --root=ROOT --doc=docs/robustness.md
--section=memorisation`` splices the report into the doc (and
``--readme=README.md`` the headline table into the README).
"""

from __future__ import annotations

from typing import NamedTuple

from launch import plot
from studies.noise_robustness import report as rr

NOISE, SEED = "data.caption_noise", "train.seed"
METHODS = ("clip", "self", "ema", "bank")
LABELS = {"clip": "CLIP", "self": "PSD, self teacher", "ema": "PSD, EMA teacher",
          "bank": "PSD, bank teacher"}
# (label, candidate keys: synthetic data, then a real classification set).
CLEAN = (("zero-shot top-1", ("synthetic/zeroshot_top1", "zeroshot/top1")),
         ("i2t R@1", ("synthetic/i2t_R@1",)),
         ("t2i R@1", ("synthetic/t2i_R@1",)),
         ("linear probe", ("probe/top1",)))
MEMORISED, HELDOUT = "memorisation/memorised", "heldout/mean_top1"
FIGURE = "memorisation_curves.png"
REPORT, HEADLINE = "memorisation.md", "headline.md"


class Method(NamedTuple):
  """What a run trains with: CLIP, or PSD's teacher and schedule."""
  name: str              # clip | self | ema | bank
  schedule: str | None   # a configs/common.py PSD_SCHEDULES name, or "custom"


class Setting(NamedTuple):
  method: Method
  noise: float


def method_of(overrides: dict, steps: int | None = None) -> Method:
  """The method of a run's overrides (``steps`` is unused: every schedule's
  ramp is resolved when the run starts)."""
  from configs import common
  del steps
  if overrides.get("loss.name") == "clip":
    return Method("clip", None)
  psd = {k[len("loss.psd."):]: v for k, v in overrides.items()
         if k.startswith("loss.psd.")}
  schedule = next((name for name in common.PSD_SCHEDULES
                   if common.schedule_matches(name, psd)), "custom")
  return Method(overrides.get("loss.psd.teacher", "self"), schedule)


def settings(results) -> dict[Setting, list]:
  """Setting -> its finished results (one per seed)."""
  out: dict[Setting, list] = {}
  for r in results:
    o = r.run.overrides
    key = Setting(method_of(o, r.run.steps), float(o.get(NOISE, 0.0)))
    out.setdefault(key, [])
    if r.status == "finished":
      out[key].append(r)
  return out


def _series(result, key) -> list[float]:
  return plot.series(plot.read_metrics(result.run.workdir), key)[1]


def final_and_best(result, key) -> tuple[float, float] | None:
  """(last evaluation, best evaluation during training) of ``key``."""
  values = [v for v in _series(result, key) if v == v]
  return (values[-1], max(values)) if values else None


def _per_seed(runs, key, which: int) -> dict:
  out = {}
  for r in runs:
    fb = final_and_best(r, key)
    if fb is not None:
      out[r.run.overrides.get(SEED)] = fb[which]
  return out


def _cell(values, signed=False) -> str:
  ms = rr.mean_std(values)
  if ms is None:
    return "–"
  text = f"{100 * ms[0]:+.1f}" if signed else f"{100 * ms[0]:.1f}"
  return text + (f" ± {100 * ms[1]:.1f}" if len(values) > 1 else "")


def _paired(a, b, key, which) -> list[float]:
  va, vb = _per_seed(a, key, which), _per_seed(b, key, which)
  return [va[s] - vb[s] for s in sorted(set(va) & set(vb), key=str)]


def clean_keys(results) -> list[tuple[str, str]]:
  logged = set()
  for r in results:
    if r.status == "finished":
      logged |= set(r.metrics)
  return [(label, next(k for k in keys if k in logged)) for label, keys in CLEAN
          if any(k in logged for k in keys)]


def selection_table(results) -> tuple[list[str], dict[str, str]]:
  """Rows of the stage=select runs (noise 0.4, seed 0) ranked per teacher by
  the final held-out score; returns the table and teacher -> best schedule."""
  from studies.memorisation import sweep
  rows, best = [], {}
  g = settings([r for r in results
                if r.run.overrides.get(SEED) == sweep.SELECT_SEED])
  zs = (clean_keys(results) or [(None, None)])[0][1]
  for teacher in METHODS:
    candidates = [(s, runs) for s, runs in g.items() if s.method.name == teacher
                  and s.noise == sweep.SELECT_NOISE and runs]
    scored = [(final_and_best(runs[0], HELDOUT), s, runs[0])
              for s, runs in candidates]
    scored = [x for x in scored if x[0] is not None]
    if not scored:
      continue
    winner = max(scored, key=lambda x: x[0][0])
    if len(scored) > 1:
      best[teacher] = winner[1].method.schedule
    for (final, top), s, r in sorted(scored, key=lambda x: -x[0][0]):
      zfb = final_and_best(r, zs) if zs else None
      rows.append([LABELS[teacher], s.method.schedule or "–",
                   f"{100 * final:.1f}", f"{100 * top:.1f}",
                   "–" if zfb is None else f"{100 * zfb[0]:.1f}",
                   "← chosen" if s == winner[1] and len(scored) > 1 else ""])
  header = ["method", "schedule", "held-out top-1, final (%)",
            "held-out, best (%)", "zero-shot, final (%, not used)", ""]
  return rr._table(header, rows), best


def main_tables(results) -> list[tuple[float, list[str]]]:
  """Per noise level: each method's final / best metrics and gaps to CLIP."""
  from studies.memorisation import sweep
  g, keys = settings(results), clean_keys(results)
  header = ["method", "seeds"]
  for label, _ in keys:
    header += [f"{label} final (%)", f"{label} best (%)"]
  header += ["memorised, final (%)", "held-out, final (%)"]
  out = []
  for noise in sorted({s.noise for s in g}):
    chosen = {Setting(Method(m, None if m == "clip" else sweep.SCHEDULE[m]), noise)
              for m in METHODS}
    rows, clip = [], g.get(Setting(Method("clip", None), noise), [])
    for setting in sorted(chosen, key=lambda s: METHODS.index(s.method.name)):
      runs = g.get(setting)
      if runs is None:
        continue
      total = sum(1 for r in results if Setting(method_of(
          r.run.overrides, r.run.steps), float(r.run.overrides.get(NOISE, 0.0)))
                  == setting)
      cells = [LABELS[setting.method.name], f"{len(runs)}/{total}"]
      for _, k in keys:
        cells += [_cell(list(_per_seed(runs, k, 0).values())),
                  _cell(list(_per_seed(runs, k, 1).values()))]
      cells += [_cell(list(_per_seed(runs, MEMORISED, 0).values())),
                _cell(list(_per_seed(runs, HELDOUT, 0).values()))]
      rows.append(cells)
      if setting.method.name != "clip" and clip and runs:
        gap = [f"{LABELS[setting.method.name]} − CLIP", "paired"]
        for _, k in keys:
          gap += [_cell(_paired(runs, clip, k, 0), signed=True),
                  _cell(_paired(runs, clip, k, 1), signed=True)]
        gap += [_cell(_paired(runs, clip, MEMORISED, 0), signed=True),
                _cell(_paired(runs, clip, HELDOUT, 0), signed=True)]
        rows.append(gap)
    out.append((noise, rr._table(header, rows)))
  return out


def headline(results) -> str:
  """Zero-shot (final, best) and memorisation per noise and method (a
  method the sweep did not run has no row)."""
  from studies.memorisation import sweep
  g, keys = settings(results), clean_keys(results)
  if not keys:
    return "Results pending.\n"
  zs_label, zs = keys[0]
  noises = sorted({s.noise for s in g})
  header = ["method", *(f"noise {n:g}: {zs_label} final / best, memorised"
                        for n in noises)]
  rows = []
  for m in METHODS:
    cells = [LABELS[m]]
    for n in noises:
      runs = g.get(Setting(Method(m, None if m == "clip" else sweep.SCHEDULE[m]), n), [])
      final = rr.mean_std(list(_per_seed(runs, zs, 0).values()))
      best = rr.mean_std(list(_per_seed(runs, zs, 1).values()))
      mem = rr.mean_std(list(_per_seed(runs, MEMORISED, 0).values()))
      cells.append("–" if final is None else
                   f"{100 * final[0]:.1f} / {100 * best[0]:.1f}, "
                   f"{'–' if mem is None else f'{100 * mem[0]:.0f} %'}")
    if any(c != "–" for c in cells[1:]):
      rows.append(cells)
  return "\n".join(rr._table(header, rows)) + "\n"


def render(results) -> str:
  finished = sum(r.status == "finished" for r in results)
  lines = ["<!-- generated by `python -m launch.sweep --report` "
           "(studies/memorisation/report.py); do not edit the numbers by hand -->",
           f"Data: {rr._dataset(results)}. {finished}/{len(results)} runs "
           "finished. *final* = last evaluation, *best* = best evaluation "
           "during training (every 50 steps; the linear probe, where run, every "
           "200); mean ± sample std over seeds; "
           "gap rows are per-seed differences to CLIP (same data, same noise "
           "draw).", ""]
  if not clean_keys(results):
    return "\n".join(lines + ["No finished runs yet: results pending.", ""])
  table, best = selection_table(results)
  if len(table) > 2:
    lines += ["#### Schedule selection (held-out training pairs, noise 0.4, "
              "seed 0)", "", *table, "",
              "Chosen per teacher by the final held-out score: " + ", ".join(
                  f"{LABELS[t]}: `{s}`" for t, s in best.items()) + ".", ""]
  for noise, table in main_tables(results):
    lines += [f"#### Caption noise {noise:g}", "", *table, ""]
  lines += [f"![clean accuracy and memorisation over training]({FIGURE})", ""]
  return "\n".join(lines)


def curves_figure(results):
  from matplotlib.figure import Figure
  from studies.memorisation import sweep
  g = settings(results)
  noises = sorted({s.noise for s in g})
  panels = [*clean_keys(results), ("memorised noisy pairs", MEMORISED)]
  fig = Figure(figsize=(4.0 * len(noises), 2.9 * len(panels)))
  axes = fig.subplots(len(panels), len(noises), squeeze=False, sharex=True)
  for col, noise in enumerate(noises):
    for row, (label, key) in enumerate(panels):
      ax = axes[row][col]
      for m in METHODS:
        setting = Setting(Method(m, None if m == "clip" else sweep.SCHEDULE[m]), noise)
        steps, mean, std = rr.mean_curve(g.get(setting, []), key)
        if steps:
          ax.plot(steps, [100 * v for v in mean], label=LABELS[m])
          ax.fill_between(steps, [100 * (v - s) for v, s in zip(mean, std)],
                          [100 * (v + s) for v, s in zip(mean, std)], alpha=0.15)
      ax.set_title(f"{label}, noise {noise:g}", fontsize="medium")
      ax.grid(alpha=0.3)
      if col == 0:
        ax.set_ylabel(f"{label} (%)")
      if row == len(panels) - 1:
        ax.set_xlabel("step")
  axes[0][0].legend(fontsize="small")
  fig.tight_layout()
  return fig


def write(results, root: str) -> list[str]:
  """The sweep's report hook: memorisation.md, headline.md and the figure."""
  paths = [rr._write(root, REPORT, render(results).encode()),
           rr._write(root, HEADLINE, headline(results).encode())]
  if clean_keys(results):
    paths.append(rr._write(root, FIGURE, rr._png(curves_figure(results))))
  return paths


def _splice_headline(f) -> None:
  if f.readme:
    with open(f"{f.root}/{HEADLINE}") as fh:
      rr.splice(f.readme, f"headline-{f.section}", fh.read())
    print(f"updated {f.readme}")


if __name__ == "__main__":
  rr.cli("memorisation", REPORT, (FIGURE,), after=_splice_headline,
         extra_flags={"readme": "Also splice headline.md into this file."})
