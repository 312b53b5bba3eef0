"""Each process's share of the global batches: one block of rows of each.

With P processes and global batch B, process p reads rows [p*b, (p+1)*b)
(b = B/P) of every global batch of the one globally shuffled stream, and
nothing else. ``jax.make_array_from_process_local_data`` puts those rows at
the same place of the global array, so the batch a step sees is exactly the
batch a single process with all devices would see, row for row: a run's data
(and with it its PSD distillation mask, which picks rows by position) does
not depend on how many hosts it runs on. A strided share (``ds[p::P]``) is
just as disjoint but interleaves the rows differently for each process count.
"""

from __future__ import annotations

import grain


class BatchBlock(grain.MapDataset):
  """Block ``index`` of ``count`` equal blocks of every ``global_batch``
  consecutive elements of ``parent``: element j here is element
  ``(j // b) * global_batch + index * b + j % b`` there, b = global_batch /
  count. Lazy like any MapDataset: only this block's elements are read (and
  decoded, for maps upstream), and per-element randomness upstream keeps its
  global index."""

  def __init__(self, parent: grain.MapDataset, *, global_batch: int,
               index: int, count: int):
    super().__init__(parent)
    if global_batch % count:
      raise ValueError(f"global batch {global_batch} is not divisible by "
                       f"{count} processes")
    if not 0 <= index < count:
      raise ValueError(f"block index {index} outside [0, {count})")
    self._global, self._index, self._count = global_batch, index, count
    self._block = global_batch // count

  def __len__(self) -> int:
    return len(self._parent) // self._global * self._block

  def parent_index(self, index: int) -> int:
    batch, offset = divmod(index, self._block)
    return batch * self._global + self._index * self._block + offset

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    return self._parent[self.parent_index(index)]

  def __str__(self) -> str:
    return (f"BatchBlock(global_batch={self._global}, index={self._index}, "
            f"count={self._count})")
