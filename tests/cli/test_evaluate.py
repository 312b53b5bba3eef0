"""`cvlg_jax.evaluate` on a checkpoint written by a tiny training run."""

import json
import os
import subprocess
import sys

import ml_collections
import pytest

from cvlg_jax.cli import evaluate
from cvlg_jax.run import loop

from main_runner import REPO
from configs import demo


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("run"))
  config = demo.get_config("tiny")
  config.train.steps = 10
  loop.run(config, workdir)
  return config, workdir


def test_evaluate_reproduces_the_training_eval(trained):
  config, workdir = trained
  report = evaluate.evaluate(config, workdir)
  assert report["step"] == 10 and report["skipped"] == {}
  logged = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))][-1]
  for key, value in report["results"]["synthetic"].items():
    assert value == pytest.approx(logged[f"synthetic/{key}"], abs=1e-6), key
  saved = json.load(open(os.path.join(workdir, "eval", "10.json")))
  assert saved["results"] == report["results"]
  table = evaluate.format_table(report)
  assert "| synthetic | zeroshot_top1 |" in table


def test_missing_dataset_is_skipped_with_reason(trained, tmp_path):
  config, workdir = trained
  config = ml_collections.ConfigDict(config.to_dict())
  config.eval.cifar = dict(type="zeroshot", dataset="cifar10",
                           data_dir=str(tmp_path / "no_tfds_here"))
  report = evaluate.evaluate(config, workdir,
                             checkpoint=os.path.join(workdir, "checkpoints", "10"))
  assert "synthetic" in report["results"]
  assert "cifar" in report["skipped"] and "cifar10" in report["skipped"]["cifar"]
  assert "| cifar | skipped |" in evaluate.format_table(report)


def test_bad_checkpoint_path_is_a_clear_error(tmp_path):
  with pytest.raises(FileNotFoundError, match="not a checkpoint step directory"):
    evaluate.find_checkpoint(str(tmp_path), str(tmp_path / "nope"))
  with pytest.raises(FileNotFoundError, match="no committed checkpoint"):
    evaluate.find_checkpoint(str(tmp_path), None)


def test_paper_suite_without_data_skips_every_entry_with_a_reason(tmp_path):
  from configs import eval_suite
  from cvlg_jax.data.tokenizers import HashWordTokenizer
  from cvlg_jax.evaluation import common
  ctx = common.EvalContext(encode_images=None, encode_texts=None,
                           tokenizer=HashWordTokenizer(), image_size=32)
  suite = ml_collections.ConfigDict(eval_suite.paper_suite(str(tmp_path)))
  evaluators, skipped = common.build_all(suite, ctx)
  assert evaluators == {}
  assert set(skipped) == set(suite.keys()) and len(skipped) == 35
  assert all(reason for reason in skipped.values())


def test_evaluate_defaults_to_the_runs_own_config(trained):
  _, workdir = trained
  report = evaluate.evaluate(None, workdir)  # reads WORKDIR/config.json
  logged = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))][-1]
  assert report["results"]["synthetic"] and report["skipped"] == {}
  for key, value in report["results"]["synthetic"].items():
    assert value == pytest.approx(logged[f"synthetic/{key}"], abs=1e-6), key


def test_checkpoint_that_does_not_fit_the_config_names_the_differing_keys(trained):
  config, workdir = trained
  other = ml_collections.ConfigDict(config.to_dict())
  other.model.name = "demo"
  other.eval.more = dict(type="synthetic", num_zeroshot=10, num_retrieval=10)
  with pytest.raises(evaluate.ConfigMismatchError) as e:
    evaluate.evaluate(other, workdir)
  message = str(e.value)
  assert "\n" not in message
  assert ("differs from the run's config.json in model.name ('tiny' in "
          "config.json, 'demo' here)") in message
  assert "eval." not in message  # evaluators may differ freely
  assert "omit --config to use the run's own config" in message


def test_cli_without_config_evaluates_with_the_runs_config(trained):
  _, workdir = trained
  out = subprocess.run([sys.executable, "-m", "cvlg_jax.evaluate",
                        f"--workdir={workdir}"], cwd=REPO, capture_output=True,
                       text=True, timeout=600,
                       env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert out.returncode == 0, out.stderr[-3000:]
  assert "eval of step 10" in out.stdout and "| synthetic | zeroshot_top1 |" in out.stdout


def _colour_sets(root):
  """A 3-class image folder (train/ and test/) and a Flickr30k-layout
  Karpathy release of the same colours."""
  from PIL import Image
  colours = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255)}
  images = []
  for c, rgb in colours.items():
    for split in ("train", "test"):
      for k in range(3):
        path = os.path.join(root, "colours", split, c, f"{k}.png")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        Image.new("RGB", (20 + k, 24), rgb).save(path)
    os.makedirs(os.path.join(root, "flickr", "flickr30k-images"), exist_ok=True)
    Image.new("RGB", (24, 24), rgb).save(
        os.path.join(root, "flickr", "flickr30k-images", f"{c}.jpg"))
    images.append({"filename": f"{c}.jpg", "split": "test", "sentences": [
        {"raw": f"a {c} square"}, {"raw": f"something {c}"}]})
  with open(os.path.join(root, "flickr", "dataset_flickr30k.json"), "w") as f:
    json.dump({"images": images}, f)
  return f"folder:{root}/colours", os.path.join(root, "flickr")


def test_cli_writes_clip_benchmark_results(trained, tmp_path):
  import shutil
  _, workdir = trained
  run = str(tmp_path / "myrun")
  shutil.copytree(workdir, run)
  folder, flickr = _colour_sets(str(tmp_path / "data"))
  with open(os.path.join(run, "config.json")) as f:
    recorded = json.load(f)
  recorded["eval"].update(
      zs=dict(type="zeroshot", dataset=folder),
      probe=dict(type="linear_probe", dataset=folder, l2_grid=[1e-3],
                 max_iters=20),
      ret=dict(type="retrieval", dataset="flickr30k", data_dir=flickr))
  with open(os.path.join(run, "config.json"), "w") as f:
    json.dump(recorded, f)
  out = subprocess.run([sys.executable, "-m", "cvlg_jax.evaluate",
                        f"--workdir={run}", "--results_format=clip_benchmark"],
                       cwd=REPO, capture_output=True, text=True, timeout=600,
                       env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert out.returncode == 0, out.stderr[-3000:]
  results_dir = os.path.join(run, "eval", "clip_benchmark")
  assert (f"clip_benchmark: wrote 3 result files to {results_dir}"
          in out.stdout), out.stdout
  assert ("clip_benchmark: synthetic left out (type 'synthetic' has no "
          "CLIP_benchmark task)") in out.stdout
  native = json.load(open(os.path.join(run, "eval", "10.json")))["results"]
  assert set(native) == {"synthetic", "zs", "probe", "ret"}
  assert "clip_benchmark" not in json.load(open(os.path.join(run, "eval", "10.json")))
  files = {name: json.load(open(os.path.join(results_dir, name)))
           for name in sorted(os.listdir(results_dir))}
  assert sorted(files) == ["colours_myrun_step10_tiny_en_linear_probe.json",
                           "colours_myrun_step10_tiny_en_zeroshot_classification.json",
                           "flickr30k_myrun_step10_tiny_en_zeroshot_retrieval.json"]
  zs = files["colours_myrun_step10_tiny_en_zeroshot_classification.json"]
  assert {k: zs[k] for k in ("dataset", "model", "pretrained", "task",
                             "language")} == {
      "dataset": "colours", "model": "tiny", "pretrained": "myrun_step10",
      "task": "zeroshot_classification", "language": "en"}
  assert zs["metrics"]["acc1"] == native["zs"]["top1"]
  assert zs["metrics"]["mean_per_class_recall"] == native["zs"]["mean_per_class_recall"]
  assert zs["metrics"]["acc5"] != zs["metrics"]["acc5"]  # NaN: 3 classes
  probe = files["colours_myrun_step10_tiny_en_linear_probe.json"]
  assert probe["metrics"] == {"lp_acc1": native["probe"]["top1"]}
  ret = files["flickr30k_myrun_step10_tiny_en_zeroshot_retrieval.json"]
  assert ret["task"] == "zeroshot_retrieval"
  for k in (1, 5, 10):
    assert ret["metrics"][f"image_retrieval_recall@{k}"] == native["ret"][f"t2i_R@{k}"]
    assert ret["metrics"][f"text_retrieval_recall@{k}"] == native["ret"][f"i2t_R@{k}"]
