"""Config validation: every mistake is one line naming the key and what is
allowed, raised before anything compiles (in-process cases + one run of main)."""

import os
import subprocess
import sys

import ml_collections
import pytest

from cvlg_jax import config as config_lib
from cvlg_jax.step.plan import make_plan

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
from configs import demo

DEVICES = 8


def _replace(config, path, value):
  """Sets ``path`` bypassing ConfigDict's type safety (as a hand-built dict
  or a replaced group would)."""
  d = config.to_dict()
  *groups, key = path.split(".")
  node = d
  for g in groups:
    node = node[g]
  node[key] = value
  return ml_collections.ConfigDict(d)


def _set(config, path, value):
  node = config
  *groups, key = path.split(".")
  for g in groups:
    node = node[g]
  node[key] = value
  return config


def _validate(config, num_devices=DEVICES):
  """What a run checks before compiling: the config, then (given a device
  count) its plan."""
  config_lib.validate(config)
  if num_devices is not None:
    make_plan(config, num_devices)


def _error(config, num_devices=DEVICES) -> str:
  with pytest.raises(config_lib.ConfigError) as e:
    _validate(config, num_devices)
  message = str(e.value)
  assert "\n" not in message and message.startswith("config."), message
  return message


@pytest.mark.parametrize("arg", ["", "tiny", "clip", "noise=0.2,tiny"])
def test_demo_configs_are_valid(arg):
  _validate(demo.get_config(arg), DEVICES)
  _validate(demo.get_config(arg), None)


def test_unknown_keys_list_the_allowed_ones():
  c = demo.get_config("tiny")
  c.train.stepz = 10
  msg = _error(c)
  assert msg.startswith("config.train.stepz: unknown key; allowed here: ")
  assert "steps" in msg and "batch_size" in msg and "skip_nonfinite_steps" in msg
  c = demo.get_config("tiny")
  c.optimizer = dict(lr=1.0)
  msg = _error(c)
  assert msg.startswith("config.optimizer: unknown key; allowed here: ")
  assert "optim" in msg and "model" in msg


def test_missing_key_of_a_replaced_group():
  c = demo.get_config("tiny")
  c.train = dict(steps=10, batch_size=32)  # the rest of the group is gone
  msg = _error(c)
  assert msg.startswith("config.train.") and "missing" in msg


@pytest.mark.parametrize("path,value,expected", [
    ("train.steps", "100", "config.train.steps: expected int, got str '100'"),
    ("train.steps", 10.5, "config.train.steps: expected int, got float 10.5"),
    ("train.steps", True, "config.train.steps: expected int, got bool True"),
    ("model.remat", 1, "config.model.remat: expected bool, got int 1"),
    ("optim.learning_rate", "1e-3",
     "config.optim.learning_rate: expected float, got str '1e-3'"),
    ("loss.psd.alpha_final", [0.5],
     "config.loss.psd.alpha_final: expected float, got list [0.5]"),
    ("model", "tiny", "config.model: must be a group, got 'tiny'"),
])
def test_wrong_types(path, value, expected):
  assert _error(_replace(demo.get_config("tiny"), path, value)) == expected


def test_int_where_float_expected_is_fine():
  c = _replace(demo.get_config("tiny"), "optim.learning_rate", 1)
  _validate(c, DEVICES)


def test_batch_not_divisible_by_data_parallel_devices():
  c = demo.get_config("tiny")
  c.train.batch_size = 12
  assert _error(c) == ("config.train.batch_size=12 is not divisible by the 8 "
                       "devices the batch is split over (mesh data=8 x fsdp=1)")
  c.mesh.data, c.mesh.fsdp = 2, 4  # the batch is split over data x fsdp
  assert "by the 8 devices" in _error(c)
  c.train.batch_size = 16
  _validate(c, DEVICES)


@pytest.mark.parametrize("data,fsdp,expected", [
    (3, 1, "config.mesh: data=3 x fsdp=1 = 3 does not match the 8 available devices"),
    (-1, 3, "config.mesh: 8 devices are not divisible by the fixed mesh size 3"),
    (-1, -1, "config.mesh: at most one of mesh.data, mesh.fsdp may be -1"),
    (0, 8, "config.mesh.data=0 must be a positive size or -1"),
])
def test_mesh_must_match_device_count(data, fsdp, expected):
  c = demo.get_config("tiny")
  c.mesh.data, c.mesh.fsdp = data, fsdp
  msg = _error(c)
  assert msg.startswith(expected), msg
  assert msg.endswith("allowed: sizes whose product is 8, one of them may be "
                      "-1 (= the rest)")


def test_mesh_is_checked_against_the_actual_device_count():
  c = demo.get_config("tiny")
  c.mesh.data, c.mesh.fsdp = 4, 2
  _validate(c, 8)
  assert "does not match the 4 available devices" in _error(c, num_devices=4)


@pytest.mark.parametrize("path,value", [
    ("loss.psd.alpha_final", 1.5), ("loss.psd.alpha_final", -0.1),
    ("loss.psd.subset_fraction", 1.01), ("loss.psd.subset_fraction", -1.0),
    ("loss.psd.ema_decay", 2.0), ("data.caption_noise", 1.5),
])
def test_fractions_outside_unit_interval(path, value):
  c = _set(demo.get_config("tiny"), path, value)
  assert _error(c) == f"config.{path}={value} must be in [0.0, 1.0]"


@pytest.mark.parametrize("path", ["data.worker_count", "data.read_threads"])
def test_negative_data_process_counts(path):
  c = _set(demo.get_config("tiny"), path, -1)
  assert _error(c) == f"config.{path}=-1 must be >= 0"


@pytest.mark.parametrize("value", [0.0, 1.0])
def test_fraction_bounds_are_inclusive(value):
  c = demo.get_config("tiny")
  c.loss.psd.alpha_final = value
  c.loss.psd.subset_fraction = value
  _validate(c, DEVICES)


def test_missing_data_paths(tmp_path):
  c = demo.get_config("tiny")
  c.data.source, c.data.data_dir = "arrayrecord", str(tmp_path / "nowhere")
  msg = _error(c)
  assert msg.startswith(f"config.data.data_dir='{tmp_path / 'nowhere'}': ")
  assert "no ArrayRecord shards" in msg and "a directory of shards, a glob" in msg
  c.data.data_dir = str(tmp_path)  # exists, but holds no shard
  assert "no ArrayRecord shards" in _error(c)

  c = demo.get_config("tiny")
  c.data.source, c.data.tfds_name = "tfds", ""
  assert _error(c) == "config.data.tfds_name must be set for data.source='tfds'"
  c.data.tfds_name, c.data.data_dir = "cifar10", str(tmp_path / "tfds_missing")
  assert _error(c).startswith(
      f"config.data.data_dir='{tmp_path / 'tfds_missing'}' does not exist")

  for tokenizer in ("clip_bpe", "sentencepiece"):
    c = demo.get_config("tiny")
    c.data.tokenizer, c.data.tokenizer_path = tokenizer, str(tmp_path / "vocab")
    assert _error(c) == (f"config.data.tokenizer_path='{tmp_path / 'vocab'}' "
                         f"does not exist (needed by data.tokenizer='{tokenizer}')")


@pytest.mark.parametrize("path,value,allowed", [
    ("model.name", "vit_z99", "tiny"),
    ("model.dtype", "float8", "float32, bfloat16"),
    ("loss.name", "infonce", "clip, psd"),
    ("data.tokenizer", "gpt2", "builtin, clip_bpe, sentencepiece"),
    ("data.source", "webdataset", "synthetic, arrayrecord, tfds"),
    ("loss.psd.teacher", "momentum", "self, ema"),
    ("loss.psd.subset", "half", "random, all"),
    ("loss.psd.ramp_unit", "hour", "step, epoch"),
])
def test_unknown_names_list_allowed_values(path, value, allowed):
  c = _set(demo.get_config("tiny"), path, value)
  msg = _error(c)
  assert msg.startswith(f"config.{path}={value!r} is not allowed; allowed: "), msg
  assert allowed in msg


def test_unknown_evaluator_type_and_entry_without_type():
  c = demo.get_config("tiny")
  c.eval.synthetic.type = "imagenet_magic"
  msg = _error(c)
  assert msg.startswith("config.eval.synthetic.type='imagenet_magic' is not "
                        "allowed; allowed: ")
  assert "synthetic" in msg and "zeroshot" in msg and "retrieval" in msg
  c = demo.get_config("tiny")
  c.eval.extra = dict(every=5)
  assert _error(c) == "config.eval.extra must be a group with a 'type' key"


@pytest.mark.parametrize("path,value,expected", [
    ("train.steps", 0, "config.train.steps=0 must be > 0"),
    ("train.batch_size", -8, "config.train.batch_size=-8 must be > 0"),
    ("train.checkpoint_every", 0, "config.train.checkpoint_every=0 must be > 0"),
    ("train.keep_checkpoints", 0, "config.train.keep_checkpoints=0 must be > 0"),
    ("train.skip_nonfinite_steps", -1,
     "config.train.skip_nonfinite_steps=-1 must be >= 0 (0 = off)"),
    ("loss.psd.ramp_steps", 0,
     "config.loss.psd.ramp_steps=0 must be > 0, or -1 for ramp_fraction of the "
     "training steps"),
    ("loss.psd.ramp_fraction", 0.0, "config.loss.psd.ramp_fraction=0.0 must be in (0, 1]"),
    ("optim.warmup_steps", -1, "config.optim.warmup_steps=-1 must be >= 0"),
])
def test_impossible_values(path, value, expected):
  c = _set(demo.get_config("tiny"), path, value)
  assert _error(c) == expected


def test_main_rejects_bad_config_in_one_line_before_compiling(tmp_path):
  """Exit code 2, a single line on stderr, no traceback, no XLA compile and
  no workdir: nothing started."""
  workdir = tmp_path / "run"
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
             JAX_PLATFORMS="cpu", JAX_LOG_COMPILES="1")
  out = subprocess.run(
      [sys.executable, "-m", "cvlg_jax.main", "--config=configs/demo.py:tiny",
       f"--workdir={workdir}", "--config.loss.psd.subset_fraction=1.5"],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert out.returncode == 2, out.stderr[-3000:]
  lines = [l for l in out.stderr.splitlines() if "Invalid config" in l]
  assert lines == ["Invalid config: config.loss.psd.subset_fraction=1.5 must be "
                   "in [0.0, 1.0]"], out.stderr[-3000:]
  assert "Traceback" not in out.stderr
  assert "Compiling" not in out.stderr, out.stderr[-3000:]
  assert not workdir.exists()


def test_config_args_are_typed_and_unknown_ones_are_refused():
  """``epoch=25`` (for epochs) used to be dropped silently; now every config
  file's arguments are typed and checked."""
  from configs import cc3m, common, finetune, memorisation, robustness
  c = cc3m.get_config("data_dir=/d,smoke,steps=3")
  assert (c.train.steps, c.data.data_dir, c.model.name) == (3, "/d", "tiny")
  c = cc3m.get_config("num_examples=1000,batch=16,epochs=2")  # sets the epoch
  from cvlg_jax.step.plan import resolve_steps
  assert c.train.steps == 2 * 1000 // 16  # evaluated once per epoch, when run:
  assert resolve_steps(c, 1000 // 16)["eval_every"] == 1000 // 16
  for arg, message in (
      ("epoch=25", "unknown arg 'epoch'; allowed: batch, data_dir, dtype, epochs"),
      ("batch=abc", "arg batch='abc' must be an int"),
      ("smoke=maybe", "arg smoke='maybe' must be 0 or 1"),
      ("batch", "arg 'batch' needs a value (batch=...)")):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
      cc3m.get_config(arg)
  assert robustness.get_config("dataset=cifar10,flip=0").data.flip is False
  assert robustness.get_config("dataset=cifar10").data.flip is True
  assert demo.get_config("clip,noise=0.2").data.caption_noise == 0.2
  assert finetune.get_config("smoke,lr=3e-5").optim.learning_rate == 3e-5
  m = memorisation.get_config("clip,noise=0.4,steps=100,schedule=early")
  assert (m.loss.name, m.data.caption_noise, m.loss.psd.ramp_fraction) == ("clip", 0.4, 0.25)
  assert make_plan(m, DEVICES).ramp_steps == 25  # resolved from train.steps=100
  # Run lengths in epochs of the synthetic set (16 steps per epoch at 2,048).
  assert memorisation.get_config("epochs=4").train.steps == 64
  assert memorisation.get_config("num_train=512,epochs=30").train.steps == 120
  with pytest.raises(ValueError, match="epochs= sets the steps of the synthetic"):
    memorisation.get_config("dataset=folder:/x,epochs=4")
  m = memorisation.get_config("kinds=partial,noise=0.4")
  assert m.data.noise_kinds == "partial" and m.eval.probe.dataset == "synthetic"
  assert m.eval.probe.every == 200
  assert "probe" not in memorisation.get_config("probe=0").eval
  assert memorisation.get_config("dataset=folder:/x").eval.probe.dataset == "folder:/x"
  with pytest.raises(ValueError, match="configs/memorisation.py: unknown arg 'teachr'"):
    memorisation.get_config("teachr=bank")
  args = {"clip": True, "noise": 0.4, "flip": False, "dataset": "folder:/x"}
  assert common.parse_arg(common.format_arg(args), robustness.ARGS, "x") == args


def test_shipped_psd_configs_use_the_study_default_and_the_first_study_is_pinned():
  """Every shipped PSD config, 30-epoch pre-training to the 3.8-epoch demo,
  runs the one default (configs/common.DEFAULT_PSD, the length study's
  choice); configs/robustness.py keeps the first study's PSD (same-pass
  teacher, the paper schedule), so its runs reproduce."""
  from configs import cc3m, common, finetune, lit, robustness
  assert common.DEFAULT_PSD == ("bank", "by_length")
  assert not hasattr(common, "SHORT_RUN_PSD")
  for c, schedule in ((cc3m.get_config("data_dir=/d,epochs=2"), "by_length"),
                      (demo.get_config(), "by_length"),
                      (finetune.get_config("smoke,steps=40"), "by_length"),
                      (lit.get_config("smoke"), "by_length")):
    psd = c.loss.psd
    assert (c.loss.name, psd.teacher) == ("psd", "bank")
    assert {k: psd[k] for k in common.schedule_knobs(schedule)} == {
        **common.PSD_SCHEDULES[schedule], "ramp_steps": -1}
  assert demo.get_config("teacher=ema,schedule=paper").loss.psd.teacher == "ema"
  with pytest.raises(ValueError, match="configs/demo.py: schedule='slow'"):
    demo.get_config("schedule=slow")
  psd = robustness.get_config().loss.psd
  assert (psd.teacher, psd.alpha_final, psd.subset_fraction, psd.ramp_steps,
          psd.ramp_fraction) == ("self", 0.5, 0.5, -1, 1.0)
