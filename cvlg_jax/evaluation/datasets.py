"""Evaluation data: batched, preprocessed reading of the catalogue's sets.

The sets themselves -- which exist, their splits, class names and prompt
templates, and how to open them -- are the data catalogue
(:mod:`cvlg_jax.data.catalog`, re-exported here); this module adds what
evaluators need on top: fair subsamples, decoding a batch ahead in threads,
embedding a whole source, and checking an eval entry's keys.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, Sequence

from absl import logging
import grain
import numpy as np

from cvlg_jax.data.catalog import (  # noqa: F401  (re-exported)
    CLASSIFICATION_SETS, RETRIEVAL_SETS, ClassificationData, ClassificationSet,
    DatasetUnavailable, open_classification, open_retrieval)
from cvlg_jax.data.decode import BadExample, Rejection
from cvlg_jax.data.transforms import eval_preprocess

__all__ = ["DatasetUnavailable", "ClassificationData", "ClassificationSet",
           "open_classification", "open_retrieval", "load_batches",
           "embed_source", "read_good", "Skipped", "sample_indices",
           "check_config", "CLASSIFICATION_SETS", "RETRIEVAL_SETS"]


def sample_indices(num: int, max_examples: int | None, seed: int = 0):
  """All indices, or a seeded sorted random subset: sources are often stored
  class by class, so the first N would not be a fair sample."""
  if not max_examples or max_examples >= num:
    return np.arange(num)
  rng = np.random.default_rng(seed)
  return np.sort(rng.choice(num, size=max_examples, replace=False))


class Skipped:
  """The examples an evaluation read left out because their image does not
  decode. Never silent: :meth:`report` logs one warning with the count and
  an example, and :meth:`metrics` puts ``num_skipped`` into the evaluator's
  metrics, which are computed over the other examples."""

  def __init__(self, what: str):
    self.what, self.count, self.example = what, 0, ""

  def add(self, rejection: Rejection) -> None:
    self.count += 1
    self.example = self.example or rejection.detail or rejection.key

  def report(self, total: int) -> None:
    if self.count:
      logging.warning("%s: skipped %d of %d images that do not decode (e.g. "
                      "%s); its metrics are over the other %d", self.what,
                      self.count, total, self.example, total - self.count)

  def metrics(self, key: str = "num_skipped") -> dict[str, float]:
    """``{key: n}``, or nothing when no image was skipped."""
    return {key: float(self.count)} if self.count else {}


def read_good(read: Callable[[int], Any], indices: Sequence[int],
              skipped: Skipped, *, num_threads: int = 8,
              buffer: int = 64) -> Iterator[tuple[int, Any]]:
  """``(i, read(i))`` for each index, in order, read ahead in Grain threads.

  An index whose ``read`` raises decode.BadExample or returns a Rejection (a
  bad image file: data.local_sources, data.class_captions) is counted in
  ``skipped`` and left out, so one bad file costs one example, not the run.
  """
  def safe(i):
    try:
      return i, read(i)
    except BadExample as e:
      return i, Rejection(e.reason, str(i), str(e))

  ds = grain.MapDataset.source([int(i) for i in indices]).map(safe)
  options = grain.ReadOptions(num_threads=num_threads,
                              prefetch_buffer_size=max(buffer, num_threads))
  for i, out in ds.to_iter_dataset(options):
    if isinstance(out, Rejection):
      skipped.add(out)
    else:
      yield i, out


def load_batches(source: Sequence, indices: Sequence[int], batch_size: int,
                 image_size: int, num_threads: int = 8,
                 skipped: Skipped | None = None
                 ) -> Iterator[tuple[np.ndarray, list]]:
  """Yields (float32 [B, size, size, 3] preprocessed images, targets).

  Decoding and resizing run in Grain read threads (PIL and TFDS release the
  GIL), a batch ahead of the caller, so the accelerator is not left waiting.
  Images that do not decode are left out and counted in ``skipped``.
  """
  skipped = Skipped("eval read") if skipped is None else skipped

  def load(i):
    image, target = source[i]
    return eval_preprocess(image, image_size), target

  batch = []
  for _, item in read_good(load, indices, skipped, num_threads=num_threads,
                           buffer=batch_size):
    batch.append(item)
    if len(batch) == batch_size:
      yield np.stack([x for x, _ in batch]), [t for _, t in batch]
      batch = []
  if batch:
    yield np.stack([x for x, _ in batch]), [t for _, t in batch]


def embed_source(encode_images, params, source: Sequence, indices, *,
                 batch_size: int, image_size: int,
                 skipped: Skipped | None = None) -> tuple[np.ndarray, list]:
  """Embeds ``source[indices]`` batch by batch -> (float32 [N, d], targets)
  of the images that decode; the others are counted in ``skipped`` and
  reported in one warning."""
  skipped = Skipped("eval read") if skipped is None else skipped
  embs, targets = [], []
  for images, batch_targets in load_batches(source, indices, batch_size,
                                            image_size, skipped=skipped):
    embs.append(np.asarray(encode_images(params, images), np.float32))
    targets += batch_targets
  skipped.report(len(indices))
  if not embs:
    raise ValueError(f"{skipped.what}: no examples to embed"
                     + (f" (all {skipped.count} images skipped, e.g. "
                        f"{skipped.example})" if skipped.count else ""))
  return np.concatenate(embs), targets


def check_config(cfg, allowed: Sequence[str], kind: str) -> None:
  """Rejects misspelt keys in a ``config.eval`` entry with one clear message."""
  unknown = sorted(set(cfg.keys()) - set(allowed) - {"type", "every"})
  if unknown:
    raise ValueError(f"{kind} eval config has unknown keys {unknown}; allowed: "
                     f"{', '.join(sorted(set(allowed) | {'type', 'every'}))}")
  if not cfg.get("dataset"):
    raise ValueError(f"{kind} eval config needs `dataset`")
