"""``python -m tests.fault_main [--fault_*] <cvlg_jax.main flags>``: the
trainer with test-only fault injection, through the loop's ``StepHooks``.

Faults live here, in the test harness, so the user-facing config has no
test-only keys: a NaN batch at one step (``--fault_poison_step``), a signal
to this process during another (``--fault_signal_at_step``,
``--fault_signal``, ``--fault_signal_process``).
"""

import os
import signal

import jax
import numpy as np
from absl import app, flags, logging

from cvlg_jax.cli import common, train as cli_train
from cvlg_jax.run.loop import StepHooks

# Token id far outside any vocabulary: the embedding lookup (jnp.take, "fill"
# mode) returns NaN for it, so a poisoned batch gives a NaN loss and NaN
# gradients without touching the step's code.
POISON_TOKEN = 2 ** 30

_POISON = flags.DEFINE_integer("fault_poison_step", 0, "This step's batch "
                               "makes the loss NaN (0 = never).")
_SIGNAL_AT = flags.DEFINE_integer("fault_signal_at_step", 0, "Send "
                                  "--fault_signal to itself during this step.")
_SIGNAL = flags.DEFINE_enum("fault_signal", "SIGTERM",
                            ["SIGTERM", "SIGINT", "SIGKILL"], "Which signal.")
_PROCESS = flags.DEFINE_integer("fault_signal_process", -1, "Only this "
                                "process signals itself (-1 = all).")


class FaultInjection(StepHooks):

  def batch(self, step, batch):
    if step == _POISON.value:
      return dict(batch, tokens=np.full_like(batch["tokens"], POISON_TOKEN))
    return batch

  def after_dispatch(self, step):
    if step == _SIGNAL_AT.value and _PROCESS.value in (-1, jax.process_index()):
      logging.warning("fault_signal_at_step: %s to process %d during step %d.",
                      _SIGNAL.value, jax.process_index(), step)
      os.kill(os.getpid(), getattr(signal, _SIGNAL.value))


if __name__ == "__main__":
  app.run(lambda argv: cli_train.main(argv, hooks=FaultInjection()),
          flags_parser=common.parse_flags)
