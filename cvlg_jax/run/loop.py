"""The training loop: resume, step, log, evaluate, checkpoint, stop cleanly.

The state and the compiled step live in ``cvlg_jax.step``; this module only
drives them: the eval context comes from ``cvlg_jax.evaluation.context``, the
run record from ``cvlg_jax.run.record`` and the stop guards from
``cvlg_jax.run.stopping``.

Reliability contract (see README, "Preemption and resume"):
* SIGTERM/SIGINT (single process) or a JAX preemption sync point (multi-host)
  finishes the current step, saves it, waits for the commit, and returns.
* Restarting resumes from the newest readable checkpoint: state, Grain
  iterator position and loop counters, so the run continues bitwise exactly.
* A NaN/Inf loss or gradient norm raises :class:`NonFiniteError` before that
  state can reach a checkpoint, unless ``train.skip_nonfinite_steps`` allows
  skipping it (the step then reports ``metrics["nonfinite"]`` and leaves the
  state unchanged).
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, NamedTuple

import jax
import numpy as np
from absl import logging

from cvlg_jax import config as config_lib, fileio
from cvlg_jax.data import pipeline
from cvlg_jax.data.skipping import own_skip_counts, skip_metrics
from cvlg_jax.evaluation import common as eval_common
from cvlg_jax.evaluation.context import make_eval_context
from cvlg_jax.run import checkpointing
from cvlg_jax.run.metrics_log import MetricsLog
from cvlg_jax.run.record import write as write_run_record
from cvlg_jax.run.stopping import NonFiniteError, NonFiniteGuard, StopRequest
from cvlg_jax.step import sharding
from cvlg_jax.run.saved_config import check_resume
from cvlg_jax.step.plan import RunPlan, make_plan, resolved
from cvlg_jax.step.train_state import build, eval_variables, init_state
from cvlg_jax.step.train_step import make_train_step


class StepHooks:
  """Calls the loop makes around each step; the defaults do nothing. The
  test harness (tests/fault_main.py) injects faults through them, so no
  test-only switch lives in the config or in this loop."""

  def batch(self, step: int, batch: dict) -> dict:
    """The host batch of ``step`` just before it is sharded."""
    return batch

  def after_dispatch(self, step: int) -> None:
    """``step`` is dispatched (and may still run on the devices)."""


def _check_skip_support(train_step, state, config):
  """skip_nonfinite_steps needs the step to report (and undo) bad updates;
  checked by tracing only, before anything compiles."""
  b, s, n = config.train.batch_size, config.data.image_size, config.data.context_length
  batch = dict(image=jax.ShapeDtypeStruct((b, s, s, 3), np.uint8),
               tokens=jax.ShapeDtypeStruct((b, n), np.int32),
               example_id=jax.ShapeDtypeStruct((b,), np.int32))
  _, metrics = jax.eval_shape(train_step, state, batch)
  if "nonfinite" not in metrics:
    raise config_lib.ConfigError(
        f"config.train.skip_nonfinite_steps={config.train.skip_nonfinite_steps} "
        "needs a train step that reports metrics['nonfinite'] and leaves the "
        "state unchanged on such steps; this one does not (use 0)")


def _by_process(counts) -> np.ndarray:
  """[processes, reasons]: every process's running skip counts (each reads
  its own share), gathered at a step every process logs or saves."""
  counts = np.asarray(counts, np.int64)
  if jax.process_count() == 1:
    return counts[None]
  from jax.experimental import multihost_utils
  return np.asarray(multihost_utils.process_allgather(counts)).reshape(
      jax.process_count(), -1)


class _DataSkips:
  """This process's running counts of bad records skipped (real data), per
  reason: resumed from the checkpoint, summed over processes when logged."""

  def __init__(self, saved):
    self.counts = None if saved is None else own_skip_counts(
        saved, jax.process_index(), jax.process_count())

  def add(self, batch) -> None:
    """Pops the batch's ``skipped`` counts into the running sums."""
    skipped = batch.pop("skipped", None)
    if skipped is not None:
      counts = np.asarray(skipped).reshape(-1, np.shape(skipped)[-1]).sum(0)
      self.counts = counts if self.counts is None else self.counts + counts

  def metrics(self) -> dict:
    return {} if self.counts is None else skip_metrics(_by_process(self.counts))

  def saved(self):
    return None if self.counts is None else _by_process(self.counts).tolist()


class _StepPlan(NamedTuple):
  """What happens after a step besides training."""
  log: bool
  evaluate: list[str]      # names of the evaluators due
  save: bool
  stop: bool               # a stop was requested: save and leave

  @property
  def anything(self) -> bool:
    return self.log or bool(self.evaluate) or self.save


def _after_step(step, run_plan: RunPlan, evaluators, stop_requested) -> _StepPlan:
  config = run_plan.config
  tc, total = config.train, config.train.steps
  return _StepPlan(
      log=step % tc.log_every == 0 or step == total,
      # A stop skips evaluation, to stay inside a preemption grace period.
      evaluate=[] if stop_requested else [
          n for n in evaluators if eval_common.due(
              config.eval, n, step, default_every=run_plan.eval_every, last_step=total)],
      save=step % tc.checkpoint_every == 0 or step == total or stop_requested,
      stop=stop_requested)


class _Throughput:
  """Steps and examples per second since the last log, evaluation excluded.

  The clock starts when the first step of this process has finished
  (:meth:`started`), so the first rate and ETA leave out compilation; a log
  on that very step reports the rate including it, being all there is."""

  def __init__(self, step, batch_size):
    self.t0, self.step, self.batch_size = time.time(), step, batch_size
    self._compile = None  # (t0, step) until the first rate is taken

  def started(self, step):
    """The step that compiled has finished: rates count from here."""
    self._compile = (self.t0, self.step)
    self.t0, self.step = time.time(), step

  def rates(self, step) -> dict:
    t0, since = self.t0, self.step
    if step == since and self._compile is not None:
      t0, since = self._compile
    rate = (step - since) / max(time.time() - t0, 1e-9)
    self.t0, self.step, self._compile = time.time(), step, None
    return dict(steps_per_sec=rate, examples_per_sec=rate * self.batch_size)

  def exclude(self, seconds):
    """Leaves ``seconds`` (an evaluation) out of the next rate."""
    self.t0 += seconds


@dataclasses.dataclass
class _Loop:
  """Everything the loop works with, built once by :func:`run`."""
  config: Any
  workdir: str
  mesh: Any
  model: Any
  tokenizer: Any
  state_shardings: Any
  train_step: Any
  data_iter: Any
  ckpt: checkpointing.Checkpointer
  stop: StopRequest
  plan: RunPlan
  hooks: StepHooks


def run(config, workdir: str, *, plan: RunPlan | None = None,
        hooks: StepHooks | None = None) -> dict:
  """Trains (resuming from the latest checkpoint in ``workdir``); returns the
  last logged metrics. Raises NonFiniteError on a NaN/Inf step.

  ``plan``: the run plan of ``config`` when the caller already made it (the
  CLI validates before joining a multi-process job); else it is made here.
  """
  if plan is None:
    config_lib.validate(config)
    plan = make_plan(config, jax.device_count())
  fileio.makedirs(workdir)
  with StopRequest(multi_process=jax.process_count() > 1) as stop:
    mesh = sharding.make_mesh(config.mesh)
    tokenizer, model, tx, schedule = build(plan)
    state, state_shardings = init_state(plan, model, tx, mesh)
    train_step = make_train_step(plan, model, tx, schedule, mesh, state_shardings)
    if config.train.skip_nonfinite_steps:
      _check_skip_support(train_step, state, config)
    block, blocks = sharding.process_batch_block(mesh)
    data_iter = iter(pipeline.train_dataset(
        config, tokenizer, plan.data, process_index=block, process_count=blocks))
    ckpt = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"),
                                      keep=config.train.keep_checkpoints)
    loop = _Loop(config, workdir, mesh, model, tokenizer, state_shardings,
                 train_step, data_iter, ckpt, stop, plan, hooks or StepHooks())
    try:
      return _train(loop, state)
    except NonFiniteError as e:
      ckpt.wait()
      raise NonFiniteError(f"{e}; the latest checkpoint is step "
                           f"{ckpt.latest_step()}") from None
    finally:
      ckpt.close()  # waits for the last async save to commit
      if hasattr(data_iter, "close"):
        data_iter.close()


def _resume_or_init(loop: _Loop, state):
  """(state, checkpoint meta, start step, config changes): the newest
  readable checkpoint, else ``train.init_from``'s weights, else the fresh
  state. A resume first compares the config with the run's config.json:
  what it cannot honour is refused in one line (ConfigMismatchError), the
  rest is warned about and recorded in run_info.json."""
  changed = {}
  if loop.ckpt.latest_step() is not None:
    changed = check_resume(loop.config, loop.workdir)
    if changed:
      logging.warning("Resuming with a changed config (recorded in run_info.json): %s",
                      ", ".join(f"{k} {old!r} -> {new!r}"
                                for k, (old, new) in changed.items()))
  restored, meta, start = loop.ckpt.restore_latest(
      checkpointing.abstract_like(state, loop.state_shardings), loop.data_iter)
  if restored is not None:
    logging.info("Resumed from checkpoint at step %d.", start)
    return restored, meta, start, changed
  if loop.config.train.init_from:  # a resumed run keeps its own weights
    from cvlg_jax.run import init_from
    state, source = init_from.load(loop.config, state, loop.state_shardings,
                                   loop.config.train.init_from)
    logging.info("Initialised params and model state from %s.", source)
  return state, meta, 0, {}


def _evaluators(loop: _Loop) -> dict:
  ctx = make_eval_context(loop.model, loop.mesh, eval_variables(loop.state_shardings),
                          loop.tokenizer, loop.config.data.image_size,
                          loop.config.train.batch_size, loop.plan.data)
  evaluators, skipped = eval_common.build_all(loop.config.eval, ctx)
  for name, reason in skipped.items():
    logging.warning("Evaluator %s skipped: %s", name, reason)
  return evaluators


def _metrics_row(step, total, metrics, throughput, guard, skips, tc) -> dict:
  """The logged row of a step (host values), and a progress line."""
  row = {k: float(v) for k, v in jax.device_get(metrics).items()
         if k != "nonfinite"}
  row.update(throughput.rates(step))
  if tc.skip_nonfinite_steps:
    row["skipped_nonfinite"] = guard.skipped
  row.update(skips.metrics())  # summed over all processes
  rate = row["steps_per_sec"]
  logging.info("step %d/%d | loss %.4f | %.2f steps/s | %.0f ex/s | ETA %s",
               step, total, row["loss"], rate, row["examples_per_sec"],
               time.strftime("%H:%M:%S", time.gmtime((total - step) / max(rate, 1e-9))))
  return row


def _train(loop: _Loop, state) -> dict:
  config, tc = loop.config, loop.config.train
  state, meta, start, changed = _resume_or_init(loop, state)
  lead = jax.process_index() == 0
  if lead:
    write_run_record(config, loop.workdir, loop.mesh, resumed_from=start or None,
                     resolved=resolved(loop.plan), changed_on_resume=changed)
  from clu import metric_writers
  writer = metric_writers.create_default_writer(loop.workdir, just_logging=not lead)
  log = MetricsLog(loop.workdir, resume_step=start, writer=writer, write_file=lead)
  evaluators = _evaluators(loop)
  guard = NonFiniteGuard(tc.skip_nonfinite_steps, meta.get("skipped_nonfinite", 0))
  skips, hooks = _DataSkips(meta.get("data_skipped")), loop.hooks
  throughput = _Throughput(start, tc.batch_size)
  last, pending = {}, None
  if start >= tc.steps:
    logging.info("Checkpoint step %d >= train.steps=%d: nothing to do.", start,
                 tc.steps)
  for step in range(start + 1, tc.steps + 1):
    batch = next(loop.data_iter)
    skips.add(batch)
    state, metrics = loop.train_step(
        state, sharding.shard_batch(hooks.batch(step, batch), loop.mesh))
    hooks.after_dispatch(step)
    if step == start + 1:  # compiled and ran: from here on, the ETA is honest
      jax.block_until_ready(metrics)
      throughput.started(step)
    if pending is not None:
      guard.check(*pending)  # the previous step, long finished on device
    pending = (step, metrics)
    plan = _after_step(step, loop.plan, evaluators, _stop_requested(loop, step))
    if not plan.anything:
      continue
    guard.check(*pending)  # nothing of a bad step may be logged or saved
    pending, row = None, {}
    if plan.log:
      row = _metrics_row(step, tc.steps, metrics, throughput, guard, skips, tc)
    if plan.evaluate:
      began = time.time()
      row.update(_evaluate(evaluators, plan.evaluate, state, step))
      throughput.exclude(time.time() - began)  # not training throughput
    if row:
      log.write(step, row)
      last = row
    if loop.stop.signal is not None and not plan.stop:  # arrived while logging
      plan = plan._replace(save=True, stop=True)
    if plan.save:
      loop.ckpt.save(step, state, loop.data_iter, force=True, meta=dict(
          skipped_nonfinite=guard.skipped, data_skipped=skips.saved()))
    if plan.stop:
      loop.ckpt.wait()
      logging.warning("Stopped by %s after step %d/%d: checkpoint %d is "
                      "committed; rerun the same command to resume.",
                      loop.stop.signal or "a preemption notice", step, tc.steps,
                      step)
      break
  log.flush()
  return last


def _stop_requested(loop: _Loop, step) -> bool:
  """A signal here, or (several processes) JAX's preemption sync point."""
  return loop.stop.signal is not None or (
      jax.process_count() > 1 and loop.ckpt.reached_preemption(step))


def _evaluate(evaluators, names, state, step) -> dict:
  results = eval_common.run_all({n: evaluators[n] for n in names},
                                eval_variables(state))
  logging.info("eval at step %d: %s", step, ", ".join(
      f"{k}={v:.4f}" for k, v in sorted(results.items())))
  return results
