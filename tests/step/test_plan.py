"""The run plan: decided once from the config and the opened source."""

import pytest

from cvlg_jax.data import train_sources
from cvlg_jax.step.plan import make_plan

from configs import common, demo


def _tiny(**overrides):
  """demo.py:tiny with the design's PSD (alpha_T 0.5 on half the rows, ramp
  over ramp_fraction of the run), whatever the shipped default is."""
  c = demo.get_config("tiny")
  common.set_psd(c, c.loss.psd.teacher, "paper")
  for path, value in overrides.items():
    group, key = path.split(".", 1)
    node = c[group]
    *inner, key = key.split(".")
    for g in inner:
      node = node[g]
    node[key] = value
  return c


@pytest.mark.parametrize("loss,teacher,expected", [
    ("psd", "bank", "bank"), ("psd", "ema", "ema"), ("siglip_psd", "self", "self"),
    ("clip", "bank", None), ("siglip", "ema", None)])
def test_teacher_only_when_the_loss_distils(loss, teacher, expected):
  plan = make_plan(_tiny(**{"loss.name": loss, "loss.psd.teacher": teacher}), 8)
  assert plan.teacher == expected
  assert plan.uses_bank == (expected == "bank") and plan.uses_ema == (expected == "ema")


def test_step_counts_follow_a_train_steps_override():
  """demo.py:tiny with --config.train.steps=300 used to ramp alpha over the
  file's own 20 steps (frozen into ramp_steps when the file was built)."""
  c = _tiny(**{"train.steps": 300, "optim.warmup_fraction": 0.1,
               "loss.psd.ramp_fraction": 0.25})
  plan = make_plan(c, 8)
  assert (plan.ramp_steps, plan.warmup_steps) == (75, 30)
  c.train.steps = 1000
  assert (make_plan(c, 8).ramp_steps, make_plan(c, 8).warmup_steps) == (250, 100)
  c.loss.psd.ramp_steps = 40  # a fixed count stays fixed
  assert make_plan(c, 8).ramp_steps == 40


def test_epoch_keys_follow_the_data_size():
  c = _tiny(**{"data.num_train": 640, "train.batch_size": 64,
               "train.eval_every_epochs": 2.0, "loss.psd.teacher": "ema",
               "loss.psd.ema_horizon_epochs": 0.5})
  plan = make_plan(c, 8)
  assert plan.steps_per_epoch == 10 and plan.eval_every == 20
  assert plan.ema_decay == pytest.approx(1 - 1 / 5)
  c.data.num_train = 1280
  assert make_plan(c, 8).eval_every == 40


def test_an_epoch_ramp_follows_the_data_size_and_may_outlast_the_run():
  """loss.psd.ramp_epochs: the ramp is that many epochs of this run's data,
  whatever train.steps is (a shorter run ends below alpha_final); a fixed
  ramp_steps still wins."""
  c = _tiny(**{"data.num_train": 640, "train.batch_size": 64,
               "train.steps": 30, "loss.psd.teacher": "self",
               "loss.psd.ramp_epochs": 12.5})
  plan = make_plan(c, 8)
  assert plan.steps_per_epoch == 10 and plan.ramp_steps == 125
  c.data.num_train = 1280  # twice the data: twice the steps per epoch
  assert make_plan(c, 8).ramp_steps == 250
  c.train.steps = 5000  # the length does not move an epoch ramp
  assert make_plan(c, 8).ramp_steps == 250
  c.loss.psd.ramp_steps = 40
  assert make_plan(c, 8).ramp_steps == 40
  # Without data opened for anything else, the epoch ramp still opens it.
  c.loss.psd.ramp_steps = -1
  assert make_plan(c, 8, open_data=False).steps_per_epoch == 20


def test_the_epochs_schedule_tracks_early_at_fifty_epochs_and_not_at_four():
  """configs/common.py 'epochs' equals 'early' step for step at the
  memorisation study's 50 epochs, and at 4 epochs ends at 0.8 x 4 / 12.5."""
  from cvlg_jax.losses.schedule import alpha_schedule

  def alpha_at_end(schedule, epochs):
    c = _tiny(**{"data.num_train": 2048, "train.batch_size": 128,
                 "train.steps": epochs * 16})
    common.set_psd(c, "bank", schedule)
    plan = make_plan(c, 8)
    return plan.ramp_steps, float(alpha_schedule(
        c.train.steps, alpha_final=c.loss.psd.alpha_final,
        ramp_steps=plan.ramp_steps))

  full = pytest.approx(0.8)
  assert alpha_at_end("epochs", 50) == alpha_at_end("early", 50) == (200, full)
  assert alpha_at_end("early", 4) == (16, full)
  assert alpha_at_end("epochs", 4) == (200, pytest.approx(0.8 * 64 / 200))
  # 'guarded' is 'early' from 10 epochs on, and ramps over 2.5 epochs below.
  for epochs in (10, 25, 50):
    assert alpha_at_end("guarded", epochs) == alpha_at_end("early", epochs)
  assert alpha_at_end("guarded", 4) == (40, full)
  # 'by_length' is 'epochs' below 10 epochs and 'early' from 10 on.
  for epochs in (4, 9):
    assert alpha_at_end("by_length", epochs) == alpha_at_end("epochs", epochs)
  for epochs in (10, 25, 50, 100):
    assert alpha_at_end("by_length", epochs) == alpha_at_end("early", epochs)
  with pytest.raises(ValueError, match="schedule='fast'; allowed: paper, early, epochs, guarded, by_length"):
    common.schedule_knobs("fast")


def test_examples_epochs_and_ramp_are_resolved_once():
  c = _tiny(**{"data.num_train": 1000, "data.num_heldout": 40,
               "train.batch_size": 64, "train.steps": 300,
               "loss.psd.ramp_steps": -1})
  plan = make_plan(c, 8)
  assert plan.num_examples == 1000  # synthetic draws the held-out pairs extra
  assert plan.steps_per_epoch == 1000 // 64
  assert plan.ramp_steps == 300 and plan.ramp_epoch_steps is None
  assert len(plan.data.heldout) == 40
  c.loss.psd.ramp_unit, c.loss.psd.ramp_steps = "epoch", 120
  plan = make_plan(c, 8)
  assert plan.ramp_steps == 120 and plan.ramp_epoch_steps == 1000 // 64


def test_the_training_source_is_opened_once(monkeypatch):
  opened = []
  real = train_sources.SOURCES["synthetic"]
  monkeypatch.setitem(train_sources.SOURCES, "synthetic", real._replace(
      open=lambda config: opened.append(1) or real.open(config)))
  make_plan(_tiny(**{"loss.psd.teacher": "bank"}), 8)
  assert len(opened) == 1


def test_evaluation_without_training_data_leaves_the_source_closed():
  plan = make_plan(_tiny(**{"loss.name": "clip"}), 8, open_data=False)
  assert plan.data is None and plan.num_examples is None
