"""Drop rejected examples and carry their counts on the next good one.

Counting through a side channel (a global counter, a queue) breaks as soon as
decoding runs in Grain worker processes, and is lost on checkpoint restore.
Instead each good example carries ``skipped``: int32[len(SKIP_REASONS)], the
rejections seen since the previous good example. The field is batched like any
other, so ``batch["skipped"].sum(0)`` is the batch's skip count per reason, in
the main process, whatever the worker count. The pending count is part of the
iterator state, so save/restore stays exact.
"""

from __future__ import annotations

import functools
from typing import Any

from absl import logging
import grain
import numpy as np

from cvlg_jax.data.decode import Rejection, SKIP_REASONS, decode_example

_REASON_INDEX = {r: i for i, r in enumerate(SKIP_REASONS)}
SKIPPED_KEY = "skipped"


class SkipAndCount(grain.IterDataset):
  """Yields only good examples (dicts), each with a ``skipped`` count vector.

  Place it right after the decode map (``to_iter_dataset()`` then this, then
  ``batch``), before or after ``mp_prefetch``. ``max_consecutive`` turns a
  source that is (nearly) all bad into a clear error instead of a silent hang.
  Rejections after the last good example of a finite dataset are not reported.
  """

  def __init__(self, parent: grain.IterDataset, *, max_consecutive: int = 10_000):
    if not isinstance(parent, grain.IterDataset):
      raise TypeError("SkipAndCount wraps an IterDataset; call "
                      f".to_iter_dataset() first (got {type(parent).__name__})")
    super().__init__(parent)
    self._max_consecutive = max_consecutive

  def __iter__(self) -> grain.DatasetIterator:
    return _SkipAndCountIterator(self._parent.__iter__(), self._max_consecutive)

  def __str__(self) -> str:
    return f"SkipAndCount(max_consecutive={self._max_consecutive})"


class _SkipAndCountIterator(grain.DatasetIterator):

  def __init__(self, parent: grain.DatasetIterator, max_consecutive: int):
    super().__init__(parent)
    self._max_consecutive = max_consecutive
    self._pending = np.zeros(len(SKIP_REASONS), np.int32)

  def __next__(self) -> dict[str, Any]:
    run = 0
    while True:
      element = next(self._parent)
      if not isinstance(element, Rejection):
        break
      self._pending[_REASON_INDEX[element.reason]] += 1
      run += 1
      logging.log_every_n_seconds(logging.WARNING, "Skipping bad example %r: %s",
                                  60, element.key, element.detail or element.reason)
      if run >= self._max_consecutive:
        raise RuntimeError(
            f"{run} consecutive bad examples (last: {element.key!r}, "
            f"{element.detail or element.reason}); is the data path right?")
    if not isinstance(element, dict):
      raise TypeError(f"SkipAndCount expects dict examples, got {type(element).__name__}")
    element = {**element, SKIPPED_KEY: self._pending}
    self._pending = np.zeros(len(SKIP_REASONS), np.int32)
    return element

  def get_state(self) -> dict[str, Any]:
    return {"parent": self._parent.get_state(),
            "pending": [int(c) for c in self._pending]}

  def set_state(self, state: dict[str, Any]) -> None:
    self._parent.set_state(state["parent"])
    self._pending = np.asarray(state["pending"], np.int32)

  def __str__(self) -> str:
    return "SkipAndCountDatasetIterator"


def decode_and_skip(ds: grain.MapDataset, *, train: bool, image_size: int,
                    seed: int | None = None, select=None,
                    read_options: grain.ReadOptions | None = None,
                    **image_kwargs) -> grain.IterDataset:
  """Raw records -> good examples with ``skipped`` counts, as an IterDataset.

  Training draws crop/flip/caption choice from Grain's per-element RNG (set
  ``seed`` here or with ``ds.seed(...)`` upstream); eval is deterministic.
  ``select`` (MapDataset -> MapDataset, e.g. this process's share) applies
  after the decode map, so each element's randomness keeps its global index.
  ``read_options``: threads and buffer of the read + decode (Grain's default
  when None).
  """
  fn = functools.partial(decode_example, train=train, image_size=image_size,
                         **image_kwargs)
  ds = ds.random_map(fn, seed=seed) if train else ds.map(functools.partial(fn, rng=None))
  if select is not None:
    ds = select(ds)
  return SkipAndCount(ds.to_iter_dataset(read_options))


def own_skip_counts(saved, process_index: int, process_count: int) -> np.ndarray:
  """This process's running skip counts from a checkpoint's per-process rows
  ([processes, reasons]; a single 1-D row from older checkpoints). Resumed on
  a different number of processes, process 0 carries the whole total."""
  rows = np.asarray(saved, np.int64).reshape(-1, len(SKIP_REASONS))
  if len(rows) == process_count:
    return rows[process_index]
  return rows.sum(0) if process_index == 0 else np.zeros_like(rows[0])


def skip_metrics(skipped: np.ndarray, prefix: str = "data/skipped_") -> dict[str, int]:
  """``skipped`` [..., R] (a batch's, or a running sum) -> {prefix+reason: n}."""
  skipped = np.asarray(skipped)
  if skipped.shape[-1:] != (len(SKIP_REASONS),):
    raise ValueError(f"skipped must end in {len(SKIP_REASONS)}, got {skipped.shape}")
  totals = skipped.reshape(-1, len(SKIP_REASONS)).sum(0)
  return {prefix + r: int(n) for r, n in zip(SKIP_REASONS, totals)}
