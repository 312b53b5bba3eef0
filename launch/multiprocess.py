"""N processes of ``cvlg_jax.main`` on this machine, as one multi-process JAX job.

    # 2 processes x 4 fake CPU devices (what the tests run)
    python -m launch.multiprocess --num_processes=2 --cpu_devices_per_process=4 \\
        -- --config=configs/demo.py:tiny --workdir=/tmp/mp
    # a GPU host, one process per GPU
    python -m launch.multiprocess --num_processes=8 --gpus_per_process=1 \\
        -- --config=configs/demo.py --workdir=/ckpt/run

Process i gets ``CVLG_COORDINATOR=127.0.0.1:<free port>``,
``CVLG_NUM_PROCESSES=N`` and ``CVLG_PROCESS_ID=i`` (see cvlg_jax.run.distributed)
and the same arguments after ``--``. Its output goes to
``LOG_DIR/process_<i>.log`` with ``--log_dir``, else here, each line prefixed
``[i]``.

Stopping: SIGTERM to the launcher is passed on to every process; Ctrl-C in
the terminal reaches them directly. Either way they stop at one step, save it
and exit 0; rerun the same command to resume. When a process dies, JAX ends
the others within ``config.distributed.heartbeat_timeout_s``; the launcher
then prints one line per process saying how it ended, and kills any that is
still running ``--peer_exit_timeout_s`` after the first failure.

Exit code: 0 when every process exits 0, else the first failure's code
(128 + N for signal N).
"""

from __future__ import annotations

import collections
import os
import signal
import socket
import subprocess
import sys
import threading
import time

from absl import app, flags

_NUM = flags.DEFINE_integer("num_processes", 2, "Processes to start.")
_CPU = flags.DEFINE_integer("cpu_devices_per_process", 0, "> 0: run on CPU "
                            "with this many (fake) devices per process.")
_GPUS = flags.DEFINE_integer("gpus_per_process", 0, "> 0: process i sees GPUs "
                             "[i*k, (i+1)*k) (JAX_LOCAL_DEVICE_IDS).")
_PORT = flags.DEFINE_integer("port", 0, "Coordinator port (0 = a free one).")
_LOG_DIR = flags.DEFINE_string("process_logs", "", "Each process's output to "
                               "DIR/process_<i>.log instead of here.")
_MODULE = flags.DEFINE_string("module", "cvlg_jax.main", "The module each "
                              "process runs with python -m (it takes "
                              "cvlg_jax.main's flags).")
_PEER_EXIT = flags.DEFINE_float("peer_exit_timeout_s", 600.0, "After a process "
                                "fails, kill the others still running this "
                                "much later (JAX should end them sooner).")

# What JAX logs (then SIGABRT) when its coordination service finds a dead peer.
JAX_PEER_FAILURE = "the JAX distributed service detected fatal errors"


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def process_env(index: int, count: int, port: int, *, cpu_devices: int = 0,
                gpus: int = 0, base=None) -> dict:
  """The environment of process ``index`` of ``count``."""
  env = dict(os.environ if base is None else base,
             CVLG_COORDINATOR=f"127.0.0.1:{port}", CVLG_NUM_PROCESSES=str(count),
             CVLG_PROCESS_ID=str(index), PYTHONUNBUFFERED="1")
  env.pop("CVLG_DISTRIBUTED", None)
  if cpu_devices:
    flag = f"--xla_force_host_platform_device_count={cpu_devices}"
    kept = [f for f in env.get("XLA_FLAGS", "").split()
            if not f.startswith("--xla_force_host_platform_device_count")]
    env.update(XLA_FLAGS=" ".join(kept + [flag]), JAX_PLATFORMS="cpu")
  if gpus:
    env["JAX_LOCAL_DEVICE_IDS"] = ",".join(
        str(d) for d in range(index * gpus, (index + 1) * gpus))
  return env


class _Process:
  """One child: its output copied line by line (to a log file or prefixed
  to our stderr), the last lines kept for the exit summary."""

  def __init__(self, index: int, cmd: list[str], env: dict, log_dir: str):
    self.index, self.tail = index, collections.deque(maxlen=200)
    self.log = (open(os.path.join(log_dir, f"process_{index}.log"), "a")
                if log_dir else None)
    self.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                 text=True, errors="replace", bufsize=1)
    self.started, self.ended, self.killed = time.time(), None, False
    self._copier = threading.Thread(target=self._copy, daemon=True)
    self._copier.start()

  def _copy(self):
    for line in self.proc.stdout:
      self.tail.append(line)
      if self.log:
        self.log.write(line)
        self.log.flush()
      else:
        sys.stderr.write(f"[{self.index}] {line}")

  def finish(self):
    self._copier.join(timeout=10)
    if self.log:
      self.log.close()


def describe(p: _Process, first_failure: _Process | None,
             peer_exit_timeout_s: float) -> str:
  """One line on how a process ended."""
  code = p.proc.returncode
  if code == 0:
    return f"process {p.index} exited 0"
  how = (f"was killed by SIGKILL from the launcher (still running "
         f"{peer_exit_timeout_s:.0f} s after process {first_failure.index} failed)"
         if p.killed else
         f"was killed by {signal.Signals(-code).name}" if code < 0 else
         f"exited with code {code}")
  when = (f" {p.ended - first_failure.ended:.1f} s after process "
          f"{first_failure.index} failed" if first_failure is not None
          and first_failure is not p and not p.killed else "")
  text = "".join(p.tail)
  if JAX_PEER_FAILURE in text:
    why = ": JAX's distributed runtime ended it because a peer stopped responding"
  else:
    last = [l.strip() for l in p.tail if l.strip()]
    why = f": {last[-1][:300]}" if last and code > 0 else ""
  return f"process {p.index} {how}{when}{why}"


def launch(main_args: list[str], *, num_processes: int, cpu_devices: int = 0,
           gpus: int = 0, port: int = 0, log_dir: str = "",
           peer_exit_timeout_s: float = 600.0, out=sys.stderr,
           command: list[str] | None = None) -> int:
  """Runs the job to its end; returns the launcher's exit code. ``command``
  replaces ``python -m cvlg_jax.main`` (tests)."""
  port = port or free_port()
  if log_dir:
    os.makedirs(log_dir, exist_ok=True)
  cmd = [*(command or [sys.executable, "-m", "cvlg_jax.main"]), *main_args]
  procs = [_Process(i, cmd, process_env(i, num_processes, port, cpu_devices=cpu_devices,
                                        gpus=gpus), log_dir)
           for i in range(num_processes)]

  def forward(signum, frame):
    del frame
    if signum == signal.SIGINT:  # the terminal sent it to every process too
      return
    for p in procs:
      if p.proc.poll() is None:
        p.proc.send_signal(signum)
  previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
  first = None
  try:
    while any(p.ended is None for p in procs):
      time.sleep(0.1)
      for p in procs:
        if p.ended is None and p.proc.poll() is not None:
          p.ended = time.time()
          if p.proc.returncode != 0 and first is None:
            first = p
      if first is not None and time.time() > first.ended + peer_exit_timeout_s:
        for p in procs:
          if p.proc.poll() is None:
            p.killed = True
            p.proc.kill()
  finally:
    for s, handler in previous.items():
      signal.signal(s, handler)
    for p in procs:
      if p.proc.poll() is None:
        p.proc.kill()
      p.proc.wait()
      p.finish()
  for p in procs:
    if p.proc.returncode != 0:
      print(f"launch.multiprocess: {describe(p, first, peer_exit_timeout_s)}", file=out, flush=True)
  if first is None:
    return 0
  print("launch.multiprocess: rerun the same command to resume from the last "
        "committed checkpoint.", file=out, flush=True)
  code = first.proc.returncode
  return code if code > 0 else 128 - code


def main(argv):
  main_args = argv[1:]
  if not main_args:
    raise app.UsageError("give cvlg_jax.main's arguments after --, e.g. "
                         "-- --config=configs/demo.py --workdir=/tmp/run")
  if _NUM.value < 1 or _CPU.value < 0 or _GPUS.value < 0:
    raise app.UsageError("--num_processes must be >= 1 and the device counts >= 0")
  sys.exit(launch(main_args, num_processes=_NUM.value, cpu_devices=_CPU.value,
                  gpus=_GPUS.value, port=_PORT.value, log_dir=_LOG_DIR.value,
                  peer_exit_timeout_s=_PEER_EXIT.value,
                  command=[sys.executable, "-m", _MODULE.value]))


if __name__ == "__main__":
  app.run(main)
