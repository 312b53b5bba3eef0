"""Preemption and exact resume, end to end through ``python -m cvlg_jax.main``.

A run stopped by SIGTERM at an arbitrary step, or killed by SIGKILL while a
checkpoint is being written, then restarted with the same command, must end
with a train state bitwise identical to an uninterrupted run, and with the
same ``metrics.jsonl`` lines (timings aside): no step duplicated or missing.
The kills come from the test harness's ``--fault_signal_at_step`` (tests/fault_main.py), so they
land at a chosen step. All runs share one XLA compilation cache (same program).
"""

import os

import pytest

from main_runner import (assert_bitwise_equal, committed_steps, final_state,
                         make_main_runner, metric_rows)


@pytest.fixture(scope="module")
def run_main(tmp_path_factory):
  return make_main_runner(tmp_path_factory.mktemp("reliability_resume"))


@pytest.fixture(scope="module")
def reference(run_main, tmp_path_factory):
  workdir = tmp_path_factory.mktemp("uninterrupted")
  out = run_main(workdir)
  assert out.returncode == 0, out.stderr[-3000:]
  rows = metric_rows(workdir)
  assert [r["step"] for r in rows] == [5, 10, 15, 20]
  state = final_state(workdir)
  assert int(state["['step']"]) == 20
  return rows, state


def test_sigterm_then_sigkill_mid_save_then_resume_is_bitwise_identical(
    run_main, reference, tmp_path):
  """One workdir, three launches of the same command (a chain, to keep the
  number of ~10 s process start-ups down):

  1. SIGTERM arrives during step 7 (off the save schedule): the step finishes,
     is saved and committed, exit code 0.
  2. Resumed, with keep_checkpoints=1, it is SIGKILLed during step 11, right
     after the step-10 save started: retention must not have deleted older
     checkpoints before step 10 committed.
  3. Resumed again from whichever checkpoint survived, it must finish with
     the uninterrupted run's state, bit for bit, and its metrics lines.
  """
  rows, state = reference
  workdir = tmp_path / "run"
  first = run_main(workdir, "--fault_signal_at_step=7")
  assert first.returncode == 0, first.stderr[-3000:]
  assert ("Stopped by SIGTERM after step 7/20: checkpoint 7 is committed; "
          "rerun the same command to resume.") in first.stderr
  assert committed_steps(workdir) == [5, 7]
  assert not [n for n in os.listdir(workdir / "checkpoints") if "tmp" in n]
  assert metric_rows(workdir) == rows[:1]

  second = run_main(workdir, "--config.train.keep_checkpoints=1",
                    "--fault_signal_at_step=11",
                    "--fault_signal=SIGKILL")
  assert second.returncode == -9, second.stderr[-3000:]
  assert "Resumed from checkpoint at step 7." in second.stderr
  # Step 10's row (its loss depends on every update since the SIGTERM resume)
  # matches the uninterrupted run exactly.
  assert metric_rows(workdir) == rows[:2]
  survivors = committed_steps(workdir)
  assert survivors and survivors[-1] in (7, 10), os.listdir(workdir / "checkpoints")
  assert set(survivors) <= {5, 7, 10}

  third = run_main(workdir)
  assert third.returncode == 0, third.stderr[-3000:]
  assert f"Resumed from checkpoint at step {survivors[-1]}." in third.stderr
  assert metric_rows(workdir) == rows  # same values, no duplicate, none missing
  assert_bitwise_equal(final_state(workdir), state)
