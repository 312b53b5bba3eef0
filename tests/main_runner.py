"""Shared by the subprocess tests of ``python -m cvlg_jax.main``: a tiny config
file without evaluators, a runner whose runs share one XLA compilation cache
(every run compiles the same program), a runner of multi-process jobs
(``launch.multiprocess``), and readers of what a run leaves in its workdir."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMING_KEYS = ("steps_per_sec", "examples_per_sec")
# demo.py:tiny (20 steps, log every 5) without evaluators, checkpoint every 5;
# ":eval" keeps one small synthetic evaluator, run at the last step.
TINY_NOEVAL_CONFIG = f"""
import sys
sys.path.insert(0, {REPO!r})
from configs import demo

def get_config(arg=None):
  c = demo.get_config("tiny")
  if arg != "eval":
    c.eval = {{}}
  c.train.steps, c.train.log_every, c.train.checkpoint_every = 20, 5, 5
  c.train.eval_every = c.train.steps
  return c
"""


def _cache_env(root):
  return dict(os.environ, JAX_PLATFORMS="cpu",
              JAX_COMPILATION_CACHE_DIR=str(root / "xla_cache"),
              JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
              JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1")


def _config_file(root):
  config = root / "tiny_noeval.py"
  config.write_text(TINY_NOEVAL_CONFIG)
  return config


def make_main_runner(root):
  """``run(workdir, *flags) -> CompletedProcess`` of main on the tiny config
  (through tests/fault_main.py, which also takes ``--fault_*`` flags)."""
  config = _config_file(root)
  env = dict(_cache_env(root), XLA_FLAGS="--xla_force_host_platform_device_count=8")

  def run(workdir, *flags):
    return subprocess.run(
        [sys.executable, "-m", "tests.fault_main", f"--config={config}",
         f"--workdir={workdir}", *flags],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  return run


@dataclasses.dataclass
class Job:
  """A finished ``launch.multiprocess`` run: its exit code, the launcher's
  own stderr and each process's output."""
  returncode: int
  stderr: str
  logs: list[str]
  seconds: float   # wall time, printed by the tests for the record


def make_multiprocess_runner(root, config_arg=None):
  """``run(workdir, *flags, num_processes=2) -> Job``: the tiny config as one
  job of ``num_processes`` processes with 8 CPU devices in all.

  Each job runs in its own session; whatever happens (a failure, a timeout),
  the whole process group is killed before ``run`` returns, so no process
  outlives its test.
  """
  config = _config_file(root)
  config_flag = f"--config={config}" + (f":{config_arg}" if config_arg else "")
  env = _cache_env(root)

  def run(workdir, *flags, num_processes=2, timeout=600) -> Job:
    logs = f"{workdir}.logs"
    cmd = [sys.executable, "-m", "launch.multiprocess",
           "--module=tests.fault_main", f"--num_processes={num_processes}",
           f"--cpu_devices_per_process={8 // num_processes}",
           f"--process_logs={logs}", "--", config_flag, f"--workdir={workdir}",
           *flags]
    start = time.time()
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
      _, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
      os.killpg(proc.pid, signal.SIGKILL)
      _, stderr = proc.communicate()
      raise AssertionError(f"job still running after {timeout} s, killed:\n"
                           f"{stderr[-2000:]}\n{_tails(logs, num_processes)}")
    finally:
      try:
        os.killpg(proc.pid, signal.SIGKILL)
      except ProcessLookupError:
        pass
    return Job(proc.returncode, stderr, [_read(os.path.join(
        logs, f"process_{i}.log")) for i in range(num_processes)],
               time.time() - start)
  return run


def _read(path):
  try:
    with open(path, errors="replace") as f:
      return f.read()
  except FileNotFoundError:
    return ""


def _tails(logs, count, chars=3000):
  return "\n".join(f"--- process {i}:\n" + _read(os.path.join(
      logs, f"process_{i}.log"))[-chars:] for i in range(count))


def committed_steps(workdir):
  names = os.listdir(os.path.join(workdir, "checkpoints"))
  return sorted(int(n) for n in names if n.isdigit())


def metric_rows(workdir):
  """metrics.jsonl without the wall-clock fields, which no rerun reproduces."""
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING_KEYS}
            for line in f]


def final_state(workdir, step=20):
  """The whole train state (params, optimizer state, step, RNG) as numpy,
  whatever device layout (one process or several) saved it."""
  import jax
  import numpy as np
  import orbax.checkpoint as ocp
  path = os.path.join(workdir, "checkpoints", str(step), "state")
  checkpointer = ocp.StandardCheckpointer()
  metadata = checkpointer.metadata(path)
  metadata = getattr(metadata, "item_metadata", metadata)
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  target = jax.tree.map(
      lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), metadata)
  state = checkpointer.restore(path, target)
  return {jax.tree_util.keystr(p): np.asarray(x)
          for p, x in jax.tree_util.tree_leaves_with_path(state)}


def assert_bitwise_equal(got, want):
  assert got.keys() == want.keys()
  differ = [k for k in want if got[k].dtype != want[k].dtype
            or got[k].shape != want[k].shape or got[k].tobytes() != want[k].tobytes()]
  assert not differ, f"{len(differ)}/{len(want)} leaves differ, e.g. {differ[:3]}"
