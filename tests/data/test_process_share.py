"""Each process's share of the training data (in-process, process index and
count given explicitly): disjoint, together exactly the global batch, in
its row order, and only the process's own rows are read."""

import grain
import numpy as np
import pytest

from cvlg_jax.step import sharding
from cvlg_jax.config import base_config
from cvlg_jax.data import pipeline, tokenizers
from cvlg_jax.data.process_share import BatchBlock
from cvlg_jax.data.skipping import decode_and_skip
from image_fixtures import encode_image


class _RecordingSource:
  """A random-access source of ints that remembers which indices were read."""

  def __init__(self, n):
    self.n, self.read = n, []

  def __len__(self):
    return self.n

  def __getitem__(self, i):
    self.read.append(int(i))
    return int(i)


@pytest.mark.parametrize("count", [1, 2, 4])
def test_blocks_are_disjoint_cover_each_batch_and_read_nothing_else(count):
  batch, steps = 8, 5
  local = batch // count
  shares = []
  for index in range(count):
    source = _RecordingSource(1000)
    ds = BatchBlock(grain.MapDataset.source(source), global_batch=batch,
                    index=index, count=count)
    got = [ds[j] for j in range(steps * local)]
    assert sorted(source.read) == sorted(got)  # nothing but its own rows
    shares.append(np.reshape(got, (steps, local)))
  for step in range(steps):
    rows = np.concatenate([s[step] for s in shares])
    assert rows.tolist() == list(range(step * batch, (step + 1) * batch))
  assert len(BatchBlock(grain.MapDataset.range(100), global_batch=8, index=0,
                        count=2)) == 12 * 4  # whole global batches only


def test_block_arguments_are_checked():
  ds = grain.MapDataset.range(10)
  with pytest.raises(ValueError, match="not divisible by 3"):
    BatchBlock(ds, global_batch=8, index=0, count=3)
  with pytest.raises(ValueError, match=r"outside \[0, 2\)"):
    BatchBlock(ds, global_batch=8, index=2, count=2)


def _config(batch=16):
  c = base_config()
  c.train.batch_size, c.data.num_train = batch, 64
  return c


def test_process_batches_concatenate_to_the_single_process_batch():
  config, tok = _config(), tokenizers.get_tokenizer("builtin", context_length=32)
  whole = iter(pipeline.train_dataset(config, tok, process_index=0, process_count=1))
  parts = [iter(pipeline.train_dataset(config, tok, process_index=i, process_count=2))
           for i in range(2)]
  for _ in range(6):  # past the first epoch (64 examples = 4 batches)
    want = next(whole)
    got = [next(p) for p in parts]
    for key in want:
      assert got[0][key].shape[0] == 8
      np.testing.assert_array_equal(np.concatenate([g[key] for g in got]), want[key])


def test_decoded_share_keeps_each_example_crop_of_the_single_process_run():
  """Random crops come from each element's global index, so a process's
  share is decoded exactly as the single-process run decodes those rows."""
  rng = np.random.default_rng(0)
  records = [{"image": encode_image(rng.integers(0, 255, (40, 48, 3), np.uint8)),
              "caption": f"picture {i}"} for i in range(32)]
  source = grain.MapDataset.source(records).seed(7).shuffle()

  def stream(index, count):
    share = lambda ds: BatchBlock(ds, global_batch=8, index=index, count=count)
    it = iter(decode_and_skip(source, train=True, image_size=16,
                              crop_scale=(0.3, 1.0), select=share))
    return [next(it) for _ in range(16 // count)]

  whole, halves = stream(0, 1), [stream(i, 2) for i in range(2)]
  for step in range(2):
    rows = halves[0][step * 4:(step + 1) * 4] + halves[1][step * 4:(step + 1) * 4]
    for got, want in zip(rows, whole[step * 8:(step + 1) * 8]):
      assert got["caption"] == want["caption"]
      np.testing.assert_array_equal(got["image"], want["image"])


def test_single_process_reads_the_whole_batch():
  mesh = sharding.make_mesh(base_config().mesh)
  assert sharding.process_batch_block(mesh) == (0, 1)


def test_each_process_resumes_its_own_skip_counts():
  from cvlg_jax.data.decode import SKIP_REASONS
  from cvlg_jax.data.skipping import own_skip_counts
  width = len(SKIP_REASONS)
  rows = np.arange(2 * width).reshape(2, width)  # two processes' running sums
  for i in range(2):
    np.testing.assert_array_equal(own_skip_counts(rows.tolist(), i, 2), rows[i])
  # An older single-process checkpoint held one flat row.
  np.testing.assert_array_equal(own_skip_counts(rows[1].tolist(), 0, 1), rows[1])
  # Resumed on another number of processes: the total survives, once.
  resumed = [own_skip_counts(rows.tolist(), i, 4) for i in range(4)]
  np.testing.assert_array_equal(sum(resumed), rows.sum(0))
