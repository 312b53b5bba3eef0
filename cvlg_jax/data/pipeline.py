"""Grain input pipelines: source -> shuffle -> per-example transform -> batch.

Batches are host-local dicts of numpy arrays, ``image`` uint8 [b, S, S, 3]
(normalised on device, so workers ship 4x fewer bytes) and ``tokens`` int32
[b, L], where b = global batch / process count. Real-data batches also carry
``skipped`` int32 [b, len(SKIP_REASONS)]: bad records dropped before each
example (see data.skipping), which the loop pops and adds to its metrics.
Every batch carries ``example_id`` int32 [b]: each example's index among the
trained examples (the source's index when nothing is held out), the same in
every epoch, worker, host and resumed run (the embedding-bank teacher's key,
see cvlg_jax.step.bank).

The iterator is a Grain ``DatasetIterator`` whose state goes into every
checkpoint, so a resumed run sees exactly the batches an uninterrupted one
would. Decoding and augmentation run in Grain worker processes when
``data.worker_count > 0``.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple

import grain
import jax
import numpy as np

from cvlg_jax.data import synthetic, train_sources
from cvlg_jax.data.process_share import BatchBlock
from cvlg_jax.data.skipping import SKIPPED_KEY, decode_and_skip
from cvlg_jax.data.tokenizers import Tokenizer, get_tokenizer


EXAMPLE_ID = "example_id"


@dataclasses.dataclass(frozen=True)
class WithExampleId:
  """Tags a raw record with its source index (before any shuffle), so the id
  names the same example however the data is later ordered or split.

  Grain hands a source's map the index *before* wrapping it into the source
  (a shuffled, repeated dataset asks for epoch * n + i): hence the modulo.
  """
  num_examples: int

  def __call__(self, index, record):
    if not isinstance(record, dict):  # a Rejection: dropped and counted later
      return record
    return {**record, EXAMPLE_ID: np.int32(index % self.num_examples)}


@dataclasses.dataclass(frozen=True)
class TokenizeCaption(grain.transforms.Map):
  """{"image", "caption", ...} -> {"image", "tokens"[, "example_id",
  "skipped"]}."""
  tokenizer: Tokenizer

  def map(self, example):
    out = {"image": np.asarray(example["image"], np.uint8),
           "tokens": self.tokenizer([example["caption"]])[0]}
    for key in (EXAMPLE_ID, SKIPPED_KEY):
      if key in example:
        out[key] = example[key]
    return out


def make_tokenizer(config) -> Tokenizer:
  """``config.data.tokenizer``; the builtin one knows the synthetic data's
  words (collision-free ids for the offline demo)."""
  data = config.data
  return get_tokenizer(data.tokenizer, context_length=data.context_length,
                       vocab_size=data.vocab_size, path=data.tokenizer_path,
                       known_words=synthetic.VOCABULARY)


def train_source(config):
  """The random-access training source named by ``config.data.source``."""
  return train_sources.open_source(config)


class TrainData(NamedTuple):
  """The training source and which of its examples are trained on.

  ``heldout`` (``data.num_heldout`` indices) is a fixed pseudo-random subset,
  the same for every run on this source, that training never reads;
  ``trained`` lists the rest in source order (None: all of them).
  """
  source: Any
  trained: np.ndarray | None
  heldout: np.ndarray

  def trained_indices(self) -> np.ndarray:
    return np.arange(len(self.source)) if self.trained is None else self.trained


_HELDOUT_SALT = 0x4e1d  # the held-out subset depends on the source size only


def train_data(config, source=None) -> TrainData:
  source = train_source(config) if source is None else source
  n, k = len(source), config.data.num_heldout
  if k >= n:
    raise ValueError(f"data.num_heldout={k} leaves no training examples of "
                     f"the {n} in the source")
  if n - k >= 2 ** 31:
    raise ValueError(f"{n - k} training examples overflow the int32 example_id")
  if not k:
    return TrainData(source, None, np.zeros((0,), np.int64))
  order = np.random.default_rng((_HELDOUT_SALT, n)).permutation(n)
  return TrainData(source, np.sort(order[k:]), np.sort(order[:k]))


class _Subset:
  """Random access to ``source[indices[i]]`` (the trained examples)."""

  def __init__(self, source, indices: np.ndarray):
    self.source, self.indices = source, indices

  def __len__(self) -> int:
    return len(self.indices)

  def __getitem__(self, index):
    return self.source[int(self.indices[index.__index__()])]

  def __getitems__(self, indices):
    picked = [int(self.indices[i]) for i in indices]
    if hasattr(self.source, "__getitems__"):
      return self.source.__getitems__(picked)
    return [self.source[i] for i in picked]

  def __repr__(self) -> str:
    return f"{self.source!r}[{len(self)} trained examples]"


def train_dataset(config, tokenizer: Tokenizer, split: TrainData | None = None, *,
                  process_index: int | None = None,
                  process_count: int | None = None) -> grain.IterDataset:
  """Infinite, shuffled (re-shuffled each epoch), batched host-local dataset.

  ``split``: the already opened :class:`TrainData` (the run plan's; opened
  here when None). This process reads block ``process_index`` of
  ``process_count`` (default: its JAX process index and count) of each
  global batch; the trainer passes the block its devices hold in the mesh
  (``sharding.process_batch_block``).
  """
  data = config.data
  process_index = jax.process_index() if process_index is None else process_index
  process_count = jax.process_count() if process_count is None else process_count
  if config.train.batch_size % process_count:
    raise ValueError(f"train.batch_size={config.train.batch_size} is not "
                     f"divisible by the {process_count} processes")
  split = train_data(config) if split is None else split
  trained = (split.source if split.trained is None
             else _Subset(split.source, split.trained))
  ds = grain.MapDataset.source(trained).map_with_index(WithExampleId(len(trained)))
  # Same seed on every host, so the shuffled order is global; each process
  # then reads its own block of rows of every global batch (process_share).
  ds = ds.seed(config.train.seed).shuffle().repeat()
  share = functools.partial(BatchBlock, global_batch=config.train.batch_size,
                            index=process_index, count=process_count)
  if data.source == "synthetic":  # already decoded; no bad records possible
    it_ds = share(ds.map(TokenizeCaption(tokenizer))).to_iter_dataset(
        grain.ReadOptions(num_threads=2, prefetch_buffer_size=data.prefetch_buffer_size))
  else:
    read = grain.ReadOptions(
        num_threads=data.read_threads,
        prefetch_buffer_size=max(data.prefetch_buffer_size, 2 * data.read_threads))
    it_ds = decode_and_skip(ds, train=True, image_size=data.image_size,
                            crop_scale=(data.crop_min_scale, 1.0), flip=data.flip,
                            max_aspect_ratio=data.max_aspect_ratio,
                            fast=data.fast_decode, read_options=read, select=share)
    it_ds = it_ds.map(TokenizeCaption(tokenizer))
  it_ds = it_ds.batch(config.train.batch_size // process_count, drop_remainder=True)
  if data.worker_count > 0:
    it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(
        num_workers=data.worker_count))
  return it_ds
