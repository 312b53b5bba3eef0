"""FSDP layouts and equivalence, bf16, gradient accumulation, RN50 and model
sizes (tiny shapes, 8 CPU devices). One initialisation is shared by the file:
compiling is what costs time here."""


import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P
from ml_collections import ConfigDict

from cvlg_jax import losses, sharding, train_step
from cvlg_jax.data import pipeline
from cvlg_jax.models.registry import build_model

from configs import demo


def _config(**overrides):
  c = demo.get_config("tiny,teacher=self,schedule=paper")  # the design PSD
  c.eval = {}
  c.data.image_size, c.data.context_length = 16, 8
  c.optim.warmup_steps = 0          # a real update from the first step
  for key, value in overrides.items():
    group, name = key.split(".", 1)
    c[group][name] = value
  return c


def _mesh(data, fsdp):
  return sharding.make_mesh(ConfigDict(dict(data=data, fsdp=fsdp)))


def _put(host_state, mesh):
  """A fresh on-device copy of a host state in ``mesh``'s layout."""
  shardings = sharding.state_shardings(mesh, host_state)
  return jax.device_put(host_state, shardings), shardings


def _steps(config, host_state, mesh, batches, model=None):
  tokenizer, m, tx, schedule = train_step.build(config)
  state, shardings = _put(host_state, mesh)
  step = train_step.make_train_step(config, model or m, tx, schedule, mesh,
                                    shardings)
  states, metrics = [], []
  for batch in batches:
    state, out = step(state, sharding.shard_batch(batch, mesh))
    states.append(jax.device_get(state))
    metrics.append(jax.device_get(out))
  return states, metrics


def _assert_tree_close(actual, desired, rtol):
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
  config = _config()
  tokenizer, model, tx, _ = train_step.build(config)
  mesh = _mesh(2, 4)
  with jax.threefry_partitionable(False):  # compiles ~2x faster on CPU
    state, shardings = train_step.init_state(config, model, tx, mesh)
  it = iter(pipeline.train_dataset(config, tokenizer))
  batches = [next(it) for _ in range(2)]
  return config, mesh, state, shardings, jax.device_get(state), batches


@pytest.fixture(scope="module")
def data_parallel_run(fsdp_init):
  """Two f32 steps from the same initial state on the (8, 1) mesh."""
  config, _, _, _, host, batches = fsdp_init
  return _steps(config, host, _mesh(8, 1), batches)


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
  fsdp_states, fsdp_metrics = _steps(config, host, mesh, batches)
  fsdp_state, dp_state = fsdp_states[-1], data_parallel_run[0][-1]
  dp_metrics = data_parallel_run[1]
  for a, b in zip(fsdp_metrics, dp_metrics):
    np.testing.assert_allclose(a["loss"], b["loss"], rtol=1e-5)
    np.testing.assert_allclose(a["grad_norm"], b["grad_norm"], rtol=1e-5)
  assert not np.allclose(host.params["text_proj"]["kernel"],
                         dp_state.params["text_proj"]["kernel"])
  _assert_tree_close(fsdp_state.params, dp_state.params, rtol=1e-5)
  _assert_tree_close(fsdp_state.opt_state, dp_state.opt_state, rtol=1e-5)


def test_bf16_accumulated_ema_step_stays_close_to_f32(fsdp_init,
                                                      data_parallel_run):
  """bf16 compute + 2 micro-batches + EMA teacher + streamed loss: at step 0
  (alpha = 0) it is the same update as the f32 full-batch step."""
  _, _, _, _, host, batches = fsdp_init
  config = _config(**{"model.dtype": "bfloat16", "train.grad_accum_steps": 2,
                      "loss.chunk_size": 2})
  config.loss.psd.teacher = "ema"
  host = host.replace(ema_params=host.params)
  (state,), metrics = _steps(config, host, _mesh(8, 1), batches[:1])
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


@pytest.mark.parametrize("loss", ["siglip_psd"])
def test_grad_accumulation_equals_full_batch_gradient(fsdp_init, loss):
  """k=4 micro-batches (streamed loss) == one full batch (dense loss): loss,
  metrics and every gradient, the logit scale and bias counted once."""
  config, _, _, _, host, batches = fsdp_init
  model = build_model("tiny", vocab_size=config.data.vocab_size, sigmoid=True)
  params = dict(host.params, logit_bias=np.float32(-10.0))
  mesh = _mesh(8, 1)
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
  _assert_tree_close(g4, g1, rtol=1e-5)
  assert abs(g1["logit_bias"]) > 1e-3 and abs(g1["logit_scale"]) > 1e-4


def test_rn_tiny_batchnorm_step_is_sync_bn_and_mesh_independent():
  """ModifiedResNet with BatchNorm (as CLIP's RN50) through the sharded step:
  the running statistics live in ``state.model_state``, are updated from the
  *global* batch (SyncBN: mesh 4x2 = one device), and evaluation uses them.
  Params are drawn with NumPy: compiling RN's initialisers would cost more
  than the step."""
  config = _config(**{"model.name": "rn_tiny", "data.image_size": 32,
                      "train.batch_size": 16})
  tokenizer, model, tx, schedule = train_step.build(config)
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
  host = jax.device_get(host)  # numpy leaves: each _steps donates its own copy
  batches = [next(iter(pipeline.train_dataset(config, tokenizer)))]
  (sharded,), (m_sharded,) = _steps(config, host, _mesh(4, 2), batches, model)
  one_device = sharding.make_mesh(ConfigDict(dict(data=1, fsdp=1)),
                                  jax.devices()[:1])
  (single,), (m_single,) = _steps(config, host, one_device, batches, model)
  assert int(sharded.step) == 1 and np.isfinite(float(m_sharded["loss"]))
  for key in ("loss", "grad_norm"):
    np.testing.assert_allclose(m_sharded[key], m_single[key], rtol=1e-5)
  _assert_tree_close(sharded.model_state, single.model_state, rtol=1e-5)
  # Adam's first step is ~lr x sign(g): for near-zero gradients (BatchNorm
  # biases) round-off decides it, hence the looser check on the params.
  _assert_tree_close(sharded.params, single.params, rtol=1e-4)
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
  accum = _config(**{"model.name": "rn_tiny", "data.image_size": 32,
                     "train.batch_size": 16, "train.grad_accum_steps": 2})
  accum.loss.name, accum.loss.psd.teacher = "psd", "ema"
  host_ema = host.replace(ema_params=host.params)
  (acc,), (m_acc,) = _steps(accum, host_ema, _mesh(4, 2), batches, model)
  micro_mean = np.asarray(pre).reshape(8, 2, -1, pre.shape[-1]).mean(axis=(0, 2))
  expected = 0.9 * (0.9 * 0.5 + 0.1 * micro_mean[0]) + 0.1 * micro_mean[1]
  np.testing.assert_allclose(
      acc.model_state["batch_stats"]["image_tower"]["stem_norm1"]["mean"],
      expected, rtol=1e-4, atol=1e-6)
  assert np.isfinite(float(m_acc["loss"])) and acc.ema_params is not None
  # Evaluation normalises with the running statistics, not the batch's.
  variables = train_step.eval_variables(sharded)
  eval_img = model.apply(variables, images)[0]
  train_img = model.apply(variables, images, train=True,
                          mutable=["batch_stats"])[0][0]
  assert not np.allclose(eval_img, train_img, atol=1e-3)
  moved = dict(variables, batch_stats=jax.tree.map(
      lambda x: x + 1.0, variables["batch_stats"]))
  assert not np.allclose(model.apply(moved, images)[0], eval_img, atol=1e-3)


def _count(name, image, length=77, vocab=49408, **kw):
  model = build_model(name, vocab_size=vocab, **kw)
  params = jax.eval_shape(model.init, jax.random.key(0),
                          jnp.zeros((1, image, image, 3)),
                          jnp.zeros((1, length), jnp.int32))["params"]
  return model, params, sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))


def test_clip_model_sizes_and_rn50_shapes():
  """Parameter counts of OpenAI CLIP (open_clip's table: ViT-B/16 149.62M,
  ViT-L/14 427.62M, RN50 102.01M) and RN50's outputs at 224 px in bf16."""
  assert _count("vit_b16", 224)[2] == 149_620_737
  # The CPU benchmark model (benchmarks/step_vs_open_clip.py): the count of
  # open_clip.model.CLIP(256, its vision_cfg, its text_cfg).
  assert _count("bench_s32", 224)[2] == 29_418_625
  assert round(_count("vit_l14", 224)[2] / 1e6, 2) == 427.62
  model, params, n = _count("rn50", 224, dtype="bfloat16")
  assert round(n / 1e6, 2) == 102.01
  assert {x.dtype for x in jax.tree.leaves(params)} == {np.dtype(np.float32)}
  variables = jax.eval_shape(model.init, jax.random.key(0),
                             jnp.zeros((1, 224, 224, 3)),
                             jnp.zeros((1, 77), jnp.int32))
  assert set(variables) == {"params", "batch_stats"}  # BatchNorm, as CLIP's RN50
  img, txt, scale = jax.eval_shape(
      lambda v: model.apply(v, jnp.zeros((2, 224, 224, 3)),
                            jnp.zeros((2, 77), jnp.int32)), variables)
  assert img.shape == (2, 1024) and txt.shape == (2, 1024) and scale.shape == ()
  # bf16 towers, float32 embeddings and scale (the loss runs in float32).
  assert img.dtype == txt.dtype == scale.dtype == jnp.float32
  assert params["image_tower"]["attnpool"]["positional_embedding"].shape == (50, 2048)
  # SigLIP adds exactly one scalar, the learned bias.
  _, sig_params, n_sig = _count("tiny", 32, 8, 4096, sigmoid=True)
  assert n_sig == _count("tiny", 32, 8, 4096)[2] + 1
  assert sig_params["logit_bias"].shape == ()
