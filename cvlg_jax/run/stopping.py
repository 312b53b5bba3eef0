"""When a training run must stop: a signal, or a non-finite step.

:class:`StopRequest` turns SIGTERM/SIGINT into a flag the loop checks after
each step (it then saves that step and exits cleanly); :class:`NonFiniteGuard`
checks each step's loss and gradient norm, one step late, before anything of
that step is logged or saved.
"""

from __future__ import annotations

import os
import signal
import threading

import jax
import numpy as np
from absl import logging


class NonFiniteError(RuntimeError):
  """The loss or the gradients went NaN/Inf; nothing from that step was saved."""


class StopRequest:
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


class NonFiniteGuard:
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
