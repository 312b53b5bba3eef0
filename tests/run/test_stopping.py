"""Stopping: the non-finite guard and the stop signal handler.

End to end through ``python -m cvlg_jax.main`` with the test-only
``--fault_poison_step`` of tests/fault_main.py (that step's tokens are out of vocabulary, so
the embedding lookup gives NaN and the loss and gradients are NaN), plus
in-process checks of the guard's decisions and messages.
"""

import json
import os
import signal
import threading

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from cvlg_jax.run import stopping
from main_runner import make_main_runner


@pytest.fixture(scope="module")
def run_main(tmp_path_factory):
  return make_main_runner(tmp_path_factory.mktemp("reliability_guard"))


def _rows(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def poisoned_run(run_main, tmp_path_factory):
  """NaN at step 10, which is also a log and a checkpoint step: the check
  must come before both."""
  workdir = tmp_path_factory.mktemp("poisoned")
  return workdir, run_main(workdir, "--fault_poison_step=10",
                           "--config.train.keep_checkpoints=4")


def test_nan_stops_the_run_without_saving_that_state(poisoned_run):
  workdir, out = poisoned_run
  assert out.returncode == 3, out.stderr[-3000:]
  lines = [l for l in out.stderr.splitlines() if l.startswith("Training stopped:")]
  assert lines == [
      "Training stopped: non-finite loss=nan, grad_norm=nan at step 10; stopped "
      "without saving this state (set train.skip_nonfinite_steps=N to skip up "
      "to N such steps instead); the latest checkpoint is step 5"], out.stderr[-3000:]
  assert "Traceback" not in out.stderr
  assert os.listdir(workdir / "checkpoints") == ["5"]  # no 10, not even a tmp dir
  rows = _rows(workdir)
  assert [r["step"] for r in rows] == [5] and np.isfinite(rows[0]["loss"])


def test_the_stopped_run_recorded_its_resolved_config_and_argv(poisoned_run):
  workdir, _ = poisoned_run
  config = json.load(open(workdir / "config.json"))
  assert config["train"]["keep_checkpoints"] == 4  # the override, resolved
  assert config["model"]["name"] == "tiny" and config["eval"] == {}
  info = json.load(open(workdir / "run_info.json"))
  assert "--fault_poison_step=10" in info["argv"]
  assert info["resumed_from_step"] is None


def test_skip_nonfinite_steps_skips_the_bad_update(run_main, tmp_path):
  workdir = tmp_path / "run"
  out = run_main(workdir, "--fault_poison_step=7",
                 "--config.train.skip_nonfinite_steps=1")
  assert out.returncode == 0, out.stderr[-3000:]
  assert ("Non-finite loss=nan, grad_norm=nan at step 7: update skipped "
          "(1 of at most 1).") in out.stderr
  rows = _rows(workdir)
  assert [(r["step"], r["skipped_nonfinite"]) for r in rows] == [
      (5, 0), (10, 1), (15, 1), (20, 1)]
  assert all(np.isfinite(r["loss"]) for r in rows)  # a NaN update would stick
  state = ocp.StandardCheckpointer().restore(str(workdir / "checkpoints/20/state"))
  # The skipped step still advances the counter: schedules follow the data.
  assert int(state["step"]) == 20
  assert all(np.isfinite(np.asarray(x)).all()
             for x in jax.tree.leaves(state["params"]))


# ---- The guard's decisions, in-process. ----

def test_guard_passes_finite_steps():
  guard = stopping.NonFiniteGuard(max_skips=0)
  guard.check(3, {"loss": np.float32(2.0), "grad_norm": np.float32(1e30)})
  assert guard.skipped == 0


def test_guard_names_the_quantity_that_went_bad():
  guard = stopping.NonFiniteGuard(max_skips=0)
  with pytest.raises(stopping.NonFiniteError, match=r"^non-finite grad_norm=inf at step 12;"):
    guard.check(12, {"loss": np.float32(2.0), "grad_norm": np.float32(np.inf)})
  with pytest.raises(stopping.NonFiniteError, match=r"^non-finite loss=-inf at step 4;"):
    guard.check(4, {"loss": np.float32(-np.inf), "grad_norm": np.float32(1.0)})
  assert stopping.nonfinite_quantities({"loss": np.nan, "grad_norm": np.nan}) == [
      "loss", "grad_norm"]


def test_guard_skips_only_within_budget_and_only_if_the_step_undid_the_update():
  guard = stopping.NonFiniteGuard(max_skips=2, skipped=1)  # one skipped before a resume
  bad = {"loss": np.float32(np.nan), "grad_norm": np.float32(np.nan),
         "nonfinite": np.bool_(True)}
  guard.check(8, bad)
  assert guard.skipped == 2
  with pytest.raises(stopping.NonFiniteError,
                     match=r"at step 9; .*more than train.skip_nonfinite_steps=2"):
    guard.check(9, bad)
  # A step that does not report `nonfinite` applied the bad update: never skip.
  with pytest.raises(stopping.NonFiniteError, match="at step 3"):
    stopping.NonFiniteGuard(max_skips=5).check(3, {"loss": np.float32(np.nan)})
  # The step's own flag counts even when loss and grad_norm look finite.
  guard = stopping.NonFiniteGuard(max_skips=1)
  guard.check(2, {"loss": np.float32(1.0), "grad_norm": np.float32(1.0),
                  "nonfinite": np.bool_(True)})
  assert guard.skipped == 1


@pytest.mark.skipif(threading.current_thread() is not threading.main_thread(),
                    reason="signal handlers need the main thread")
def test_stop_request_turns_signals_into_a_flag_and_restores_handlers():
  before = signal.getsignal(signal.SIGTERM)
  with stopping.StopRequest() as stop:
    os.kill(os.getpid(), signal.SIGTERM)
    assert stop.signal == "SIGTERM"
    os.kill(os.getpid(), signal.SIGTERM)  # repeated: still just the flag
    with pytest.raises(KeyboardInterrupt):  # but Ctrl-C after a stop insists
      os.kill(os.getpid(), signal.SIGINT)
  assert signal.getsignal(signal.SIGTERM) is before
