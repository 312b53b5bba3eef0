"""The training sources by ``config.data.source``: how to open each, and what
each needs from the config (checked before anything compiles).

A source is a random-access sequence of raw records (``sources``,
``class_captions``) or of decoded examples (``synthetic``); the pipeline
(``data.pipeline``) turns it into batches. ``config.validate`` reads the
allowed values from :data:`SOURCES`.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

from cvlg_jax import fileio
from cvlg_jax.data import catalog, class_captions, records, sources, synthetic


class SourceSpec(NamedTuple):
  open: Callable          # config -> the source
  # config -> None; raises ValueError naming the config key that is wrong.
  check: Callable = lambda config: None


def _synthetic(config):
  data = config.data
  return synthetic.SyntheticImageText(
      "train", num_examples=data.num_train + data.num_heldout,
      image_size=data.image_size, caption_noise=data.caption_noise,
      seed=config.train.seed, noise_kinds=synthetic.parse_noise_kinds(data.noise_kinds))


def _arrayrecord(config):
  return sources.ArrayRecordImageText(config.data.data_dir)


def _check_arrayrecord(config):
  data_dir = config.data.data_dir
  try:
    records.list_shards(data_dir)
  except FileNotFoundError as e:
    raise ValueError(f"config.data.data_dir={data_dir!r}: {e} (a directory of "
                     "shards, a glob or one shard file)") from None


def _tfds(config):
  data = config.data
  return sources.TfdsImageText(data.tfds_name, data.tfds_split,
                               image_key=data.image_key,
                               caption_key=data.caption_key,
                               data_dir=data.data_dir or None)


def _check_tfds(config):
  data = config.data
  if not data.tfds_name:
    raise ValueError(f"config.data.tfds_name must be set for "
                     f"data.source={data.source!r}")
  if data.data_dir and not fileio.isdir(data.data_dir):
    raise ValueError(f"config.data.data_dir={data.data_dir!r} does not exist "
                     "(TFDS data_dir; leave empty for the TFDS default)")


def _class_captions(config):
  data = config.data
  return class_captions.open_class_captions(
      data.tfds_name, data.tfds_split, data.data_dir or None,
      caption_noise=data.caption_noise, seed=config.train.seed)


def _check_class_captions(config):
  _check_tfds(config)
  name, split = config.data.tfds_name, config.data.tfds_split
  try:
    class_captions.check_split(name, split)
    if name.startswith("folder:"):
      class_captions.check_folder(name, split)
  except (ValueError, catalog.DatasetUnavailable) as e:
    raise ValueError(f"config.data.tfds_name / tfds_split: {e}") from None


SOURCES = {
    "synthetic": SourceSpec(_synthetic),
    "arrayrecord": SourceSpec(_arrayrecord, _check_arrayrecord),
    "tfds": SourceSpec(_tfds, _check_tfds),
    # a registered classification set (data.tfds_name, e.g. cifar10, or
    # folder:/path) as class-name captions with label noise
    "tfds_class_captions": SourceSpec(_class_captions, _check_class_captions),
}


def open_source(config):
  """The random-access training source named by ``config.data.source``."""
  name = config.data.source
  if name not in SOURCES:
    raise ValueError(f"data.source={name!r} is unknown; allowed: "
                     f"{', '.join(SOURCES)}")
  return SOURCES[name].open(config)
