"""The loop's progress line: rates and ETA leave out compile time."""

from cvlg_jax.run import loop


class _Clock:
  def __init__(self):
    self.now = 1000.0

  def __call__(self):
    return self.now


def test_first_rate_leaves_out_the_compiling_step(monkeypatch):
  clock = _Clock()
  monkeypatch.setattr(loop.time, "time", clock)
  throughput = loop._Throughput(0, batch_size=8)
  clock.now += 60.0           # step 1 compiles and runs: a minute
  throughput.started(1)
  clock.now += 9.0            # steps 2..10 at 1 step/s
  rates = throughput.rates(10)
  assert rates["steps_per_sec"] == 1.0 and rates["examples_per_sec"] == 8.0
  clock.now += 4.0
  assert throughput.rates(14)["steps_per_sec"] == 1.0


def test_a_log_on_the_compiling_step_counts_it(monkeypatch):
  clock = _Clock()
  monkeypatch.setattr(loop.time, "time", clock)
  throughput = loop._Throughput(5, batch_size=1)  # resumed at step 5
  clock.now += 20.0
  throughput.started(6)
  assert throughput.rates(6)["steps_per_sec"] == 1 / 20.0  # all there is
  clock.now += 2.0
  assert throughput.rates(8)["steps_per_sec"] == 1.0


def test_evaluation_time_is_excluded(monkeypatch):
  clock = _Clock()
  monkeypatch.setattr(loop.time, "time", clock)
  throughput = loop._Throughput(0, batch_size=1)
  throughput.started(1)
  clock.now += 30.0
  throughput.exclude(26.0)
  assert throughput.rates(5)["steps_per_sec"] == 1.0
