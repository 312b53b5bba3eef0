"""Checkpoint fall-back and retention, on the real Checkpointer (in-process).

An unreadable newest checkpoint (files truncated or deleted) must be skipped
with a warning, the newest readable one restored (state, data iterator
position and loop counters together), and the bad one moved aside so its
step can be saved again. Retention must never leave the directory without a
committed checkpoint while a newer one is still being written.
"""

import logging
import os
import shutil
import threading
import time

import grain
import jax
import jax.numpy as jnp
import pytest

from cvlg_jax.run import checkpointing


def _iterator():
  return iter(grain.MapDataset.range(1000).seed(3).shuffle().to_iter_dataset())


def _state(step, rows=16):
  return {"w": jnp.full((rows, 8), float(step)), "step": jnp.int32(step)}


def _abstract(rows=16):
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
      _state(0, rows))


@pytest.fixture
def three_checkpoints(tmp_path):
  """Steps 1..3; before saving step s the iterator has yielded s items.
  Returns the directory and the first items of the (shuffled) stream."""
  directory = tmp_path / "checkpoints"
  ckpt = checkpointing.Checkpointer(str(directory), keep=5)
  it = _iterator()
  for step in (1, 2, 3):
    next(it)
    ckpt.save(step, _state(step), it, meta={"skipped_nonfinite": step}, force=True)
    ckpt.wait()
  ckpt.close()
  stream = _iterator()
  return directory, [next(stream) for _ in range(5)]


def _truncate_array_data(step_dir):
  for root, _, files in os.walk(step_dir / "state"):
    for f in files:
      if os.sep + "d" in root[len(str(step_dir)):]:
        with open(os.path.join(root, f), "r+b") as fh:
          fh.truncate(7)


def _delete_data_item(step_dir):
  shutil.rmtree(step_dir / "data")


def _empty_every_file(step_dir):
  for root, _, files in os.walk(step_dir):
    for f in files:
      open(os.path.join(root, f), "w").close()


def _delete_state_manifests(step_dir):
  for root, _, files in os.walk(step_dir / "state"):
    for f in files:
      if f == "manifest.ocdbt":
        os.remove(os.path.join(root, f))


@pytest.mark.parametrize("corrupt", [_truncate_array_data, _delete_data_item,
                                     _empty_every_file, _delete_state_manifests])
def test_unreadable_newest_checkpoint_falls_back_with_a_warning(
    three_checkpoints, corrupt, caplog):
  directory, stream = three_checkpoints
  corrupt(directory / "3")
  ckpt = checkpointing.Checkpointer(str(directory), keep=5)
  it = _iterator()
  with caplog.at_level(logging.WARNING):
    state, meta, step = ckpt.restore_latest(_abstract(), it)
  assert step == 2 and meta == {"skipped_nonfinite": 2}
  assert int(state["step"]) == 2 and float(state["w"][0, 0]) == 2.0
  assert next(it) == stream[2]  # the iterator is back at step 2's position
  assert "Checkpoint at step 3 is unreadable" in caplog.text
  assert "Restored step 2 after 1 unreadable newer checkpoint(s) [3]" in caplog.text
  # Moved aside, not deleted; step 3 can be written again and read back.
  moved = os.listdir(directory / checkpointing.UNREADABLE_DIR)
  assert len(moved) == 1 and moved[0].startswith("3-")
  assert ckpt.all_steps() == [1, 2]
  ckpt.save(3, _state(30), it, meta={}, force=True)
  ckpt.wait()
  assert ckpt.all_steps() == [1, 2, 3]
  state, _, step = ckpt.restore_latest(_abstract(), _iterator())
  assert step == 3 and float(state["w"][0, 0]) == 30.0
  ckpt.close()


def test_no_readable_checkpoint_is_an_error_not_a_fresh_start(three_checkpoints):
  directory, _ = three_checkpoints
  for step in (1, 2, 3):
    _empty_every_file(directory / str(step))
  ckpt = checkpointing.Checkpointer(str(directory))
  with pytest.raises(checkpointing.NoReadableCheckpointError,
                     match=r"none of the 3 checkpoints .* could be restored"):
    ckpt.restore_latest(_abstract(), _iterator())
  assert sorted(os.listdir(directory)) == ["1", "2", "3"]  # nothing moved
  ckpt.close()


def test_empty_directory_means_a_fresh_start(tmp_path):
  ckpt = checkpointing.Checkpointer(str(tmp_path / "checkpoints"))
  assert ckpt.restore_latest(_abstract(), _iterator()) == (None, {}, None)
  ckpt.close()


def test_retention_keeps_the_old_checkpoint_until_the_new_one_commits(tmp_path):
  """keep=1, watched while saving: at every moment at least one committed
  checkpoint exists; the old one goes only after the new one is committed."""
  directory = tmp_path / "checkpoints"
  rows = 4096  # 16 MiB per save, so each write is long enough to be watched
  ckpt = checkpointing.Checkpointer(str(directory), keep=1)
  it = _iterator()
  snapshots, done = [], threading.Event()

  def watch():
    while not done.is_set():
      snapshots.append(sorted(os.listdir(directory)))
      time.sleep(0.0005)

  watcher = threading.Thread(target=watch)
  watcher.start()
  try:
    for step in (1, 2, 3):
      ckpt.save(step, _state(step, rows), it, force=True)
      ckpt.wait()
  finally:
    done.set()
    watcher.join()
  ckpt.close()
  committed = [[int(n) for n in snap if n.isdigit()] for snap in snapshots]
  first = next(i for i, c in enumerate(committed) if c)
  assert all(committed[first:]), "a moment with no committed checkpoint"
  # A step disappears only once a newer one is committed.
  for before, after in zip(committed[first:], committed[first + 1:]):
    for gone in set(before) - set(after):
      assert any(s > gone for s in after), (before, after)
  # And the watcher did see a save in progress next to the old checkpoint.
  assert any(any("tmp" in n for n in snap) and any(n.isdigit() for n in snap)
             for snap in snapshots)
  assert os.listdir(directory) == ["3"]


def test_close_waits_for_the_cleanup_of_a_crashed_save(tmp_path):
  """A crashed save's temporary directory is gone once close() returns (the
  cleanup thread Orbax starts is joined, so exiting right after prints no
  'cannot schedule new futures after interpreter shutdown')."""
  directory = tmp_path / "checkpoints"
  ckpt = checkpointing.Checkpointer(str(directory))
  ckpt.save(1, _state(1), _iterator(), force=True)
  ckpt.close()
  leftover = directory / "2.orbax-checkpoint-tmp-1700000000000000"
  shutil.copytree(directory / "1", leftover)
  ckpt = checkpointing.Checkpointer(str(directory))
  ckpt.close()
  assert sorted(os.listdir(directory)) == ["1"]
