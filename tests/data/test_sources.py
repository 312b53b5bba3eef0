"""Sources: ArrayRecord global indexing, TFDS adapters, mixing, multi-host sharding."""

from __future__ import annotations

import io

from array_record.python.array_record_module import ArrayRecordWriter
import grain
import jax
from jax.sharding import PartitionSpec as P
import numpy as np
from PIL import Image
import pytest

from cvlg_jax.data import records, sources
from cvlg_jax.data.decode import Rejection, decode_example


def _jpeg(seed: int) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(np.full((12, 16, 3), seed, np.uint8)).save(buf, "JPEG")
  return buf.getvalue()


def _write_shards(out_dir, sizes, bad_at=()):
  i = 0
  for s, size in enumerate(sizes):
    w = ArrayRecordWriter(str(out_dir / records.shard_name("t", s, len(sizes))),
                          "group_size:1")
    for _ in range(size):
      w.write(b"\xc1 not msgpack" if i in bad_at
              else records.encode_record(f"r{i}", _jpeg(i), f"caption {i}"))
      i += 1
    w.close()


def test_array_record_global_index_over_shards(tmp_path):
  _write_shards(tmp_path, [3, 0, 4], bad_at={5})
  src = sources.ArrayRecordImageText(str(tmp_path))
  assert len(src) == 7 and len(src.paths) == 3
  assert [src[i]["key"] for i in (0, 2, 3, 6)] == ["r0", "r2", "r3", "r6"]
  assert src[4]["caption"] == "caption 4"
  bad = src[5]
  assert isinstance(bad, Rejection) and bad.reason == "malformed_record"
  assert [r["key"] for r in src.__getitems__([6, 0])] == ["r6", "r0"]
  out = decode_example(src[6], None, train=False, image_size=8)
  assert out["caption"] == "caption 6" and abs(int(out["image"].mean()) - 6) <= 2
  # The same shards through a glob, and a Grain MapDataset.
  glob_src = sources.ArrayRecordImageText(str(tmp_path / "t-0000[02]-of-*.array_record"))
  assert len(glob_src) == 7
  ds = grain.MapDataset.source(src).map(lambda r: r.reason if isinstance(r, Rejection)
                                        else r["key"])
  assert list(ds) == ["r0", "r1", "r2", "r3", "r4", "malformed_record", "r6"]


def test_tfds_sources_on_mock_data():
  tfds = pytest.importorskip("tensorflow_datasets")
  with tfds.testing.mock_data(num_examples=5, policy=tfds.testing.MockPolicy.USE_CODE):
    text = sources.TfdsImageText("laion400m/images", "train", caption_key="caption")
    cls = sources.TfdsClassification("cifar10", "test")
  assert len(text) == 5 and len(cls) == 5
  rec = text[3]
  assert rec["key"] == "laion400m/images/train/3" and isinstance(rec["image"], bytes)
  out = decode_example(rec, np.random.default_rng(0), train=True, image_size=8)
  assert out["image"].shape == (8, 8, 3) and isinstance(out["caption"], str)
  labels = [cls[i]["label"] for i in range(5)]
  assert all(isinstance(l, int) and 0 <= l < 10 for l in labels)
  ex = decode_example(cls[0], None, train=False, image_size=8)
  assert ex["image"].shape == (8, 8, 3) and ex["label"] == labels[0]
  with pytest.raises(KeyError, match="not in example"):
    sources._get_path({"a": {"b": 1}}, "a/c")  # pylint: disable=protected-access


def test_mixture_follows_weights_forever():
  a = grain.MapDataset.source(["a"] * 3)
  b = grain.MapDataset.source(["b"] * 5)
  mixed = sources.mixture([a, b], [3, 1])
  first = [mixed[i] for i in range(400)]
  assert first.count("a") == 300  # Exact proportions, beyond both lengths.
  assert len(sources.mixture([a, b], [1, 1], repeat=False)) == 6
  with pytest.raises(ValueError, match="positive"):
    sources.mixture([a, b], [1, 0])


@pytest.mark.parametrize("n,count", [(10, 2), (11, 3), (2, 4)])
def test_shard_for_process_disjoint_and_complete(n, count):
  ds = grain.MapDataset.range(100, 100 + n)
  shares = [list(sources.shard_for_process(ds, i, count)) for i in range(count)]
  flat = sorted(x for s in shares for x in s)
  assert flat == list(range(100, 100 + n))  # Complete, no duplicates.
  assert [list(sources.shard_for_process(n, i, count)) for i in range(count)] == \
      [[x - 100 for x in s] for s in shares]
  equal = [list(sources.shard_for_process(ds, i, count, drop_remainder=True))
           for i in range(count)]
  assert {len(s) for s in equal} == {n // count}
  assert len(set(x for s in equal for x in s)) == n // count * count
  assert list(sources.shard_for_process(ds)) == list(ds)  # One process here.
  with pytest.raises(ValueError):
    sources.shard_for_process(ds, count, count)


def test_make_global_batch_shards_rows_over_mesh():
  mesh = jax.make_mesh((4, 2), ("data", "fsdp"))
  local = {"image": np.arange(16 * 3, dtype=np.float32).reshape(16, 3),
           "tokens": np.arange(16 * 5, dtype=np.int32).reshape(16, 5)}
  batch = sources.make_global_batch(local, mesh, P(("data", "fsdp")))
  for k, v in batch.items():
    assert v.shape == local[k].shape
    np.testing.assert_array_equal(np.asarray(v), local[k])
    assert v.sharding.spec == P(("data", "fsdp"))
    assert {s.data.shape[0] for s in v.addressable_shards} == {2}  # 16 rows / 8.
  with pytest.raises(TypeError, match="drop it"):
    sources.make_global_batch({"caption": np.array(["a"] * 8)}, mesh, P("data"))
