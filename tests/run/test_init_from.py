"""``train.init_from``: weights from another checkpoint, everything else fresh."""

import json
import os
import subprocess
import sys
import types

import jax
import numpy as np
import pytest
import scipy.special

from cvlg_jax.run import checkpointing, init_from, loop, record
from cvlg_jax.step import train_state
from cvlg_jax import config as config_lib
from cvlg_jax.cli import evaluate
from cvlg_jax.step import sharding
from cvlg_jax.data import pipeline
from cvlg_jax.models import registry, transformer

from main_runner import REPO
from configs import demo
from train_fixtures import plan_of


def tiny_config(**overrides):
  c = demo.get_config("tiny")
  c.eval = {}
  c.train.steps, c.train.log_every, c.train.checkpoint_every = 2, 1, 1
  for key, value in overrides.items():
    group, name = key.rsplit(".", 1)
    c[group][name] = value
  return c


def _fresh_state(config):
  mesh = sharding.make_mesh(config.mesh)
  _, model, tx, _ = train_state.build(plan_of(config))
  return train_state.init_state(plan_of(config), model, tx, mesh)


def _leaves_equal(a, b):
  return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


@pytest.fixture(scope="module")
def source(tmp_path_factory):
  """A cvlg_jax workdir with full checkpoints at steps 1 and 2 (different
  weights) and its config.json; returns (workdir, the weights of step 2)."""
  workdir = str(tmp_path_factory.mktemp("source"))
  ckpt = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"))
  config = tiny_config(**{"train.seed": 7})
  tokenizer, model, tx, _ = train_state.build(plan_of(config))
  mesh = sharding.make_mesh(config.mesh)
  state, _ = train_state.init_state(plan_of(config), model, tx, mesh)
  data = iter(pipeline.train_dataset(config, tokenizer))
  ckpt.save(1, state.replace(params=jax.tree.map(lambda x: x + 1, state.params)),
            data, force=True)
  ckpt.save(2, state, data, force=True)
  ckpt.close()
  record.write(config, workdir, mesh)
  weights = checkpointing.restore_weights(os.path.join(workdir, "checkpoints", "2"))
  return workdir, weights


def test_load_replaces_only_the_weights(source):
  workdir, weights = source
  config = tiny_config(**{"loss.psd.teacher": "ema"})
  state, shardings = _fresh_state(config)
  loaded, step_dir = init_from.load(config, state, shardings, workdir)
  assert step_dir.endswith(os.path.join("checkpoints", "2"))  # newest step
  assert _leaves_equal(loaded.params, weights["params"])
  assert not _leaves_equal(state.params, weights["params"])  # really replaced
  # The EMA teacher starts from the loaded weights, in its own buffers.
  assert _leaves_equal(loaded.ema_params, weights["params"])
  pointer = lambda x: x.addressable_shards[0].data.unsafe_buffer_pointer()  # noqa: E731
  assert all(pointer(a) != pointer(b) for a, b in
             zip(jax.tree.leaves(loaded.params), jax.tree.leaves(loaded.ema_params)))
  # Optimizer state, step and RNG stay as init_state made them.
  assert _leaves_equal(loaded.opt_state, state.opt_state)
  assert int(loaded.step) == 0 and np.array_equal(loaded.rng, state.rng)
  assert jax.tree.map(lambda x: x.sharding, loaded.params) == shardings.params


def test_run_starts_from_init_from_and_resume_wins(source, tmp_path, monkeypatch):
  src_workdir, weights = source
  config = tiny_config(**{"train.init_from": src_workdir, "train.steps": 1,
                          "optim.learning_rate": 1e-12, "optim.weight_decay": 0.0})
  workdir = str(tmp_path / "ft")
  loop.run(config, workdir)
  after = checkpointing.restore_weights(os.path.join(workdir, "checkpoints", "1"))
  # One step at lr 1e-12 from the source's weights: still the source's.
  for a, b in zip(jax.tree.leaves(after["params"]), jax.tree.leaves(weights["params"])):
    np.testing.assert_allclose(a, b, atol=1e-9)
  log = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  assert [row["step"] for row in log] == [1]
  # A restart resumes the run's own checkpoint and never reads init_from.
  def fail(*args, **kwargs):
    raise AssertionError("init_from consulted although the run has a checkpoint")
  monkeypatch.setattr(init_from, "load", fail)
  loop.run(config, workdir)
  info = json.load(open(os.path.join(workdir, "run_info.json")))
  assert info["resumed_from_step"] == 1


def _abstract_state(config):
  """Shapes of a fresh state's weights (enough for init_from.check)."""
  _, model, _, _ = train_state.build(plan_of(config))
  s, n = config.data.image_size, config.data.context_length
  variables = dict(jax.eval_shape(lambda: model.init(
      jax.random.key(0), np.zeros((1, s, s, 3)), np.zeros((1, n), np.int32))))
  params = variables.pop("params")
  return types.SimpleNamespace(params=params, model_state=variables or None)


def test_mismatched_model_is_one_line_config_error(source):
  workdir, _ = source
  config = tiny_config(**{"model.name": "demo"})
  step_dir = init_from.find_step_dir(workdir)
  with pytest.raises(config_lib.ConfigError) as e:
    init_from.check(config, step_dir, _abstract_state(config), "config.train.init_from")
  message = str(e.value)
  assert "\n" not in message and "model.name='demo'" in message
  assert "(64, 2, 32) in checkpoint vs (128, 4, 32) in model" in message
  # A model with BatchNorm state the checkpoint lacks is named too.
  config = tiny_config(**{"model.name": "rn_tiny"})
  with pytest.raises(config_lib.ConfigError, match="batch_stats"):
    init_from.check(config, step_dir, _abstract_state(config), "src")


def test_evaluate_checks_the_recorded_options(source):
  workdir, _ = source
  config = tiny_config(**{"model.layer_norm_epsilon": 1e-5})
  with pytest.raises(config_lib.ConfigError, match="layer_norm_epsilon=1e-06"):
    evaluate.restore(config, workdir)


def test_function_options_must_match_the_record(source):
  workdir, _ = source  # recorded: model.activation="gelu_tanh" (the default)
  config = tiny_config(**{"model.activation": "quick_gelu"})
  with pytest.raises(config_lib.ConfigError,
                     match="src was saved with model.activation='gelu_tanh'.*"
                     "set config.model.activation='gelu_tanh'"):
    init_from.check(config, init_from.find_step_dir(workdir),
                    _abstract_state(config), "src")


def test_sigmoid_loss_keeps_its_bias_when_the_source_has_none(source):
  workdir, weights = source  # a softmax-loss checkpoint: no logit_bias
  config = tiny_config(**{"loss.name": "siglip"})
  state, shardings = _fresh_state(config)
  loaded, _ = init_from.load(config, state, shardings, workdir)
  assert float(loaded.params["logit_bias"]) == -10.0  # SigLIP's initial bias
  rest = {k: v for k, v in loaded.params.items() if k != "logit_bias"}
  assert _leaves_equal(rest, weights["params"])


def test_validate_checks_the_path_and_new_model_keys(tmp_path):
  with pytest.raises(config_lib.ConfigError, match="train.init_from=.*does not exist"):
    config_lib.validate(tiny_config(**{"train.init_from": str(tmp_path / "nope")}))
  with pytest.raises(config_lib.ConfigError, match="model.activation='relu'"):
    config_lib.validate(tiny_config(**{"model.activation": "relu"}))
  with pytest.raises(config_lib.ConfigError, match="layer_norm_epsilon=0"):
    config_lib.validate(tiny_config(**{"model.layer_norm_epsilon": 0.0}))
  with pytest.raises(config_lib.ConfigError, match="no committed checkpoint"):
    init_from.load(tiny_config(), None, None, str(tmp_path))


def test_evaluate_restores_a_weights_only_checkpoint(source, tmp_path):
  """What `cvlg_jax.pretrained import` writes: params (+ model state) only."""
  _, weights = source
  step_dir = str(tmp_path / "checkpoints" / "0")
  checkpointing.save_weights(step_dir, weights["params"])
  assert checkpointing.is_weights_only(step_dir)
  config = tiny_config()
  restored = evaluate.restore(config, str(tmp_path))
  assert restored.step == 0
  assert _leaves_equal(restored.state.params, weights["params"])


def test_activation_options():
  x = np.linspace(-4, 4, 101, dtype=np.float32)
  quick = transformer.activation_fn("quick_gelu")(x)
  np.testing.assert_allclose(quick, x / (1 + np.exp(-1.702 * x)), rtol=1e-5, atol=1e-6)
  exact = transformer.activation_fn("gelu")(x)
  np.testing.assert_allclose(exact, 0.5 * x * (1 + scipy.special.erf(x / np.sqrt(2))),
                             rtol=1e-5, atol=1e-6)
  assert transformer.DEFAULT_ACTIVATION == "gelu_tanh"  # what old runs trained with
  model = registry.build_model("rn_tiny", vocab_size=64, activation="quick_gelu",
                               layer_norm_epsilon=1e-5)
  assert (model.text_tower.activation, model.text_tower.layer_norm_epsilon) == (
      "quick_gelu", 1e-5)
  vit = registry.build_model("tiny", vocab_size=64, activation="gelu").image_tower
  assert (vit.activation, vit.layer_norm_epsilon) == ("gelu", 1e-6)
  with pytest.raises(ValueError, match="activation='relu' is unknown"):
    registry.build_model("tiny", vocab_size=64, activation="relu")


def test_cli_modules_can_load_init_from():
  """`python -m cvlg_jax.main` / `cvlg_jax.evaluate` reach init_from; it must
  not import the evaluate CLI module, whose absl flags would then be defined
  twice (DuplicateFlagError) in either process."""
  code = ("import sys, cvlg_jax.main, cvlg_jax.run.init_from, cvlg_jax.pretrained; "
          "assert 'cvlg_jax.cli.evaluate' not in sys.modules, 'evaluate imported'")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       cwd=REPO, env=dict(os.environ, PYTHONPATH=REPO))
  assert out.returncode == 0, out.stderr[-2000:]
