"""The robustness study's tools beside the sweep: the offline real-data set
(studies.memorisation.prepare_digits) and the noise diagnosis (studies.noise_robustness.noise_diagnosis)."""

from __future__ import annotations

import os

import numpy as np
import pytest

from cvlg_jax.data import class_captions
from launch import spec

TINY_SWEEP = os.path.join(spec.REPO, "studies/noise_robustness/sweep.py") + ":tiny"


def test_prepare_digits_writes_a_stratified_folder_set_the_study_reads(tmp_path):
  from cvlg_jax.evaluation import datasets
  from studies.memorisation import prepare_digits
  rng = np.random.default_rng(0)
  labels = np.repeat(np.arange(10), 6)            # 6 images per class
  images = rng.random((60, 8, 8))
  images[:, 0, 0] = labels / 10.0                 # the label, readable back
  out = str(tmp_path / "digits")
  counts = prepare_digits.write_class_folders(
      images, labels, prepare_digits.DIGIT_NAMES, out, test_fraction=1 / 3)
  assert counts == {"train": 40, "test": 20}
  for split, per_class in (("train", 4), ("test", 2)):
    assert sorted(os.listdir(os.path.join(out, split))) == sorted(
        prepare_digits.DIGIT_NAMES)
    for name in prepare_digits.DIGIT_NAMES:
      assert len(os.listdir(os.path.join(out, split, name))) == per_class
  train = class_captions.open_class_captions(f"folder:{out}", "train",
                                             caption_noise=0.0)
  test = datasets.open_classification(f"folder:{out}")
  assert len(train) == 40 and len(test.source) == 20
  assert set(train.classnames) == set(prepare_digits.DIGIT_NAMES)
  assert "a photo of a seven." in {c for i in range(len(train))
                                   for c in train[i]["caption"]}
  # Disjoint splits, each image under its own class, scaled up to 32 px.
  from PIL import Image
  names = {split: {f for _, _, fs in os.walk(os.path.join(out, split)) for f in fs}
           for split in ("train", "test")}
  assert not names["train"] & names["test"]
  for name in prepare_digits.DIGIT_NAMES:
    for f in os.listdir(os.path.join(out, "test", name)):
      pixels = np.asarray(Image.open(os.path.join(out, "test", name, f)))
      assert pixels.shape == (32, 32, 3)
      assert labels[int(f[:-4])] == prepare_digits.DIGIT_NAMES.index(name)
  mask = prepare_digits.stratified_split(labels, 1 / 3, seed=0)
  assert (mask == prepare_digits.stratified_split(labels, 1 / 3, seed=0)).all()
  assert not (mask == prepare_digits.stratified_split(labels, 1 / 3, seed=1)).all()
  with pytest.raises(ValueError, match="test_fraction"):
    prepare_digits.stratified_split(labels, 1.0, seed=0)
  with pytest.raises(ValueError, match="labels"):
    prepare_digits.write_class_folders(images, labels + 1,
                                       prepare_digits.DIGIT_NAMES, out)


# ------------------------------------------------------- noise diagnosis ---

def test_positive_probs_is_the_teachers_diagonal_both_ways():
  from studies.noise_robustness import noise_diagnosis
  rng = np.random.default_rng(0)
  img, txt = rng.normal(size=(6, 4)), rng.normal(size=(6, 4))
  img /= np.linalg.norm(img, axis=1, keepdims=True)
  txt /= np.linalg.norm(txt, axis=1, keepdims=True)
  got = noise_diagnosis.positive_probs(img, txt, 20.0, temperature=2.0)
  for i in range(6):
    i2t = np.exp(10.0 * img[i] @ txt.T)
    t2i = np.exp(10.0 * txt[i] @ img.T)
    np.testing.assert_allclose(got[i], 0.5 * (i2t[i] / i2t.sum() + t2i[i] / t2i.sum()),
                               rtol=1e-6)
  # Identical pairs: each positive is the batch's best match.
  assert (noise_diagnosis.positive_probs(img, img, 50.0) > 1 / 6).all()


def test_noise_diagnosis_on_a_trained_tiny_run(tmp_path):
  from cvlg_jax.run import loop
  from studies.noise_robustness import noise_diagnosis
  sweep_path = TINY_SWEEP
  root = str(tmp_path / "sweep")
  sweep = spec.load_sweep(sweep_path)
  run = next(r for r in spec.expand(sweep, root) if r.overrides == {
      "loss.name": "psd", "data.caption_noise": 0.4, "train.seed": 0})
  cfg = spec.apply_overrides(spec.load_config(sweep.config), run.overrides)
  loop.run(cfg, run.workdir)
  text, path = noise_diagnosis.diagnose(sweep_path, root, 0.4, num_batches=2)
  assert path == os.path.join(root, "noise_diagnosis.md") and open(path).read() == text
  (row,) = [l for l in text.splitlines() if l.startswith("| PSD |")]
  cells = [c.strip() for c in row.strip("|").split("|")]
  # 2 batches of 16 seen + 2 of 16 unseen pairs; one run, so no spread.
  assert cells[:3] == ["PSD", "1", "64"] and len(cells) == 3 + 8 + 1
  assert "CLIP" not in text and "±" not in row
  values = [float(c) for c in cells[3:-1] if c != "–"]
  assert len(values) >= 4 and all(0 < v < 1 for v in values)
  assert -1 < float(cells[-1]) < 1
  out = noise_diagnosis.diagnose_run(cfg, run.workdir, num_batches=1)
  assert set(out) == {(k, s) for k in noise_diagnosis.KINDS for s in ("seen", "unseen")}
  assert sum(len(v) for v in out.values()) == 2 * cfg.train.batch_size
  assert 0 < sum(len(out[(k, "seen")]) for k in noise_diagnosis.KINDS[1:]) < 16
  with pytest.raises(FileNotFoundError, match="no finished main-grid run"):
    noise_diagnosis.diagnose(sweep_path, root, 0.2, num_batches=1)
  with pytest.raises(ValueError, match="synthetic"):
    bad = spec.load_config("configs/robustness.py:dataset=cifar10")
    noise_diagnosis.diagnose_run(bad, run.workdir)
