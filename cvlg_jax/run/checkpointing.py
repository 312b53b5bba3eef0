"""Orbax checkpoints of the whole run: train state, Grain iterator, loop counters.

One composite checkpoint per saved step under ``WORKDIR/checkpoints/<step>``
with items ``state`` (params, optimizer state, step, RNG: sharded arrays,
saved asynchronously), ``data`` (the Grain iterator position) and ``meta``
(host-side loop counters, JSON). Orbax writes each step to a temporary
directory and renames it on commit, and deletes old steps (``keep``) only in
the finalize thread after the newer one has committed; a failed save raises
there before anything is deleted. So a crash never leaves a half-written
checkpoint that looks complete, and never leaves fewer committed checkpoints
than before the save.
"""

from __future__ import annotations

import os
import time

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

from cvlg_jax import fileio

UNREADABLE_DIR = "unreadable"


class NoReadableCheckpointError(RuntimeError):
  """Checkpoints exist but none restores: better to stop than to start over."""


class Checkpointer:
  """Saves and restores (state, data iterator, meta) triples; keeps the last
  ``keep`` plus every ``keep_period``-th step (0 = none kept permanently)."""

  def __init__(self, directory: str, *, keep: int = 3, keep_period: int = 0,
               async_save: bool = True):
    self.directory = fileio.absolute(directory)
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, keep_period=keep_period or None, create=True,
        enable_async_checkpointing=async_save,
        cleanup_tmp_directories=True)  # leftovers of a save cut by a crash
    self._manager = ocp.CheckpointManager(
        self.directory, options=options,
        item_handlers=dict(state=ocp.StandardCheckpointHandler(),
                           data=grain.checkpoint.CheckpointHandler(),
                           meta=ocp.JsonCheckpointHandler()))

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, state, data_iter, meta: dict | None = None, *,
           force: bool = False) -> bool:
    """Starts an async save; returns once the arrays are copied off device,
    so the caller may donate ``state`` to the next step right away."""
    return self._manager.save(
        step, force=force,
        args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                data=grain.checkpoint.CheckpointSave(data_iter),
                                meta=ocp.args.JsonSave(dict(meta or {}))))

  def restore(self, step: int, abstract_state, data_iter):
    """(state, meta) of ``step`` in ``abstract_state``'s shapes/shardings;
    moves ``data_iter`` to the saved position in place."""
    restored = self._manager.restore(
        step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state),
            data=grain.checkpoint.CheckpointRestore(data_iter),
            meta=ocp.args.JsonRestore()))
    return restored.state, dict(restored.meta or {})

  def restore_latest(self, abstract_state, data_iter):
    """(state, meta, step) from the newest readable checkpoint, or
    (None, {}, None) when there is none at all.

    A checkpoint that fails to restore (truncated or missing files) is skipped
    with a warning and the next older one is tried. Once one restores, the
    unreadable newer ones are moved to ``checkpoints/unreadable/`` (kept for
    inspection, out of Orbax's way so their steps can be saved again). If
    checkpoints exist but none restores (e.g. the config no longer matches
    them), raises instead of silently starting from scratch.
    """
    steps, failed = self.all_steps(), []
    for step in reversed(steps):
      try:
        state, meta = self.restore(step, abstract_state, data_iter)
      except Exception as e:  # pylint: disable=broad-except
        reason = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:300]}"
        logging.warning("Checkpoint at step %d is unreadable (%s); falling "
                        "back to an older one.", step, reason)
        failed.append((step, reason))
        continue
      if failed:
        self._quarantine([s for s, _ in failed])
        logging.warning("Restored step %d after %d unreadable newer "
                        "checkpoint(s) %s.", step, len(failed),
                        [s for s, _ in failed])
      return state, meta, step
    if failed:
      raise NoReadableCheckpointError(
          f"none of the {len(failed)} checkpoints in {self.directory} could be "
          f"restored (newest, step {failed[0][0]}: {failed[0][1]}); move them "
          "away to start from scratch")
    return None, {}, None

  def _quarantine(self, steps):
    if jax.process_index() == 0:
      target = os.path.join(self.directory, UNREADABLE_DIR)
      fileio.makedirs(target)
      stamp = time.strftime("%Y%m%d-%H%M%S")
      for step in steps:
        dest = os.path.join(target, f"{step}-{stamp}")
        fileio.rename(os.path.join(self.directory, str(step)), dest)
        logging.warning("Moved unreadable checkpoint %d to %s.", step, dest)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      multihost_utils.sync_global_devices("cvlg_jax:quarantine_checkpoints")
    self._manager.reload()

  def reached_preemption(self, step: int) -> bool:
    """True on every host at the same step once any host got a preemption
    notice (JAX's preemption sync manager; False when single-process)."""
    return self._manager.reached_preemption(step)

  def wait(self):
    """Blocks until every async save has committed."""
    self._manager.wait_until_finished()

  def close(self):
    """Waits for the saves and for the start-up cleanup of a crashed save's
    temporary directories: Orbax (0.12) runs that cleanup in a thread that
    its own ``close`` does not join, so a process that exits right after
    (a refused resume, exit 4) printed that thread's traceback."""
    self._manager.wait_until_finished()
    await_cleanup = getattr(self._manager, "_maybe_await_cleanup_tmp_directory", None)
    if await_cleanup is not None:
      await_cleanup()
    self._manager.close()


def abstract_like(tree, shardings):
  """ShapeDtypeStructs carrying the target shardings, for restore."""
  return jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
      tree, shardings)


# ------------------------------------------------------ weights-only access ---
# The ``state`` item of a step directory holds a TrainState (training) or just
# {"params", "model_state"} (``cvlg_jax.pretrained import``). These read and
# write the weights of either without knowing the rest of the state, for
# ``train.init_from``, the eval CLI and the export CLI.

WEIGHT_FIELDS = ("params", "model_state")


def find_step_dir(path: str) -> str:
  """``path`` if it is a step directory (``.../<step>/state``), else the
  newest committed step under ``path/checkpoints`` (a workdir)."""
  path = fileio.absolute(path)
  if fileio.exists(os.path.join(path, "state")):
    return path
  root = os.path.join(path, "checkpoints")
  # Orbax renames a step's temporary directory to its number on commit.
  steps = sorted(int(d) for d in os.listdir(root) if d.isdigit()) if (
      fileio.isdir(root)) else []
  if not steps:
    raise FileNotFoundError(f"no committed checkpoint under {root}")
  return os.path.join(root, str(steps[-1]))


def save_weights(step_dir: str, params, model_state=None) -> None:
  """Writes ``step_dir/state`` = {"params", "model_state"}; blocks until committed."""
  tree = {"params": params}
  if model_state:
    tree["model_state"] = model_state
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(os.path.join(fileio.absolute(step_dir), "state"), tree)
  checkpointer.wait_until_finished()


def _state_tree_metadata(step_dir: str) -> dict:
  # The item's handler, not a Checkpointer: a CheckpointManager item has no
  # step metadata file of its own (a Checkpointer warns it is missing).
  path = epath.Path(fileio.absolute(step_dir)) / "state"
  handler = ocp.PyTreeCheckpointHandler()
  try:
    return handler.metadata(path).tree
  finally:
    handler.close()


def weights_metadata(step_dir: str) -> dict:
  """{"params": tree, "model_state": tree or None} of ArrayMetadata (shape,
  dtype), read from the checkpoint's metadata without loading any array."""
  path = os.path.join(fileio.absolute(step_dir), "state")
  tree = _state_tree_metadata(step_dir)
  if "params" not in tree:
    raise ValueError(f"{path} holds no params (keys: {', '.join(sorted(tree))})")
  return {k: tree.get(k) or None for k in WEIGHT_FIELDS}


def is_weights_only(step_dir: str) -> bool:
  """True for an imported checkpoint (no optimizer state to resume from)."""
  return "opt_state" not in _state_tree_metadata(step_dir)


def restore_weights(step_dir: str, target: dict | None = None) -> dict:
  """{"params", "model_state"} of a step directory.

  ``target`` (ShapeDtypeStructs with shardings, the same two keys) restores
  into that layout; without it the arrays come back as host numpy arrays.
  Only these two fields are read: optimizer state, RNG and EMA are skipped.
  """
  path = epath.Path(fileio.absolute(step_dir)) / "state"
  meta = weights_metadata(step_dir)
  if target is None:
    item = {k: v for k, v in meta.items() if v is not None}
    restore_args = jax.tree.map(
        lambda _: ocp.RestoreArgs(restore_type=np.ndarray), item)
  else:
    item = {k: v for k, v in target.items() if v is not None}
    restore_args = ocp.checkpoint_utils.construct_restore_args(item)
  handler = ocp.PyTreeCheckpointHandler()
  try:
    restored = handler.restore(path, args=ocp.args.PyTreeRestore(
        item=item, restore_args=restore_args, partial_restore=True))
  finally:
    handler.close()
  return {k: restored.get(k) for k in WEIGHT_FIELDS}
