"""CLIP_benchmark result files: names, keys and metric values.

The schema was read from clip_benchmark 1.6.2 (``clip_benchmark/cli.py``:
the ``dump`` dict and the ``--output`` template of ``run``;
``metrics/zeroshot_classification.py``, ``zeroshot_retrieval.py`` and
``linear_probe.py``: the metric keys). ``SCHEMA`` below is that reading; where
``clip_benchmark`` is installed (``pip install --no-deps clip_benchmark``) the
tests at the end also check it against that package's own source and run its
metric code on the same embeddings as ours.
"""

import ast
import builtins
import importlib
import importlib.util
import json
import math
import os
import sys
import types

import ml_collections
import numpy as np
import pytest

from cvlg_jax.evaluation import clip_benchmark as cb
from cvlg_jax.evaluation.retrieval import retrieval_metrics
from cvlg_jax.evaluation.zeroshot import class_text_embeddings, zeroshot_metrics

SCHEMA = dict(
    record_keys={"dataset", "model", "pretrained", "task", "metrics", "language"},
    output="{dataset}_{pretrained}_{model}_{language}_{task}.json",
    zeroshot_classification={"acc1", "acc5", "mean_per_class_recall"},
    zeroshot_retrieval={f"{d}_retrieval_recall@{k}" for d in ("image", "text")
                        for k in (1, 5, 10)},
    linear_probe_all={"lp_acc1", "lp_acc5", "lp_mean_per_class_recall",
                      "weight_decay", "epochs", "seed", "fewshot_k", "normalized"},
)

ZS = {"top1": 0.5, "top5": 0.75, "mean_per_class_recall": 0.4,
      "num_examples": 8.0}
RET = {f"{d}_R@{k}": v for d, base in (("i2t", 0.3), ("t2i", 0.2))
       for k, v in ((1, base), (5, base + 0.1), (10, base + 0.2))}
RET.update(i2t_mean_rank=4.0, t2i_median_rank=3.0, num_images=5.0)


def test_names_map_to_open_clip_and_clip_benchmark():
  assert [cb.model_name(n) for n in ("vit_b32", "vit_b16", "vit_l14", "rn50",
                                     "tiny")] == [
      "ViT-B-32", "ViT-B-16", "ViT-L-14", "RN50", "tiny"]
  assert cb.dataset_name("imagenet") == "imagenet1k"
  assert cb.dataset_name("imagenet_r") == "imagenet-r"
  assert cb.dataset_name("coco") == "mscoco_captions"
  assert cb.dataset_name("caltech101") == "vtab/caltech101"
  assert cb.dataset_name("cifar10") == "cifar10"
  assert cb.dataset_name("folder:/data/my_set/") == "my_set"
  assert cb.dataset_name("something_else") == "something_else"
  assert cb.default_pretrained_name("/runs/myrun/", 600) == "myrun_step600"
  assert cb.default_pretrained_name("gs://b/runs/x", 7) == "x_step7"
  assert [cb.task_of(t) for t in ("zeroshot", "retrieval", "linear_probe",
                                  "synthetic", "memorisation", "heldout")] == [
      "zeroshot_classification", "zeroshot_retrieval", "linear_probe",
      None, None, None]


def test_zeroshot_record_and_file_name():
  record, name = cb.to_clip_benchmark(ZS, "zeroshot", "imagenet", "vit_b32",
                                      "myrun_step600")
  assert set(record) == SCHEMA["record_keys"]
  assert record == {"dataset": "imagenet1k", "model": "ViT-B-32",
                    "pretrained": "myrun_step600",
                    "task": "zeroshot_classification", "language": "en",
                    "metrics": {"acc1": 0.5, "acc5": 0.75,
                                "mean_per_class_recall": 0.4}}
  assert set(record["metrics"]) == SCHEMA["zeroshot_classification"]
  assert name == SCHEMA["output"].format(**record)
  assert name == "imagenet1k_myrun_step600_ViT-B-32_en_zeroshot_classification.json"


def test_zeroshot_without_top5_writes_nan_as_clip_benchmark_does():
  few = {"top1": 1.0, "mean_per_class_recall": 1.0}
  record, _ = cb.to_clip_benchmark(few, "zeroshot", "folder:/x/colours", "tiny", "r")
  assert math.isnan(record["metrics"]["acc5"])
  assert '"acc5": NaN' in json.dumps(record)  # what json.dump writes there
  with pytest.raises(ValueError, match="mean_per_class_recall"):
    cb.metrics("zeroshot", {"top1": 1.0})


def test_retrieval_directions():
  record, name = cb.to_clip_benchmark(RET, "retrieval", "coco", "rn50", "r")
  # CLIP_benchmark's image retrieval is a caption querying the images (t2i).
  assert record["metrics"] == pytest.approx({
      "image_retrieval_recall@1": 0.2, "image_retrieval_recall@5": 0.3,
      "image_retrieval_recall@10": 0.4, "text_retrieval_recall@1": 0.3,
      "text_retrieval_recall@5": 0.4, "text_retrieval_recall@10": 0.5})
  assert set(record["metrics"]) == SCHEMA["zeroshot_retrieval"]
  assert record["task"] == "zeroshot_retrieval"
  assert name == "mscoco_captions_r_RN50_en_zeroshot_retrieval.json"


def test_linear_probe_and_types_without_a_task():
  record, name = cb.to_clip_benchmark(
      {"top1": 0.9, "val_top1": 0.8, "l2": 1e-3, "num_train": 10.0},
      "linear_probe", "dtd", "vit_l14", "run/a")
  assert record["metrics"] == {"lp_acc1": 0.9}
  assert set(record["metrics"]) <= SCHEMA["linear_probe_all"]
  assert name == "vtab_dtd_run_a_ViT-L-14_en_linear_probe.json"
  with pytest.raises(ValueError, match="no CLIP_benchmark task"):
    cb.metrics("synthetic", {"zeroshot_top1": 1.0})


def test_write_results_one_file_per_entry(tmp_path):
  eval_config = ml_collections.ConfigDict(dict(
      synthetic=dict(type="synthetic"),
      zs=dict(type="zeroshot", dataset="cifar10"),
      zs_again=dict(type="zeroshot", dataset="cifar10", max_examples=5),
      ret=dict(type="retrieval", dataset="flickr30k"),
      probe=dict(type="linear_probe", dataset="cifar10"),
      missing=dict(type="zeroshot", dataset="imagenet")))
  report = dict(step=3, results=dict(synthetic={"zeroshot_top1": 0.1}, zs=ZS,
                                     zs_again=ZS, ret=RET,
                                     probe={"top1": 0.7}),
                skipped=dict(missing="not prepared"))
  paths, notes = cb.write_results(report, eval_config, "vit_b16",
                                  str(tmp_path / "out"), "run_step3")
  assert sorted(os.listdir(tmp_path / "out")) == [
      "cifar10_run_step3_ViT-B-16_en_linear_probe.json",
      "cifar10_run_step3_ViT-B-16_en_zeroshot_classification.json",
      "flickr30k_run_step3_ViT-B-16_en_zeroshot_retrieval.json"]
  assert len(paths) == 3
  assert notes == [
      "clip_benchmark: synthetic left out (type 'synthetic' has no "
      "CLIP_benchmark task)",
      "clip_benchmark: zs_again left out (cifar10_run_step3_ViT-B-16_en_"
      "zeroshot_classification.json is already zs's)"]
  saved = json.load(open(tmp_path / "out" /
                         "flickr30k_run_step3_ViT-B-16_en_zeroshot_retrieval.json"))
  assert set(saved) == SCHEMA["record_keys"]
  assert saved["metrics"]["text_retrieval_recall@5"] == pytest.approx(0.4)


# --- Against clip_benchmark itself, where it is installed. ---

def _clip_benchmark_source(relative):
  spec = importlib.util.find_spec("clip_benchmark")
  if spec is None:
    pytest.skip("clip_benchmark is not installed")
  path = os.path.join(os.path.dirname(spec.origin), relative)
  return ast.parse(open(path).read())


def test_record_keys_and_file_name_match_clip_benchmark_cli():
  tree = _clip_benchmark_source("cli.py")
  dumps = [n.value for n in ast.walk(tree) if isinstance(n, ast.Assign)
           and any(getattr(t, "id", None) == "dump" for t in n.targets)
           and isinstance(n.value, ast.Dict)]
  assert len(dumps) == 1
  assert {k.value for k in dumps[0].keys} == SCHEMA["record_keys"]
  outputs = [kw.value.value for n in ast.walk(tree) if isinstance(n, ast.Call)
             and n.args and getattr(n.args[0], "value", None) == "--output"
             for kw in n.keywords if kw.arg == "default"
             and "{dataset}" in str(getattr(kw.value, "value", ""))]
  assert outputs == [SCHEMA["output"]]


def test_linear_probe_keys_match_clip_benchmark():
  tree = _clip_benchmark_source("metrics/linear_probe.py")
  evaluate = next(n for n in tree.body if isinstance(n, ast.FunctionDef)
                  and n.name == "evaluate")
  returned = evaluate.body[-1]
  assert isinstance(returned, ast.Return) and isinstance(returned.value, ast.Dict)
  assert {k.value for k in returned.value.keys} == SCHEMA["linear_probe_all"]


def _import_clip_benchmark_metric(name, monkeypatch):
  """clip_benchmark's metric module; its zero-shot and probe modules import
  sklearn.metrics, stood in for (when sklearn is absent) by a balanced
  accuracy written out here, so the check still runs their accuracy code."""
  torch = pytest.importorskip("torch")
  if importlib.util.find_spec("clip_benchmark") is None:
    pytest.skip("clip_benchmark is not installed")
  if importlib.util.find_spec("sklearn") is None:
    def balanced_accuracy_score(y_true, y_pred):
      y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
      return float(np.mean([np.mean(y_pred[y_true == c] == c)
                            for c in np.unique(y_true)]))
    stub = types.ModuleType("sklearn.metrics")
    stub.balanced_accuracy_score = balanced_accuracy_score
    stub.classification_report = lambda *a, **k: ""
    monkeypatch.setitem(sys.modules, "sklearn", types.ModuleType("sklearn"))
    monkeypatch.setitem(sys.modules, "sklearn.metrics", stub)
    for mod in list(sys.modules):
      if mod.startswith("clip_benchmark.metrics"):
        monkeypatch.delitem(sys.modules, mod)
  module = importlib.import_module(f"clip_benchmark.metrics.{name}")
  # 1.6.2's accuracy() calls float() on a 1-element 1-D array, which recent
  # NumPy (2.4 here) rejects; give its module the older float() (a size-1
  # array to its scalar) so its own code runs unchanged.
  def numpy1_float(x=0.0):
    return builtins.float(np.asarray(x).reshape(())
                          if isinstance(x, np.ndarray) and x.size == 1 else x)
  monkeypatch.setattr(module, "float", numpy1_float, raising=False)
  return torch, module


class _FakeClip:
  """encode_image: the images are their embeddings; encode_text: a table."""

  def __init__(self, torch, text_table):
    self.table = torch.as_tensor(text_table)

  def encode_image(self, images):
    return images

  def encode_text(self, tokens):
    return self.table[tokens[:, 0]]


class _Tokens:

  def __init__(self, torch, ids):
    self.torch, self.ids = torch, ids

  def __call__(self, texts):
    return self.torch.tensor([[self.ids[t]] for t in texts])


def test_zeroshot_values_match_clip_benchmark(monkeypatch):
  torch, zsc = _import_clip_benchmark_metric("zeroshot_classification",
                                             monkeypatch)
  rng = np.random.default_rng(0)
  classnames = [f"class{i}" for i in range(12)]
  templates = ["a photo of {}.", "art of {}."]
  prompts = [t.format(c) for c in classnames for t in templates]
  table = rng.normal(size=(len(prompts), 8)).astype(np.float32)
  ids = {p: i for i, p in enumerate(prompts)}
  labels = rng.choice(12, size=90, p=np.arange(1, 13) / 78)  # unbalanced
  images = rng.normal(size=(90, 8)).astype(np.float32)
  images /= np.linalg.norm(images, axis=1, keepdims=True)

  class Loader(list):
    dataset = types.SimpleNamespace(classes=classnames)

  loader = Loader((torch.as_tensor(images[s:s + 32]),
                   torch.as_tensor(labels[s:s + 32])) for s in range(0, 90, 32))
  theirs = zsc.evaluate(_FakeClip(torch, table), loader, _Tokens(torch, ids),
                        classnames, [t.replace("{}", "{c}") for t in templates],
                        device="cpu", amp=False)

  tok = lambda texts: np.array([[ids[t]] for t in texts])
  class_emb = class_text_embeddings(lambda _, t: table[t[:, 0]], None, tok,
                                    classnames, templates, batch_size=5)
  ours = cb.metrics("zeroshot", zeroshot_metrics(images, class_emb, labels))
  assert set(ours) == set(theirs)
  assert ours == pytest.approx(theirs, abs=1e-6)
  assert ours["acc1"] != pytest.approx(ours["mean_per_class_recall"], abs=1e-3)


def test_retrieval_values_match_clip_benchmark(monkeypatch):
  torch, zsr = _import_clip_benchmark_metric("zeroshot_retrieval", monkeypatch)
  rng = np.random.default_rng(1)
  num_images = 40
  captions = [[f"img{i} cap{j}" for j in range(1 + i % 3)]
              for i in range(num_images)]  # 1 to 3 captions per image
  texts = [c for caps in captions for c in caps]
  text_to_image = np.array([i for i, caps in enumerate(captions) for _ in caps])
  images = rng.normal(size=(num_images, 6)).astype(np.float32)
  images /= np.linalg.norm(images, axis=1, keepdims=True)
  text_emb = (images[text_to_image]
              + 1.2 * rng.normal(size=(len(texts), 6))).astype(np.float32)
  text_emb /= np.linalg.norm(text_emb, axis=1, keepdims=True)
  ids = {t: i for i, t in enumerate(texts)}
  loader = [(torch.as_tensor(images[s:s + 16]), captions[s:s + 16])
            for s in range(0, num_images, 16)]
  theirs = zsr.evaluate(_FakeClip(torch, text_emb), loader, _Tokens(torch, ids),
                        device="cpu", amp=False, recall_k_list=[1, 5, 10])
  ours = cb.metrics("retrieval",
                    retrieval_metrics(images @ text_emb.T, text_to_image))
  assert set(ours) == set(theirs)
  assert ours == pytest.approx(theirs, abs=1e-6)
  assert 0 < ours["image_retrieval_recall@1"] < ours["image_retrieval_recall@10"] < 1
