"""Training curves of one or more runs, read back from their workdirs.

    python -m launch.plot WORKDIR [WORKDIR ...] --out=curves.png

Four panels on shared step axes: the training loss against the one-hot
targets (``clip_loss``: PSD's own loss mixes in soft targets, so its value
is not comparable with CLIP's), zero-shot top-1, the PSD weight α and the
soft-target mass left on the positive pair (1 for CLIP; it drops as PSD
hands mass to the teacher's other choices). Each run is labelled from its
``config.json`` (loss with its teacher, caption noise, seed). The readers here are
also what the sweep report uses; they accept local paths and ``gs://`` URLs.
"""

from __future__ import annotations

import io
import json
import math
import os
import re

from cvlg_jax import fileio

PANELS = (("clip_loss", "training loss, one-hot targets"),
          ("zeroshot", "zero-shot top-1"),
          ("alpha", "α (distillation weight)"),
          ("positive_mass", "target mass on the positive"))


def _path(workdir: str, *parts: str) -> str:
  return "/".join([workdir.rstrip("/"), *parts])


def _read_text(path: str) -> str | None:
  try:
    return fileio.read_text(path) if fileio.exists(path) else None
  except FileNotFoundError:  # deleted in between
    return None


def read_metrics(workdir: str) -> list[dict]:
  """Rows of ``metrics.jsonl``; a torn last line (killed writer) is dropped."""
  text = _read_text(_path(workdir, "metrics.jsonl")) or ""
  rows = []
  for line in text.splitlines():
    if line.strip():
      try:
        rows.append(json.loads(line))
      except json.JSONDecodeError:
        break
  return rows


def read_config(workdir: str) -> dict:
  text = _read_text(_path(workdir, "config.json"))
  return json.loads(text) if text else {}


def _flatten(d: dict, prefix: str = "") -> dict:
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flatten(v, f"{prefix}{k}/"))
    else:
      out[f"{prefix}{k}"] = v
  return out


def read_eval(workdir: str) -> tuple[int | None, dict]:
  """(step, numeric results) of the newest ``eval/<step>.json``, if any.

  ``cvlg_jax.evaluate`` writes ``{"step", "checkpoint", "results": {name:
  {metric: value}}, "skipped": {...}}``; results come back flattened as
  ``name/metric``. Other layouts are flattened whole.
  """
  names = fileio.listdir(_path(workdir, "eval"))
  steps = sorted(int(m.group(1)) for m in
                 (re.fullmatch(r"(\d+)\.json", n) for n in names) if m)
  if not steps:
    return None, {}
  report = json.loads(_read_text(_path(workdir, "eval", f"{steps[-1]}.json")))
  if isinstance(report.get("results"), dict):
    report = report["results"]
  flat = _flatten(report)
  return steps[-1], {k: v for k, v in flat.items() if k != "step" and
                     isinstance(v, (int, float)) and not isinstance(v, bool)}


def final_values(rows: list[dict]) -> dict:
  """The last logged value of every key (eval keys come from eval steps)."""
  out = {}
  for row in rows:
    out.update(row)
  return out


def run_label(config: dict, fallback: str = "") -> str:
  try:
    label = config["loss"]["name"]
    if label.endswith("psd"):  # which teacher distils is the run's identity
      label += f"[{config['loss']['psd']['teacher']}]"
    noise = config["data"]["caption_noise"]
    seed = config["train"]["seed"]
  except (KeyError, TypeError):
    return fallback
  return f"{label} noise={noise:g} seed={seed}"


def zeroshot_key(rows: list[dict]) -> str | None:
  keys = sorted({k for r in rows for k in r if k.endswith("zeroshot_top1")})
  if "synthetic/zeroshot_top1" in keys:
    return "synthetic/zeroshot_top1"
  return keys[0] if keys else None


def series(rows: list[dict], key: str | None):
  """(steps, values) of the rows that logged a finite number for ``key``."""
  points = [(r["step"], r[key]) for r in rows if key in r
            and isinstance(r[key], (int, float)) and math.isfinite(r[key])]
  return [s for s, _ in points], [v for _, v in points]


def _panel_key(rows: list[dict], key: str) -> str | None:
  if key == "zeroshot":
    return zeroshot_key(rows)
  if key == "clip_loss" and not any("clip_loss" in r for r in rows):
    return "loss"  # runs logged before clip_loss existed
  return key


def labels_for(workdirs: list[str]) -> list[str]:
  """Config-derived labels, made unique with the workdir name when needed."""
  labels = [run_label(read_config(w), os.path.basename(w.rstrip("/")))
            for w in workdirs]
  if len(set(labels)) < len(labels):
    labels = [f"{l} ({os.path.basename(w.rstrip('/'))})"
              for l, w in zip(labels, workdirs)]
  return labels


def draw(workdirs: list[str], fig=None, labels: list[str] | None = None):
  """Draws the four panels on ``fig`` (default: a new backend-free Figure,
  so this works the same under Agg, in notebooks and in tests)."""
  from matplotlib.figure import Figure
  fig = fig if fig is not None else Figure(figsize=(11, 7.5))
  axes = fig.subplots(2, 2, sharex=True).ravel()
  labels = labels or labels_for(workdirs)
  empty = []
  for workdir, label in zip(workdirs, labels):
    rows = read_metrics(workdir)
    if not rows:
      empty.append(workdir)
      continue
    for ax, (key, _) in zip(axes, PANELS):
      steps, values = series(rows, _panel_key(rows, key))
      if steps:
        ax.plot(steps, values, marker="o" if len(steps) < 12 else None,
                markersize=3, label=label)
  if len(empty) == len(workdirs):
    raise ValueError(f"no metrics.jsonl rows in any of {workdirs}")
  for ax, (_, title) in zip(axes, PANELS):
    ax.set_title(title)
    ax.grid(alpha=0.3)
  for ax in axes[2:]:
    ax.set_xlabel("step")
  axes[0].legend(fontsize="small")
  fig.tight_layout()
  return fig


SUMMARY_METRICS = ("zeroshot_top1", "zeroshot_top5", "i2t_R@1", "t2i_R@1")


def summary(workdirs: list[str], labels: list[str] | None = None) -> str:
  """A markdown table of each run's last evaluation (the metrics of
  ``SUMMARY_METRICS`` each run logged, under any evaluator's prefix), so a
  comparison ends with numbers as well as curves."""
  labels = labels or labels_for(workdirs)
  finals = [final_values(read_metrics(w)) for w in workdirs]
  def metric(key):
    return next((i for i, m in enumerate(SUMMARY_METRICS) if key.endswith(m)), None)
  keys = sorted({k for f in finals for k in f if metric(k) is not None},
                key=lambda k: (k.rsplit("/", 1)[0] if "/" in k else "", metric(k)))
  lines = ["| run | step | " + " | ".join(keys) + " |",
           "|---|---|" + "---|" * len(keys)]
  for label, final in zip(labels, finals):
    cells = [f"{100 * final[k]:.1f} %" if isinstance(final.get(k), (int, float))
             else "–" for k in keys]
    lines.append(f"| {label} | {final.get('step', '–')} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def main(argv):
  from absl import flags
  workdirs = argv[1:]
  if not workdirs:
    raise SystemExit("usage: python -m launch.plot WORKDIR [WORKDIR ...] "
                     "--out=FILE.png")
  for workdir in workdirs:
    if not read_metrics(workdir):
      print(f"warning: {workdir} has no metrics yet; skipped")
  fig = draw(workdirs)
  print(summary(workdirs))
  out = flags.FLAGS.out
  buf = io.BytesIO()
  fig.savefig(buf, dpi=120, format=os.path.splitext(out)[1][1:] or "png")
  fileio.write_file(out, buf.getvalue())
  print(f"wrote {out}")


if __name__ == "__main__":
  from absl import app, flags
  flags.DEFINE_string("out", "curves.png", "Output image (png, pdf, svg).")
  app.run(main)
