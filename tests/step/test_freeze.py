"""Locked towers (``train.freeze``, LiT): which parameters a spec selects,
and that a locked step leaves them bit for bit, allocates no optimizer state
for them and runs no backward pass through them."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cvlg_jax import config as config_lib
from cvlg_jax.models.registry import build_model
from cvlg_jax.step import freeze, sharding, train_state

from train_fixtures import fresh_step, mesh_of, plan_of, tiny_config


def _params(name="tiny"):
  model = build_model(name, vocab_size=64)
  return jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)),
                        jnp.zeros((1, 8), jnp.int32))["params"]


def _frozen_names(spec, name="tiny"):
  leaves = jax.tree_util.tree_flatten_with_path(freeze.mask(_params(name), spec))[0]
  return {freeze.path_name(p) for p, f in leaves if f}


def _all_names(name="tiny"):
  return {freeze.path_name(p) for p, _ in
          jax.tree_util.tree_flatten_with_path(_params(name))[0]}


def test_shortcuts_select_the_towers():
  names = _all_names()
  image = _frozen_names("image")
  assert image == {n for n in names if n.startswith(("image_tower/", "image_proj/"))}
  text = _frozen_names("text")
  assert text == {n for n in names if n.startswith(("text_tower/", "text_proj/"))}
  assert "logit_scale" not in image | text
  assert _frozen_names("image,text") == image | text
  assert _frozen_names("") == set()


def test_image_except_last_keeps_the_last_blocks_and_the_head_trainable():
  names = _all_names()  # the tiny ViT has blocks 0 and 1
  frozen = _frozen_names("image_except_last=1")
  assert frozen == {n for n in names if n.startswith("image_tower/")
                    and not n.startswith(("image_tower/encoder/block1/",
                                          "image_tower/ln_post/"))}
  assert "image_tower/patch_embed/kernel" in frozen
  assert _frozen_names("image_except_last=0") == {
      n for n in names if n.startswith("image_tower/") and "ln_post" not in n}
  # A ResNet's blocks are its bottlenecks, in order; the attention pool learns.
  rn = _frozen_names("image_except_last=1", "rn_tiny")
  assert not any(n.startswith(("image_tower/layer4_0/", "image_tower/attnpool/"))
                 for n in rn)
  assert any(n.startswith("image_tower/layer3_0/") for n in rn)


def test_regex_entries_match_whole_paths():
  assert _frozen_names(r"text_tower/token_embedding/.*") == {
      "text_tower/token_embedding/embedding"}
  assert _frozen_names("logit_scale") == {"logit_scale"}


@pytest.mark.parametrize("spec,message", [
    ("imgae", "'imgae' matches no parameter (paths look like"),
    ("image_except_last=9", "'image_except_last=9' but the image tower has 2 blocks"),
])
def test_a_spec_that_does_not_fit_the_model_is_one_line(spec, message):
  with pytest.raises(freeze.FreezeSpecError, match=message.replace("(", r"\(")):
    freeze.mask(_params(), spec)


@pytest.mark.parametrize("spec,message", [
    ("image_except_last=x", "needs a block count"),
    ("text_tower/(", "neither a shortcut"),
])
def test_validate_refuses_bad_syntax(spec, message):
  config = tiny_config(**{"train.freeze": spec})
  with pytest.raises(config_lib.ConfigError, match=message):
    config_lib.validate(config)


def test_freezing_everything_is_refused_before_compiling():
  config = tiny_config(**{"train.freeze": ".*"})
  _, model, tx, _ = train_state.build(plan_of(config))
  with pytest.raises(config_lib.ConfigError, match="freezes every parameter"):
    train_state.init_state(plan_of(config), model, tx, mesh_of(8, 1))


def _nbytes(tree):
  return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))


@pytest.fixture(scope="module")
def locked_and_full():
  """Three steps of the tiny model, image tower locked and not, from the
  same initial params and batches (PSD, self teacher)."""
  runs = {}
  for spec in ("image", ""):
    config = tiny_config(**{"train.freeze": spec})
    mesh = mesh_of(8, 1)
    model, state, _, step, it = fresh_step(config, mesh)
    initial = jax.device_get(state)
    batch = sharding.shard_batch(next(it), mesh)
    flops = step.lower(state, batch)["train_step"].compile().cost_analysis()["flops"]
    for _ in range(3):
      state, metrics = step(state, batch)
      batch = sharding.shard_batch(next(it), mesh)
    runs[spec] = dict(initial=initial, final=jax.device_get(state), flops=flops,
                      loss=float(metrics["loss"]), model=model, config=config)
  return runs


def test_locked_parameters_stay_bitwise_and_the_rest_learn(locked_and_full):
  run = locked_and_full["image"]
  frozen = freeze.mask(run["initial"].params, "image")
  leaves = jax.tree_util.tree_flatten_with_path(run["final"].params)[0]
  for (path, after), before, f in zip(leaves, jax.tree.leaves(run["initial"].params),
                                      jax.tree.leaves(frozen)):
    if f:
      np.testing.assert_array_equal(after, before, err_msg=freeze.path_name(path))
    elif "text_tower/encoder" in freeze.path_name(path) and after.ndim == 2:
      assert not np.array_equal(after, before), freeze.path_name(path)
  assert np.isfinite(run["loss"])


def test_optimizer_state_shrinks_by_the_frozen_share(locked_and_full):
  locked, full = locked_and_full["image"]["final"], locked_and_full[""]["final"]
  frozen_bytes = _nbytes([p for p, f in zip(
      jax.tree.leaves(locked.params),
      jax.tree.leaves(freeze.mask(locked.params, "image"))) if f])
  # Adam keeps two moments per trained parameter, none per frozen one.
  assert _nbytes(full.opt_state) - _nbytes(locked.opt_state) == 2 * frozen_bytes
  assert frozen_bytes > 0.2 * _nbytes(locked.params)


def test_a_locked_tower_costs_its_forward_pass_only(locked_and_full):
  """The compiled step's FLOPs drop by at least 1.5x the image tower's
  forward FLOPs: its backward (about 2x the forward) is gone. (FLOPs of the
  8-way data-parallel step are per device: the forward is of one device's
  rows.)"""
  run = locked_and_full["image"]
  s = run["config"].data.image_size
  batch = run["config"].train.batch_size // 8
  model, params = run["model"], run["initial"].params
  forward = jax.jit(lambda p, x: model.apply({"params": p}, x, None)[0]).lower(
      params, jnp.zeros((batch, s, s, 3))).compile().cost_analysis()["flops"]
  saved = locked_and_full[""]["flops"] - run["flops"]
  assert saved >= 1.5 * forward, (saved, forward)
