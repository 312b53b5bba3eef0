"""The training-mode forward pass with model state: BatchNorm (RN) through the
sharded step is SyncBN and mesh-independent."""

import jax
import jax.numpy as jnp
import numpy as np
from ml_collections import ConfigDict

from cvlg_jax.step import sharding, train_state, train_step
from cvlg_jax.data import pipeline
from train_fixtures import plan_of


from train_fixtures import assert_tree_close, tiny_config, mesh_of, run_steps


def test_rn_tiny_batchnorm_step_is_sync_bn_and_mesh_independent():
  """ModifiedResNet with BatchNorm (as CLIP's RN50) through the sharded step:
  the running statistics live in ``state.model_state``, are updated from the
  *global* batch (SyncBN: mesh 4x2 = one device), and evaluation uses them.
  Params are drawn with NumPy: compiling RN's initialisers would cost more
  than the step."""
  config = tiny_config(**{"model.name": "rn_tiny", "data.image_size": 32,
                      "train.batch_size": 16})
  tokenizer, model, tx, schedule = train_state.build(plan_of(config))
  abstract = jax.eval_shape(model.init, jax.random.key(0),
                            jnp.zeros((1, 32, 32, 3)), jnp.zeros((1, 8), jnp.int32))
  assert set(abstract) == {"params", "batch_stats"}
  rng = np.random.default_rng(0)
  params = jax.tree.map(
      lambda x: (0.05 * rng.normal(size=x.shape)).astype(np.float32),
      abstract["params"])
  stats = jax.tree.map(lambda x: np.full(x.shape, 0.5, np.float32),
                       abstract["batch_stats"])
  host = train_step.TrainState(step=np.int32(0), params=params,
                               opt_state=jax.jit(tx.init)(params),
                               rng=np.zeros(2, np.uint32),
                               model_state={"batch_stats": stats})
  host = jax.device_get(host)  # numpy leaves: each run_steps donates its own copy
  batches = [next(iter(pipeline.train_dataset(config, tokenizer)))]
  (sharded,), (m_sharded,) = run_steps(config, host, mesh_of(4, 2), batches, model)
  one_device = sharding.make_mesh(ConfigDict(dict(data=1, fsdp=1)),
                                  jax.devices()[:1])
  (single,), (m_single,) = run_steps(config, host, one_device, batches, model)
  assert int(sharded.step) == 1 and np.isfinite(float(m_sharded["loss"]))
  for key in ("loss", "grad_norm"):
    np.testing.assert_allclose(m_sharded[key], m_single[key], rtol=1e-5)
  assert_tree_close(sharded.model_state, single.model_state, rtol=1e-5)
  # Adam's first step is ~lr x sign(g): for near-zero gradients (BatchNorm
  # biases) round-off decides it, hence the looser check on the params.
  assert_tree_close(sharded.params, single.params, rtol=1e-4)
  # Running mean of the stem's first norm = 0.9 x 0.5 + 0.1 x batch mean of
  # its input (the first conv of the normalised images), checked by hand.
  images = train_step.normalize_images(batches[0]["image"])
  conv = params["image_tower"]["stem_conv1"]["kernel"]
  pre = jax.lax.conv_general_dilated(
      images, conv, (2, 2), [(1, 1), (1, 1)],
      dimension_numbers=("NHWC", "HWIO", "NHWC"))
  expected = 0.9 * 0.5 + 0.1 * np.asarray(pre).mean(axis=(0, 1, 2))
  np.testing.assert_allclose(
      sharded.model_state["batch_stats"]["image_tower"]["stem_norm1"]["mean"],
      expected, rtol=1e-4, atol=1e-6)
  after = sharded.params["image_tower"]["attnpool"]["c_proj"]["kernel"]
  assert not np.allclose(params["image_tower"]["attnpool"]["c_proj"]["kernel"], after)
  assert float(m_sharded["grad_norm"]) > 0
  # Accumulating over k=2 micro-batches (with the EMA teacher, whose own
  # BatchNorm pass must leave the statistics alone): two momentum updates,
  # micro-batch 0 (rows 0, 2, 4, ...) then micro-batch 1 (rows 1, 3, ...).
  accum = tiny_config(**{"model.name": "rn_tiny", "data.image_size": 32,
                     "train.batch_size": 16, "train.grad_accum_steps": 2})
  accum.loss.name, accum.loss.psd.teacher = "psd", "ema"
  host_ema = host.replace(ema_params=host.params)
  (acc,), (m_acc,) = run_steps(accum, host_ema, mesh_of(4, 2), batches, model)
  micro_mean = np.asarray(pre).reshape(8, 2, -1, pre.shape[-1]).mean(axis=(0, 2))
  expected = 0.9 * (0.9 * 0.5 + 0.1 * micro_mean[0]) + 0.1 * micro_mean[1]
  np.testing.assert_allclose(
      acc.model_state["batch_stats"]["image_tower"]["stem_norm1"]["mean"],
      expected, rtol=1e-4, atol=1e-6)
  assert np.isfinite(float(m_acc["loss"])) and acc.ema_params is not None
  # Evaluation normalises with the running statistics, not the batch's.
  variables = train_state.eval_variables(sharded)
  eval_img = model.apply(variables, images)[0]
  train_img = model.apply(variables, images, train=True,
                          mutable=["batch_stats"])[0][0]
  assert not np.allclose(eval_img, train_img, atol=1e-3)
  moved = dict(variables, batch_stats=jax.tree.map(
      lambda x: x + 1.0, variables["batch_stats"]))
  assert not np.allclose(model.apply(moved, images)[0], eval_img, atol=1e-3)
