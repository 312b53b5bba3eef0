"""Shared by the step tests: the tiny config they train, meshes, placing a
host state in a layout, running steps, comparing trees; and one FSDP
initialisation per test module (compiling is what costs time here)."""

import jax
import numpy as np
import pytest
from ml_collections import ConfigDict

from cvlg_jax.step import sharding, train_state, train_step
from cvlg_jax.step.plan import make_plan
from cvlg_jax.data import pipeline

from configs import demo


def tiny_config(**overrides):
  c = demo.get_config("tiny,teacher=self,schedule=paper")  # the design PSD
  c.eval = {}
  c.data.image_size, c.data.context_length = 16, 8
  c.optim.warmup_steps = 0          # a real update from the first step
  for key, value in overrides.items():
    group, name = key.split(".", 1)
    c[group][name] = value
  return c


def mesh_of(data, fsdp):
  return sharding.make_mesh(ConfigDict(dict(data=data, fsdp=fsdp)))


def put_state(host_state, mesh):
  """A fresh on-device copy of a host state in ``mesh``'s layout."""
  shardings = sharding.state_shardings(mesh, host_state)
  return jax.device_put(host_state, shardings), shardings


def run_steps(config, host_state, mesh, batches, model=None):
  tokenizer, m, tx, schedule = train_state.build(plan_of(config))
  state, shardings = put_state(host_state, mesh)
  step = train_step.make_train_step(plan_of(config), model or m, tx, schedule, mesh,
                                    shardings)
  states, metrics = [], []
  for batch in batches:
    state, out = step(state, sharding.shard_batch(batch, mesh))
    states.append(jax.device_get(state))
    metrics.append(jax.device_get(out))
  return states, metrics


def fresh_step(config, mesh):
  """``(model, state, shardings, train step, data iterator)`` of a fresh run
  of ``config`` on ``mesh``: the state initialised, the step compiled on
  first call."""
  plan = plan_of(config)
  tokenizer, model, tx, schedule = train_state.build(plan)
  state, shardings = train_state.init_state(plan, model, tx, mesh)
  step = train_step.make_train_step(plan, model, tx, schedule, mesh, shardings)
  return model, state, shardings, step, iter(pipeline.train_dataset(config, tokenizer))


def assert_tree_close(actual, desired, rtol):
  """allclose per leaf with atol = rtol x the tree's largest float entry.

  Some entries carry nothing but round-off: e.g. attention key biases, whose
  true gradient is exactly zero (softmax ignores a shift), and which Adam then
  moves by round-off-driven steps. Relative to the tree's scale they are tiny.
  """
  floats = [np.asarray(x) for x in jax.tree.leaves(desired)
            if np.issubdtype(np.asarray(x).dtype, np.floating)]
  atol = rtol * max(float(np.max(np.abs(x))) for x in floats if x.size)
  flat_a = jax.tree_util.tree_flatten_with_path(actual)[0]
  flat_d = jax.tree.leaves(desired)
  assert len(flat_a) == len(flat_d)
  for (path, a), b in zip(flat_a, flat_d):
    np.testing.assert_allclose(a, b, rtol=rtol, atol=atol,
                               err_msg=jax.tree_util.keystr(path))


@pytest.fixture(scope="module")
def fsdp_init():
  """Tiny model initialised straight into the (data=2, fsdp=4) layout."""
  config = tiny_config()
  tokenizer, model, tx, _ = train_state.build(plan_of(config))
  mesh = mesh_of(2, 4)
  with jax.threefry_partitionable(False):  # compiles ~2x faster on CPU
    state, shardings = train_state.init_state(plan_of(config), model, tx, mesh)
  it = iter(pipeline.train_dataset(config, tokenizer))
  batches = [next(it) for _ in range(2)]
  return config, mesh, state, shardings, jax.device_get(state), batches


@pytest.fixture(scope="module")
def data_parallel_run(fsdp_init):
  """Two f32 steps from the same initial state on the (8, 1) mesh."""
  config, _, _, _, host, batches = fsdp_init
  return run_steps(config, host, mesh_of(8, 1), batches)


def plan_of(config):
  """The run plan of ``config`` on this process's devices."""
  return make_plan(config, jax.device_count())
