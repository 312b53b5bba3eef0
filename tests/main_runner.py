"""Shared by the subprocess tests of ``python -m cvlg_jax.main``: a tiny config
file without evaluators and a runner whose runs share one XLA compilation
cache (every run compiles the same program)."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# demo.py:tiny (20 steps, log every 5) without evaluators, checkpoint every 5.
TINY_NOEVAL_CONFIG = f"""
import sys
sys.path.insert(0, {REPO!r})
from configs import demo

def get_config(arg=None):
  c = demo.get_config("tiny")
  c.eval = {{}}
  c.train.steps, c.train.log_every, c.train.checkpoint_every = 20, 5, 5
  return c
"""


def make_main_runner(root):
  """``run(workdir, *flags) -> CompletedProcess`` of main on the tiny config."""
  config = root / "tiny_noeval.py"
  config.write_text(TINY_NOEVAL_CONFIG)
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
             JAX_PLATFORMS="cpu", JAX_COMPILATION_CACHE_DIR=str(root / "xla_cache"),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
             JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1")

  def run(workdir, *flags):
    return subprocess.run(
        [sys.executable, "-m", "cvlg_jax.main", f"--config={config}",
         f"--workdir={workdir}", *flags],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  return run


TIMING_KEYS = ("steps_per_sec", "examples_per_sec")


def metric_rows(workdir):
  """metrics.jsonl without the wall-clock fields, which no rerun reproduces."""
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING_KEYS}
            for line in f]


def final_state(workdir, step=20):
  """The whole saved train state (params, optimizer state, step, RNG, ...)
  as numpy, keyed by leaf path."""
  state = ocp.StandardCheckpointer().restore(
      os.path.join(workdir, "checkpoints", str(step), "state"))
  return {jax.tree_util.keystr(p): np.asarray(x)
          for p, x in jax.tree_util.tree_leaves_with_path(state)}


def assert_bitwise_equal(got, want):
  assert got.keys() == want.keys()
  differ = [k for k in want if got[k].dtype != want[k].dtype
            or got[k].shape != want[k].shape or got[k].tobytes() != want[k].tobytes()]
  assert not differ, f"{len(differ)}/{len(want)} leaves differ, e.g. {differ[:3]}"
