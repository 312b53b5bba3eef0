"""Joining a multi-process job: the environment contract, the launcher's
per-process environment and exit summary, Ctrl-C with several processes,
and main's one-line failure when the coordinator cannot be reached."""

import io
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from cvlg_jax.run import distributed, stopping
from launch import multiprocess
from main_runner import REPO


def test_environment_names_a_job_or_none():
  assert distributed.settings_from_env({}) is None
  assert distributed.settings_from_env({"CVLG_DISTRIBUTED": "1"}) == {}
  env = {"CVLG_COORDINATOR": "10.0.0.1:1234", "CVLG_NUM_PROCESSES": "4",
         "CVLG_PROCESS_ID": "3"}
  assert distributed.settings_from_env(env) == dict(
      coordinator_address="10.0.0.1:1234", num_processes=4, process_id=3)


@pytest.mark.parametrize("env, message", [
    ({"CVLG_COORDINATOR": "h:1"}, "CVLG_NUM_PROCESSES, CVLG_PROCESS_ID missing"),
    ({"CVLG_COORDINATOR": "nohost", "CVLG_NUM_PROCESSES": "2",
      "CVLG_PROCESS_ID": "0"}, "must be host:port"),
    ({"CVLG_COORDINATOR": "h:1", "CVLG_NUM_PROCESSES": "two",
      "CVLG_PROCESS_ID": "0"}, "must be integers"),
    ({"CVLG_COORDINATOR": "h:1", "CVLG_NUM_PROCESSES": "2",
      "CVLG_PROCESS_ID": "2"}, r"CVLG_PROCESS_ID=2 must be in \[0, CVLG_NUM_PROCESSES=2\)"),
])
def test_incomplete_or_bad_environment_is_one_clear_error(env, message):
  with pytest.raises(distributed.SetupError, match=message):
    distributed.settings_from_env(env)


def test_launcher_environment_per_process():
  base = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8 --xla_foo=1",
          "CVLG_DISTRIBUTED": "1", "PATH": "/bin"}
  env = multiprocess.process_env(1, 2, 4321, cpu_devices=4, base=base)
  assert (env["CVLG_COORDINATOR"], env["CVLG_NUM_PROCESSES"],
          env["CVLG_PROCESS_ID"]) == ("127.0.0.1:4321", "2", "1")
  assert env["XLA_FLAGS"] == "--xla_foo=1 --xla_force_host_platform_device_count=4"
  assert env["JAX_PLATFORMS"] == "cpu" and "CVLG_DISTRIBUTED" not in env
  assert distributed.settings_from_env(env)["process_id"] == 1
  gpu = multiprocess.process_env(2, 4, 1, gpus=2, base={})
  assert gpu["JAX_LOCAL_DEVICE_IDS"] == "4,5" and "JAX_PLATFORMS" not in gpu


def test_launcher_reports_each_failed_process_and_passes_its_exit_code(tmp_path):
  """Fake processes (not main): one fails with a message, one ends as JAX
  ends a process whose peer died; the launcher exits with the first code."""
  script = tmp_path / "fake.py"
  script.write_text(
      "import os, sys, time\n"
      "if os.environ['CVLG_PROCESS_ID'] == '1':\n"
      "  print('Invalid config: config.x=1 is bad', file=sys.stderr); sys.exit(2)\n"
      "time.sleep(0.5)\n"
      "print('F1204 client.h:80] Terminating process because the JAX distributed "
      "service detected fatal errors.', flush=True)\n"
      "os.abort()\n")
  out = io.StringIO()
  code = multiprocess.launch([], num_processes=2, log_dir=str(tmp_path / "logs"),
                             out=out, command=[sys.executable, str(script)])
  text = out.getvalue()
  assert code == 2
  assert "process 1 exited with code 2: Invalid config: config.x=1 is bad" in text
  assert ("process 0 was killed by SIGABRT" in text and "after process 1 failed: "
          "JAX's distributed runtime ended it" in text), text
  assert "rerun the same command to resume" in text
  assert "Invalid config" in (tmp_path / "logs" / "process_1.log").read_text()


def test_launcher_kills_a_process_that_outlives_a_failed_peer(tmp_path):
  script = tmp_path / "hang.py"
  script.write_text("import os, sys, time\n"
                    "if os.environ['CVLG_PROCESS_ID'] == '1': sys.exit(3)\n"
                    "time.sleep(600)\n")
  out, start = io.StringIO(), time.time()
  code = multiprocess.launch([], num_processes=2, peer_exit_timeout_s=1.0,
                             log_dir=str(tmp_path / "logs"), out=out,
                             command=[sys.executable, str(script)])
  assert code == 3 and time.time() - start < 30
  assert "process 0 was killed by SIGKILL from the launcher (still running 1 s " \
         "after process 1 failed)" in out.getvalue()


@pytest.mark.skipif(threading.current_thread() is not threading.main_thread(),
                    reason="signal handlers need the main thread")
def test_ctrl_c_with_several_processes_becomes_sigterm_for_jax():
  """JAX's preemption notifier (here a stand-in handler) owns SIGTERM; the
  loop's flag stays unset, so only the synchronised stop can stop it."""
  got = []
  previous = signal.signal(signal.SIGTERM, lambda s, f: got.append(s))
  try:
    with stopping.StopRequest(multi_process=True) as stop:
      assert signal.getsignal(signal.SIGTERM) is not stop._handle
      os.kill(os.getpid(), signal.SIGINT)
      assert got == [signal.SIGTERM] and stop.signal is None
      with pytest.raises(KeyboardInterrupt):  # Ctrl-C twice: abort
        os.kill(os.getpid(), signal.SIGINT)
  finally:
    signal.signal(signal.SIGTERM, previous)


def test_bad_environment_stops_main_with_exit_5_and_one_line(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu", CVLG_COORDINATOR="127.0.0.1:1",
             CVLG_PROCESS_ID="0")
  env.pop("CVLG_NUM_PROCESSES", None)
  out = subprocess.run(
      [sys.executable, "-m", "cvlg_jax.main", "--config=configs/demo.py:tiny",
       f"--workdir={tmp_path}"],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert out.returncode == 5, out.stderr[-3000:]
  assert out.stderr.strip().splitlines()[-1] == (
      "Multi-process setup failed: CVLG_COORDINATOR, CVLG_PROCESS_ID set but "
      "CVLG_NUM_PROCESSES missing: set all three (or CVLG_DISTRIBUTED=1 to let "
      "JAX detect them)")
