"""Multi-process training for real: 2 JAX processes x 4 CPU devices on
localhost (``launch.multiprocess``; gloo collectives), against 1 process x 8.

* The two-process run ends with the train state and metrics of the
  one-process run, bit for bit. The reference joins a one-process job so that
  it uses the same (gloo) collectives; a plain single-process run sums
  gradients in another order and differs by float rounding (README).
* SIGTERM to one process stops both at one step, which both save; the rerun
  resumes. SIGKILL to one process: JAX ends the other within the heartbeat
  timeout (exit non-zero, JAX's reason in its log, one line from the
  launcher), and the rerun resumes from the last committed checkpoint and
  ends bitwise equal to the uninterrupted two-process run.

Every job runs in its own session and is killed whole on failure or timeout
(``main_runner.make_multiprocess_runner``). Runs are 12 steps of a smaller
tiny config; all share one compilation cache.
"""

import json
import re

import pytest

import grain
from main_runner import (assert_bitwise_equal, committed_steps, final_state,
                         make_multiprocess_runner, metric_rows)

from cvlg_jax.data.process_share import BatchBlock

STEPS = 12
HEARTBEAT_S = 15  # long enough for a loaded 2-core machine, short for a test
# Smaller inputs and vocabulary than demo.py:tiny: gloo moves every gradient
# over loopback TCP, and this halves the step time.
FLAGS = (f"--config.train.steps={STEPS}", "--config.train.log_every=4",
         "--config.train.checkpoint_every=4", "--config.data.image_size=16",
         "--config.data.context_length=8", "--config.data.vocab_size=512",
         f"--config.distributed.heartbeat_timeout_s={HEARTBEAT_S}",
         "--config.distributed.initialization_timeout_s=120",
         "--config.distributed.shutdown_timeout_s=60")


@pytest.fixture(scope="module")
def run_job(tmp_path_factory):
  return make_multiprocess_runner(tmp_path_factory.mktemp("multiprocess"),
                                  config_arg="eval")


def _ok(job):
  assert job.returncode == 0, job.stderr[-2000:] + "\n".join(
      log[-3000:] for log in job.logs)


@pytest.fixture(scope="module")
def two_process_run(run_job, tmp_path_factory):
  workdir = tmp_path_factory.mktemp("two") / "run"
  job = run_job(workdir, *FLAGS)
  _ok(job)
  return workdir, job


def test_two_processes_train_exactly_like_one(run_job, two_process_run,
                                              tmp_path_factory):
  two, job = two_process_run
  for i, log in enumerate(job.logs):
    assert f"Process {i} of 2 joined the job" in log
  one = tmp_path_factory.mktemp("one") / "run"
  reference = run_job(one, *FLAGS, num_processes=1)
  _ok(reference)
  print(f"2 x 4 devices: {job.seconds:.0f} s; 1 x 8: {reference.seconds:.0f} s")

  assert_bitwise_equal(final_state(two, STEPS), final_state(one, STEPS))
  rows = metric_rows(two)
  assert [r["step"] for r in rows] == [4, 8, 12]
  assert rows == metric_rows(one)  # losses, PSD statistics and the evaluation
  assert "synthetic/zeroshot_top1" in rows[-1]
  # Each process saved its own Grain iterator position: 12 steps of its 16
  # rows. Mapped to the global stream, the two shares are disjoint and are
  # together exactly the 12 x 32 rows the one-process run read.
  read = []
  for i in range(2):
    end = _next_index(two, f"process_{i}-of-2.json")
    assert end == STEPS * 16
    block = BatchBlock(grain.MapDataset.range(10 ** 6), global_batch=32,
                       index=i, count=2)
    read.append({block.parent_index(j) for j in range(end)})
  assert not read[0] & read[1]
  assert read[0] | read[1] == set(range(_next_index(one, "process_0-of-1.json")))
  with open(two / "run_info.json") as f:
    info = json.load(f)
  assert info["process_count"] == 2 and len(info["devices"]) == 8


def _next_index(workdir, name):
  with open(workdir / "checkpoints" / str(STEPS) / "data" / name) as f:
    return json.load(f)["next_index"]


def _stopped_at(log):
  found = re.findall(r"Stopped by a preemption notice after step (\d+)/", log)
  assert len(found) == 1, log[-3000:]
  return int(found[0])


def test_sigterm_to_one_process_then_sigkill_to_one_then_resume(
    run_job, two_process_run, tmp_path):
  """One workdir, three launches of the same job (a chain, to keep the
  number of ~40 s job start-ups down):

  1. Process 1 alone gets SIGTERM during step 3: JAX's preemption sync point
     stops both processes after the same step S, both save it, exit code 0.
  2. Resumed from S; process 1 is SIGKILLed during step S + 3. Process 0,
     waiting in a collective that will never complete, is ended by JAX within
     the heartbeat timeout, not left hanging; the launcher says what happened.
  3. Resumed from the last committed checkpoint, it ends with the state and
     metrics of the uninterrupted two-process run, bit for bit.
  """
  reference, _ = two_process_run
  workdir = tmp_path / "run"

  first = run_job(workdir, *FLAGS, "--fault_signal_at_step=3",
                  "--fault_signal_process=1")
  _ok(first)
  sent = "fault_signal_at_step: SIGTERM to process 1 during step 3."
  assert sent in first.logs[1] and "fault_signal_at_step" not in first.logs[0]
  stop = _stopped_at(first.logs[0])
  assert _stopped_at(first.logs[1]) == stop and 3 <= stop <= STEPS - 4, stop
  assert stop in committed_steps(workdir)
  assert metric_rows(workdir) == [r for r in metric_rows(reference) if r["step"] <= stop]

  kill_at = stop + 3
  second = run_job(workdir, *FLAGS, f"--fault_signal_at_step={kill_at}",
                   "--fault_signal_process=1",
                   "--fault_signal=SIGKILL")
  assert second.returncode != 0
  for log in second.logs:
    assert f"Resumed from checkpoint at step {stop}." in log
  assert "process 1 was killed by SIGKILL" in second.stderr, second.stderr
  survivor = re.search(r"process 0 was killed by SIGABRT ([\d.]+) s after process "
                       r"1 failed: JAX's distributed runtime ended it", second.stderr)
  assert survivor, second.stderr + second.logs[0][-3000:]
  assert float(survivor.group(1)) < HEARTBEAT_S + 30, second.stderr
  assert "the JAX distributed service detected fatal errors" in second.logs[0]
  assert "rerun the same command to resume" in second.stderr
  committed = committed_steps(workdir)
  assert committed[-1] in range(stop, kill_at), committed
  print(f"SIGTERM to process 1 in step 3: both stopped after step {stop} "
        f"({first.seconds:.0f} s); SIGKILL to process 1 in step {kill_at}: "
        f"process 0 ended {survivor.group(1)} s later ({second.seconds:.0f} s), "
        f"last committed step {committed[-1]}")

  third = run_job(workdir, *FLAGS)
  _ok(third)
  for log in third.logs:
    assert f"Resumed from checkpoint at step {committed[-1]}." in log
  assert metric_rows(workdir) == metric_rows(reference)
  assert_bitwise_equal(final_state(workdir, STEPS), final_state(reference, STEPS))
  print(f"resumed from step {committed[-1]} to the end: {third.seconds:.0f} s")
