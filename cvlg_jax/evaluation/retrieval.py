"""Image-text retrieval: Recall@K and ranks in both directions.

Conventions (fixed here so numbers are comparable across runs and papers):
  * recall values are fractions in [0, 1], not percentages;
  * ranks are 1-based; an image's i2t rank is the rank of its best-ranked true
    caption (several captions per image, as in COCO / Flickr30k);
  * ties are broken pessimistically and deterministically: a true item tied
    with a false one is ranked after it, so a constant similarity matrix scores
    the worst possible rank rather than a lucky one that depends on sort order.
"""

from __future__ import annotations

import numpy as np

from cvlg_jax.evaluation.common import register

RECALL_KS = (1, 5, 10)
_ROW_CHUNK = 1024  # bounds the temporary boolean masks to chunk x num_texts


def _check(similarity: np.ndarray, text_to_image: np.ndarray):
  sim = np.asarray(similarity)
  t2i = np.asarray(text_to_image)
  if sim.ndim != 2:
    raise ValueError(f"similarity must be [num_images, num_texts], got {sim.shape}")
  if t2i.ndim != 1 or t2i.shape[0] != sim.shape[1]:
    raise ValueError(f"text_to_image must be [num_texts={sim.shape[1]}], "
                     f"got {t2i.shape}")
  if not np.issubdtype(t2i.dtype, np.integer):
    raise ValueError(f"text_to_image must be integer, got {t2i.dtype}")
  if sim.size == 0:
    raise ValueError("similarity is empty")
  if not np.all(np.isfinite(sim)):
    raise ValueError("similarity contains NaN or inf")
  if t2i.min() < 0 or t2i.max() >= sim.shape[0]:
    raise ValueError(f"text_to_image values must lie in [0, {sim.shape[0]}), "
                     f"got range [{t2i.min()}, {t2i.max()}]")
  counts = np.bincount(t2i, minlength=sim.shape[0])
  if np.any(counts == 0):
    missing = np.flatnonzero(counts == 0)
    raise ValueError(f"{missing.size} images have no caption (first: "
                     f"{missing[:5].tolist()}); every image needs at least one")
  return sim, t2i.astype(np.int64)


def i2t_ranks(similarity: np.ndarray, text_to_image: np.ndarray) -> np.ndarray:
  """1-based rank of each image's best true caption, ties pessimistic."""
  sim, t2i = _check(similarity, text_to_image)
  num_images = sim.shape[0]
  ranks = np.empty(num_images, np.int64)
  for start in range(0, num_images, _ROW_CHUNK):
    rows = sim[start:start + _ROW_CHUNK]
    ids = np.arange(start, start + rows.shape[0])
    is_true = t2i[None, :] == ids[:, None]
    best_true = np.where(is_true, rows, -np.inf).max(axis=1)
    # Every false caption scoring >= the best true one is ranked ahead of it.
    ahead = (~is_true) & (rows >= best_true[:, None])
    ranks[start:start + rows.shape[0]] = 1 + ahead.sum(axis=1)
  return ranks


def t2i_ranks(similarity: np.ndarray, text_to_image: np.ndarray) -> np.ndarray:
  """1-based rank of each caption's image, ties pessimistic."""
  sim, t2i = _check(similarity, text_to_image)
  num_texts = sim.shape[1]
  ranks = np.empty(num_texts, np.int64)
  for start in range(0, num_texts, _ROW_CHUNK):
    cols = sim[:, start:start + _ROW_CHUNK].T  # [chunk, num_images]
    ids = t2i[start:start + cols.shape[0]]
    true_score = cols[np.arange(cols.shape[0]), ids]
    ahead = cols >= true_score[:, None]
    ahead[np.arange(cols.shape[0]), ids] = False
    ranks[start:start + cols.shape[0]] = 1 + ahead.sum(axis=1)
  return ranks


def retrieval_metrics(similarity: np.ndarray,
                      text_to_image: np.ndarray) -> dict[str, float]:
  """R@{1,5,10} (fractions) and mean/median 1-based rank, both directions.

  Args:
    similarity: [num_images, num_texts] scores, higher is more similar.
    text_to_image: int [num_texts], the index of each caption's image.
  """
  out = {}
  for name, ranks in (("i2t", i2t_ranks(similarity, text_to_image)),
                      ("t2i", t2i_ranks(similarity, text_to_image))):
    for k in RECALL_KS:
      out[f"{name}_R@{k}"] = float(np.mean(ranks <= k))
    out[f"{name}_mean_rank"] = float(np.mean(ranks))
    out[f"{name}_median_rank"] = float(np.median(ranks))
  return out


class RetrievalEvaluator:
  """``config.eval.<name> = dict(type="retrieval", dataset="coco" |
  "flickr30k", split=None, data_dir=None, max_examples=None,
  captions_per_image=5)``. ``max_examples`` caps images (seeded sample);
  each image keeps its first ``captions_per_image`` captions (5 is the usual
  COCO 5k / Flickr30k 1k protocol; 0 keeps all)."""

  KEYS = ("dataset", "split", "data_dir", "max_examples", "captions_per_image",
          "seed")

  def __init__(self, cfg, ctx):
    from cvlg_jax.evaluation import datasets
    datasets.check_config(cfg, self.KEYS, "retrieval")
    self._ctx = ctx
    self._name = cfg.dataset
    self._captions_per_image = int(cfg.get("captions_per_image", 5))
    self._source = datasets.open_retrieval(cfg.dataset, cfg.get("split"),
                                           cfg.get("data_dir"))
    self._indices = datasets.sample_indices(
        len(self._source), cfg.get("max_examples"), cfg.get("seed", 0))

  def run(self, params) -> dict[str, float]:
    from cvlg_jax.evaluation import datasets
    ctx = self._ctx
    skipped = datasets.Skipped(f"retrieval eval on {self._name}")
    image_emb, caption_lists = datasets.embed_source(
        ctx.encode_images, params, self._source, self._indices,
        batch_size=ctx.batch_size, image_size=ctx.image_size, skipped=skipped)
    texts, text_to_image = [], []
    for i, captions in enumerate(caption_lists):
      if self._captions_per_image > 0:
        captions = list(captions)[: self._captions_per_image]
      if not captions:
        which = (f"image {int(self._indices[i])}" if not skipped.count
                 else f"embedded image {i}")  # positions shift past skips
        raise ValueError(f"{self._name}: {which} has no caption")
      texts += captions
      text_to_image += [i] * len(captions)
    text_emb = np.concatenate([
        np.asarray(ctx.encode_texts(params, ctx.tokenizer(texts[s:s + ctx.batch_size])),
                   np.float32)
        for s in range(0, len(texts), ctx.batch_size)])
    metrics = retrieval_metrics(image_emb @ text_emb.T, np.asarray(text_to_image))
    metrics["num_images"] = float(len(caption_lists))
    metrics["num_texts"] = float(len(texts))
    metrics.update(skipped.metrics())  # images that did not decode
    return metrics


@register("retrieval")
def make_retrieval(cfg, ctx) -> RetrievalEvaluator:
  return RetrievalEvaluator(cfg, ctx)
