"""Real-data path end to end: image folder -> converter -> ArrayRecord shards
-> Grain pipeline (decode, crop, skip bad records) -> training through main."""

import json
import os
import subprocess
import sys

import numpy as np
from PIL import Image

from cvlg_jax.data import pipeline, tokenizers

from main_runner import REPO
from configs import cc3m

ENV = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
           JAX_PLATFORMS="cpu")


def _make_folder(root, n=48):
  rng = np.random.default_rng(0)
  os.makedirs(root)
  for i in range(n):
    colour = ("red", "green", "blue")[i % 3]
    pixels = np.zeros((60 + i, 80, 3), np.uint8)
    pixels[..., i % 3] = 200 + rng.integers(0, 50)
    Image.fromarray(pixels).save(os.path.join(root, f"{i:03d}.jpg"), quality=90)
    with open(os.path.join(root, f"{i:03d}.txt"), "w") as f:
      f.write(f"a {colour} square number {i}")


def _convert(src, out):
  return subprocess.run(
      [sys.executable, "-m", "cvlg_jax.data.convert", "--input_format=folder",
       f"--input={src}", f"--output_dir={out}", "--prefix=mini",
       "--num_shards=3", "--num_workers=1", "--max_short_side=64"],
      cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)


def test_converted_shards_feed_the_pipeline_and_training(tmp_path):
  src, shards, workdir = tmp_path / "images", tmp_path / "shards", tmp_path / "run"
  _make_folder(str(src))
  # Bad inputs the converter must skip and count.
  (src / "900.jpg").write_bytes(b"not a jpeg at all")
  (src / "900.txt").write_text("a broken image")
  Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(src / "901.jpg")
  (src / "901.txt").write_text("   \n ")
  out = _convert(src, shards)
  assert out.returncode == 0, out.stderr[-3000:]
  report = json.load(open(shards / "mini-report.json"))
  assert report["written"] == 48, report
  assert report["skipped"]["undecodable_image"] == 1, report
  assert report["skipped"]["empty_caption"] == 1, report

  config = cc3m.get_config(f"data_dir={shards},smoke,steps=4")
  tok = tokenizers.get_tokenizer("builtin", context_length=16)
  batch = next(iter(pipeline.train_dataset(config, tok)))
  assert batch["image"].shape == (16, 32, 32, 3) and batch["image"].dtype == np.uint8
  assert batch["tokens"].shape == (16, 16)
  assert batch["skipped"].shape[0] == 16 and batch["skipped"].sum() == 0

  run = subprocess.run(
      [sys.executable, "-m", "cvlg_jax.main",
       f"--config=configs/cc3m.py:data_dir={shards},smoke,steps=4",
       f"--workdir={workdir}"],
      cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600)
  assert run.returncode == 0, run.stderr[-3000:]
  rows = [json.loads(l) for l in open(workdir / "metrics.jsonl")]
  assert [r["step"] for r in rows] == [2, 4]
  assert all(np.isfinite(r["loss"]) for r in rows)
  assert os.path.isdir(workdir / "checkpoints" / "4")
