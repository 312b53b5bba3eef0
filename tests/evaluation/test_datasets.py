"""Evaluation data sets and evaluators, end to end, on mock TFDS data and tiny
generated folders / release layouts (nothing is downloaded)."""

from __future__ import annotations

import json
import os

import ml_collections
import numpy as np
import pytest
from PIL import Image

from cvlg_jax.data.tokenizers import HashWordTokenizer
from cvlg_jax.evaluation import common
from cvlg_jax.evaluation import datasets
from cvlg_jax.data.classnames import imagenet
from cvlg_jax.data.classnames import imagenet_subsets

tfds = pytest.importorskip("tensorflow_datasets")

IMAGE_SIZE = 16
DIM = 12


def _random_ctx(batch_size=8):
  """Encoders from fixed random linear maps: shapes and plumbing only."""
  rng = np.random.default_rng(0)
  w_img = rng.normal(size=(IMAGE_SIZE * IMAGE_SIZE * 3, DIM)).astype(np.float32)
  tok = HashWordTokenizer(vocab_size=512, context_length=16)
  table = rng.normal(size=(512, DIM)).astype(np.float32)

  def norm(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)

  return common.EvalContext(
      encode_images=lambda p, x: norm(x.reshape(len(x), -1) @ w_img),
      encode_texts=lambda p, t: norm(table[t].sum(axis=1)),
      tokenizer=tok, image_size=IMAGE_SIZE, batch_size=batch_size)


COLOURS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255)}


def _colour_ctx():
  """Image -> its normalised mean colour; text -> which colour word it names.
  A correct pipeline (labels, class order, batching) scores 100%."""
  tok = HashWordTokenizer(vocab_size=4096, context_length=16)
  ids = [tok.word_id(c) for c in ("red", "green", "blue")]

  def enc_img(params, x):
    v = x.mean(axis=(1, 2))
    return v / np.linalg.norm(v, axis=1, keepdims=True)

  def enc_txt(params, t):
    v = np.stack([(t == i).any(axis=1) for i in ids], axis=1).astype(np.float32)
    return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-6)

  return common.EvalContext(enc_img, enc_txt, tok, IMAGE_SIZE, batch_size=4)


def _cfg(**kw):
  return ml_collections.ConfigDict(kw)


def _png(path, colour, size=(20, 24)):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.new("RGB", size, colour).save(path)


TFDS_SETS = sorted(n for n, s in datasets.CLASSIFICATION_SETS.items() if s.tfds_name)
EXPECTED_CLASSES = {"imagenet": 1000, "imagenet_v2": 1000, "imagenet_sketch": 1000,
                    "imagenet_r": 200, "imagenet_a": 200, "cifar10": 10,
                    "cifar100": 100, "stl10": 10, "caltech101": 102, "food101": 101,
                    "flowers102": 102, "pets": 37, "cars": 196, "dtd": 47,
                    "sun397": 397, "eurosat": 10, "resisc45": 45}


def test_registry_covers_the_required_sets():
  assert set(EXPECTED_CLASSES) == set(TFDS_SETS)
  assert {"fgvc_aircraft", "objectnet"} <= set(datasets.CLASSIFICATION_SETS)
  assert {"zeroshot", "retrieval", "linear_probe"} <= set(common.registered_types())


@pytest.mark.parametrize("name", TFDS_SETS)
def test_tfds_set_runs_zeroshot_on_mock_data(name):
  # ImageNet-R/A mock labels are uniform over 1000 classes; 40 examples make
  # a few of them land in the 200-class subset.
  with tfds.testing.mock_data(num_examples=40 if name in ("imagenet_r", "imagenet_a") else 6):
    data = datasets.open_classification(name)
    assert len(data.classnames) == EXPECTED_CLASSES[name]
    assert len(set(n.lower() for n in data.classnames)) == len(data.classnames)
    assert all(n.strip() and "_" not in n for n in data.classnames)
    ev = common.build(_cfg(type="zeroshot", dataset=name, max_examples=40), _random_ctx())
    m = ev.run(params=None)
  assert 1 <= m["num_examples"] <= 40
  assert 0.0 <= m["top1"] <= m["top5"] <= 1.0


def test_imagenet_names_and_subsets():
  names, wnids = imagenet.imagenet_classnames(), imagenet.imagenet_wnids()
  assert names[:3] == ("tench", "goldfish", "great white shark")
  assert wnids[0] == "n01440764" and len(set(wnids)) == 1000
  for subset in (imagenet_subsets.IMAGENET_R_WNIDS, imagenet_subsets.IMAGENET_A_WNIDS):
    assert len(set(subset)) == 200 and set(subset) <= set(wnids)


def test_imagenet_r_labels_are_remapped_to_the_subset():
  wnids = imagenet.imagenet_wnids()
  sub = imagenet_subsets.IMAGENET_R_WNIDS
  raw = [wnids.index(sub[5]), wnids.index(sub[199]), 0]  # 0 = tench: not in R
  image = np.zeros((8, 8, 3), np.uint8)

  def fake_source(self, split, *a, **k):
    return [{"image": image, "label": l, "file_name": "x"} for l in raw]

  with tfds.testing.mock_data(as_data_source_fn=fake_source):
    data = datasets.open_classification("imagenet_r")
    assert [data.source[i][1] for i in range(3)] == [5, 199, -1]
  assert data.classnames[5] == imagenet.imagenet_classnames()[raw[0]]


def test_coco_retrieval_on_mock_data():
  with tfds.testing.mock_data(num_examples=5):
    ev = common.build(_cfg(type="retrieval", dataset="coco", captions_per_image=3),
                      _random_ctx(batch_size=4))
    m = ev.run(None)
  assert m["num_images"] == 5 and 5 <= m["num_texts"] <= 15
  assert 0 <= m["i2t_R@1"] <= m["i2t_R@5"] <= 1 and m["t2i_mean_rank"] >= 1


def test_linear_probe_on_mock_data():
  with tfds.testing.mock_data(num_examples=20):
    ev = common.build(_cfg(type="linear_probe", dataset="cifar10",
                           l2_grid=(1e-2,), max_iters=20), _random_ctx())
    m = ev.run(None)
  assert m["num_train"] == 20 and m["num_test"] == 20 and 0 <= m["top1"] <= 1


def _colour_folder(root, per_class=3):
  for split in ("train", "test"):
    for c, rgb in COLOURS.items():
      for k in range(per_class):
        _png(os.path.join(root, split, c, f"{k}.png"), rgb, (20 + k, 24))


def test_folder_source_zeroshot_and_probe_known_answer(tmp_path):
  _colour_folder(tmp_path)
  data = datasets.open_classification(f"folder:{tmp_path}")
  assert data.classnames == ("blue", "green", "red")
  assert len(data.source) == 9 and data.source[0][0].shape == (24, 20, 3)
  ctx = _colour_ctx()
  m = common.build(_cfg(type="zeroshot", dataset=f"folder:{tmp_path}"), ctx).run(None)
  assert m == {"top1": 1.0, "mean_per_class_recall": 1.0, "num_examples": 9.0}
  m = common.build(_cfg(type="linear_probe", dataset=f"folder:{tmp_path}",
                        l2_grid=(1e-3,), val_fraction=0.34), ctx).run(None)
  assert m["top1"] == 1.0


def test_flickr_karpathy_source_known_answer(tmp_path):
  images = []
  for c, rgb in COLOURS.items():
    _png(str(tmp_path / "flickr30k-images" / f"{c}.jpg"), rgb)
    images.append({"filename": f"{c}.jpg", "split": "test",
                   "sentences": [{"raw": f"a {c} square"}, {"raw": f"something {c}"}]})
  images.append({"filename": "unused.jpg", "split": "train", "sentences": []})
  (tmp_path / "dataset_flickr30k.json").write_text(json.dumps({"images": images}))
  ev = common.build(_cfg(type="retrieval", dataset="flickr30k",
                         data_dir=str(tmp_path)), _colour_ctx())
  m = ev.run(None)
  assert m["num_images"] == 3 and m["num_texts"] == 6
  assert m["i2t_R@1"] == 1.0 and m["t2i_R@1"] == 1.0


def test_fgvc_aircraft_release_layout(tmp_path):
  data = tmp_path / "data"
  _png(str(data / "images" / "0001.jpg"), (255, 0, 0), (30, 40))
  _png(str(data / "images" / "0002.jpg"), (0, 255, 0), (30, 40))
  (data / "variants.txt").write_text("707-320\nA300B4\n")
  (data / "images_variant_test.txt").write_text("0001 A300B4\n0002 707-320\n")
  d = datasets.open_classification("fgvc_aircraft", data_dir=str(tmp_path))
  assert d.classnames == ("707-320", "A300B4")
  image, label = d.source[0]
  assert label == 1 and image.shape == (20, 30, 3)  # 20-pixel banner cut


def test_objectnet_keeps_imagenet_overlap(tmp_path):
  for folder in ("air_freshener", "banana", "chair"):
    _png(str(tmp_path / "images" / folder / "a.png"), (1, 2, 3), (10, 10))
  os.makedirs(tmp_path / "mappings")
  (tmp_path / "mappings" / "folder_to_objectnet_label.json").write_text(json.dumps(
      {"air_freshener": "Air freshener", "banana": "Banana", "chair": "Chair"}))
  (tmp_path / "mappings" / "objectnet_to_imagenet_1k.json").write_text(json.dumps(
      {"Banana": "banana", "Chair": "folding chair; rocking chair, rocker"}))
  d = datasets.open_classification("objectnet", data_dir=str(tmp_path))
  assert d.classnames == ("Banana", "Chair") and len(d.source) == 2
  assert d.source[1][0].shape == (4, 4, 3) and d.source[1][1] == 1  # border cut


def test_missing_data_reports_what_to_download(tmp_path):
  with pytest.raises(datasets.DatasetUnavailable, match="cifar10.*tfds build cifar10"):
    common.build(_cfg(type="zeroshot", dataset="cifar10", data_dir=str(tmp_path)),
                 _random_ctx())
  with pytest.raises(datasets.DatasetUnavailable, match="downloads/manual"):
    datasets.open_classification("imagenet", data_dir=str(tmp_path))
  with pytest.raises(datasets.DatasetUnavailable, match="objectnet"):
    datasets.open_classification("objectnet")
  with pytest.raises(datasets.DatasetUnavailable, match="does not exist"):
    datasets.open_classification(f"folder:{tmp_path}/nope")
  _png(str(tmp_path / "only" / "cat" / "a.png"), (0, 0, 0))
  assert len(datasets.open_classification(f"folder:{tmp_path}/only").source) == 1
  with pytest.raises(datasets.DatasetUnavailable, match="val/ with class"):
    datasets.open_classification(f"folder:{tmp_path}/only", split="val")


def test_config_errors_are_clear():
  with pytest.raises(ValueError, match="unknown keys \\['max_exampels'\\]"):
    common.build(_cfg(type="zeroshot", dataset="cifar10", max_exampels=3), _random_ctx())
  with pytest.raises(ValueError, match="no training split"):
    datasets.open_classification("imagenet_a", train=True)
  with pytest.raises(ValueError, match="unknown"):
    datasets.open_classification("cifar11")
