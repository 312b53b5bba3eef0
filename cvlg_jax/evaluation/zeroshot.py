"""Zero-shot classification: class embeddings from prompts, top-k accuracy."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from cvlg_jax.data.prompts import Template, fill_template  # noqa: F401
from cvlg_jax.evaluation.common import register


def _l2_normalize(x: np.ndarray, axis: int = -1) -> np.ndarray:
  norm = np.linalg.norm(x, axis=axis, keepdims=True)
  return x / np.maximum(norm, 1e-12)


def class_text_embeddings(encode_texts, params, tokenizer,
                          classnames: Sequence[str],
                          templates: Sequence[Template],
                          batch_size: int) -> np.ndarray:
  """float32 [num_classes, d]: per class, the renormalised mean over templates
  of the normalised prompt embeddings (CLIP's prompt ensembling)."""
  if not classnames:
    raise ValueError("classnames is empty")
  if not templates:
    raise ValueError("templates is empty")
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}")
  prompts = [fill_template(t, c) for c in classnames for t in templates]
  chunks = []
  for start in range(0, len(prompts), batch_size):
    tokens = tokenizer(prompts[start:start + batch_size])
    chunks.append(np.asarray(encode_texts(params, tokens), np.float32))
  emb = _l2_normalize(np.concatenate(chunks, axis=0))
  emb = emb.reshape(len(classnames), len(templates), -1).mean(axis=1)
  return _l2_normalize(emb).astype(np.float32)


def _classes_ahead(image_emb: np.ndarray, class_emb: np.ndarray,
                   labels: np.ndarray) -> np.ndarray:
  """int [N]: how many classes score at least as high as each image's true
  class (ties count against the model), after checking the inputs."""
  image_emb = np.asarray(image_emb, np.float32)
  class_emb = np.asarray(class_emb, np.float32)
  labels = np.asarray(labels)
  if image_emb.ndim != 2 or class_emb.ndim != 2:
    raise ValueError(f"embeddings must be 2-D, got {image_emb.shape} and "
                     f"{class_emb.shape}")
  if image_emb.shape[1] != class_emb.shape[1]:
    raise ValueError(f"embedding dims differ: images {image_emb.shape[1]}, "
                     f"classes {class_emb.shape[1]}")
  if labels.shape != (image_emb.shape[0],):
    raise ValueError(f"labels must be [{image_emb.shape[0]}], got {labels.shape}")
  if image_emb.shape[0] == 0:
    raise ValueError("no images to score")
  if not (np.all(np.isfinite(image_emb)) and np.all(np.isfinite(class_emb))):
    raise ValueError("embeddings contain NaN or inf")
  num_classes = class_emb.shape[0]
  if labels.min() < 0 or labels.max() >= num_classes:
    raise ValueError(f"labels must lie in [0, {num_classes}), got range "
                     f"[{labels.min()}, {labels.max()}]")
  logits = image_emb @ class_emb.T
  true_score = logits[np.arange(len(labels)), labels]
  return (logits >= true_score[:, None]).sum(axis=1) - 1  # excludes itself


def zeroshot_accuracy(image_emb: np.ndarray, class_emb: np.ndarray,
                      labels: np.ndarray,
                      topk: Sequence[int] = (1, 5)) -> dict[str, float]:
  """``{"top{k}": fraction}``: label among the k highest-scoring classes.

  Ties count against the model (a wrong class tied with the true one ranks
  ahead of it), matching the retrieval metrics, so constant embeddings score
  0 rather than whatever argsort happens to return.
  """
  ahead = _classes_ahead(image_emb, class_emb, labels)
  return {f"top{k}": float(np.mean(ahead < k)) for k in topk}


def per_class_recall(correct: np.ndarray, labels: np.ndarray) -> float:
  """Top-1 recall of each class that occurs in ``labels``, averaged over
  those classes (balanced accuracy: sklearn's ``balanced_accuracy_score``,
  what CLIP_benchmark reports as ``mean_per_class_recall``)."""
  correct = np.asarray(correct, np.float64)
  labels = np.asarray(labels, np.int64)
  if correct.shape != labels.shape or labels.ndim != 1 or not len(labels):
    raise ValueError(f"correct and labels must be equal non-empty [N], got "
                     f"{correct.shape} and {labels.shape}")
  counts = np.bincount(labels)
  hits = np.bincount(labels, weights=correct, minlength=len(counts))
  present = counts > 0
  return float(np.mean(hits[present] / counts[present]))


def zeroshot_metrics(image_emb: np.ndarray, class_emb: np.ndarray,
                     labels: np.ndarray,
                     topk: Sequence[int] = (1, 5)) -> dict[str, float]:
  """:func:`zeroshot_accuracy` plus ``mean_per_class_recall`` (the mean over
  classes of their top-1 recall, same pessimistic ties), from one scoring."""
  ahead = _classes_ahead(image_emb, class_emb, labels)
  out = {f"top{k}": float(np.mean(ahead < k)) for k in topk}
  out["mean_per_class_recall"] = per_class_recall(ahead < 1, labels)
  return out


class ZeroShotEvaluator:
  """``config.eval.<name> = dict(type="zeroshot", dataset=..., split=None,
  data_dir=None, max_examples=None)``; the data set is opened (and checked to
  exist) when the evaluator is built, so a missing download fails before
  training starts, not at the first eval."""

  KEYS = ("dataset", "split", "data_dir", "max_examples", "seed")

  def __init__(self, cfg, ctx):
    from cvlg_jax.evaluation import datasets
    datasets.check_config(cfg, self.KEYS, "zeroshot")
    self._ctx = ctx
    self._data = datasets.open_classification(
        cfg.dataset, cfg.get("split"), cfg.get("data_dir"))
    self._indices = datasets.sample_indices(
        len(self._data.source), cfg.get("max_examples"), cfg.get("seed", 0))

  def run(self, params) -> dict[str, float]:
    from cvlg_jax.evaluation import datasets
    ctx, data = self._ctx, self._data
    class_emb = class_text_embeddings(ctx.encode_texts, params, ctx.tokenizer,
                                      data.classnames, data.templates,
                                      ctx.batch_size)
    skipped = datasets.Skipped(f"zeroshot eval on {data.name}")
    image_emb, labels = datasets.embed_source(
        ctx.encode_images, params, data.source, self._indices,
        batch_size=ctx.batch_size, image_size=ctx.image_size, skipped=skipped)
    labels = np.asarray(labels)
    keep = labels >= 0  # ImageNet-R/A: classes outside the 200 are not scored
    if not keep.any():
      raise ValueError(f"{data.name}: none of the sampled examples belongs to "
                       "an evaluated class")
    topk = (1, 5) if len(data.classnames) > 5 else (1,)
    metrics = zeroshot_metrics(image_emb[keep], class_emb, labels[keep], topk)
    metrics["num_examples"] = float(keep.sum())  # images scored
    metrics.update(skipped.metrics())  # images that did not decode
    return metrics


@register("zeroshot")
def make_zeroshot(cfg, ctx) -> ZeroShotEvaluator:
  return ZeroShotEvaluator(cfg, ctx)
