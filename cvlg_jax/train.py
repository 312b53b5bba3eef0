"""The training loop: resume, step, log, evaluate, checkpoint, stop cleanly.

The state and the compiled step live in ``cvlg_jax.train_step``; they are
re-exported here (``train.TrainState``, ``train.make_train_step``).
"""

from __future__ import annotations

import functools
import json
import os
import signal
import time
import jax
import numpy as np
from absl import logging

from cvlg_jax import checkpointing, config as config_lib, sharding
from cvlg_jax.data import pipeline
from cvlg_jax.evaluation import common as eval_common
from cvlg_jax.metrics_log import MetricsLog
from cvlg_jax.train_step import (  # noqa: F401  (re-exported)
    TrainState, build, init_state, make_train_step, normalize_images)


def make_eval_context(model, mesh, param_shardings, tokenizer, image_size,
                      batch_size) -> eval_common.EvalContext:
  """Sharded encode functions that accept any batch size (padded inside)."""
  rows, devices = sharding.batch_sharding(mesh), mesh.size
  chunk = max(devices, batch_size // devices * devices)
  enc_img = jax.jit(lambda p, x: model.apply({"params": p}, images=x)[0],
                    in_shardings=(param_shardings, rows))
  enc_txt = jax.jit(lambda p, t: model.apply({"params": p}, tokens=t)[1],
                    in_shardings=(param_shardings, rows))

  def batched(fn, params, x):
    out = []
    for start in range(0, len(x), chunk):
      part = np.asarray(x[start:start + chunk])
      pad = -len(part) % devices
      if pad:
        part = np.concatenate([part, np.zeros((pad, *part.shape[1:]), part.dtype)])
      out.append(np.asarray(fn(params, jax.device_put(part, rows)))[:len(part) - pad])
    return np.concatenate(out)

  return eval_common.EvalContext(
      encode_images=functools.partial(batched, enc_img),
      encode_texts=functools.partial(batched, enc_txt),
      tokenizer=tokenizer, image_size=image_size, batch_size=chunk)


def write_run_record(config, workdir, mesh):
  """Resolved config and environment, for reproducing the run later."""
  import importlib.metadata as md
  import subprocess
  from cvlg_jax import __version__
  with open(os.path.join(workdir, "config.json"), "w") as f:
    f.write(config.to_json_best_effort(indent=2, sort_keys=True))
  versions = {}
  for pkg in ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "grain",
              "ml_collections", "clu", "numpy"):
    try:
      versions[pkg] = md.version(pkg)
    except md.PackageNotFoundError:
      versions[pkg] = None
  try:
    commit = subprocess.run(
        ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
        cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip() or None
  except (OSError, subprocess.SubprocessError):
    commit = None
  record = dict(cvlg_jax=__version__, git_commit=commit, versions=versions,
                devices=[str(d) for d in jax.devices()],
                process_count=jax.process_count(),
                mesh={k: int(v) for k, v in mesh.shape.items()})
  with open(os.path.join(workdir, "run_info.json"), "w") as f:
    json.dump(record, f, indent=2)


class _StopRequest:
  """Turns SIGTERM/SIGINT into a flag the loop checks after each step."""

  def __init__(self):
    self.signal = None
    self._previous = {}

  def __enter__(self):
    for sig in (signal.SIGTERM, signal.SIGINT):
      self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def _handle(self, signum, frame):
    del frame
    self.signal = signal.Signals(signum).name

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)


def run(config, workdir: str) -> dict:
  """Trains (resuming from the latest checkpoint in ``workdir``); returns the
  last logged metrics."""
  config_lib.validate(config, num_devices=jax.device_count())
  os.makedirs(workdir, exist_ok=True)
  mesh = sharding.make_mesh(config.mesh)
  tokenizer, model, tx, schedule = build(config)
  state, state_shardings = init_state(config, model, tx, mesh)
  data_iter = iter(pipeline.train_dataset(config, tokenizer))
  ckpt = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"),
                                    keep=config.train.keep_checkpoints)
  restored, start = ckpt.restore_latest(
      checkpointing.abstract_like(state, state_shardings), data_iter)
  if restored is not None:
    state = restored
    logging.info("Resumed from checkpoint at step %d.", start)
  start = start or 0
  if jax.process_index() == 0:
    write_run_record(config, workdir, mesh)
  from clu import metric_writers
  writer = metric_writers.create_default_writer(
      workdir, just_logging=jax.process_index() > 0)
  log = MetricsLog(workdir, resume_step=start, writer=writer)

  train_step = make_train_step(config, model, tx, schedule, mesh, state_shardings)
  ctx = make_eval_context(model, mesh, state_shardings.params, tokenizer,
                          config.data.image_size, config.train.batch_size)
  evaluators = {name: eval_common.build(cfg, ctx) for name, cfg in config.eval.items()}

  def evaluate(step):
    out = {}
    for name, ev in evaluators.items():
      every = config.eval[name].get("every", config.train.eval_every)
      if step % every == 0 or step == config.train.steps:
        out.update({f"{name}/{k}": v for k, v in ev.run(state.params).items()})
    return out

  total, batch = config.train.steps, config.train.batch_size
  last, t0, t_step = {}, time.time(), start
  with _StopRequest() as stop:
    for step in range(start + 1, total + 1):
      state, metrics = train_step(state, sharding.shard_batch(next(data_iter), mesh))
      row = {}
      if step % config.train.log_every == 0 or step == total:
        row = {k: float(v) for k, v in jax.device_get(metrics).items()}
        dt = time.time() - t0
        rate = (step - t_step) / max(dt, 1e-9)
        row.update(steps_per_sec=rate, examples_per_sec=rate * batch)
        logging.info("step %d/%d | loss %.4f | %.2f steps/s | %.0f ex/s | ETA %s",
                     step, total, row["loss"], rate, rate * batch,
                     time.strftime("%H:%M:%S", time.gmtime((total - step) / max(rate, 1e-9))))
        t0, t_step = time.time(), step
      if config.eval and (step % config.train.eval_every == 0 or step == total):
        results = evaluate(step)
        logging.info("eval at step %d: %s", step, ", ".join(
            f"{k}={v:.4f}" for k, v in sorted(results.items())))
        row.update(results)
        t0 = time.time()  # evaluation time is not training throughput
      if row:
        log.write(step, row)
        last = row
      if step % config.train.checkpoint_every == 0 or step == total or stop.signal:
        ckpt.save(step, state, data_iter, force=True)
      if stop.signal:
        logging.warning("Received %s: saved checkpoint at step %d; exiting.",
                        stop.signal, step)
        break
  ckpt.close()
  log.flush()
  if hasattr(data_iter, "close"):
    data_iter.close()
  return last
