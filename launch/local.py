"""Local backend: each run is a ``python -m cvlg_jax.main`` subprocess.

Runs go one after another or ``parallel`` at a time; a run whose metrics
already reach ``train.steps`` with a checkpoint at that step is skipped, and
an interrupted one resumes from its last checkpoint when launched again (the
trainer does that by itself). Output goes to ``WORKDIR/train.log``.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time

from launch import spec


def command(config: str, run: spec.Run, python: str = sys.executable) -> list[str]:
  return [python, "-m", "cvlg_jax.main",
          *spec.trainer_flags(config, run.workdir, run.overrides)]


def is_finished(run: spec.Run) -> bool:
  """Metrics logged at the last step and a checkpoint saved there."""
  from cvlg_jax import plot
  if not os.path.isdir(os.path.join(run.workdir, "checkpoints", str(run.steps))):
    return False
  return any(r.get("step") == run.steps
             for r in plot.read_metrics(run.workdir))


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
      print(shell_line(command(config, run), os.path.join(run.workdir, "train.log")),
            file=out)
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
        log.close()
        if proc.returncode != 0 or not is_finished(run):
          failed.append(run.name)
          bar.write(f"FAILED (exit {proc.returncode}): {run.name}; see "
                    f"{log.name}\n" + _tail(log.name))
        bar.update(1)
        bar.set_postfix_str(run.name[-40:])
  except KeyboardInterrupt:
    # SIGTERM makes the trainer save a checkpoint and exit; relaunch resumes.
    for proc in running:
      proc.send_signal(signal.SIGTERM)
    for proc, (_, log) in running.items():
      proc.wait()
      log.close()
    raise
  finally:
    bar.close()
  return failed


def _start(config: str, run: spec.Run):
  os.makedirs(run.workdir, exist_ok=True)
  cmd = command(config, run)
  log = open(os.path.join(run.workdir, "train.log"), "a")
  log.write(f"\n# {time.strftime('%Y-%m-%d %H:%M:%S')} {shlex.join(cmd)}\n")
  log.flush()
  proc = subprocess.Popen(cmd, cwd=spec.REPO, stdout=log, stderr=subprocess.STDOUT,
                          stdin=subprocess.DEVNULL)
  return proc, log


def _tail(path: str, lines: int = 15) -> str:
  try:
    with open(path, errors="replace") as f:
      return "".join(f.readlines()[-lines:])
  except OSError:
    return ""
