"""Synthetic caption-noise kinds (data.noise_kinds) and the synthetic
classification set the linear probe runs on."""

import collections

import numpy as np
import pytest

from cvlg_jax import config as config_lib
from cvlg_jax.data import catalog, synthetic, train_sources

from configs import demo


def test_the_default_kinds_draw_exactly_what_they_drew_before():
  """Passing all kinds explicitly (the config default) changes no caption:
  earlier studies' data is reproduced bit for bit."""
  implicit = synthetic.SyntheticImageText("train", 300, caption_noise=0.4, seed=3)
  explicit = synthetic.SyntheticImageText(
      "train", 300, caption_noise=0.4, seed=3,
      noise_kinds=synthetic.parse_noise_kinds("swap+partial+corrupt"))
  assert [implicit.caption(i) for i in range(300)] == [
      explicit.caption(i) for i in range(300)]
  assert {k for _, k in (implicit.caption(i) for i in range(300))} == {
      "", *synthetic.NOISE_KINDS}


def test_partial_alone_gives_true_captions_shared_by_many_scenes():
  """Many-to-many noise: every noisy caption names only part of its scene
  (a word of it is one of the scene's attributes) and the same caption text
  is shared by many training scenes."""
  n = 2000
  src = synthetic.SyntheticImageText("train", n, caption_noise=0.4, seed=0,
                                     noise_kinds=("partial",))
  noisy = [(i, c) for i, (c, k) in ((i, src.caption(i)) for i in range(n)) if k]
  assert {src.caption(i)[1] for i, _ in noisy} == {"partial"}
  assert 0.35 < len(noisy) / n < 0.45
  for i, caption in noisy:
    words = set(caption.rstrip(".").split())
    attributes = {a for o in src.objects(i) for a in (o.color, o.shape)}
    assert words & attributes, (i, caption)       # true of the scene
    assert caption not in src.clean_captions(i)   # but not its description
  shares = collections.Counter(c for _, c in noisy)
  shared = sum(v for v in shares.values() if v >= 10)
  assert shared / len(noisy) > 0.5  # most noisy captions fit >= 10 scenes


def test_noise_kinds_are_checked_in_the_config():
  c = demo.get_config("tiny")
  c.data.noise_kinds = "partial"
  config_lib.validate(c)
  assert train_sources.SOURCES["synthetic"].open(c).noise_kinds == ("partial",)
  for bad in ("", "partial+partial", "flip", "swap+flip"):
    c.data.noise_kinds = bad
    with pytest.raises(config_lib.ConfigError, match="config.data.noise_kinds="):
      config_lib.validate(c)
  c.data.noise_kinds = "partial"
  c.data.source = "tfds_class_captions"
  c.data.tfds_name = "mnist"
  with pytest.raises(config_lib.ConfigError, match="only the synthetic source"):
    config_lib.validate(c, paths=False)
  # The constructor and the config share one check.
  for bad in ((), ("partial", "partial"), ("flip",)):
    with pytest.raises(ValueError, match="noise kinds must be distinct kinds"):
      synthetic.SyntheticImageText("train", 10, noise_kinds=bad)


def test_the_synthetic_classification_set_has_disjoint_single_object_splits():
  train = catalog.open_classification("synthetic", train=True)
  test = catalog.open_classification("synthetic")
  assert train.classnames == test.classnames == synthetic.CLASS_NAMES
  assert len(train.source) == 2000 and len(test.source) == 1000
  image, label = test.source[7]
  assert image.shape == (32, 32, 3) and image.dtype == np.uint8
  zeroshot = synthetic.SyntheticImageText("zeroshot", 1000)
  # The test split is the zero-shot evaluator's images, labels included.
  assert label == zeroshot[7]["label"]
  np.testing.assert_array_equal(image, zeroshot[7]["image"])
  # The probe split is another draw of single-object scenes.
  assert not np.array_equal(train.source[7][0], image)
  assert all(len(synthetic.SyntheticImageText("probe", 50).objects(i)) == 1
             for i in range(50))
  labels = [train.source[i][1] for i in range(400)]
  assert len(set(labels)) > 30  # nearly every class among 400 draws
  with pytest.raises(ValueError, match="synthetic classification split"):
    catalog.open_classification("synthetic", split="train")
