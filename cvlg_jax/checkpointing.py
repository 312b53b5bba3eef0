"""Orbax checkpoints of the whole run: train state + Grain iterator state.

One composite checkpoint per saved step under ``WORKDIR/checkpoints/<step>``
with items ``state`` (params, optimizer state, step, RNG — sharded arrays,
saved asynchronously) and ``data`` (the Grain iterator position). Orbax writes
each step to a temporary directory and renames it on commit, and prunes old
steps only after a newer one has committed, so a crash never leaves a
half-written checkpoint that looks complete.
"""

from __future__ import annotations

import os

import grain
import jax
import orbax.checkpoint as ocp
from absl import logging


class Checkpointer:
  """Saves and restores (state, data iterator) pairs; keeps the last ``keep``
  plus every ``keep_period``-th step (0 = none kept permanently)."""

  def __init__(self, directory: str, *, keep: int = 3, keep_period: int = 0,
               async_save: bool = True):
    self.directory = os.path.abspath(directory)
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, keep_period=keep_period or None, create=True,
        enable_async_checkpointing=async_save)
    self._manager = ocp.CheckpointManager(
        self.directory, options=options,
        item_handlers=dict(state=ocp.StandardCheckpointHandler(),
                           data=grain.checkpoint.CheckpointHandler()))

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, state, data_iter, *, force: bool = False) -> bool:
    return self._manager.save(
        step, force=force,
        args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                data=grain.checkpoint.CheckpointSave(data_iter)))

  def restore(self, step: int, abstract_state, data_iter):
    """Restores ``step`` into ``abstract_state``'s shapes/shardings; moves
    ``data_iter`` to the saved position in place."""
    restored = self._manager.restore(
        step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state),
            data=grain.checkpoint.CheckpointRestore(data_iter)))
    return restored.state

  def restore_latest(self, abstract_state, data_iter):
    """(state, step) from the newest readable checkpoint, or (None, None).

    A checkpoint that fails to restore (truncated or missing files) is skipped
    with a warning and the next older one is tried; it is not deleted, so
    nothing is lost if the failure was transient.
    """
    for step in reversed(self.all_steps()):
      try:
        return self.restore(step, abstract_state, data_iter), step
      except Exception as e:  # pylint: disable=broad-except
        logging.warning("Checkpoint at step %d is unreadable (%s: %s); "
                        "falling back to an older one.", step,
                        type(e).__name__, str(e).splitlines()[0][:300])
    return None, None

  def wait(self):
    """Blocks until every async save has committed."""
    self._manager.wait_until_finished()

  def close(self):
    self._manager.wait_until_finished()
    self._manager.close()


def abstract_like(tree, shardings):
  """ShapeDtypeStructs carrying the target shardings, for restore."""
  return jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
      tree, shardings)
