"""Joining a multi-process JAX job: one process per host, one global mesh.

A process learns its place from the environment (what differs between the
processes of one job; the config is the same for all of them):

* ``CVLG_COORDINATOR=host:port``, ``CVLG_NUM_PROCESSES=N``,
  ``CVLG_PROCESS_ID=i`` (all three, i in [0, N)): process 0 serves the
  coordination service at that address, every process connects to it.
  ``launch.multiprocess`` sets them for N processes on one machine.
* ``CVLG_DISTRIBUTED=1``: JAX finds all three itself (TPU pod slices, Slurm,
  Open MPI).

Neither set: a single-process run, nothing is initialized.

The timeouts are ``config.distributed.*``. ``heartbeat_timeout_s`` bounds how
long the survivors of a dead process live on: a collective with a dead peer
never returns on its own, but JAX's coordination service notices the missing
heartbeats and JAX then ends every other process itself (SIGABRT, after
logging "Terminating process because the JAX distributed service detected
fatal errors ... another task died"). That happens in JAX's C++ threads,
where Python cannot add its own message; ``launch.multiprocess`` adds one
line per process. A coordinator that does not answer within
``initialization_timeout_s`` ends the process the same way.
"""

from __future__ import annotations

import os

from absl import logging

ENV_COORDINATOR = "CVLG_COORDINATOR"
ENV_NUM_PROCESSES = "CVLG_NUM_PROCESSES"
ENV_PROCESS_ID = "CVLG_PROCESS_ID"
ENV_AUTO = "CVLG_DISTRIBUTED"
_EXPLICIT = (ENV_COORDINATOR, ENV_NUM_PROCESSES, ENV_PROCESS_ID)


class SetupError(ValueError):
  """The environment describes no valid multi-process job, or joining failed."""


def settings_from_env(environ=None) -> dict | None:
  """``jax.distributed.initialize`` arguments named by the environment:
  ``{}`` for auto-detection, ``None`` for a single-process run."""
  environ = os.environ if environ is None else environ
  given = [k for k in _EXPLICIT if environ.get(k)]
  if not given:
    return {} if environ.get(ENV_AUTO) == "1" else None
  if len(given) < len(_EXPLICIT):
    missing = ", ".join(k for k in _EXPLICIT if k not in given)
    raise SetupError(f"{', '.join(given)} set but {missing} missing: set all "
                     "three (or CVLG_DISTRIBUTED=1 to let JAX detect them)")
  address = environ[ENV_COORDINATOR]
  host, _, port = address.rpartition(":")
  if not host or not port.isdigit():
    raise SetupError(f"{ENV_COORDINATOR}={address!r} must be host:port")
  try:
    count, index = int(environ[ENV_NUM_PROCESSES]), int(environ[ENV_PROCESS_ID])
  except ValueError:
    raise SetupError(f"{ENV_NUM_PROCESSES}={environ[ENV_NUM_PROCESSES]!r} and "
                     f"{ENV_PROCESS_ID}={environ[ENV_PROCESS_ID]!r} must be "
                     "integers") from None
  if count < 1 or not 0 <= index < count:
    raise SetupError(f"{ENV_PROCESS_ID}={index} must be in [0, "
                     f"{ENV_NUM_PROCESSES}={count})")
  return dict(coordinator_address=address, num_processes=count, process_id=index)


def initialize(dist_config, environ=None) -> bool:
  """Joins the job the environment names (before anything touches a device);
  returns whether this is a multi-process run."""
  settings = settings_from_env(environ)
  if settings is None:
    return False
  import jax
  try:
    jax.distributed.initialize(
        **settings,
        initialization_timeout=dist_config.initialization_timeout_s,
        heartbeat_timeout_seconds=dist_config.heartbeat_timeout_s,
        shutdown_timeout_seconds=dist_config.shutdown_timeout_s)
  except Exception as e:  # pylint: disable=broad-except  (RuntimeError, ValueError)
    # (A coordinator that never answers is not an exception: JAX ends the
    # process itself after initialization_timeout_s.)
    where = settings.get("coordinator_address", "the auto-detected coordinator")
    first = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
    raise SetupError(f"jax.distributed.initialize for the job at {where} "
                     f"failed: {first}") from None
  logging.info("Process %d of %d joined the job at %s (heartbeat timeout %d s: "
               "if a process dies, JAX ends the others within about that long; "
               "rerun all of them to resume from the last committed checkpoint).",
               jax.process_index(), jax.process_count(),
               settings.get("coordinator_address", "(auto-detected)"),
               dist_config.heartbeat_timeout_s)
  return True
