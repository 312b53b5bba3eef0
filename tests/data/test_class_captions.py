"""Class-name captions of a classification set with seeded label noise
(data/class_captions.py): noise rate, wrong classes, nesting, split checks."""

from __future__ import annotations

import numpy as np
import pytest

from cvlg_jax import config as config_lib
from cvlg_jax.data import class_captions
from cvlg_jax.data.class_captions import ClassCaptions
from launch import spec

NAMES = tuple(f"class{k}" for k in range(10))
TEMPLATES = ("a photo of a {}.", "a drawing of the {}.")


def _fake_source(n):
  image = np.zeros((4, 4, 3), np.uint8)
  return [(image, i % len(NAMES)) for i in range(n)]


def _named(src, i):
  caps = src[i]["caption"]
  matches = [k for k, name in enumerate(NAMES)
             if caps == [t.format(name) for t in TEMPLATES]]
  assert len(matches) == 1, caps
  return matches[0]


def test_class_captions_noise_rate_wrong_classes_and_determinism():
  n = 1000
  src = ClassCaptions(_fake_source(n), NAMES, TEMPLATES, caption_noise=0.3, seed=7)
  named = np.array([_named(src, i) for i in range(n)])
  labels = np.arange(n) % 10
  noisy = np.array([src.is_noisy(i) for i in range(n)])
  assert noisy.sum() == 300                     # exactly round(p * N)
  assert np.all(named[noisy] != labels[noisy])  # noisy: a wrong class
  assert np.all(named[~noisy] == labels[~noisy])
  assert [int(src[i]["label"]) for i in range(5)] == [0, 1, 2, 3, 4]  # true class
  assert src[3]["key"].endswith("/3")
  again = ClassCaptions(_fake_source(n), NAMES, TEMPLATES, caption_noise=0.3, seed=7)
  assert [again[i]["caption"] for i in range(n)] == [src[i]["caption"] for i in range(n)]
  other = ClassCaptions(_fake_source(n), NAMES, TEMPLATES, caption_noise=0.3, seed=8)
  other_noisy = np.array([other.is_noisy(i) for i in range(n)])
  assert other_noisy.sum() == 300 and (other_noisy != noisy).any()
  clean = ClassCaptions(_fake_source(n), NAMES, TEMPLATES, caption_noise=0.0)
  assert all(_named(clean, i) == i % 10 for i in range(0, n, 37))


def test_class_captions_noise_is_nested_and_uniform_over_wrong_classes():
  n = 9000
  low = ClassCaptions(_fake_source(n), NAMES, TEMPLATES, caption_noise=0.2, seed=1)
  high = ClassCaptions(_fake_source(n), NAMES, TEMPLATES, caption_noise=0.4, seed=1)
  for i in range(n):
    if low.is_noisy(i):  # noisier data only adds corrupted pairs
      assert high.is_noisy(i)
      assert low.caption_class(i, i % 10) == high.caption_class(i, i % 10)
  every = ClassCaptions(_fake_source(n), NAMES, TEMPLATES, caption_noise=1.0, seed=1)
  shift = np.array([(every.caption_class(i, i % 10) - i % 10) % 10 for i in range(n)])
  counts = np.bincount(shift, minlength=10)
  assert counts[0] == 0 and np.all(np.abs(counts[1:] - n / 9) < 0.12 * n / 9), counts


def test_class_captions_errors_and_split_checks():
  with pytest.raises(ValueError, match=r"\[0, 1\]"):
    ClassCaptions(_fake_source(4), NAMES, TEMPLATES, caption_noise=1.5)
  with pytest.raises(ValueError, match="at least 2 classes"):
    ClassCaptions(_fake_source(4), NAMES[:1], TEMPLATES)
  bad = ClassCaptions([(np.zeros((4, 4, 3), np.uint8), 10)], NAMES, TEMPLATES)
  with pytest.raises(ValueError, match="label 10"):
    bad[0]  # pylint: disable=pointless-statement
  class_captions.check_split("cifar10", "train")
  class_captions.check_split("eurosat", "train[:80%]")
  for name, split, match in (("cifar10", "test", "overlaps"),
                             ("eurosat", "train", "overlaps"),
                             ("imagenet_r", "test", "test-only"),
                             ("nope", "train", "not a registered")):
    with pytest.raises(ValueError, match=match):
      class_captions.check_split(name, split)
  cfg = spec.load_config("configs/robustness.py:dataset=cifar10")
  cfg.data.tfds_split = "test"
  with pytest.raises(config_lib.ConfigError, match="overlaps the zero-shot test"):
    config_lib.validate(cfg)
