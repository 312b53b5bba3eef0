"""Random-access sources of raw image-text records, mixing, multi-host sharding.

Every source returns ``{"key": str, "image": bytes | uint8 array,
"caption": str | bytes | list}`` (classification: ``"label"`` instead of
``"caption"``) so one `decode.decode_example` serves them all. Decoding pixels
is left to the pipeline's map, where Grain can run it in worker processes.
"""

from __future__ import annotations

from typing import Any, Sequence, SupportsIndex

import grain
import jax
import numpy as np

from cvlg_jax.data import records
from cvlg_jax.data.decode import Rejection


class ArrayRecordImageText:
  """All shards of a converted dataset behind one global index."""

  def __init__(self, pattern_or_dir: str):
    self.paths = records.list_shards(pattern_or_dir)
    self._source = grain.sources.ArrayRecordDataSource(self.paths)

  def __len__(self) -> int:
    return len(self._source)

  def _decode(self, raw: bytes, index: int) -> dict[str, Any] | Rejection:
    try:
      return records.decode_record(raw)
    except ValueError as e:  # One corrupt record must not stop the run.
      return Rejection("malformed_record", f"#{index}", str(e))

  def __getitem__(self, index: SupportsIndex) -> dict[str, Any] | Rejection:
    index = index.__index__()
    return self._decode(self._source[index], index)

  def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Any] | Rejection]:
    raws = self._source.__getitems__(indices)
    return [self._decode(r, i) for r, i in zip(raws, indices)]

  def __repr__(self) -> str:
    return f"ArrayRecordImageText({len(self.paths)} shards, {len(self)} records)"


def _get_path(example: dict[str, Any], path: str) -> Any:
  """``"captions/text"`` -> example["captions"]["text"] (TFDS nested features)."""
  value = example
  for part in path.split("/"):
    if not isinstance(value, dict) or part not in value:
      raise KeyError(f"feature {path!r} not in example (keys: {sorted(example)})")
    value = value[part]
  return value


def _tfds_source(name: str, split: str, image_key: str, data_dir: str | None):
  import tensorflow_datasets as tfds  # Heavy (imports TF): only when used.
  # Encoded bytes, not decoded arrays: decoding belongs to the pipeline map
  # (worker processes, reduced-size JPEG decode, typed rejections).
  return tfds.data_source(name, split=split, data_dir=data_dir, download=False,
                          decoders={image_key: tfds.decode.SkipDecoding()})


class _TfdsRecords:
  """Random access over a prepared TFDS split as ``{key, image, ...}`` records;
  subclasses add their target field. Nothing is downloaded."""

  def __init__(self, name: str, split: str, image_key: str, data_dir: str | None):
    self.name, self.split, self.image_key = name, split, image_key
    self._source = _tfds_source(name, split, image_key, data_dir)

  def _target(self, example) -> dict[str, Any]:
    raise NotImplementedError

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index: SupportsIndex) -> dict[str, Any]:
    index = index.__index__()
    example = self._source[index]
    return {"key": f"{self.name}/{self.split}/{index}",
            "image": example[self.image_key], **self._target(example)}

  def __repr__(self) -> str:
    return (f"{type(self).__name__}({self.name}:{self.split}, "
            f"{len(self)} examples)")


class TfdsImageText(_TfdsRecords):
  """A prepared TFDS dataset with image + caption(s) as image-text records.

  ``caption_key`` may name a nested feature, e.g. ``"captions/text"`` for
  coco_captions. Nothing is downloaded: prepare the dataset beforehand.
  """

  def __init__(self, name: str, split: str, *, image_key: str = "image",
               caption_key: str = "caption", data_dir: str | None = None):
    super().__init__(name, split, image_key, data_dir)
    self.caption_key = caption_key

  def _target(self, example):
    return {"caption": _get_path(example, self.caption_key)}


class TfdsClassification(_TfdsRecords):
  """A prepared TFDS classification dataset as ``{key, image, label}`` records."""

  def __init__(self, name: str, split: str, *, image_key: str = "image",
               label_key: str = "label", data_dir: str | None = None):
    super().__init__(name, split, image_key, data_dir)
    self.label_key = label_key

  def _target(self, example):
    return {"label": int(_get_path(example, self.label_key))}


def mixture(datasets: Sequence[grain.MapDataset | Any], weights: Sequence[float],
            *, repeat: bool = True) -> grain.MapDataset:
  """Weighted mixture via Grain's `MapDataset.mix` (deterministic interleave).

  With ``repeat`` each component repeats forever, so proportions hold for the
  whole run rather than ending at the shortest component; shuffle components
  before mixing (Grain's advice) if order within a component matters.
  """
  if len(datasets) != len(weights) or not datasets:
    raise ValueError(f"need one weight per dataset, got {len(datasets)} datasets "
                     f"and {len(weights)} weights")
  if any(not np.isfinite(w) or w <= 0 for w in weights):
    raise ValueError(f"mixture weights must be positive, got {list(weights)}")
  parts = [d if isinstance(d, grain.MapDataset) else grain.MapDataset.source(d)
           for d in datasets]
  if repeat:
    parts = [p.repeat() for p in parts]
  return grain.MapDataset.mix(parts, [float(w) for w in weights])


def shard_for_process(dataset_or_len: grain.MapDataset | int,
                      process_index: int | None = None,
                      process_count: int | None = None, *,
                      drop_remainder: bool = False) -> grain.MapDataset | range:
  """This process's strided share: ``ds[process_index::process_count]``.

  Shares are disjoint and, without ``drop_remainder``, together complete;
  with it every process gets exactly ``len // process_count`` elements (equal
  step counts per host for finite eval sets). Slice the source before a
  shuffle, or after one seeded identically on every host; both keep hosts
  disjoint. Defaults to this JAX process.
  """
  if process_index is None:
    process_index = jax.process_index()
  if process_count is None:
    process_count = jax.process_count()
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} outside [0, {process_count})")
  n = dataset_or_len if isinstance(dataset_or_len, int) else len(dataset_or_len)
  stop = n - n % process_count if drop_remainder else n
  sl = slice(process_index, stop, process_count)
  if isinstance(dataset_or_len, int):
    return range(n)[sl]
  return dataset_or_len[sl]


def make_global_batch(local_batch: dict[str, Any], mesh: jax.sharding.Mesh,
                      pspec: jax.sharding.PartitionSpec) -> dict[str, jax.Array]:
  """Per-host numpy batch -> global jax.Arrays sharded over ``pspec``.

  Each host passes only its rows; the leading (batch) axis of the global array
  is the concatenation over processes. ``pspec`` names the batch axes (e.g.
  ``P(("data", "fsdp"))``); trailing dimensions are replicated. Non-array
  metadata (strings) must be removed first.
  """
  sharding = jax.sharding.NamedSharding(mesh, pspec)

  def put(x):
    x = np.asarray(x)
    if x.dtype.kind in "OUS":
      raise TypeError(f"cannot put {x.dtype} data on devices; drop it from the batch")
    return jax.make_array_from_process_local_data(sharding, x)

  return jax.tree.map(put, local_batch)
