"""Tables and figures of the noise-robustness study, from the runs' own files.

``write(results, root)`` is the report hook of
``studies/noise_robustness/sweep.py``: ``python -m launch.sweep
--sweep=studies/noise_robustness/sweep.py --report`` calls it after the
generic report and it writes, under the sweep root,

  * ``robustness.md``: zero-shot top-1, retrieval R@1 both ways and the final
    target mass on the positive, mean ± sample std over seeds, per (loss,
    caption noise) with the PSD - CLIP gap paired by seed, and per PSD
    ablation with its gap to the main PSD run;
  * ``accuracy_vs_noise.png``: each metric against caption noise, CLIP and
    PSD, error bars = std over seeds;
  * ``positive_mass.png``: PSD's soft-target mass on the positive pair over
    training (the paper's Figure 5 analogue), mean over seeds ± std.

Only finished runs count (a partial run's numbers are from another step);
every number comes from ``metrics.jsonl``. To put a report into the docs
without touching a number by hand:

    python -m studies.noise_robustness.report --root=runs/noise_robustness \\
        --doc=docs/robustness.md --section=synthetic

copies the figures next to the doc and replaces the doc's text between
``<!-- results:synthetic:begin -->`` and ``<!-- results:synthetic:end -->``.
"""

from __future__ import annotations

import io
import os
import re
import statistics

from typing import NamedTuple

from cvlg_jax import fileio, losses
from launch import plot
from launch import spec

LOSS, NOISE, SEED = "loss.name", "data.caption_noise", "train.seed"
# (column label, candidate metric keys: synthetic evaluator, then zeroshot).
METRICS = (("zero-shot top-1", ("synthetic/zeroshot_top1", "zeroshot/top1")),
           ("i2t R@1", ("synthetic/i2t_R@1", "retrieval/i2t_R@1")),
           ("t2i R@1", ("synthetic/t2i_R@1", "retrieval/t2i_R@1")))
MASS = "positive_mass"
KNOB_NAMES = {"loss.psd.subset_fraction": "r", "loss.psd.alpha_final": "α_T",
              "loss.psd.teacher": "teacher", "loss.psd.teacher_temperature": "T",
              "loss.psd.ramp_steps": "ramp steps"}
FIGURES = ("accuracy_vs_noise.png", "positive_mass.png")


def _extra(overrides: dict) -> tuple:
  """The overrides beyond loss, noise and seed: an ablation's knobs."""
  return tuple((k, v) for k, v in overrides.items() if k not in (LOSS, NOISE, SEED))


class Setting(NamedTuple):
  """What a group of runs (one per seed) shares."""
  loss: str          # loss.name
  noise: float       # data.caption_noise
  knobs: tuple = ()  # the ablation's other overrides, ((key, value), ...)


def loss_label(loss: str) -> str:
  """"CLIP", "PSD", ... for a loss.name (as losses parses it)."""
  try:
    return losses.parse_loss_name(loss).label
  except ValueError:
    return loss


def groups(results) -> dict[Setting, list]:
  """Setting -> finished results of that setting (one per seed)."""
  out: dict[Setting, list] = {}
  for r in results:
    bucket = out.setdefault(_setting_of(r), [])
    if r.status == "finished":
      bucket.append(r)
  return out


def metric_keys(results) -> list[tuple[str, str]]:
  """(label, key) of each study metric some finished run has logged."""
  logged = {k for r in results if r.status == "finished" for k in r.metrics}
  out = [(label, next(k for k in keys if k in logged))
         for label, keys in METRICS if any(k in logged for k in keys)]
  if MASS in logged:
    out.append(("positive mass", MASS))
  return out


def _values(runs, key) -> dict:
  """seed -> value of ``key`` (finite numbers only)."""
  out = {}
  for r in runs:
    v = r.metrics.get(key)
    if isinstance(v, (int, float)) and not isinstance(v, bool) and v == v:
      out[r.run.overrides.get(SEED)] = float(v)
  return out


def mean_std(values) -> tuple[float, float] | None:
  values = list(values)
  if not values:
    return None
  return (statistics.fmean(values),
          statistics.stdev(values) if len(values) > 1 else 0.0)


def _cell(values, key: str, signed: bool = False) -> str:
  """Accuracies and recalls in percent (0.1), the target mass as is (0.001)."""
  values = list(values)
  ms = mean_std(values)
  if ms is None:
    return "–"
  scale, digits = (1.0, 3) if key == MASS else (100.0, 1)
  mean, std = ms[0] * scale, ms[1] * scale
  text = f"{mean:+.{digits}f}" if signed else f"{mean:.{digits}f}"
  return text + (f" ± {std:.{digits}f}" if len(values) > 1 else "")


def _paired(a, b, key) -> list[float]:
  """Per-seed differences a - b over the seeds both have."""
  va, vb = _values(a, key), _values(b, key)
  return [va[s] - vb[s] for s in sorted(set(va) & set(vb), key=str)]


def _row(cells) -> str:
  return "| " + " | ".join(cells) + " |"


def _table(header, rows) -> list[str]:
  return [_row(header), "|" + "|".join("---" for _ in header) + "|",
          *(_row(r) for r in rows)]


def main_table(results) -> list[str]:
  g, keys = groups(results), metric_keys(results)
  header = ["caption noise", "loss", "seeds",
            *(f"{l} (%)" if k != MASS else l for l, k in keys)]
  rows = []
  for noise in sorted({s.noise for s in g if not s.knobs}):
    per_loss = {loss: g[Setting(loss, noise)] for loss in ("clip", "psd")
                if Setting(loss, noise) in g}
    for loss, runs in per_loss.items():
      total = _count(results, Setting(loss, noise))
      rows.append([f"{noise:g}", loss_label(loss), f"{len(runs)}/{total}",
                   *(_cell(_values(runs, k).values(), k) for _, k in keys)])
    if len(per_loss) == 2:
      rows.append([f"{noise:g}", "PSD − CLIP", "paired",
                   *(_cell(_paired(per_loss["psd"], per_loss["clip"], k), k,
                           signed=True) for _, k in keys)])
  return _table(header, rows)


def _setting_of(r) -> Setting:
  o = r.run.overrides
  return Setting(o.get(LOSS, "?"), float(o.get(NOISE, 0.0)), _extra(o))


def _count(results, setting: Setting) -> int:
  """Runs of ``setting``, finished or not."""
  return sum(1 for r in results if _setting_of(r) == setting)


def _knob_label(extra) -> str:
  return ", ".join(f"{KNOB_NAMES.get(k, k)} = {v}" for k, v in extra)


def main_psd_label(runs) -> str:
  """"PSD (r = 0.5, α_T = 0.5, teacher = self)" from a run's config.json."""
  for r in runs:
    psd = plot.read_config(r.run.workdir).get("loss", {}).get("psd", {})
    if psd:
      return (f"PSD (r = {psd.get('subset_fraction')}, α_T = "
              f"{psd.get('alpha_final')}, teacher = {psd.get('teacher')})")
  return "PSD (main settings)"


def ablation_tables(results) -> list[tuple[float, list[str]]]:
  """One table per noise level that has ablation runs."""
  g, keys = groups(results), metric_keys(results)
  zs = keys[0][1] if keys else None
  out = []
  for noise in sorted({s.noise for s in g if s.knobs}):
    clip, psd = Setting("clip", noise), Setting("psd", noise)
    main_psd = g.get(psd, [])
    header = ["setting", "seeds", *(f"{l} (%)" if k != MASS else l for l, k in keys),
              "Δ zero-shot vs PSD (paired)"]
    rows = []
    reference = [("CLIP", g.get(clip, []), clip),
                 (main_psd_label(main_psd), main_psd, psd)]
    ablations = [(_knob_label(s.knobs), runs, s) for s, runs in g.items()
                 if s.noise == noise and s.knobs]
    for label, runs, setting in reference + ablations:
      total = _count(results, setting)
      if not total:
        continue
      delta = ("–" if setting == psd or zs is None else
               _cell(_paired(runs, main_psd, zs), zs, signed=True))
      rows.append([label, f"{len(runs)}/{total}",
                   *(_cell(_values(runs, k).values(), k) for _, k in keys),
                   delta])
    out.append((noise, _table(header, rows)))
  return out


def _dataset(results) -> str:
  for r in results:
    data = plot.read_config(r.run.workdir).get("data", {})
    if data.get("source") == "tfds_class_captions":
      return f"class-name captions of `{data.get('tfds_name')}` (label noise)"
    if data:
      return f"`{data.get('source')}`"
  return "unknown (no config.json yet)"


def render(results) -> str:
  finished = sum(r.status == "finished" for r in results)
  keys = metric_keys(results)
  lines = [
      "<!-- generated by `python -m launch.sweep --report` "
      "(studies/noise_robustness/report.py); do not edit the numbers by hand -->",
      f"Data: {_dataset(results)}. {finished}/{len(results)} runs finished; "
      "values are the last evaluation of each finished run, mean ± sample std "
      "over seeds; Δ rows/columns are per-seed differences (same data and "
      "noise draw), mean ± std.", ""]
  if not keys:
    return "\n".join(lines + ["No finished runs yet: results pending.", ""])
  lines += ["#### CLIP vs PSD by caption noise", "", *main_table(results), "",
            f"![accuracy vs caption noise]({FIGURES[0]})", ""]
  for noise, table in ablation_tables(results):
    lines += [f"#### PSD ablations at caption noise {noise:g}", "", *table, ""]
  lines += ["#### Soft-target mass on the positive during training "
            "(Figure 5 analogue)", "",
            f"![PSD target mass on the positive]({FIGURES[1]})", ""]
  return "\n".join(lines)


def mean_curve(runs, key) -> tuple[list, list, list]:
  """(steps, mean, std) over runs at the steps every run logged."""
  per_run = [dict(zip(*plot.series(plot.read_metrics(r.run.workdir), key)))
             for r in runs]
  per_run = [p for p in per_run if p]
  if not per_run:
    return [], [], []
  steps = sorted(set.intersection(*(set(p) for p in per_run)))
  stats = [mean_std([p[s] for p in per_run]) for s in steps]
  return steps, [m for m, _ in stats], [s for _, s in stats]


def accuracy_figure(results):
  from matplotlib.figure import Figure
  g = groups(results)
  keys = [(l, k) for l, k in metric_keys(results) if k != MASS]
  fig = Figure(figsize=(4.2 * max(1, len(keys)), 3.6))
  axes = fig.subplots(1, max(1, len(keys)), squeeze=False)[0]
  for ax, (label, key) in zip(axes, keys):
    # CLIP a little left of its noise level, PSD right: bars stay apart.
    for loss, marker, dx in (("clip", "s", -0.004), ("psd", "o", 0.004)):
      points = sorted(((s.noise, mean_std(_values(runs, key).values()))
                       for s, runs in g.items()
                       if s.loss == loss and not s.knobs), key=lambda p: p[0])
      points = [(n, ms) for n, ms in points if ms is not None]
      if points:
        ax.errorbar([n + dx for n, _ in points], [100 * ms[0] for _, ms in points],
                    yerr=[100 * ms[1] for _, ms in points], marker=marker,
                    capsize=4, label=loss_label(loss))
    ax.set_xlabel("caption noise")
    ax.set_ylabel(f"{label} (%)")
    ax.set_title(label)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
  fig.tight_layout()
  return fig


def mass_figure(results):
  from matplotlib.figure import Figure
  g = groups(results)
  fig = Figure(figsize=(10, 3.8))
  left, right = fig.subplots(1, 2, sharey=True)
  panels = ((left, "PSD by caption noise",
             [(f"noise {s.noise:g}", g[s]) for s in sorted(
                 s for s in g if s.loss == "psd" and not s.knobs)]),)
  ab_noise = sorted({s.noise for s in g if s.knobs})
  if ab_noise:
    n0 = ab_noise[-1]
    panels += ((right, f"PSD ablations at noise {n0:g}",
                [("main", g.get(Setting("psd", n0), []))] +
                [(_knob_label(s.knobs), runs) for s, runs in g.items()
                 if s.noise == n0 and s.knobs]),)
  else:
    right.set_visible(False)
  for ax, title, curves in panels:
    for label, runs in curves:
      steps, mean, std = mean_curve(runs, MASS)
      if steps:
        ax.plot(steps, mean, label=f"{label} (n={len(runs)})")
        ax.fill_between(steps, [m - s for m, s in zip(mean, std)],
                        [m + s for m, s in zip(mean, std)], alpha=0.2)
    ax.set_title(title)
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
  left.set_ylabel("target mass on the positive")
  fig.tight_layout()
  return fig


def _write(root: str, name: str, data: bytes) -> str:
  path = spec.join(root, name)
  fileio.write_file(path, data)
  return path


def _png(fig) -> bytes:
  buf = io.BytesIO()
  fig.savefig(buf, format="png", dpi=110)
  return buf.getvalue()


def write(results, root: str) -> list[str]:
  """The sweep's report hook: robustness.md and the figures under ``root``."""
  paths = [_write(root, "robustness.md", render(results).encode())]
  if metric_keys(results):
    paths.append(_write(root, FIGURES[0], _png(accuracy_figure(results))))
    paths.append(_write(root, FIGURES[1], _png(mass_figure(results))))
  return paths


def publish(root: str, doc: str, section: str, *, report: str = "robustness.md",
            figures=FIGURES) -> str:
  """Splices ``root/<report>`` into ``doc`` between the section's markers and
  copies the figures to ``<doc dir>/robustness/<section>/``."""
  src = spec.join(root, report)
  if not fileio.exists(src):
    raise FileNotFoundError(f"{src} does not exist; run the sweep's --report "
                            "first")
  body = fileio.read_text(src)
  rel = f"robustness/{section}"
  for name in figures:  # the sweep root may be on GCS; the doc is local
    if fileio.exists(spec.join(root, name)):
      fileio.write_file(os.path.join(os.path.dirname(doc), rel, name),
                        fileio.read_bytes(spec.join(root, name)))
      body = body.replace(f"]({name})", f"]({rel}/{name})")
  splice(doc, section, body)
  return doc


def splice(doc: str, section: str, body: str) -> None:
  """Replaces the text between the doc's ``results:<section>`` markers."""
  with open(doc) as f:
    text = f.read()
  begin, end = (f"<!-- results:{section}:begin -->",
                f"<!-- results:{section}:end -->")
  pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
  if not pattern.search(text):
    raise ValueError(f"{doc} has no '{begin}' ... '{end}' markers")
  text = pattern.sub(lambda _: f"{begin}\n{body.strip()}\n{end}", text, count=1)
  with open(doc, "w") as f:
    f.write(text)


def cli(section: str, report: str = "robustness.md", figures=FIGURES,
        extra_flags=None, after=None) -> None:
  """Every study report's ``python -m studies.<study>.report --root=R`` entry
  point: splices ``R/<report>`` and its figures into ``--doc`` at
  ``--section``. ``extra_flags``: name -> help of further string flags;
  ``after(flags)``: the study's own extra step (memorisation: the README
  headline)."""
  from absl import app, flags
  flags.DEFINE_string("root", None, f"Sweep root holding {report}.")
  flags.DEFINE_string("doc", "docs/robustness.md", "Markdown file to update.")
  flags.DEFINE_string("section", section, "Marker name in the doc.")
  for name, help_text in (extra_flags or {}).items():
    flags.DEFINE_string(name, "", help_text)
  flags.mark_flag_as_required("root")

  def main(argv):
    del argv
    f = flags.FLAGS
    print(f"updated {publish(f.root, f.doc, f.section, report=report, figures=figures)}")
    if after is not None:
      after(f)

  app.run(main)


if __name__ == "__main__":
  cli("synthetic")
