"""Runs the configured eval suite on a checkpoint.

    python -m cvlg_jax.evaluate --workdir=DIR        # the run's own config.json
    python -m cvlg_jax.evaluate --config=configs/demo.py --workdir=DIR
    python -m cvlg_jax.evaluate --config=... --workdir=DIR --checkpoint=DIR/checkpoints/600
    python -m cvlg_jax.evaluate --workdir=DIR --results_format=clip_benchmark

Without ``--config`` the run's ``WORKDIR/config.json`` (what it trained with)
is used. With it, a checkpoint that does not restore into ``--config``'s model
is reported in one line naming the keys where ``--config`` and
``config.json`` differ. Uses the latest checkpoint in ``WORKDIR/checkpoints``
unless ``--checkpoint`` names a step directory. Writes
``WORKDIR/eval/<step>.json`` and prints a table. Entries whose data set is
missing are reported as skipped with the reason; they never stop the suite.
``--results_format=clip_benchmark`` also writes one CLIP_benchmark result
file per zero-shot, retrieval and linear-probe entry into ``--results_dir``
(cvlg_jax.evaluation.clip_benchmark). Local paths and ``gs://`` alike
(cvlg_jax.fileio).
"""

from __future__ import annotations

import json
import os
from typing import Any, NamedTuple

# Before anything imports TensorFlow (configs -> clu, TFDS): no C++ INFO lines.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from cvlg_jax import fileio  # noqa: E402
from cvlg_jax.cli import common  # noqa: E402
from cvlg_jax.run.saved_config import (  # noqa: E402
    ConfigMismatchError, differing_keys, load_run_config)

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file (default: WORKDIR/config.json, the run's own).",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory.")
_CHECKPOINT = flags.DEFINE_string(
    "checkpoint", None, "A checkpoint step directory (default: the latest "
    "under WORKDIR/checkpoints).")
_RESULTS_FORMAT = flags.DEFINE_enum(
    "results_format", "native", ["native", "clip_benchmark"],
    "native: WORKDIR/eval/<step>.json only; clip_benchmark: also a LAION "
    "CLIP_benchmark JSON per data set (zero-shot, retrieval, linear probe), "
    "to merge into open_clip's results tables.")
_RESULTS_DIR = flags.DEFINE_string(
    "results_dir", None, "Where --results_format=clip_benchmark writes "
    "(default: WORKDIR/eval/clip_benchmark).")
_PRETRAINED_NAME = flags.DEFINE_string(
    "pretrained_name", None, "The `pretrained` label of CLIP_benchmark "
    "results (default: <WORKDIR basename>_step<step>, e.g. myrun_step600).")
flags.mark_flags_as_required(["workdir"])


def find_checkpoint(workdir: str, checkpoint: str | None) -> tuple[str, int]:
  """(step directory, step) of ``checkpoint`` or of the newest committed one
  (Orbax writes a step under a temporary name and renames it on commit)."""
  if checkpoint:
    path = fileio.absolute(checkpoint).rstrip("/")
    step = path.rsplit("/", 1)[-1]
    if not step.isdigit() or not fileio.isdir(os.path.join(path, "state")):
      raise FileNotFoundError(f"--checkpoint={checkpoint} is not a checkpoint "
                              "step directory (expected .../checkpoints/<step>/state)")
    return path, int(step)
  return committed_checkpoints(workdir)[0]


def committed_checkpoints(workdir: str) -> list[tuple[str, int]]:
  """(step directory, step) of every committed checkpoint, newest first."""
  root = os.path.join(workdir, "checkpoints")
  steps = sorted((int(d) for d in fileio.listdir(root) if d.isdigit()),
                 reverse=True)
  if not steps:
    raise FileNotFoundError(f"no committed checkpoint under {root}")
  return [(os.path.join(root, str(s)), s) for s in steps]


class Restored(NamedTuple):
  path: str          # the checkpoint's step directory
  step: int
  tokenizer: Any
  model: Any
  mesh: Any
  state: Any         # train_step.TrainState, in its training shardings
  shardings: Any
  config: Any        # what was used: the given one, or the run's config.json
  plan: Any          # step.plan.RunPlan of that config


def restore(config, workdir: str, checkpoint: str | None = None) -> Restored:
  """The train state of ``checkpoint`` (default: the run's newest), laid out
  as the trainer lays it out, with the tokenizer and model that go with it.
  ``config=None``: the run's own ``config.json``."""
  import jax
  import orbax.checkpoint as ocp
  from cvlg_jax.run import checkpointing, init_from
  from cvlg_jax import config as config_lib
  from cvlg_jax.step import sharding, train_state
  from cvlg_jax.evaluation.common import reads_train_data
  from cvlg_jax.step.plan import make_plan

  config = _mesh_for_this_machine(
      load_run_config(workdir) if config is None else config)
  config_lib.validate(config)
  # Training data only where the state's layout needs it (the bank's rows)
  # or an evaluator reads it (memorisation, held-out pairs).
  plan = make_plan(config, jax.device_count(),
                   open_data=reads_train_data(config.eval))
  candidates = ([find_checkpoint(workdir, checkpoint)] if checkpoint
                else committed_checkpoints(workdir))
  mesh = sharding.make_mesh(config.mesh)
  tokenizer, model, tx, _ = train_state.build(plan)
  state, shardings = train_state.init_state(plan, model, tx, mesh)
  unreadable = []
  for path, step in candidates:
    # The weights were trained with the recorded activation / LayerNorm eps.
    init_from.check_options(config, path, f"checkpoint {path}")
    if checkpointing.is_weights_only(path):  # `cvlg_jax.pretrained import`
      state, _ = init_from.load(config, state, shardings, path,
                                source=f"checkpoint {path}")
      break
    try:
      state = ocp.StandardCheckpointer().restore(
          os.path.join(path, "state"), checkpointing.abstract_like(state, shardings))
      break
    except Exception as e:  # pylint: disable=broad-except  (Orbax: tree/shape, I/O)
      differ = differing_keys(config, workdir)
      if differ:
        raise ConfigMismatchError(
            f"checkpoint {path} does not fit this config, which differs from "
            f"the run's config.json in {differ} (restore: {type(e).__name__}); "
            "omit --config to use the run's own config") from None
      # As training does: a damaged newest checkpoint falls back to the last
      # good one.
      logging.warning("Checkpoint %s is unreadable (%s); trying an older one.",
                      path, type(e).__name__)
      unreadable.append(f"{step} ({type(e).__name__})")
  else:
    raise checkpointing.NoReadableCheckpointError(
        f"no readable checkpoint in {workdir}: {', '.join(unreadable)} failed to "
        "restore; name a good one with --checkpoint=DIR/checkpoints/<step>")
  if unreadable:
    logging.warning("Evaluating checkpoint %d; unreadable: %s.", step,
                    ", ".join(unreadable))
  return Restored(path, step, tokenizer, model, mesh, state, shardings, config,
                  plan)


def _mesh_for_this_machine(config):
  """The training mesh (e.g. fsdp=8 on a pod) may not fit the devices here;
  the layout never changes the values, so fall back to data parallelism."""
  import jax
  from cvlg_jax.step import sharding
  try:
    sharding.mesh_shape(config.mesh.data, config.mesh.fsdp, jax.device_count())
    return config
  except ValueError as e:
    logging.warning("%s; evaluating with mesh data=-1, fsdp=1 instead.", e)
  config = config.copy_and_resolve_references()
  config.mesh.data, config.mesh.fsdp = -1, 1
  return config


def evaluate(config, workdir: str, checkpoint: str | None = None, *,
             results_format: str = "native", results_dir: str | None = None,
             pretrained_name: str | None = None) -> dict:
  """Restores params, runs every ``config.eval`` entry; returns the report.
  ``config=None``: the run's own ``config.json``. ``results_format=
  "clip_benchmark"`` also writes CLIP_benchmark files (``results_dir``,
  default ``WORKDIR/eval/clip_benchmark``; ``pretrained_name``, default
  ``<workdir basename>_step<step>``) and lists them, and the entries left
  out, under the returned report's ``"clip_benchmark"`` (not saved in
  ``eval/<step>.json``)."""
  if results_format not in ("native", "clip_benchmark"):
    raise ValueError(f"results_format must be native or clip_benchmark, got "
                     f"{results_format!r}")
  from cvlg_jax.evaluation import common
  from cvlg_jax.evaluation.context import make_eval_context
  from cvlg_jax.step.train_state import eval_variables

  (path, step, tokenizer, model, mesh, state, shardings, config,
   plan) = restore(config, workdir, checkpoint)
  ctx = make_eval_context(model, mesh, eval_variables(shardings),
                          tokenizer, config.data.image_size,
                          config.train.batch_size, plan.data)
  evaluators, skipped = common.build_all(config.eval, ctx)
  variables = eval_variables(state)
  results = {}
  for name, evaluator in evaluators.items():
    try:
      results[name] = {k: float(v) for k, v in evaluator.run(variables).items()}
    except common.DatasetUnavailable as e:
      skipped[name] = str(e)
  report = dict(step=step, checkpoint=path, results=results, skipped=skipped)
  write_report(workdir, report)
  if results_format == "clip_benchmark":
    from cvlg_jax.evaluation import clip_benchmark
    results_dir = results_dir or os.path.join(workdir, "eval", "clip_benchmark")
    written, notes = clip_benchmark.write_results(
        report, config.eval, config.model.name, results_dir,
        pretrained_name or clip_benchmark.default_pretrained_name(workdir, step))
    report["clip_benchmark"] = dict(dir=results_dir, written=written, notes=notes)
  return report


def write_report(workdir: str, report: dict) -> str:
  """``WORKDIR/eval/<step>.json`` (what sweep reports and plots read)."""
  path = os.path.join(workdir, "eval", f"{report['step']}.json")
  fileio.write_file(path, json.dumps(report, indent=2, sort_keys=True))
  return path


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
  common.quiet_library_logs()
  from cvlg_jax import config as config_lib
  from cvlg_jax.run import checkpointing
  try:
    report = evaluate(_CONFIG.value, _WORKDIR.value, _CHECKPOINT.value,
                      results_format=_RESULTS_FORMAT.value,
                      results_dir=_RESULTS_DIR.value,
                      pretrained_name=_PRETRAINED_NAME.value)
  except (config_lib.ConfigError, ConfigMismatchError, FileNotFoundError) as e:
    common.fail(common.EXIT_USAGE, f"error: {e}")
  except checkpointing.NoReadableCheckpointError as e:
    common.fail(common.EXIT_RESUME, f"error: {e}")
  print(format_table(report))
  if "clip_benchmark" in report:
    cb = report["clip_benchmark"]
    for note in cb["notes"]:
      print(note)
    print(f"clip_benchmark: wrote {len(cb['written'])} result files to {cb['dir']}")


def run():
  """The command line (``python -m`` of the entry module)."""
  app.run(main, flags_parser=common.parse_flags)
