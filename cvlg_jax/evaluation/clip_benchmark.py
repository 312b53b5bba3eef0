"""Eval results as LAION CLIP_benchmark result files, to merge with open_clip's tables.

CLIP_benchmark (pip ``clip_benchmark``; this schema follows version 1.6.2,
its ``cli.py`` and ``metrics/``) writes one JSON object per model, data set,
language and task::

    {"dataset": "cifar10", "model": "ViT-B-32", "pretrained": "laion2b_s34b_b79k",
     "task": "zeroshot_classification", "metrics": {...}, "language": "en"}

into ``{dataset}_{pretrained}_{model}_{language}_{task}.json``, the data
set's ``/`` written as ``_``. Metric values are fractions in [0, 1]:

  * ``zeroshot_classification``: ``acc1``, ``acc5`` (NaN, written as the
    JSON token ``NaN`` as Python's json does, when a set has too few classes
    for a top-5), ``mean_per_class_recall``;
  * ``zeroshot_retrieval``: ``image_retrieval_recall@K`` (a caption queries
    the images: our ``t2i_R@K``) and ``text_retrieval_recall@K`` (an image
    queries the captions: our ``i2t_R@K``), for K = 1, 5, 10;
  * ``linear_probe``: ``lp_acc1``. CLIP_benchmark's probe also reports
    ``lp_acc5``, ``lp_mean_per_class_recall`` and its SGD trainer's
    settings; ours (L-BFGS, :mod:`cvlg_jax.evaluation.linear_probe`)
    computes none of them, so they are left out rather than made up.

``clip_benchmark build FILES --output=benchmark.csv`` turns such files, ours
and its own alike, into one table, a row per file (``model_fullname`` is
``model + " " + pretrained``). The numbers come from this package's evaluators
(its splits, prompts and pessimistic ties), not from CLIP_benchmark's code.
"""

from __future__ import annotations

import json
import math
import os
import re
from typing import Mapping

from cvlg_jax import fileio
from cvlg_jax.models.pretrained import OPEN_CLIP_NAMES

LANGUAGE = "en"  # our class names and prompt templates are English
# Evaluator type -> CLIP_benchmark task. The others (synthetic, memorisation,
# heldout) have no counterpart there.
TASKS = {"zeroshot": "zeroshot_classification",
         "retrieval": "zeroshot_retrieval",
         "linear_probe": "linear_probe"}
# Our catalogue names -> CLIP_benchmark's for the same data (the VTAB
# versions where ours reads the VTAB test split: TFDS test, or EuroSAT's and
# RESISC45's last 20% of train). Names not listed are written as they are.
DATASETS = {
    "imagenet": "imagenet1k", "imagenet_v2": "imagenetv2",
    "imagenet_sketch": "imagenet_sketch", "imagenet_r": "imagenet-r",
    "imagenet_a": "imagenet-a", "objectnet": "objectnet",
    "cifar10": "cifar10", "cifar100": "cifar100", "stl10": "stl10",
    "caltech101": "vtab/caltech101", "food101": "food101",
    "flowers102": "vtab/flowers", "pets": "vtab/pets", "cars": "cars",
    "fgvc_aircraft": "fgvc_aircraft", "dtd": "vtab/dtd", "sun397": "sun397",
    "eurosat": "vtab/eurosat", "resisc45": "vtab/resisc45",
    "coco": "mscoco_captions", "flickr30k": "flickr30k",
}
_RECALL = re.compile(r"^(i2t|t2i)_R@(\d+)$")


def task_of(eval_type: str) -> str | None:
  """The CLIP_benchmark task of an evaluator type, or None."""
  return TASKS.get(eval_type)


def model_name(name: str) -> str:
  """open_clip's name of a registry model (``vit_b32`` -> ``ViT-B-32``);
  sizes open_clip does not have keep ours."""
  return OPEN_CLIP_NAMES.get(name, name)


def dataset_name(name: str) -> str:
  """CLIP_benchmark's name of a catalogue set; ``folder:/a/b`` -> ``b``."""
  if name.startswith("folder:"):
    return os.path.basename(name[len("folder:"):].rstrip("/")) or name
  return DATASETS.get(name, name)


def default_pretrained_name(workdir: str, step: int) -> str:
  """``<workdir basename>_step<step>``, e.g. ``myrun_step600``."""
  return f"{os.path.basename(workdir.rstrip('/'))}_step{step}"


def metrics(eval_type: str, result: Mapping[str, float]) -> dict[str, float]:
  """One evaluator's result in CLIP_benchmark's metric names."""
  def need(key):
    if key not in result:
      raise ValueError(f"{eval_type} result has no {key!r} (keys: "
                       f"{', '.join(sorted(result))})")
    return float(result[key])

  if eval_type == "zeroshot":
    return {"acc1": need("top1"),
            "acc5": float(result.get("top5", math.nan)),
            "mean_per_class_recall": need("mean_per_class_recall")}
  if eval_type == "retrieval":
    ks = sorted({int(m.group(2)) for m in map(_RECALL.match, result) if m})
    if not ks:
      raise ValueError("retrieval result has no i2t_R@K / t2i_R@K")
    out = {}
    for k in ks:  # image retrieval: text -> image (t2i), as CLIP_benchmark
      out[f"image_retrieval_recall@{k}"] = need(f"t2i_R@{k}")
      out[f"text_retrieval_recall@{k}"] = need(f"i2t_R@{k}")
    return out
  if eval_type == "linear_probe":
    return {"lp_acc1": need("top1")}
  raise ValueError(f"evaluator type {eval_type!r} has no CLIP_benchmark task; "
                   f"those that do: {', '.join(sorted(TASKS))}")


def file_name(record: Mapping) -> str:
  """``{dataset}_{pretrained}_{model}_{language}_{task}.json`` (``/`` in any
  part written as ``_``, so every record is one file in one folder)."""
  parts = (record["dataset"], record["pretrained"], record["model"],
           record["language"], record["task"])
  return "_".join(str(p).replace("/", "_") for p in parts) + ".json"


def to_clip_benchmark(result: Mapping[str, float], eval_type: str,
                      dataset: str, model: str, pretrained: str,
                      language: str = LANGUAGE) -> tuple[dict, str]:
  """(record, file name) of one evaluator's result; ``dataset`` and
  ``model`` are our names (mapped here), ``pretrained`` the run's label."""
  task = task_of(eval_type)
  values = metrics(eval_type, result)  # raises for a type without a task
  record = {"dataset": dataset_name(dataset), "model": model_name(model),
            "pretrained": pretrained, "task": task, "metrics": values,
            "language": language}
  return record, file_name(record)


def write_results(report: Mapping, eval_config: Mapping, model: str,
                  results_dir: str, pretrained: str) -> tuple[list[str], list[str]]:
  """Writes a CLIP_benchmark file per result of an eval report (what
  ``cli/evaluate.py`` returns) -> (paths written, one-line notes on the
  entries left out). ``eval_config``: the run's ``config.eval``."""
  paths, notes, owner = [], [], {}
  for name in sorted(report["results"]):
    entry = eval_config[name]
    if task_of(entry["type"]) is None:
      notes.append(f"clip_benchmark: {name} left out (type {entry['type']!r} "
                   "has no CLIP_benchmark task)")
      continue
    record, fname = to_clip_benchmark(report["results"][name], entry["type"],
                                      entry["dataset"], model, pretrained)
    if fname in owner:
      notes.append(f"clip_benchmark: {name} left out ({fname} is already "
                   f"{owner[fname]}'s)")
      continue
    owner[fname] = name
    path = os.path.join(results_dir, fname)
    fileio.write_file(path, json.dumps(record))
    paths.append(path)
  return paths, notes
