"""The training loop: resume, step, log, evaluate, checkpoint, stop cleanly.

The state and the compiled step live in ``cvlg_jax.train_step``; they are
re-exported here (``train.TrainState``, ``train.make_train_step``).

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

import functools
import json
import os
import signal
import threading
import time

import jax
import numpy as np
from absl import logging

from cvlg_jax import checkpointing, config as config_lib, fileio, sharding
from cvlg_jax.data import pipeline
from cvlg_jax.evaluation import common as eval_common
from cvlg_jax.metrics_log import MetricsLog
from cvlg_jax.train_step import (  # noqa: F401  (re-exported)
    TrainState, build, eval_variables, init_state, make_train_step,
    normalize_images)

# Token id far outside any vocabulary: the embedding lookup (jnp.take, "fill"
# mode) returns NaN for it, so a poisoned batch gives a NaN loss and NaN
# gradients without touching the step's code. Test-only (debug_poison_step).
_POISON_TOKEN = 2 ** 30
_TIMING_KEYS = ("steps_per_sec", "examples_per_sec")


class NonFiniteError(RuntimeError):
  """The loss or the gradients went NaN/Inf; nothing from that step was saved."""


def make_eval_context(model, mesh, variable_shardings, tokenizer, image_size,
                      batch_size, config=None) -> eval_common.EvalContext:
  """Sharded encode functions that accept any batch size (padded inside).

  They take the model's variables (``train_step.eval_variables(state)``:
  params plus BatchNorm running statistics) and run it in inference mode.
  With the run's ``config``, evaluators can also read its training data.
  """
  rows, devices = sharding.batch_sharding(mesh), mesh.size
  chunk = max(devices, batch_size // devices * devices)
  # Outputs replicated: with several processes every host reads them whole.
  enc_img = jax.jit(lambda v, x: model.apply(v, images=x)[0],
                    in_shardings=(variable_shardings, rows),
                    out_shardings=sharding.replicated(mesh))
  enc_txt = jax.jit(lambda v, t: model.apply(v, tokens=t)[1],
                    in_shardings=(variable_shardings, rows),
                    out_shardings=sharding.replicated(mesh))

  def batched(fn, params, x):
    out = []
    for start in range(0, len(x), chunk):
      part = np.asarray(x[start:start + chunk])
      pad = -len(part) % devices
      if pad:
        part = np.concatenate([part, np.zeros((pad, *part.shape[1:]), part.dtype)])
      out.append(np.asarray(fn(params, jax.device_put(part, rows)))[:len(part) - pad])
    return np.concatenate(out)

  train_data = None if config is None else (lambda: pipeline.train_data(config))

  return eval_common.EvalContext(
      encode_images=functools.partial(batched, enc_img),
      encode_texts=functools.partial(batched, enc_txt),
      tokenizer=tokenizer, image_size=image_size, batch_size=chunk,
      train_data=train_data)


def _write_json(path, obj):
  """Atomically (a kill mid-write leaves the old file, not a torn one)."""
  fileio.write_text_atomic(
      path, obj if isinstance(obj, str) else json.dumps(obj, indent=2))


def _git(*args):
  import subprocess
  try:
    out = subprocess.run(["git", *args], capture_output=True, text=True, timeout=5,
                         cwd=os.path.dirname(os.path.abspath(__file__)))
  except (OSError, subprocess.SubprocessError):
    return None
  return out.stdout.strip() if out.returncode == 0 else None


def write_run_record(config, workdir, mesh, *, resumed_from: int | None = None):
  """``config.json`` (resolved) and ``run_info.json`` (code, versions, devices),
  for reproducing the run later. Rewritten at every (re)start."""
  import importlib.metadata as md
  import sys
  from cvlg_jax import __version__
  _write_json(os.path.join(workdir, "config.json"),
              config.to_json_best_effort(indent=2, sort_keys=True))
  versions = {}
  for pkg in ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "grain",
              "ml_collections", "clu", "numpy", "tensorflow", "tensorflow-cpu"):
    try:
      versions[pkg] = md.version(pkg)
    except md.PackageNotFoundError:
      versions[pkg] = None
  commit = _git("rev-parse", "HEAD")
  dirty = _git("status", "--porcelain", "--untracked-files=no")
  record = dict(cvlg_jax=__version__, git_commit=commit,
                git_dirty=None if dirty is None else bool(dirty),
                versions=versions, python=sys.version.split()[0], argv=sys.argv,
                devices=[str(d) for d in jax.devices()],
                device_kind=jax.devices()[0].device_kind,
                process_count=jax.process_count(),
                mesh={k: int(v) for k, v in mesh.shape.items()},
                resumed_from_step=resumed_from,
                started=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
  _write_json(os.path.join(workdir, "run_info.json"), record)


class _StopRequest:
  """Turns SIGTERM/SIGINT into a flag the loop checks after each step.

  A second SIGINT (Ctrl-C twice) raises KeyboardInterrupt: the user insists.
  With several processes JAX's preemption notifier owns SIGTERM and the loop
  polls its sync point instead (``reached_preemption``), so only SIGINT is
  caught, and passed on to this process as SIGTERM: the notifier then stops
  every process at one step. Not installed off the main thread, where Python
  cannot install handlers.
  """

  def __init__(self, multi_process: bool = False):
    self.signal = None
    self._multi = multi_process
    self._enabled = threading.current_thread() is threading.main_thread()
    self._previous, self._interrupted = {}, False

  def __enter__(self):
    if self._enabled:
      sigs = (signal.SIGINT,) if self._multi else (signal.SIGTERM, signal.SIGINT)
      for sig in sigs:
        self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def _handle(self, signum, frame):
    del frame
    if signum == signal.SIGINT and (self.signal or self._interrupted):
      raise KeyboardInterrupt
    if self._multi:  # JAX's notifier picks one stop step for all processes
      self._interrupted = True
      logging.warning("Received SIGINT: asking every process to stop at one step.")
      os.kill(os.getpid(), signal.SIGTERM)
      return
    self.signal = self.signal or signal.Signals(signum).name
    logging.warning("Received %s: stopping after the current step.",
                    signal.Signals(signum).name)

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)


def nonfinite_quantities(metrics) -> list[str]:
  """Names among loss / grad_norm whose (host) values are NaN or Inf."""
  return [k for k in ("loss", "grad_norm")
          if k in metrics and not np.all(np.isfinite(metrics[k]))]


class _NonFiniteGuard:
  """Checks each step's loss and gradient norm for NaN/Inf.

  ``check`` runs one step late (after the next step is dispatched) so the host
  never waits for the device, and always before anything of that step is
  logged, evaluated or saved. A bad step raises unless the skip budget allows
  it and the step reports ``nonfinite`` (it then left the state unchanged).
  """

  def __init__(self, max_skips: int, skipped: int = 0):
    self.max_skips, self.skipped = max_skips, skipped

  def check(self, step: int, metrics) -> None:
    keys = [k for k in ("loss", "grad_norm", "nonfinite") if k in metrics]
    host = jax.device_get({k: metrics[k] for k in keys})
    bad = nonfinite_quantities(host)
    flagged = bool(host["nonfinite"]) if "nonfinite" in host else bool(bad)
    if not flagged:
      return
    what = ", ".join(f"{k}={float(host[k])}" for k in bad) or "metrics['nonfinite']"
    if "nonfinite" in host and self.skipped < self.max_skips:
      self.skipped += 1
      logging.warning("Non-finite %s at step %d: update skipped (%d of at most "
                      "%d).", what, step, self.skipped, self.max_skips)
      return
    budget = (f"more than train.skip_nonfinite_steps={self.max_skips} such steps"
              if self.max_skips else "set train.skip_nonfinite_steps=N to skip "
              "up to N such steps instead")
    raise NonFiniteError(f"non-finite {what} at step {step}; stopped without "
                         f"saving this state ({budget})")


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


def _poison(batch):
  return dict(batch, tokens=np.full_like(batch["tokens"], _POISON_TOKEN))


def run(config, workdir: str) -> dict:
  """Trains (resuming from the latest checkpoint in ``workdir``); returns the
  last logged metrics. Raises NonFiniteError on a NaN/Inf step."""
  config_lib.validate(config, num_devices=jax.device_count())
  fileio.makedirs(workdir)
  multi = jax.process_count() > 1
  with _StopRequest(multi_process=multi) as stop:
    mesh = sharding.make_mesh(config.mesh)
    tokenizer, model, tx, schedule = build(config)
    state, state_shardings = init_state(config, model, tx, mesh)
    train_step = make_train_step(config, model, tx, schedule, mesh, state_shardings)
    if config.train.skip_nonfinite_steps:
      _check_skip_support(train_step, state, config)
    block, blocks = sharding.process_batch_block(mesh)
    data_iter = iter(pipeline.train_dataset(config, tokenizer, process_index=block,
                                            process_count=blocks))
    ckpt = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"),
                                      keep=config.train.keep_checkpoints)
    try:
      return _loop(config, workdir, mesh, model, tokenizer, state,
                   state_shardings, train_step, data_iter, ckpt, stop)
    except NonFiniteError as e:
      ckpt.wait()
      raise NonFiniteError(f"{e}; the latest checkpoint is step "
                           f"{ckpt.latest_step()}") from None
    finally:
      ckpt.close()  # waits for the last async save to commit
      if hasattr(data_iter, "close"):
        data_iter.close()


def _loop(config, workdir, mesh, model, tokenizer, state, state_shardings,
          train_step, data_iter, ckpt, stop) -> dict:
  restored, meta, start = ckpt.restore_latest(
      checkpointing.abstract_like(state, state_shardings), data_iter)
  if restored is not None:
    state = restored
    logging.info("Resumed from checkpoint at step %d.", start)
  elif config.train.init_from:  # a resumed run keeps its own weights
    from cvlg_jax import init_from
    state, source = init_from.load(config, state, state_shardings,
                                   config.train.init_from)
    logging.info("Initialised params and model state from %s.", source)
  start = start or 0
  lead = jax.process_index() == 0
  if lead:
    write_run_record(config, workdir, mesh, resumed_from=start or None)
  from clu import metric_writers
  writer = metric_writers.create_default_writer(workdir, just_logging=not lead)
  log = MetricsLog(workdir, resume_step=start, writer=writer, write_file=lead)

  ctx = make_eval_context(model, mesh, eval_variables(state_shardings),
                          tokenizer, config.data.image_size,
                          config.train.batch_size, config)
  evaluators, skipped_evals = eval_common.build_all(config.eval, ctx)
  for name, reason in skipped_evals.items():
    logging.warning("Evaluator %s skipped: %s", name, reason)

  tc = config.train
  total, batch_size = tc.steps, tc.batch_size
  guard = _NonFiniteGuard(tc.skip_nonfinite_steps, meta.get("skipped_nonfinite", 0))
  data_skipped = meta.get("data_skipped")  # this process's running sums (real data)
  if data_skipped is not None:
    from cvlg_jax.data.skipping import own_skip_counts
    data_skipped = own_skip_counts(data_skipped, jax.process_index(),
                                   jax.process_count()).tolist()
  debug_signal = getattr(signal, tc.debug_signal)
  last, pending, t0, t_step = {}, None, time.time(), start
  if start >= total:
    logging.info("Checkpoint step %d >= train.steps=%d: nothing to do.", start, total)
  for step in range(start + 1, total + 1):
    batch = next(data_iter)
    skipped = batch.pop("skipped", None)
    if skipped is not None:
      counts = np.asarray(skipped).reshape(-1, np.shape(skipped)[-1]).sum(0)
      data_skipped = (counts if data_skipped is None
                      else np.asarray(data_skipped) + counts).tolist()
    if step == tc.debug_poison_step:
      batch = _poison(batch)
    state, metrics = train_step(state, sharding.shard_batch(batch, mesh))
    if step == tc.debug_signal_at_step and tc.debug_signal_process in (
        -1, jax.process_index()):  # test-only: "arrives mid-step"
      logging.warning("train.debug_signal_at_step: %s to process %d during "
                      "step %d.", tc.debug_signal, jax.process_index(), step)
      os.kill(os.getpid(), debug_signal)
    if pending is not None:
      guard.check(*pending)  # the previous step, long finished on device
    pending = (step, metrics)

    preempted = stop.signal is not None or (
        jax.process_count() > 1 and ckpt.reached_preemption(step))
    log_now = step % tc.log_every == 0 or step == total
    eval_now = [n for n in evaluators if not preempted and eval_common.due(
        config.eval, n, step, default_every=tc.eval_every, last_step=total)]
    save_now = step % tc.checkpoint_every == 0 or step == total or preempted
    if not (log_now or eval_now or save_now):
      continue
    guard.check(*pending)  # nothing of a bad step may be logged or saved
    pending = None
    row = {}
    if log_now:
      row = {k: float(v) for k, v in jax.device_get(metrics).items()
             if k != "nonfinite"}
      rate = (step - t_step) / max(time.time() - t0, 1e-9)
      row.update(steps_per_sec=rate, examples_per_sec=rate * batch_size)
      if tc.skip_nonfinite_steps:
        row["skipped_nonfinite"] = guard.skipped
      if data_skipped is not None:
        from cvlg_jax.data.skipping import skip_metrics
        row.update(skip_metrics(_by_process(data_skipped)))  # summed over all
      logging.info("step %d/%d | loss %.4f | %.2f steps/s | %.0f ex/s | ETA %s",
                   step, total, row["loss"], rate, rate * batch_size,
                   time.strftime("%H:%M:%S", time.gmtime((total - step) / max(rate, 1e-9))))
      t0, t_step = time.time(), step
    if eval_now:
      results = eval_common.run_all({n: evaluators[n] for n in eval_now},
                                     eval_variables(state))
      logging.info("eval at step %d: %s", step, ", ".join(
          f"{k}={v:.4f}" for k, v in sorted(results.items())))
      row.update(results)
      t0 = time.time()  # evaluation time is not training throughput
    if row:
      log.write(step, row)
      last = row
    if stop.signal is not None and not preempted:  # arrived while logging
      preempted = save_now = True
    if save_now:
      ckpt.save(step, state, data_iter, force=True,
                meta=dict(skipped_nonfinite=guard.skipped, data_skipped=None if
                          data_skipped is None else _by_process(data_skipped).tolist()))
    if preempted:
      ckpt.wait()
      reason = stop.signal or "a preemption notice"
      logging.warning("Stopped by %s after step %d/%d: checkpoint %d is "
                      "committed; rerun the same command to resume.",
                      reason, step, total, step)
      break
  log.flush()
  return last
