"""What every command shares: flags parsed with one-line errors, quiet
library logs, a workdir checked before anything starts, and exit codes.

Exit codes (README, "Errors"): 2 an invalid config or command line (before
anything compiles), 3 non-finite loss (training), 4 a checkpoint that cannot
be resumed or restored, 5 a multi-process job that could not be joined,
6 a program that does not fit the device memory.
"""

from __future__ import annotations

import logging as std_logging
import os
import sys

from absl import flags, logging

EXIT_USAGE, EXIT_NONFINITE, EXIT_RESUME, EXIT_DISTRIBUTED, EXIT_MEMORY = 2, 3, 4, 5, 6


def fail(code: int, message: str):
  """One line on stderr (never a traceback) and the documented exit code."""
  print(message, file=sys.stderr, flush=True)
  sys.exit(code)


def _one_line(e: BaseException) -> str:
  """The message of ``e``; of a wrapped traceback (ml_collections reports a
  config file's exception as text), its last line: the exception itself."""
  text = str(e)
  if "Traceback (most recent call last)" in text:
    text = [l for l in text.splitlines() if l.strip()][-1]
  return " ".join(text.split()) or type(e).__name__


def config_value(holder):
  """``holder.value`` of a config-file flag (loaded on first access): a
  file that is missing or fails to load is one line, exit 2."""
  try:
    config = holder.value
    config.keys()  # a file that failed to load is a placeholder that raises here
    return config
  except Exception as e:  # pylint: disable=broad-except  (any error of the file)
    lines = [l.strip() for l in str(e).splitlines() if l.strip()]
    fail(EXIT_USAGE, "Invalid config: " + (lines[-1] if lines else _one_line(e)))


def parse_flags(argv):
  """``absl.app.run``'s flags parser, with a config file's own errors (a
  missing file, a bad ``file.py:arg``, an unknown ``--config.a.b``, a value
  of the wrong type) reported in one line, exit 2."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    fail(EXIT_USAGE, f"Invalid command line: {_one_line(e)} (--helpshort lists "
         "the flags)")
  except AttributeError as e:  # ml_collections: --config.<unknown key>=...
    key = _one_line(e).strip("\"'")
    fail(EXIT_USAGE, f"Invalid config: --config override of an unknown key "
         f"{key}: every key must exist in the schema (docs/config.md; "
         "--print_config shows the config)")
  except (OSError, ValueError, KeyError, TypeError) as e:  # the config file
    cause = e.__cause__ or e
    fail(EXIT_USAGE, f"Invalid config: {_one_line(cause)}")


# Libraries whose INFO lines are noise to a user: Orbax, Grain and clu log
# every save/restore detail; JAX's backend probe logs "Unable to initialize
# backend 'tpu'" on every machine without one.
_NOISY_AT_INFO = ("/orbax/", "/grain/", "/clu/", "/jax/_src/xla_bridge.py")


def keep_log_record(record) -> bool:
  """False for the INFO (and lower) lines of :data:`_NOISY_AT_INFO`."""
  return (record.levelno >= std_logging.WARNING
          or not any(part in record.pathname for part in _NOISY_AT_INFO))


def quiet_library_logs():
  """Keeps WARNING and above of the noisy libraries, everything of ours."""
  # ABSLHandler.handle bypasses its own filters; filter where records land.
  logging.get_absl_handler().python_handler.addFilter(keep_log_record)


def check_workdir(path: str) -> None:
  """The workdir can be created and written, checked before any start-up
  cost: a file in its place or no permission is one line, exit 2."""
  from cvlg_jax import fileio  # pylint: disable=import-outside-toplevel
  if "://" in path:
    return  # object stores: checked by the first write
  if os.path.exists(path) and not os.path.isdir(path):
    fail(EXIT_USAGE, f"--workdir={path} is a file, not a directory: choose "
         "another path")
  try:
    fileio.makedirs(path)
    probe = os.path.join(path, ".cvlg_write_test")
    with open(probe, "w") as f:
      f.write("ok")
    os.remove(probe)
  except OSError as e:
    fail(EXIT_USAGE, f"--workdir={path} cannot be written ({e.strerror}): "
         "choose a path you can write to")
