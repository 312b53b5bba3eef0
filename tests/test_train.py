"""The sharded train step and the loop end to end (tiny model, 8 CPU devices)."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from cvlg_jax import sharding, train
from cvlg_jax.data import pipeline

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
from configs import demo


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
  tokenizer, model, tx, schedule = train.build(config)
  state, shardings = train.init_state(config, model, tx, mesh)
  step = train.make_train_step(config, model, tx, schedule, mesh, shardings)
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
  tokenizer, model, tx, schedule = train.build(config)
  state, shardings = train.init_state(config, model, tx, mesh)
  step = train.make_train_step(config, model, tx, schedule, mesh, shardings)
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
    tokenizer, model, tx, schedule = train.build(config)
    state, shardings = train.init_state(config, model, tx, mesh)
    step = train.make_train_step(config, model, tx, schedule, mesh, shardings)
    batch = next(iter(pipeline.train_dataset(config, tokenizer)))
    state, metrics = step(state, sharding.shard_batch(batch, mesh))
    outs.append((jax.device_get(state.params), float(metrics["loss"])))
  assert outs[0][1] == outs[1][1]
  jax.tree.map(np.testing.assert_array_equal, outs[0][0], outs[1][0])


def _run_main(workdir, *flags):
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
             JAX_PLATFORMS="cpu")
  return subprocess.run(
      [sys.executable, "-m", "cvlg_jax.main", "--config=configs/demo.py:tiny",
       f"--workdir={workdir}", *flags],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def test_main_writes_metrics_and_checkpoints_then_resumes(tmp_path):
  workdir = tmp_path / "run"
  first = _run_main(workdir, "--config.train.steps=10")
  assert first.returncode == 0, first.stderr[-3000:]
  rows = [json.loads(l) for l in open(workdir / "metrics.jsonl")]
  assert [r["step"] for r in rows] == [5, 10]
  assert all(np.isfinite(r["loss"]) for r in rows)
  assert "synthetic/zeroshot_top1" in rows[-1]
  assert sorted(os.listdir(workdir / "checkpoints")) == ["10"]
  assert json.load(open(workdir / "config.json"))["train"]["steps"] == 10
  assert "versions" in json.load(open(workdir / "run_info.json"))
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(workdir))

  second = _run_main(workdir, "--config.train.steps=20")
  assert second.returncode == 0, second.stderr[-3000:]
  assert "Resumed from checkpoint at step 10" in second.stderr
  rows = [json.loads(l) for l in open(workdir / "metrics.jsonl")]
  assert [r["step"] for r in rows] == [5, 10, 15, 20]
  assert "20" in os.listdir(workdir / "checkpoints")


def test_main_rejects_bad_config_before_compiling(tmp_path):
  out = _run_main(tmp_path / "bad", "--config.loss.psd.alpha_final=1.5")
  assert out.returncode != 0
  assert "config.loss.psd.alpha_final=1.5 must be in [0.0, 1.0]" in out.stderr
