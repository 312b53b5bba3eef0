"""The sharded train step: runs on every mesh and keeps its shardings, CLIP
never distils, PSD and CLIP agree at step 0, steps are deterministic."""


import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from cvlg_jax.step import sharding, train_state, train_step
from cvlg_jax.data import pipeline

from configs import demo
from train_fixtures import plan_of


def tiny_config(**overrides):
  c = demo.get_config("tiny,teacher=self,schedule=paper")  # the design PSD
  c.eval = {}
  for key, value in overrides.items():
    group, name = key.split(".", 1)
    c[group][name] = value
  return c


@pytest.mark.parametrize("data,fsdp", [(8, 1), (4, 2)])
def test_train_step_runs_sharded_and_keeps_shardings(data, fsdp):
  config = tiny_config(**{"mesh.data": data, "mesh.fsdp": fsdp})
  mesh = sharding.make_mesh(config.mesh)
  tokenizer, model, tx, schedule = train_state.build(plan_of(config))
  state, shardings = train_state.init_state(plan_of(config), model, tx, mesh)
  step = train_step.make_train_step(plan_of(config), model, tx, schedule, mesh, shardings)
  batch = next(iter(pipeline.train_dataset(config, tokenizer)))
  assert batch["image"].dtype == np.uint8 and batch["tokens"].dtype == np.int32
  new_state, metrics = step(state, sharding.shard_batch(batch, mesh))
  assert int(new_state.step) == 1
  for leaf, want in zip(jax.tree.leaves(new_state), jax.tree.leaves(shardings)):
    assert leaf.sharding.is_equivalent_to(want, leaf.ndim), (leaf.sharding, want)
  specs = {s.spec for s in jax.tree.leaves(shardings.params)}
  if fsdp > 1:  # big matrices are split over "fsdp", small ones replicated
    assert any("fsdp" in spec for spec in specs) and P() in specs
  else:
    assert specs == {P()}
  metrics = jax.device_get(metrics)
  for key in ("loss", "clip_loss", "alpha", "distilled", "positive_mass",
              "logit_scale", "grad_norm", "learning_rate"):
    assert np.isfinite(metrics[key]), key
  assert metrics["distilled"] == pytest.approx(0.5)
  assert metrics["logit_scale"] == pytest.approx(1 / 0.07, rel=1e-5)


def test_clip_config_never_distils():
  config = tiny_config(**{"loss.name": "clip"})
  mesh = sharding.make_mesh(config.mesh)
  tokenizer, model, tx, schedule = train_state.build(plan_of(config))
  state, shardings = train_state.init_state(plan_of(config), model, tx, mesh)
  step = train_step.make_train_step(plan_of(config), model, tx, schedule, mesh, shardings)
  it = iter(pipeline.train_dataset(config, tokenizer))
  for _ in range(3):
    state, metrics = step(state, sharding.shard_batch(next(it), mesh))
  metrics = jax.device_get(metrics)
  assert metrics["alpha"] == 0 and metrics["distilled"] == 0
  assert metrics["loss"] == pytest.approx(metrics["clip_loss"], rel=1e-6)


def test_psd_and_clip_agree_at_step_zero():
  """At step 0 alpha = 0, so the first PSD step is exactly a CLIP step."""
  outs = []
  for loss in ("psd", "clip"):
    config = tiny_config(**{"loss.name": loss})
    mesh = sharding.make_mesh(config.mesh)
    tokenizer, model, tx, schedule = train_state.build(plan_of(config))
    state, shardings = train_state.init_state(plan_of(config), model, tx, mesh)
    step = train_step.make_train_step(plan_of(config), model, tx, schedule, mesh, shardings)
    batch = next(iter(pipeline.train_dataset(config, tokenizer)))
    state, metrics = step(state, sharding.shard_batch(batch, mesh))
    outs.append((jax.device_get(state.params), float(metrics["loss"])))
  assert outs[0][1] == outs[1][1]
  jax.tree.map(np.testing.assert_array_equal, outs[0][0], outs[1][0])
