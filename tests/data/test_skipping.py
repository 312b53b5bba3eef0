"""Skip-and-count: bad examples vanish, their counts reach the batches, also via workers."""

from __future__ import annotations

import io

from absl import flags
from array_record.python.array_record_module import ArrayRecordWriter
import grain
import numpy as np
from PIL import Image
import pytest

from cvlg_jax.data import records
from cvlg_jax.data.decode import Rejection, SKIP_REASONS
from cvlg_jax.data.skipping import SkipAndCount, decode_and_skip, skip_metrics
from cvlg_jax.data.sources import ArrayRecordImageText


def _jpeg(value: int, h=20, w=24) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(np.full((h, w, 3), value, np.uint8)).save(buf, "JPEG", quality=95)
  return buf.getvalue()


def _bad_record(i: int) -> tuple[str, dict]:
  """Cycles through every skip reason (malformed: a broken record on disk)."""
  good = _jpeg(0)
  reason = SKIP_REASONS[i % len(SKIP_REASONS)]
  record = {
      "undecodable_image": {"image": b"\x89PNG nonsense" * 4, "caption": "c"},
      "truncated_image": {"image": good[: len(good) // 2], "caption": "c"},
      "empty_image_bytes": {"image": b"", "caption": "c"},
      "extreme_aspect_ratio": {"image": _jpeg(0, 2, 40), "caption": "c"},
      "empty_caption": {"image": good, "caption": [" ", "\n"]},
      "bad_utf8": {"image": good, "caption": b"\xc3\x28"},
      "malformed_record": None,
  }[reason]
  return reason, record


def _write_dataset(path, n: int, bad_every: int):
  """n records; every ``bad_every``-th is bad. Returns good keys, bad counts."""
  writer = ArrayRecordWriter(str(path), "group_size:1")
  good, bad = [], np.zeros(len(SKIP_REASONS), int)
  for i in range(n):
    if i % bad_every == 1:
      reason, rec = _bad_record(i // bad_every)
      bad[SKIP_REASONS.index(reason)] += 1
      writer.write(b"\xc1" if rec is None else records.encode_record(
          f"bad{i}", rec["image"], rec["caption"]))
    else:
      good.append(f"{i}")
      writer.write(records.encode_record(f"{i}", _jpeg(i), f"caption {i}"))
  writer.close()
  return good, bad


def _keys(batch) -> list[str]:
  return [c.split()[1] for c in batch["caption"]]


def test_counts_in_process(tmp_path):
  path = tmp_path / records.shard_name("d", 0, 1)
  good, bad = _write_dataset(path, 40, bad_every=3)
  assert bad.min() >= 1  # Every reason occurs.
  ds = decode_and_skip(grain.MapDataset.source(ArrayRecordImageText(str(path))),
                       train=True, image_size=8, seed=3).batch(4)
  batches = list(ds)
  assert sorted(k for b in batches for k in _keys(b)) == sorted(good)
  total = sum(b["skipped"].sum(0) for b in batches)
  np.testing.assert_array_equal(total, bad)
  assert skip_metrics(np.concatenate([b["skipped"] for b in batches])) == {
      f"data/skipped_{r}": int(c) for r, c in zip(SKIP_REASONS, bad)}
  assert batches[0]["image"].shape == (4, 8, 8, 3)


def test_workers_and_checkpoint_restore(tmp_path):
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()  # Grain's worker processes read absl flags.
  path = tmp_path / records.shard_name("d", 0, 1)
  good, bad = _write_dataset(path, 48, bad_every=4)
  src = grain.MapDataset.source(ArrayRecordImageText(str(path))).seed(7).shuffle()
  ds = decode_and_skip(src, train=True, image_size=8).batch(3)
  ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=2))

  it = iter(ds)
  head = [next(it) for _ in range(3)]
  state = it.get_state()
  tail = list(it)
  it.close()
  batches = head + tail
  assert sorted(k for b in batches for k in _keys(b)) == sorted(good)
  np.testing.assert_array_equal(sum(b["skipped"].sum(0) for b in batches), bad)

  restored = iter(ds)
  restored.set_state(state)
  again = list(restored)
  restored.close()
  assert len(again) == len(tail)
  for x, y in zip(tail, again):
    assert list(x["caption"]) == list(y["caption"])
    np.testing.assert_array_equal(x["image"], y["image"])
    np.testing.assert_array_equal(x["skipped"], y["skipped"])


def test_pending_counts_survive_state_and_all_bad_is_an_error():
  items = [Rejection("bad_utf8"), {"x": 1}, Rejection("empty_caption"),
           Rejection("empty_caption"), {"x": 2}]
  ds = SkipAndCount(grain.MapDataset.source(items).to_iter_dataset())
  it = iter(ds)
  first = next(it)
  assert first["skipped"][SKIP_REASONS.index("bad_utf8")] == 1
  state = it.get_state()
  state["pending"][SKIP_REASONS.index("truncated_image")] = 5  # As if mid-run.
  it2 = iter(ds)
  it2.set_state(state)
  second = next(it2)
  assert second["x"] == 2
  assert second["skipped"][SKIP_REASONS.index("empty_caption")] == 2
  assert second["skipped"][SKIP_REASONS.index("truncated_image")] == 5
  all_bad = SkipAndCount(grain.MapDataset.source([Rejection("bad_utf8")] * 5)
                         .to_iter_dataset(), max_consecutive=5)
  with pytest.raises(RuntimeError, match="5 consecutive bad examples"):
    next(iter(all_bad))
  with pytest.raises(TypeError, match="to_iter_dataset"):
    SkipAndCount(grain.MapDataset.source(items))
