"""A bad image in a ``folder:`` data set costs one example, counted, in
training and in evaluation; a missing or empty folder is one clear line.

The data set: class folders ``cat/`` and ``dog/`` of small JPEGs, plus, in
both ``train/`` and ``test/``, one text file named ``.jpg`` and one JPEG cut
in half. The bad files sort first in their class folder, so an unshuffled
pass reports each on the next (good) example and none is left trailing.
"""

import json
import os
import subprocess
import sys
from unittest import mock

from absl import logging as absl_logging
import grain
import numpy as np
import pytest

from cvlg_jax import config as config_lib
from cvlg_jax.data import catalog, class_captions, pipeline, tokenizers
from cvlg_jax.data import train_sources
from cvlg_jax.data.decode import SKIP_REASONS, BadExample
from cvlg_jax.data.skipping import decode_and_skip, skip_metrics
from cvlg_jax.evaluation import common
from cvlg_jax.evaluation.memorisation import HeldoutEvaluator, MemorisationEvaluator

from configs import memorisation, robustness
from image_fixtures import photo_like
from main_runner import REPO

CLASSES = ("cat", "dog")
BAD = {"bad_text.jpg": "undecodable_image", "bad_truncated.jpg": "truncated_image"}


def _write_folder(root, per_class: int) -> dict[str, dict[str, str]]:
  """{split: {bad path: its skip reason}}: one of each bad kind per split."""
  rng = np.random.default_rng(0)
  bad = {}
  for split, n in (("train", per_class), ("test", max(2, per_class // 4))):
    for c in CLASSES:
      os.makedirs(os.path.join(root, split, c))
      for i in range(n):
        with open(os.path.join(root, split, c, f"img_{i:03d}.jpg"), "wb") as f:
          f.write(photo_like(rng, 40, 32))
    text = os.path.join(root, split, "cat", "bad_text.jpg")
    with open(text, "w") as f:
      f.write("<html>not an image</html>\n")
    truncated = os.path.join(root, split, "dog", "bad_truncated.jpg")
    jpeg = photo_like(rng, 40, 32)
    with open(truncated, "wb") as f:
      f.write(jpeg[:len(jpeg) // 2])
    bad[split] = {text: BAD["bad_text.jpg"], truncated: BAD["bad_truncated.jpg"]}
  return bad


def _counts(bad: dict[str, str]) -> dict[str, int]:
  return {r: sum(v == r for v in bad.values()) for r in SKIP_REASONS}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
  root = tmp_path_factory.mktemp("folder")
  return str(root), _write_folder(str(root), per_class=6)


def _config(root, **extra):
  arg = ",".join([f"dataset=folder:{root}", "flip=0", "tiny",
                  *(f"{k}={v}" for k, v in extra.items())])
  return memorisation.get_config(arg)


# ---------------------------------------------------------------- training ---

def test_file_source_raises_typed_errors_naming_the_file(folder):
  root, bad = folder
  source = catalog.open_classification(f"folder:{root}", train=True).source
  for path, reason in bad["train"].items():
    with pytest.raises(BadExample, match=reason) as e:
      source[source.files.index(path)]
    assert e.value.reason == reason and path in str(e.value)
  image, label = source[source.files.index(os.path.join(root, "train", "dog",
                                                        "img_000.jpg"))]
  assert image.shape == (32, 40, 3) and label == 1


def test_training_source_skips_and_counts_bad_files(folder):
  """One unshuffled pass through the pipeline's decode (decode_and_skip)."""
  root, bad = folder
  c = _config(root)
  source = train_sources.open_source(c)
  ds = decode_and_skip(grain.MapDataset.source(source), train=False,
                       image_size=c.data.image_size)
  examples = list(ds)
  assert len(examples) == len(source) - 2 == 12
  assert all(e["image"].shape == (32, 32, 3) for e in examples)
  total = skip_metrics(np.stack([e["skipped"] for e in examples]), prefix="")
  assert total == _counts(bad["train"])


def test_training_pipeline_yields_only_good_examples(folder):
  """The run's pipeline: each batch of 12 is one epoch's 12 good examples;
  each epoch adds one skip per bad file (the last epoch's may still be
  pending when it ends)."""
  root, bad = folder
  c = _config(root)
  c.data.num_heldout, c.train.batch_size, epochs = 0, 12, 3
  source = pipeline.train_source(c)
  good = {i for i, f in enumerate(source.source.files) if f not in bad["train"]}
  it = iter(pipeline.train_dataset(c, pipeline.make_tokenizer(c),
                                   process_index=0, process_count=1))
  skipped = np.zeros(len(SKIP_REASONS), int)
  for _ in range(epochs):
    batch = next(it)
    assert set(batch["example_id"].tolist()) == good
    skipped += batch["skipped"].sum(0)
  for reason, n in _counts(bad["train"]).items():
    got = skip_metrics(skipped, prefix="")[reason]
    assert (epochs - 1) * n <= got <= epochs * n, (reason, got)


# -------------------------------------------------------------- evaluation ---

class _Warnings:
  """Records the absl warnings about skipped images as formatted lines."""

  def __init__(self):
    self.lines = []

  def __call__(self, msg, *args, **kwargs):
    line = msg % args if args else str(msg)
    if "skipped" in line:
      self.lines.append(line)


def _ctx(image_size=32, train_data=None):
  tokenizer = tokenizers.get_tokenizer("builtin", context_length=16)

  def images(params, x):
    return np.tile(np.eye(8, dtype=np.float32)[:1], (len(x), 1))

  def texts(params, tokens):
    return np.tile(np.eye(8, dtype=np.float32)[:1], (len(tokens), 1))
  return common.EvalContext(images, texts, tokenizer, image_size, batch_size=4,
                            train_data=train_data)


def test_zeroshot_and_probe_skip_bad_test_images_and_say_so(folder):
  root, bad = folder
  cfg = dict(type="zeroshot", dataset=f"folder:{root}")
  warn = _Warnings()
  with mock.patch.object(absl_logging, "warning", warn):
    m = common.build(_ml(cfg), _ctx()).run(None)
  assert m["num_examples"] == 4 and m["num_skipped"] == 2
  assert len(warn.lines) == 1, warn.lines
  assert "skipped 2 of 6" in warn.lines[0]
  assert any(p in warn.lines[0] for p in bad["test"]), warn.lines[0]
  probe = _ml(dict(type="linear_probe", dataset=f"folder:{root}",
                   l2_grid=(1e-2,), max_iters=5))
  m = common.build(probe, _ctx()).run(None)
  assert (m["num_train"], m["num_train_skipped"]) == (12, 2)
  assert (m["num_test"], m["num_test_skipped"]) == (4, 2)


def test_training_data_evaluators_skip_bad_images(folder):
  """memorisation (all pairs noisy) and heldout (all pairs held out) over
  the training split: the two bad files are left out and counted."""
  root, bad = folder
  source = class_captions.open_class_captions(f"folder:{root}", "train",
                                              caption_noise=1.0)
  everything = np.arange(len(source))
  data = pipeline.TrainData(source, None, everything)
  ctx = _ctx(train_data=lambda: data)
  warn = _Warnings()
  with mock.patch.object(absl_logging, "warning", warn):
    mem = MemorisationEvaluator(_ml(dict(num_examples=100)), ctx)
    held = HeldoutEvaluator(_ml({}), ctx)
  assert len(warn.lines) == 2 and all("skipped 2 of 14" in w for w in warn.lines)
  for m in (mem.run(None), held.run(None)):
    assert m["num_examples"] == 12 and m["num_skipped"] == 2, m


def _ml(d):
  import ml_collections
  return ml_collections.ConfigDict(d)


# ------------------------------------------------------ missing or empty ---

def _one_line(e) -> str:
  text = str(e.value)
  assert "\n" not in text, text
  return text


def test_missing_or_empty_folder_is_one_clear_line(tmp_path):
  missing = tmp_path / "nope"
  with pytest.raises(catalog.DatasetUnavailable) as e:
    class_captions.open_class_captions(f"folder:{missing}", "train")
  text = _one_line(e)
  assert "training set" in text and "eval dataset" not in text
  assert str(missing) in text and "'train'" in text and "expected" in text

  (tmp_path / "only_test" / "test" / "cat").mkdir(parents=True)
  with pytest.raises(catalog.DatasetUnavailable) as e:
    class_captions.open_class_captions(f"folder:{tmp_path}/only_test", "train")
  assert f"{tmp_path}/only_test/train/ with class folders does not exist" in _one_line(e)

  empty = tmp_path / "empty" / "train" / "cat"
  empty.mkdir(parents=True)
  (empty / "notes.txt").write_text("no images here")
  with pytest.raises(catalog.DatasetUnavailable) as e:
    class_captions.open_class_captions(f"folder:{tmp_path}/empty", "train")
  assert f"no image files in class sub-folders of {tmp_path}/empty/train" in _one_line(e)

  for path in (missing, tmp_path / "empty"):  # validated before anything runs
    c = robustness.get_config(f"dataset=folder:{path},flip=0,tiny")
    with pytest.raises(config_lib.ConfigError) as e:
      config_lib.validate(c)
    text = _one_line(e)
    assert "config.data.tfds_name" in text and str(path) in text, text
    assert "training set" in text and "'train'" in text and "expected" in text


def _env(tmp_path):
  return dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3",
              XLA_FLAGS="--xla_force_host_platform_device_count=8",
              JAX_COMPILATION_CACHE_DIR=str(tmp_path / "xla_cache"),
              JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")


def _main(tmp_path, config, *flags):
  return subprocess.run(
      [sys.executable, "-m", "cvlg_jax.main", f"--config={config}",
       f"--workdir={tmp_path / 'work'}", *flags],
      cwd=REPO, env=_env(tmp_path), capture_output=True, text=True, timeout=600)


def test_main_with_a_missing_folder_exits_2_in_one_line(tmp_path):
  out = _main(tmp_path, f"configs/robustness.py:dataset=folder:{tmp_path}/nope,"
              "flip=0,tiny")
  assert out.returncode == 2, out.stderr[-3000:]
  assert "Traceback" not in out.stderr
  lines = [l for l in out.stderr.splitlines() if l.startswith("Invalid config:")]
  assert len(lines) == 1 and f"{tmp_path}/nope" in lines[0], out.stderr[-3000:]


# -------------------------------------------------------------- end to end ---

def test_memorisation_run_over_bad_files_trains_to_the_end(tmp_path):
  """The user's command: trains to the end and evaluates (zeroshot on the
  test split, memorisation and heldout on the training split); metrics.jsonl
  shows every skip."""
  root = str(tmp_path / "digits")
  bad = _write_folder(root, per_class=16)
  arg = f"dataset=folder:{root},flip=0,tiny,noise=0.5"
  out = _main(tmp_path, f"configs/memorisation.py:{arg}", "--config.train.steps=4",
              "--config.train.eval_every=4", "--config.train.checkpoint_every=4")
  assert out.returncode == 0, out.stderr[-4000:]
  with open(tmp_path / "work" / "metrics.jsonl") as f:
    rows = [json.loads(line) for line in f]
  last = {k: v for row in rows for k, v in row.items()}  # latest of each key
  # Which bad training files the run trains on, and which it holds out.
  split = pipeline.train_data(memorisation.get_config(arg))
  files = split.source.source.files
  held = {files[i] for i in split.heldout}
  trained_bad = {p: r for p, r in bad["train"].items() if p not in held}
  for reason in SKIP_REASONS:
    n = last[f"data/skipped_{reason}"]
    assert (n > 0) == (reason in trained_bad.values()), (reason, n)
  assert last["zeroshot/num_skipped"] == 2
  assert last["zeroshot/num_examples"] == 2 * 4
  held_bad = len(bad["train"]) - len(trained_bad)
  assert last.get("heldout/num_skipped", 0) == held_bad
  assert last["heldout/num_examples"] == 16 - held_bad
  # The linear probe reads the folder's clean train / test splits, skipping
  # the same bad files.
  assert 0 <= last["probe/top1"] <= 1 and last["probe/num_test"] == 2 * 4
  assert last["probe/num_test_skipped"] == 2
