"""The run plan: decided once from the config and the opened source."""

import pytest

from cvlg_jax.data import train_sources
from cvlg_jax.step.plan import make_plan

from configs import demo


def _tiny(**overrides):
  c = demo.get_config("tiny")
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
