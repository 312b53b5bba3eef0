"""Partition rules and FSDP: layouts of params and optimizer state, FSDP steps
equal data-parallel ones, bf16 + accumulation + EMA under FSDP (tiny shapes,
8 CPU devices)."""

import jax
import numpy as np
from jax.sharding import PartitionSpec as P

from cvlg_jax.step import sharding


from train_fixtures import assert_tree_close, tiny_config, mesh_of, run_steps


def test_partition_rules_on_vit_b_shapes():
  mesh_shape = {"data": 2, "fsdp": 4}
  spec = lambda path, shape: sharding.param_spec(path, shape, mesh_shape)  # noqa: E731
  blk = "image_tower/encoder/block3/"
  assert spec(blk + "mlp/fc1/kernel", (768, 3072)) == P("fsdp", None)
  assert spec(blk + "mlp/fc2/kernel", (3072, 768)) == P("fsdp", None)
  assert spec(blk + "attn/query/kernel", (768, 12, 64)) == P("fsdp", None, None)
  assert spec(blk + "attn/out/kernel", (12, 64, 768)) == P(None, None, "fsdp")
  assert spec("image_tower/patch_embed/kernel", (16, 16, 3, 768)) == P(
      None, None, None, "fsdp")
  assert spec("text_tower/token_embedding/embedding", (49408, 512)) == P(
      "fsdp", None)
  # Adam moments share their param's leaf path, hence its layout.
  assert spec("1/0/mu/" + blk + "mlp/fc1/kernel", (768, 3072)) == P("fsdp", None)
  # No rule names it: the largest divisible dimension (big_vision's rule).
  assert spec("image_tower/pos_embedding", (1, 197, 768)) == P(None, None, "fsdp")
  # A named dimension that does not divide is skipped for the next one.
  assert spec("text_proj/kernel", (510, 512)) == P(None, "fsdp")
  # Small or scalar arrays stay replicated; so does everything without fsdp.
  assert spec(blk + "ln1/scale", (768,)) == P()
  assert spec("logit_scale", ()) == P()
  assert sharding.param_spec(blk + "mlp/fc1/kernel", (768, 3072),
                             {"data": 8, "fsdp": 1}) == P()


def test_fsdp_shards_params_and_optimizer_state(fsdp_init):
  _, _, state, _, _, _ = fsdp_init
  fc1 = "text_tower/encoder/block0/mlp/fc1/kernel"
  found = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(
      (state.params, state.opt_state))[0]:
    name = jax.tree_util.keystr(path, simple=True, separator="/")
    spec = leaf.sharding.spec
    if name.endswith(fc1) or name.endswith("token_embedding/embedding"):
      assert spec == P("fsdp", None), (name, spec)
      found[name] = leaf.sharding.shard_shape(leaf.shape)
    elif leaf.size < sharding.FSDP_MIN_SIZE:
      assert spec == P() or all(s is None for s in spec), (name, spec)
  # The param and both Adam moments of each matrix: 3 x 2 arrays, each device
  # holding a quarter of the rows.
  assert len(found) == 6, sorted(found)
  assert {v for k, v in found.items() if k.endswith(fc1)} == {(16, 256)}


def test_fsdp_steps_equal_data_parallel_steps(fsdp_init, data_parallel_run):
  config, mesh, _, _, host, batches = fsdp_init
  fsdp_states, fsdp_metrics = run_steps(config, host, mesh, batches)
  fsdp_state, dp_state = fsdp_states[-1], data_parallel_run[0][-1]
  dp_metrics = data_parallel_run[1]
  for a, b in zip(fsdp_metrics, dp_metrics):
    np.testing.assert_allclose(a["loss"], b["loss"], rtol=1e-5)
    np.testing.assert_allclose(a["grad_norm"], b["grad_norm"], rtol=1e-5)
  assert not np.allclose(host.params["text_proj"]["kernel"],
                         dp_state.params["text_proj"]["kernel"])
  assert_tree_close(fsdp_state.params, dp_state.params, rtol=1e-5)
  assert_tree_close(fsdp_state.opt_state, dp_state.opt_state, rtol=1e-5)


def test_bf16_accumulated_ema_step_stays_close_to_f32(fsdp_init,
                                                      data_parallel_run):
  """bf16 compute + 2 micro-batches + EMA teacher + streamed loss: at step 0
  (alpha = 0) it is the same update as the f32 full-batch step."""
  _, _, _, _, host, batches = fsdp_init
  config = tiny_config(**{"model.dtype": "bfloat16", "train.grad_accum_steps": 2,
                      "loss.chunk_size": 2})
  config.loss.psd.teacher = "ema"
  host = host.replace(ema_params=host.params)
  (state,), metrics = run_steps(config, host, mesh_of(8, 1), batches[:1])
  dp_state, dp_metrics = data_parallel_run[0][0], data_parallel_run[1]
  np.testing.assert_allclose(metrics[0]["loss"], dp_metrics[0]["loss"], rtol=2e-3)
  np.testing.assert_allclose(metrics[0]["grad_norm"], dp_metrics[0]["grad_norm"],
                             rtol=1e-2)
  for tree in (state.params, state.opt_state, state.ema_params):
    assert {x.dtype for x in jax.tree.leaves(tree) if x.ndim} == {
        np.dtype(np.float32)}
  kernel = lambda s: s["text_proj"]["kernel"]  # noqa: E731
  delta = kernel(state.params) - kernel(host.params)
  dp_delta = kernel(dp_state.params) - kernel(host.params)
  assert np.corrcoef(delta.ravel(), dp_delta.ravel())[0, 1] > 0.98
  np.testing.assert_allclose(kernel(state.ema_params),
                             0.999 * kernel(host.params) + 0.001 * kernel(state.params),
                             rtol=1e-6, atol=1e-8)
