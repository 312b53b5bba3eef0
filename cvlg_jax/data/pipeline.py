"""Grain input pipelines: source -> shuffle -> per-example transform -> batch.

Batches are host-local dicts of numpy arrays, ``image`` uint8 [b, S, S, 3]
(normalised on device, so workers ship 4x fewer bytes) and ``tokens`` int32
[b, L], where b = global batch / process count. The iterator is a Grain
``DatasetIterator`` whose state goes into every checkpoint, so a resumed run
sees exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

import dataclasses

import grain
import jax
import numpy as np

from cvlg_jax.data import synthetic
from cvlg_jax.data.tokenizers import Tokenizer


@dataclasses.dataclass(frozen=True)
class TokenizeCaption(grain.transforms.Map):
  """{"image", "caption", ...} -> {"image", "tokens"}: what the model consumes."""
  tokenizer: Tokenizer

  def map(self, example):
    return {"image": np.asarray(example["image"], np.uint8),
            "tokens": self.tokenizer([example["caption"]])[0]}


def train_source(config):
  """The random-access training source named by ``config.data.source``."""
  data = config.data
  if data.source == "synthetic":
    return synthetic.SyntheticImageText(
        "train", num_examples=data.num_train, image_size=data.image_size,
        caption_noise=data.caption_noise, seed=config.train.seed)
  raise ValueError(f"data.source={data.source!r} has no training pipeline yet")


def train_dataset(config, tokenizer: Tokenizer, *, process_index: int | None = None,
                  process_count: int | None = None) -> grain.IterDataset:
  """Infinite, shuffled (re-shuffled each epoch), batched host-local dataset."""
  process_index = jax.process_index() if process_index is None else process_index
  process_count = jax.process_count() if process_count is None else process_count
  if config.train.batch_size % process_count:
    raise ValueError(f"train.batch_size={config.train.batch_size} is not "
                     f"divisible by the {process_count} processes")
  ds = grain.MapDataset.source(train_source(config))
  ds = ds.seed(config.train.seed).shuffle().repeat()
  # Each process reads a disjoint 1/process_count of every epoch's order.
  ds = ds[process_index::process_count]
  ds = ds.map(TokenizeCaption(tokenizer))
  ds = ds.batch(config.train.batch_size // process_count, drop_remainder=True)
  it_ds = ds.to_iter_dataset(grain.ReadOptions(
      num_threads=2, prefetch_buffer_size=config.data.prefetch_buffer_size))
  if config.data.worker_count > 0:
    it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(
        num_workers=config.data.worker_count))
  return it_ds


def steps_per_epoch(config) -> int:
  return max(1, len(train_source(config)) // config.train.batch_size)
