"""configs/lit.py end to end, in-process: the image tower comes from another
run's checkpoint and stays locked bit for bit, the text tower (another
vocabulary: it is not loaded) learns from scratch, and a run stopped by
SIGTERM resumes to the uninterrupted run's state exactly."""

import os
import signal

import jax
import numpy as np
import pytest

from cvlg_jax import config as config_lib
from cvlg_jax.run import checkpointing, loop
from cvlg_jax.run.saved_config import ConfigMismatchError
from configs import demo, lit
from main_runner import assert_bitwise_equal, final_state


def _image(params):
  return {k: v for k, v in params.items() if k.startswith("image")}


def _text(params):
  return {k: v for k, v in params.items() if k.startswith("text")}


def _equal(a, b):
  return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a),
                                                   jax.tree.leaves(b)))


@pytest.fixture(scope="module")
def source(tmp_path_factory):
  """A 2-step run of the tiny model: the 'released' weights."""
  workdir = str(tmp_path_factory.mktemp("released"))
  c = demo.get_config("tiny")
  c.eval, c.train.steps, c.train.checkpoint_every = {}, 2, 2
  loop.run(c, workdir)
  return workdir, checkpointing.restore_weights(
      os.path.join(workdir, "checkpoints", "2"))["params"]


def _lit_config(init_from, steps=4):
  c = lit.get_config(f"smoke,model=tiny,activation=gelu_tanh,init_from={init_from},"
                     f"steps={steps}")
  c.model.layer_norm_epsilon = 1e-6  # the source's (demo.py's) own
  c.data.tokenizer, c.data.vocab_size = "builtin", 1000  # the source has 4096
  c.data.context_length = 16
  return c


def test_lit_config_locks_the_image_tower_and_loads_nothing_else():
  c = lit.get_config("smoke,model=tiny,init_from=/ckpt/x")
  assert (c.train.freeze, c.train.init_from_params) == ("image", "image")
  assert c.optim.learning_rate == 5e-4
  c = lit.get_config("smoke,init_from=/x,text=pretrained,lock=image_except_last=2")
  assert (c.train.freeze, c.train.init_from_params) == ("image_except_last=2", "")
  assert c.optim.learning_rate == 1e-5
  with pytest.raises(ValueError, match="text='bert'"):
    lit.get_config("text=bert")
  # The README's command line is a valid config (paths aside: not on this host).
  config_lib.validate(lit.get_config(
      "init_from=/ckpt/b32,data_dir=/data/cc3m_ar,vocab=/data/bpe.txt.gz,"
      "num_examples=2800000"), paths=False)


class _StopAt(loop.StepHooks):
  """SIGTERM during ``step``: the loop saves that step and returns."""

  def __init__(self, step):
    self.step = step

  def after_dispatch(self, step):
    if step == self.step:
      os.kill(os.getpid(), signal.SIGTERM)


def _final(workdir, step):
  return checkpointing.restore_weights(os.path.join(workdir, "checkpoints", str(step)))


def test_locked_image_tower_from_the_source_and_exact_resume(source, tmp_path):
  src_dir, src_params = source
  config = _lit_config(src_dir)
  whole = str(tmp_path / "whole")
  loop.run(config, whole)
  final = _final(whole, 4)["params"]
  assert _equal(_image(final), _image(src_params))  # loaded, then locked
  earlier = _final(whole, 2)["params"]  # (steps 2-4 are kept)
  assert not _equal(_text(final), _text(earlier))   # the text tower learns
  assert _equal(_image(earlier), _image(src_params))

  stopped = str(tmp_path / "stopped")
  loop.run(config, stopped, hooks=_StopAt(2))
  assert sorted(os.listdir(os.path.join(stopped, "checkpoints"))) == ["1", "2"]
  loop.run(config, stopped)
  # The whole state (the optimizer's too) equals the uninterrupted run's.
  assert_bitwise_equal(final_state(stopped, 4), final_state(whole, 4))

  # What is frozen shapes the optimizer state: a resume cannot change it.
  other = _lit_config(src_dir)
  other.train.freeze = "image_except_last=1"
  with pytest.raises(ConfigMismatchError, match="train.freeze"):
    loop.run(other, stopped)
