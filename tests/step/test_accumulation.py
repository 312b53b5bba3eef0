"""Gradient accumulation (micro-batches) equals the full-batch gradient, for
every loss, on an FSDP mesh."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cvlg_jax import losses
from cvlg_jax.step import sharding, train_step
from cvlg_jax.models.registry import build_model


from train_fixtures import assert_tree_close, mesh_of


@pytest.mark.parametrize("loss", ["siglip_psd"])
def test_grad_accumulation_equals_full_batch_gradient(fsdp_init, loss):
  """k=4 micro-batches (streamed loss) == one full batch (dense loss): loss,
  metrics and every gradient, the logit scale and bias counted once."""
  config, _, _, _, host, batches = fsdp_init
  model = build_model("tiny", vocab_size=config.data.vocab_size, sigmoid=True)
  params = dict(host.params, logit_bias=np.float32(-10.0))
  mesh = mesh_of(8, 1)
  rows = sharding.batch_sharding(mesh)
  batch = sharding.shard_batch(batches[0], mesh)
  images = train_step.normalize_images(batch["image"])
  mask = jax.device_put(np.arange(32) % 3 == 0, rows)
  args = losses.LossInputs(jnp.float32(0.5), mask, jnp.float32(0.7))
  out = {}
  for k, chunk in ((1, 0), (4, 2)):
    loss_fn = losses.sharded_contrastive_loss(mesh, kind="sigmoid",
                                              chunk_size=chunk)
    grad_fn = jax.jit(train_step.make_grad_fn(model, loss_fn, k, mesh))
    out[k] = jax.device_get(grad_fn(params, None, images, batch["tokens"], args))
  (loss1, (m1, *_)), g1 = out[1]
  (loss4, (m4, *_)), g4 = out[4]
  np.testing.assert_allclose(loss4, loss1, rtol=1e-5)
  for key in m1:
    np.testing.assert_allclose(m4[key], m1[key], rtol=1e-5, err_msg=key)
  assert_tree_close(g4, g1, rtol=1e-5)
  assert abs(g1["logit_bias"]) > 1e-3 and abs(g1["logit_scale"]) > 1e-4
