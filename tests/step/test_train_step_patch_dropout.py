"""FLIP patch dropout (``model.patch_dropout``): what a training forward
keeps, that evaluation sees every patch, that micro-batches (both
accumulation passes) drop what the full batch drops, on FSDP and with
remat, and that the teachers run with it."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cvlg_jax import config as config_lib, losses
from cvlg_jax.models.registry import build_model
from cvlg_jax.models.vit import drop_patches, kept_patches
from cvlg_jax.step import sharding, train_step

from train_fixtures import assert_tree_close, fresh_step, mesh_of, tiny_config


def test_drop_patches_keeps_the_class_token_and_a_distinct_subset():
  b, n, c = 3, 16, 4
  tokens = jnp.arange(b * (n + 1) * c, dtype=jnp.float32).reshape(b, n + 1, c)
  noise = jax.random.uniform(jax.random.key(0), (b, n))
  out = np.asarray(drop_patches(tokens, noise, 0.75, num_prefix=1))
  assert out.shape == (b, 1 + kept_patches(n, 0.75), c) == (b, 5, c)
  np.testing.assert_array_equal(out[:, 0], tokens[:, 0])  # class token first
  for row in range(b):
    kept = {int(t[0]) for t in out[row, 1:]}
    assert len(kept) == 4 and kept <= {int(t[0]) for t in tokens[row, 1:]}
    expected = np.argsort(-np.asarray(noise[row]))[:4]  # the largest noise
    assert kept == {int(tokens[row, 1 + i, 0]) for i in expected}
  assert kept_patches(3, 0.9) == 1  # never no patch at all
  with pytest.raises(ValueError, match="does not match"):
    drop_patches(tokens, noise[:, :8], 0.5, num_prefix=1)


def _model(rate, vocab_size=64, **kw):
  return build_model("tiny", vocab_size=vocab_size, patch_dropout=rate, **kw)


def test_evaluation_sees_every_patch_and_training_needs_the_noise():
  images = jax.random.normal(jax.random.key(1), (4, 32, 32, 3))
  params = _model(0.0).init(jax.random.key(0), images, None)["params"]
  full = _model(0.0).apply({"params": params}, images, None)[0]
  dropped = _model(0.5)
  np.testing.assert_array_equal(dropped.apply({"params": params}, images, None)[0],
                                full)
  noise = jax.random.uniform(jax.random.key(2), (4, 16))
  train = dropped.apply({"params": params}, images, None, train=True,
                        patch_noise=noise)[0]
  assert not np.allclose(train, full)
  with pytest.raises(ValueError, match="needs patch_noise"):
    dropped.apply({"params": params}, images, None, train=True)


@pytest.mark.parametrize("mesh_shape,remat", [((8, 1), False), ((2, 4), True)])
def test_micro_batches_drop_what_the_full_batch_drops(fsdp_init, mesh_shape, remat):
  """k=4 micro-batches == one full batch with the same noise rows: loss and
  every gradient (so both accumulation passes saw the same patches)."""
  config, _, _, _, host, batches = fsdp_init
  model = _model(0.5, config.data.vocab_size, remat=remat)
  mesh = mesh_of(*mesh_shape)
  rows = sharding.batch_sharding(mesh)
  batch = sharding.shard_batch(batches[0], mesh)
  images = train_step.normalize_images(batch["image"])
  n = images.shape[0]
  noise = jax.device_put(np.random.default_rng(0).uniform(
      size=(n, model.image_tower.num_patches(images.shape[1]))).astype(np.float32),
      rows)
  mask = jax.device_put(np.arange(n) % 3 == 0, rows)
  args = losses.LossInputs(jnp.float32(0.5), mask, jnp.float32(1.0))
  params = jax.device_put(host.params, sharding.state_shardings(mesh, host).params)
  out = {}
  for k in (1, 4):
    loss_fn = losses.sharded_contrastive_loss(mesh, distill=True)
    grad_fn = jax.jit(train_step.make_grad_fn(model, loss_fn, k, mesh))
    out[k] = jax.device_get(grad_fn(params, None, images, batch["tokens"], args,
                                    noise))
  (loss1, aux1), g1 = out[1]
  (loss4, aux4), g4 = out[4]
  np.testing.assert_allclose(loss4, loss1, rtol=1e-5)
  np.testing.assert_allclose(aux4.embeddings.image, aux1.embeddings.image,
                             rtol=1e-5, atol=1e-6)
  assert_tree_close(g4, g1, rtol=1e-5)


def _first_steps(config, repeats=1):
  """(params, loss) after one step from the initial state, ``repeats``
  times over with the same compiled step (the step donates its input)."""
  mesh = mesh_of(8, 1)
  _, state, shardings, step, it = fresh_step(config, mesh)
  host = jax.device_get(state)
  batch = sharding.shard_batch(next(it), mesh)
  out = []
  for _ in range(repeats):
    new, metrics = step(jax.device_put(host, shardings), batch)
    out.append((jax.device_get(new.params), float(metrics["loss"])))
  return out


def _config(rate, teacher, accum):
  c = tiny_config(**{"model.patch_dropout": rate, "train.grad_accum_steps": accum})
  c.loss.psd.teacher = teacher
  config_lib.validate(c)
  return c


@pytest.mark.parametrize("teacher,accum", [("ema", 2), ("bank", 2)])
def test_steps_are_a_function_of_seed_and_step(teacher, accum):
  """The same state gives the same step, bit for bit (a resume drops the
  same patches); the EMA and bank teachers run with accumulation."""
  (p1, l1), (p2, l2) = _first_steps(_config(0.5, teacher, accum), repeats=2)
  assert np.isfinite(l1) and l1 == l2
  assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(p1),
                                                   jax.tree.leaves(p2)))


def test_dropping_patches_changes_the_step():
  (_, dropped), = _first_steps(_config(0.5, "self", 1))
  (_, undropped), = _first_steps(_config(0.0, "self", 1))
  assert np.isfinite(dropped) and dropped != undropped


def test_patch_dropout_halves_the_image_towers_flops():
  """The compiled training forward of the image tower at 0.5 costs about
  half the undropped one (attention is quadratic: a bit under half)."""
  images = jnp.zeros((8, 64, 64, 3))
  flops = {}
  for rate in (0.0, 0.5):
    model = build_model("demo", vocab_size=64, patch_dropout=rate)
    params = jax.eval_shape(model.init, jax.random.key(0), images, None)["params"]
    noise = jnp.zeros((8, model.image_tower.num_patches(64)))
    f = jax.jit(lambda p, x, z, m=model: m.apply({"params": p}, x, None, train=True,
                                                 patch_noise=z)[0])
    flops[rate] = f.lower(params, images, noise).compile().cost_analysis()["flops"]
  assert 0.4 < flops[0.5] / flops[0.0] < 0.55, flops


def test_config_checks():
  for value, message in ((1.0, "must be in"), (-0.1, "must be in")):
    with pytest.raises(config_lib.ConfigError, match=message):
      config_lib.validate(tiny_config(**{"model.patch_dropout": value}))
  with pytest.raises(config_lib.ConfigError, match="needs a ViT image tower"):
    config_lib.validate(tiny_config(**{"model.patch_dropout": 0.5,
                                       "model.name": "rn_tiny"}))
