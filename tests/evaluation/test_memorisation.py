"""The memorisation and held-out evaluators against oracle encoders whose
answers are known, and the held-out split of the training data."""

import hashlib

import numpy as np
import pytest

from cvlg_jax.data import pipeline, tokenizers
from cvlg_jax.data.transforms import normalize
from cvlg_jax.evaluation import common
from cvlg_jax.evaluation.memorisation import HeldoutEvaluator, MemorisationEvaluator

from configs import memorisation as memorisation_config
from cvlg_jax.step.plan import make_plan

DIM = 256


def _vector(key: bytes) -> np.ndarray:
  """A fixed random unit vector per key: distinct keys are near-orthogonal."""
  seed = int.from_bytes(hashlib.sha256(key).digest()[:8], "little")
  v = np.random.default_rng(seed).normal(size=DIM)
  return (v / np.linalg.norm(v)).astype(np.float32)


class Oracle:
  """Encoders that embed a text by its tokens and an image as the text that
  ``image_to_caption`` names for it: the model's top-1 caption is known."""

  def __init__(self, tokenizer, image_to_caption):
    self.tokenizer = tokenizer
    self.image_to_caption = image_to_caption  # normalised image bytes -> str

  def texts(self, params, tokens):
    return np.stack([_vector(np.asarray(t).tobytes()) for t in tokens])

  def images(self, params, images):
    return np.stack([
        _vector(self.tokenizer([self.image_to_caption[np.asarray(x).tobytes()]])[0]
                .tobytes()) for x in images])


def _context(config, image_to_caption):
  tokenizer = tokenizers.get_tokenizer("builtin", context_length=24)
  oracle = Oracle(tokenizer, image_to_caption)
  return common.EvalContext(oracle.images, oracle.texts, tokenizer,
                            config.data.image_size, batch_size=64,
                            train_data=lambda: pipeline.train_data(config))


def _config(noise=0.4):
  c = memorisation_config.get_config(f"noise={noise}")
  c.data.num_train, c.data.num_heldout = 300, 40
  return c


def _key(source, i):
  return normalize(source[int(i)]["image"]).tobytes()


@pytest.mark.parametrize("memorises", [True, False])
def test_memorisation_counts_pairs_fitted_to_their_wrong_caption(memorises):
  c = _config()
  data = pipeline.train_data(c)
  src = data.source
  noisy = [int(i) for i in data.trained_indices() if src.noise_kind(int(i))]
  assert 0.3 * len(data.trained) < len(noisy) < 0.5 * len(data.trained)
  assert not set(noisy) & set(data.heldout.tolist())  # held-out pairs excluded
  # A memorising model embeds each training image as its own (wrong) caption;
  # a generalising one as a correct description of it.
  image_to_caption = {
      _key(src, i): src[i]["caption"] if memorises else src.clean_captions(i)[0]
      for i in noisy}
  ev = MemorisationEvaluator({"num_examples": 50, "seed": 1},
                             _context(c, image_to_caption))
  out = ev.run(None)
  assert out["num_examples"] == 50 and set(ev.indices) <= set(noisy)
  assert out["memorised"] == (1.0 if memorises else 0.0)
  assert out["clean_top1"] == (0.0 if memorises else 1.0)
  assert 0 < out["chance"] <= 1 / 50
  kinds = {k for k in out if k.startswith("memorised_")}
  assert kinds == {"memorised_swap", "memorised_partial", "memorised_corrupt"}


def test_memorisation_without_noise_has_nothing_to_score():
  c = _config(noise=0.0)
  out = MemorisationEvaluator({}, _context(c, {})).run(None)
  assert out == {"num_examples": 0.0}


def test_heldout_scores_the_held_out_pairs_with_their_captions():
  c = _config()
  data = pipeline.train_data(c)
  src = data.source
  assert len(data.heldout) == 40 and len(data.trained) == 300
  truth = {_key(src, i): src[int(i)]["caption"] for i in data.heldout}
  out = HeldoutEvaluator({}, _context(c, truth)).run(None)
  assert out == {"i2t_top1": 1.0, "t2i_top1": 1.0, "mean_top1": 1.0,
                 "num_examples": 40.0}
  # Every image read as one fixed caption: right only for that caption's pairs.
  first = src[int(data.heldout[0])]["caption"]
  out = HeldoutEvaluator({}, _context(c, {k: first for k in truth})).run(None)
  share = np.mean([truth[k] == first for k in truth])
  assert out["i2t_top1"] == pytest.approx(share)


def test_heldout_examples_are_never_trained_on():
  c = _config()
  c.train.batch_size = 20
  split = pipeline.train_data(c)
  assert sorted(np.r_[split.trained, split.heldout]) == list(range(340))
  # The held-out subset is a property of the source, not of the run's seed.
  c2 = _config()
  c2.train.seed = 5
  np.testing.assert_array_equal(pipeline.train_data(c2).heldout, split.heldout)
  assert make_plan(c, 1).num_examples == 300
  held = {split.source[int(i)]["image"].tobytes() for i in split.heldout}
  tokenizer = tokenizers.get_tokenizer("builtin", context_length=24)
  it = iter(pipeline.train_dataset(c, tokenizer))
  seen = set()
  for _ in range(15):  # one epoch
    batch = next(it)
    seen |= {x.tobytes() for x in batch["image"]}
    assert (batch["example_id"] < 300).all()
  assert len(seen) == 300 and not seen & held
  # (Synthetic data draws the held-out pairs in addition; a stored source
  # has only what it has.)
  c.data.num_heldout = 10
  with pytest.raises(ValueError, match="num_heldout=10 leaves no training"):
    pipeline.train_data(c, source=list(range(10)))
