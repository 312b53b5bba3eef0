"""Library INFO noise is dropped from the commands' logs, ours is kept."""

import logging

from cvlg_jax.cli import common


def _record(path, level=logging.INFO, msg="x"):
  return logging.LogRecord("n", level, path, 1, msg, None, None)


def test_backend_probe_and_checkpoint_chatter_are_dropped():
  site = "/venv/lib/python3.11/site-packages"
  assert not common.keep_log_record(_record(
      f"{site}/jax/_src/xla_bridge.py", msg="Unable to initialize backend 'tpu'"))
  assert not common.keep_log_record(_record(f"{site}/orbax/checkpoint/x.py"))
  assert not common.keep_log_record(_record(f"{site}/grain/_src/y.py"))


def test_warnings_and_our_own_lines_are_kept():
  site = "/venv/lib/python3.11/site-packages"
  assert common.keep_log_record(_record(f"{site}/orbax/checkpoint/x.py",
                                        logging.WARNING))
  assert common.keep_log_record(_record(f"{site}/jax/_src/xla_bridge.py",
                                        logging.ERROR))
  assert common.keep_log_record(_record("/repo/cvlg_jax/run/loop.py"))
  assert common.keep_log_record(_record(f"{site}/jax/_src/compiler.py"))
