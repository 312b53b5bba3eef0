"""Entry point: ``python -m cvlg_jax.main --config=configs/demo.py --workdir=DIR``.

``--config=file.py:arg`` passes ``arg`` to the file's ``get_config``;
``--config.train.steps=100`` overrides any value; ``--print_config`` prints
the resolved config and exits.

Exit codes (cli/common.py): 0 finished or stopped cleanly by SIGTERM/SIGINT
(checkpoint committed; rerun the same command to resume), 2 invalid config
or command line (before anything compiles), 3 non-finite loss/gradients (not
saved), 4 checkpoints exist but cannot be resumed (unreadable, or the config
changes what a resume cannot), 5 a multi-process job could not be joined
(``cvlg_jax.run.distributed``: CVLG_COORDINATOR, CVLG_NUM_PROCESSES,
CVLG_PROCESS_ID or CVLG_DISTRIBUTED=1), 6 the step does not fit the
devices' memory.
"""

from __future__ import annotations

import os

# Before anything imports TensorFlow (configs -> clu, TFDS): no C++ INFO lines.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from cvlg_jax.cli import common  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints, metrics and "
                               "TensorBoard logs go.")
_PRINT_CONFIG = flags.DEFINE_bool(
    "print_config", False, "Print the config (after the file's arg and the "
    "--config.* overrides) and exit; docs/config.md says what each key means.")
flags.mark_flags_as_required(["config"])

# What shrinks a step's memory, most effective first.
MEMORY_KNOBS = ("model.remat=True, train.grad_accum_steps=N, loss.chunk_size=N "
                "(the streamed loss), mesh.fsdp=N, a smaller train.batch_size")


def main(argv, hooks=None):
  """The command; ``hooks`` (a ``run.loop.StepHooks``) is for test harnesses."""
  del argv
  config = common.config_value(_CONFIG)
  if _PRINT_CONFIG.value:
    print(config)
    return
  if not _WORKDIR.value:
    common.fail(common.EXIT_USAGE, "Invalid command line: --workdir is required")
  common.quiet_library_logs()
  try:  # TensorFlow (clu, TFDS) must never grab the accelerators JAX uses.
    import tensorflow as tf
    tf.config.set_visible_devices([], "GPU")
  except Exception:  # pylint: disable=broad-except
    pass
  import jax
  from cvlg_jax import config as config_lib
  from cvlg_jax.run import checkpointing, distributed, loop, stopping
  from cvlg_jax.run.saved_config import ConfigMismatchError
  from cvlg_jax.step.plan import make_plan
  try:
    config_lib.validate(config)  # before joining a multi-process job
    common.check_workdir(_WORKDIR.value)
    distributed.initialize(config.distributed)
    plan = make_plan(config, jax.device_count())
    loop.run(config, _WORKDIR.value, plan=plan, hooks=hooks)
  except config_lib.ConfigError as e:
    common.fail(common.EXIT_USAGE, f"Invalid config: {e}")
  except distributed.SetupError as e:
    common.fail(common.EXIT_DISTRIBUTED, f"Multi-process setup failed: {e}")
  except stopping.NonFiniteError as e:
    common.fail(common.EXIT_NONFINITE, f"Training stopped: {e}")
  except (checkpointing.NoReadableCheckpointError, ConfigMismatchError) as e:
    common.fail(common.EXIT_RESUME, f"Cannot resume: {e}")
  except jax.errors.JaxRuntimeError as e:
    if "RESOURCE_EXHAUSTED" not in str(e):
      raise
    common.fail(common.EXIT_MEMORY, (
        f"Out of device memory: the step of train.batch_size="
        f"{config.train.batch_size} on {jax.device_count()} x "
        f"{jax.devices()[0].device_kind} does not fit; shrink it with "
        f"{MEMORY_KNOBS} (python -m cvlg_jax.aot shows where the memory goes)"))


def run():
  """The command line (``python -m`` of the entry module)."""
  app.run(main, flags_parser=common.parse_flags)
