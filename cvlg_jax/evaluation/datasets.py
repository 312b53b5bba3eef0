"""Evaluation data: batched, preprocessed reading of the catalogue's sets.

The sets themselves -- which exist, their splits, class names and prompt
templates, and how to open them -- are the data catalogue
(:mod:`cvlg_jax.data.catalog`, re-exported here); this module adds what
evaluators need on top: fair subsamples, decoding a batch ahead in threads,
embedding a whole source, and checking an eval entry's keys.
"""

from __future__ import annotations

import concurrent.futures
from typing import Iterator, Sequence

import numpy as np

from cvlg_jax.data.catalog import (  # noqa: F401  (re-exported)
    CLASSIFICATION_SETS, RETRIEVAL_SETS, ClassificationData, ClassificationSet,
    DatasetUnavailable, open_classification, open_retrieval)
from cvlg_jax.data.transforms import eval_preprocess

__all__ = ["DatasetUnavailable", "ClassificationData", "ClassificationSet",
           "open_classification", "open_retrieval", "load_batches",
           "embed_source", "sample_indices", "check_config",
           "CLASSIFICATION_SETS", "RETRIEVAL_SETS"]


def sample_indices(num: int, max_examples: int | None, seed: int = 0):
  """All indices, or a seeded sorted random subset: sources are often stored
  class by class, so the first N would not be a fair sample."""
  if not max_examples or max_examples >= num:
    return np.arange(num)
  rng = np.random.default_rng(seed)
  return np.sort(rng.choice(num, size=max_examples, replace=False))


def load_batches(source: Sequence, indices: Sequence[int], batch_size: int,
                 image_size: int, num_threads: int = 8
                 ) -> Iterator[tuple[np.ndarray, list]]:
  """Yields (float32 [B, size, size, 3] preprocessed images, targets).

  Decoding and resizing run in a thread pool (PIL and TFDS release the GIL),
  one batch ahead of the caller, so the accelerator is not left waiting.
  """
  def load(i):
    image, target = source[i]
    return eval_preprocess(image, image_size), target

  def load_batch(chunk):
    items = list(pool.map(load, chunk))
    return np.stack([x for x, _ in items]), [t for _, t in items]

  chunks = [indices[s:s + batch_size] for s in range(0, len(indices), batch_size)]
  with concurrent.futures.ThreadPoolExecutor(num_threads) as pool, \
       concurrent.futures.ThreadPoolExecutor(1) as ahead:
    pending = ahead.submit(load_batch, chunks[0]) if chunks else None
    for k in range(len(chunks)):
      batch = pending.result()
      if k + 1 < len(chunks):
        pending = ahead.submit(load_batch, chunks[k + 1])
      yield batch


def embed_source(encode_images, params, source: Sequence, indices, *,
                 batch_size: int, image_size: int) -> tuple[np.ndarray, list]:
  """Embeds ``source[indices]`` batch by batch -> (float32 [N, d], targets)."""
  embs, targets = [], []
  for images, batch_targets in load_batches(source, indices, batch_size,
                                            image_size):
    embs.append(np.asarray(encode_images(params, images), np.float32))
    targets += batch_targets
  if not embs:
    raise ValueError("no examples to embed")
  return np.concatenate(embs), targets


def check_config(cfg, allowed: Sequence[str], kind: str) -> None:
  """Rejects misspelt keys in a ``config.eval`` entry with one clear message."""
  unknown = sorted(set(cfg.keys()) - set(allowed) - {"type", "every"})
  if unknown:
    raise ValueError(f"{kind} eval config has unknown keys {unknown}; allowed: "
                     f"{', '.join(sorted(set(allowed) | {'type', 'every'}))}")
  if not cfg.get("dataset"):
    raise ValueError(f"{kind} eval config needs `dataset`")
