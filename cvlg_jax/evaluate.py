"""Runs the configured eval suite on a checkpoint.

    python -m cvlg_jax.evaluate --config=configs/demo.py --workdir=DIR
    python -m cvlg_jax.evaluate --config=... --workdir=DIR --checkpoint=DIR/checkpoints/600

Uses the latest checkpoint in ``WORKDIR/checkpoints`` unless ``--checkpoint``
names a step directory. Writes ``WORKDIR/eval/<step>.json`` and prints a
table. Entries whose data set is missing are reported as skipped with the
reason; they never stop the suite.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any, NamedTuple

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory.")
_CHECKPOINT = flags.DEFINE_string(
    "checkpoint", None, "A checkpoint step directory (default: the latest "
    "under WORKDIR/checkpoints).")
flags.mark_flags_as_required(["config", "workdir"])


def find_checkpoint(workdir: str, checkpoint: str | None) -> tuple[str, int]:
  """(step directory, step) of ``checkpoint`` or of the newest committed one."""
  if checkpoint:
    path = os.path.abspath(checkpoint)
    step = os.path.basename(path.rstrip("/"))
    if not step.isdigit() or not os.path.isdir(os.path.join(path, "state")):
      raise FileNotFoundError(f"--checkpoint={checkpoint} is not a checkpoint "
                              "step directory (expected .../checkpoints/<step>/state)")
    return path, int(step)
  root = os.path.join(workdir, "checkpoints")
  steps = sorted(int(d) for d in os.listdir(root) if d.isdigit()) if os.path.isdir(root) else []
  if not steps:
    raise FileNotFoundError(f"no committed checkpoint under {root}")
  return os.path.join(root, str(steps[-1])), steps[-1]


class Restored(NamedTuple):
  path: str          # the checkpoint's step directory
  step: int
  tokenizer: Any
  model: Any
  mesh: Any
  state: Any         # train_step.TrainState, in its training shardings
  shardings: Any


def restore(config, workdir: str, checkpoint: str | None = None) -> Restored:
  """The train state of ``checkpoint`` (default: the run's newest), laid out
  as the trainer lays it out, with the tokenizer and model that go with it."""
  import jax
  import orbax.checkpoint as ocp
  from cvlg_jax import (checkpointing, config as config_lib, init_from,
                        sharding, train_step)

  config_lib.validate(config, num_devices=jax.device_count())
  path, step = find_checkpoint(workdir, checkpoint)
  # The weights were trained with the recorded activation / LayerNorm eps.
  init_from.check_options(config, path, f"checkpoint {path}")
  mesh = sharding.make_mesh(config.mesh)
  tokenizer, model, tx, _ = train_step.build(config)
  state, shardings = train_step.init_state(config, model, tx, mesh)
  if checkpointing.is_weights_only(path):  # `cvlg_jax.pretrained import`
    state, _ = init_from.load(config, state, shardings, path,
                              source=f"checkpoint {path}")
  else:
    abstract = checkpointing.abstract_like(state, shardings)
    state = ocp.StandardCheckpointer().restore(os.path.join(path, "state"),
                                               abstract)
  return Restored(path, step, tokenizer, model, mesh, state, shardings)


def evaluate(config, workdir: str, checkpoint: str | None = None) -> dict:
  """Restores params, runs every ``config.eval`` entry; returns the report."""
  from cvlg_jax import train_step
  from cvlg_jax.evaluation import common

  path, step, tokenizer, model, mesh, state, shardings = restore(
      config, workdir, checkpoint)
  from cvlg_jax.train import make_eval_context
  ctx = make_eval_context(model, mesh, train_step.eval_variables(shardings),
                          tokenizer, config.data.image_size,
                          config.train.batch_size, config)
  evaluators, skipped = common.build_all(config.eval, ctx)
  variables = train_step.eval_variables(state)
  results = {}
  for name, evaluator in evaluators.items():
    try:
      results[name] = {k: float(v) for k, v in evaluator.run(variables).items()}
    except common.DatasetUnavailable as e:
      skipped[name] = str(e)
  report = dict(step=step, checkpoint=path, results=results, skipped=skipped)
  out_dir = os.path.join(workdir, "eval")
  os.makedirs(out_dir, exist_ok=True)
  with open(os.path.join(out_dir, f"{step}.json"), "w") as f:
    json.dump(report, f, indent=2, sort_keys=True)
  return report


def format_table(report: dict) -> str:
  lines = [f"eval of step {report['step']} ({report['checkpoint']})", "",
           "| eval | metric | value |", "|---|---|---|"]
  for name, metrics in sorted(report["results"].items()):
    for key, value in sorted(metrics.items()):
      shown = f"{value:.4f}" if abs(value) < 1000 else f"{value:.0f}"
      lines.append(f"| {name} | {key} | {shown} |")
  for name, reason in sorted(report["skipped"].items()):
    lines.append(f"| {name} | skipped | {reason.splitlines()[0]} |")
  return "\n".join(lines)


def main(argv):
  del argv
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  from cvlg_jax import config as config_lib
  try:
    report = evaluate(_CONFIG.value, _WORKDIR.value, _CHECKPOINT.value)
  except (config_lib.ConfigError, FileNotFoundError) as e:
    logging.error("%s", e)
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  print(format_table(report))


if __name__ == "__main__":
  app.run(main)
