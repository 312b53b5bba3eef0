"""Grain input pipelines: source -> shuffle -> per-example transform -> batch.

Batches are host-local dicts of numpy arrays, ``image`` uint8 [b, S, S, 3]
(normalised on device, so workers ship 4x fewer bytes) and ``tokens`` int32
[b, L], where b = global batch / process count. Real-data batches also carry
``skipped`` int32 [b, len(SKIP_REASONS)]: bad records dropped before each
example (see data.skipping), which the loop pops and adds to its metrics.

The iterator is a Grain ``DatasetIterator`` whose state goes into every
checkpoint, so a resumed run sees exactly the batches an uninterrupted one
would. Decoding and augmentation run in Grain worker processes when
``data.worker_count > 0``.
"""

from __future__ import annotations

import dataclasses
import functools

import grain
import jax
import numpy as np

from cvlg_jax.data import synthetic
from cvlg_jax.data.process_share import BatchBlock
from cvlg_jax.data.skipping import SKIPPED_KEY, decode_and_skip
from cvlg_jax.data.tokenizers import Tokenizer


@dataclasses.dataclass(frozen=True)
class TokenizeCaption(grain.transforms.Map):
  """{"image", "caption", ...} -> {"image", "tokens"[, "skipped"]}."""
  tokenizer: Tokenizer

  def map(self, example):
    out = {"image": np.asarray(example["image"], np.uint8),
           "tokens": self.tokenizer([example["caption"]])[0]}
    if SKIPPED_KEY in example:
      out[SKIPPED_KEY] = example[SKIPPED_KEY]
    return out


def train_source(config):
  """The random-access training source named by ``config.data.source``."""
  data = config.data
  if data.source == "synthetic":
    return synthetic.SyntheticImageText(
        "train", num_examples=data.num_train, image_size=data.image_size,
        caption_noise=data.caption_noise, seed=config.train.seed)
  from cvlg_jax.data import sources
  if data.source == "arrayrecord":
    return sources.ArrayRecordImageText(data.data_dir)
  if data.source == "tfds":
    return sources.TfdsImageText(
        data.tfds_name, data.tfds_split, image_key=data.image_key,
        caption_key=data.caption_key, data_dir=data.data_dir or None)
  if data.source == "tfds_class_captions":
    from cvlg_jax.data import class_captions
    return class_captions.open_class_captions(
        data.tfds_name, data.tfds_split, data.data_dir or None,
        caption_noise=data.caption_noise, seed=config.train.seed)
  raise ValueError(f"data.source={data.source!r} is unknown")


def train_dataset(config, tokenizer: Tokenizer, *, process_index: int | None = None,
                  process_count: int | None = None) -> grain.IterDataset:
  """Infinite, shuffled (re-shuffled each epoch), batched host-local dataset.

  This process reads block ``process_index`` of ``process_count`` (default:
  its JAX process index and count) of each global batch; the trainer passes
  the block its devices hold in the mesh (``sharding.process_batch_block``).
  """
  data = config.data
  process_index = jax.process_index() if process_index is None else process_index
  process_count = jax.process_count() if process_count is None else process_count
  if config.train.batch_size % process_count:
    raise ValueError(f"train.batch_size={config.train.batch_size} is not "
                     f"divisible by the {process_count} processes")
  ds = grain.MapDataset.source(train_source(config))
  # Same seed on every host, so the shuffled order is global; each process
  # then reads its own block of rows of every global batch (process_share).
  ds = ds.seed(config.train.seed).shuffle().repeat()
  share = functools.partial(BatchBlock, global_batch=config.train.batch_size,
                            index=process_index, count=process_count)
  if data.source == "synthetic":  # already decoded; no bad records possible
    it_ds = share(ds.map(TokenizeCaption(tokenizer))).to_iter_dataset(
        grain.ReadOptions(num_threads=2, prefetch_buffer_size=data.prefetch_buffer_size))
  else:
    it_ds = decode_and_skip(ds, train=True, image_size=data.image_size,
                            crop_scale=(data.crop_min_scale, 1.0), flip=data.flip,
                            max_aspect_ratio=data.max_aspect_ratio, select=share)
    it_ds = it_ds.map(TokenizeCaption(tokenizer))
  it_ds = it_ds.batch(config.train.batch_size // process_count, drop_remainder=True)
  if data.worker_count > 0:
    it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(
        num_workers=data.worker_count))
  return it_ds


def steps_per_epoch(config) -> int:
  return max(1, len(train_source(config)) // config.train.batch_size)
