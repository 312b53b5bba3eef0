"""Local backend: each run is a ``python -m cvlg_jax.main`` subprocess.

Runs go one after another or ``parallel`` at a time; a run whose metrics
already reach ``train.steps`` with a checkpoint at that step is skipped, and
an interrupted one resumes from its last checkpoint when launched again (the
trainer does that by itself). Output goes to ``WORKDIR/train.log``; for a
workdir on an object store (``gs://``, which cannot stream appends) to a
local file first, appended to ``WORKDIR/train.log`` when the run ends.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time

from cvlg_jax import fileio
from launch import spec


def command(config: str, run: spec.Run, python: str = sys.executable) -> list[str]:
  return [python, "-m", "cvlg_jax.main",
          *spec.trainer_flags(config, run.workdir, run.overrides)]


def is_finished(run: spec.Run) -> bool:
  """Metrics logged at the last step and a checkpoint saved there."""
  from launch import plot
  if not fileio.isdir(spec.join(run.workdir, "checkpoints", str(run.steps))):
    return False
  return any(r.get("step") == run.steps
             for r in plot.read_metrics(run.workdir))


def log_path(run: spec.Run) -> str:
  """The local file the run's output streams into (see the module doc)."""
  if not fileio.is_remote(run.workdir):
    return os.path.join(run.workdir, "train.log")
  tag = hashlib.sha1(run.workdir.encode()).hexdigest()[:12]
  return os.path.join(tempfile.gettempdir(), "cvlg_jax_logs", tag, "train.log")


def shell_line(cmd: list[str], log: str) -> str:
  """The copy-pasteable shell equivalent of what :func:`launch` executes."""
  return (f"mkdir -p {shlex.quote(os.path.dirname(log))} && cd "
          f"{shlex.quote(spec.REPO)} && {shlex.join(cmd)} >> {shlex.quote(log)} 2>&1")


def launch(config: str, runs: list[spec.Run], *, parallel: int = 1,
           dry_run: bool = False, out=sys.stdout, progress: bool = True) -> list[str]:
  """Runs what is unfinished; returns the names of runs that failed."""
  todo, done = [], []
  for run in runs:
    (done if is_finished(run) else todo).append(run)
  for run in done:
    print(f"# finished, skipping: {run.name}", file=out)
  if dry_run:
    for run in todo:
      print(shell_line(command(config, run), log_path(run)), file=out)
    return []
  from tqdm import tqdm
  bar = tqdm(total=len(runs), initial=len(done), unit="run", disable=not progress,
             file=sys.stderr, desc="sweep")
  running, failed, queue = {}, [], list(todo)
  try:
    while queue or running:
      while queue and len(running) < max(1, parallel):
        run = queue.pop(0)
        proc, log = _start(config, run)
        running[proc] = (run, log)
      time.sleep(0.2)
      for proc in [p for p in running if p.poll() is not None]:
        run, log = running.pop(proc)
        where, tail = _finish(run, log)
        if proc.returncode != 0 or not is_finished(run):
          failed.append(run.name)
          bar.write(f"FAILED (exit {proc.returncode}): {run.name}; see "
                    f"{where}\n" + tail)
        bar.update(1)
        bar.set_postfix_str(run.name[-40:])
  except KeyboardInterrupt:
    # SIGTERM makes the trainer save a checkpoint and exit; relaunch resumes.
    for proc in running:
      proc.send_signal(signal.SIGTERM)
    for proc, (run, log) in running.items():
      proc.wait()
      _finish(run, log)
    raise
  finally:
    bar.close()
  return failed


def _start(config: str, run: spec.Run):
  fileio.makedirs(run.workdir)
  cmd = command(config, run)
  os.makedirs(os.path.dirname(log_path(run)), exist_ok=True)
  log = open(log_path(run), "a")
  log.write(f"\n# {time.strftime('%Y-%m-%d %H:%M:%S')} {shlex.join(cmd)}\n")
  log.flush()
  proc = subprocess.Popen(cmd, cwd=spec.REPO, stdout=log, stderr=subprocess.STDOUT,
                          stdin=subprocess.DEVNULL)
  return proc, log


def _finish(run: spec.Run, log) -> tuple[str, str]:
  """Closes the log (a remote workdir gets its text appended to its
  train.log); returns where the log is now and its last lines."""
  log.close()
  tail = _tail(log.name)
  if not fileio.is_remote(run.workdir):
    return log.name, tail
  with open(log.name, errors="replace") as f:
    fileio.append_text(spec.join(run.workdir, "train.log"), f.read())
  os.remove(log.name)
  return spec.join(run.workdir, "train.log"), tail


def _tail(path: str, lines: int = 15) -> str:
  try:
    with open(path, errors="replace") as f:
      return "".join(f.readlines()[-lines:])
  except OSError:
    return ""
