"""Entry point: ``python -m cvlg_jax.main --config=configs/demo.py --workdir=DIR``.

``--config=file.py:arg`` passes ``arg`` to the file's ``get_config``;
``--config.train.steps=100`` overrides any value.

Exit codes: 0 finished or stopped cleanly by SIGTERM/SIGINT (checkpoint
committed; rerun the same command to resume), 2 invalid config (before
anything compiles), 3 non-finite loss/gradients (not saved), 4 checkpoints
exist but none can be restored, 5 a multi-process job could not be joined
(``cvlg_jax.run.distributed``: CVLG_COORDINATOR, CVLG_NUM_PROCESSES,
CVLG_PROCESS_ID or CVLG_DISTRIBUTED=1).
"""

from __future__ import annotations

import logging as std_logging
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints, metrics and "
                               "TensorBoard logs go.")
flags.mark_flags_as_required(["config", "workdir"])


def _quiet_library_logs():
  """Orbax and Grain log every save/restore detail at INFO; keep WARNING+."""
  def keep(record):
    noisy = ("/orbax/" in record.pathname or "/grain/" in record.pathname
             or "/clu/" in record.pathname)
    return record.levelno >= std_logging.WARNING or not noisy
  # ABSLHandler.handle bypasses its own filters; filter where records land.
  logging.get_absl_handler().python_handler.addFilter(keep)


def main(argv, hooks=None):
  """The command; ``hooks`` (a ``run.loop.StepHooks``) is for test harnesses."""
  del argv
  _quiet_library_logs()
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  try:  # TensorFlow (clu, TFDS) must never grab the accelerators JAX uses.
    import tensorflow as tf
    tf.config.set_visible_devices([], "GPU")
  except Exception:  # pylint: disable=broad-except
    pass
  import jax
  from cvlg_jax import config as config_lib
  from cvlg_jax.run import checkpointing, distributed, loop, stopping
  from cvlg_jax.step.plan import make_plan
  config = _CONFIG.value
  try:
    config_lib.validate(config)  # before joining a multi-process job
    distributed.initialize(config.distributed)
    plan = make_plan(config, jax.device_count())
    loop.run(config, _WORKDIR.value, plan=plan, hooks=hooks)
  except config_lib.ConfigError as e:
    _fail(2, f"Invalid config: {e}")
  except distributed.SetupError as e:
    _fail(5, f"Multi-process setup failed: {e}")
  except stopping.NonFiniteError as e:
    _fail(3, f"Training stopped: {e}")
  except checkpointing.NoReadableCheckpointError as e:
    _fail(4, f"Cannot resume: {e}")


def _fail(code: int, message: str):
  """One line on stderr (not a traceback) and a distinct exit code."""
  print(message, file=sys.stderr, flush=True)
  sys.exit(code)


def run():
  """The command line (``python -m`` of the entry module)."""
  app.run(main)
