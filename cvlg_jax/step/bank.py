"""Per-example embedding bank: PSD's "model of the previous epoch" teacher.

PS-KD (Kim et al. 2021), which PSD builds on, distils from the predictions
the model made for an example the last time it saw it. For a contrastive
model those predictions are the example's image and text embeddings: keep
them in a bank indexed by a stable example id (``example_id``, carried by the
data pipeline), and the teacher logits of a batch are

    t_ij = s * bank_image[id_i] . bank_text[id_j]

with s the current logit scale. That costs no forward pass (the student's
embeddings of this step are written back for next time) and, unlike the
same-pass teacher at T = 1, the targets differ from the student's softmax, so
they carry gradient (docs/design.md, "Teachers").

Layout: rows = examples, sharded over every device like the batch, so the
bank's memory is split evenly over the slice; ``bytes_per_device`` says how
much. One [rows, 2 d] array holds both embeddings (row i = image_i | text_i):
TPUs tile an array's last dimension in 128 lanes, so a [rows, 64] array gets
the column-major layout (rows in the lanes) and XLA:TPU copies the whole bank
into a row-major temporary around every row gather and scatter (two copies of
the bank per step, measured AOT for v5e and v4); [rows, 128] and wider
(2 d % 128 == 0: every model in models/registry.py) stays row-major and is
read and updated in place on TPU as on CPU.

Lookups and updates run in ``shard_map``: each device all-gathers the
batch's ids, serves the rows it holds, and a ``psum_scatter`` returns every
device the rows of its own examples (lookup); the new embeddings are
all-gathered and each device scatters the ones it owns (update). Both move
B x d values in the bank's dtype per device, a fraction of what the loss
already moves.

An example not yet seen has ``seen_step == 0``: the loss gives its row the
one-hot target and its column no teacher mass (``losses.Teacher.valid``).
The bank is part of the train state, so it is checkpointed and restored with
it and a resumed run continues bitwise.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import flax
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from cvlg_jax.step import sharding

DTYPES = {"bfloat16": jnp.bfloat16, "float32": jnp.float32}
# How each dtype is stored. bfloat16 embeddings are kept as their uint16 bit
# patterns: XLA's CPU scatter has no bfloat16 kernel and rewrites the whole
# operand on every update (measured 224 ms vs 0.03 ms for 512 rows of a
# 1M x 64 bank); an integer scatter updates in place on every backend (XLA:TPU
# too, given a lane-dense row: see the module docstring), and a bitcast of the
# rows read back is free.
_STORAGE = {"bfloat16": jnp.uint16, "float32": jnp.float32}


class Bank(flax.struct.PyTreeNode):
  """Embeddings (``bank_dtype`` values, bfloat16 as uint16 bits) by example id."""
  # [rows, 2 d]: each example's image embedding then its text embedding, as
  # the model made them when it last saw the example (one array: see above).
  embeddings: jax.Array
  seen_step: jax.Array   # [rows] int32: 1 + the step that wrote it; 0 = never

  @property
  def dim(self) -> int:
    return self.embeddings.shape[-1] // 2

  @property
  def image(self) -> jax.Array:
    """[rows, d] stored image embeddings (a sliced copy, for inspection)."""
    return self.embeddings[:, :self.dim]

  @property
  def text(self) -> jax.Array:
    """[rows, d] stored text embeddings (a sliced copy, for inspection)."""
    return self.embeddings[:, self.dim:]


class BankRows(NamedTuple):
  """The bank's rows of one batch (what :func:`lookup` returns)."""
  image: jax.Array       # [B, d] float32
  text: jax.Array        # [B, d] float32
  seen_step: jax.Array   # [B] int32; 0 = never stored


def _encode(x, storage):
  """float32 embeddings -> storage (bfloat16 bits for uint16)."""
  if storage == jnp.uint16:
    return jax.lax.bitcast_convert_type(x.astype(jnp.bfloat16), jnp.uint16)
  return x.astype(storage)


def _decode(x):
  """Stored rows -> float32 embeddings."""
  if x.dtype == jnp.uint16:
    x = jax.lax.bitcast_convert_type(x, jnp.bfloat16)
  return x.astype(jnp.float32)


def num_rows(num_examples: int, num_devices: int) -> int:
  """Bank rows: the data set size rounded up to a multiple of the devices."""
  return math.ceil(num_examples / num_devices) * num_devices


def bytes_per_device(num_examples: int, dim: int, dtype: str,
                     num_devices: int) -> int:
  """Memory of each device's share: rows/D x (2 d x itemsize + 4)."""
  per_row = 2 * dim * np.dtype(DTYPES[dtype]).itemsize + 4
  return num_rows(num_examples, num_devices) // num_devices * per_row


def zeros(num_examples: int, dim: int, dtype: str, num_devices: int) -> Bank:
  """An empty bank (call under ``jit`` with :func:`shardings` as outputs)."""
  rows = num_rows(num_examples, num_devices)
  return Bank(embeddings=jnp.zeros((rows, 2 * dim), _STORAGE[dtype]),
              seen_step=jnp.zeros((rows,), jnp.int32))


def shardings(mesh) -> Bank:
  """Rows over every device, in the batch's order (as
  ``sharding.state_shardings`` lays out the train state's ``bank``)."""
  rows = sharding.batch_sharding(mesh)
  return Bank(embeddings=rows, seen_step=rows)


def _local_rows(ids, block_rows):
  """Which of the global ``ids`` this device's block holds, and where."""
  local = ids - jax.lax.axis_index(sharding.BATCH_AXES) * block_rows
  here = (local >= 0) & (local < block_rows)
  return here, local


def _gather(x):
  return jax.lax.all_gather(x, sharding.BATCH_AXES, axis=0, tiled=True)


def lookup(bank: Bank, ids, mesh) -> BankRows:
  """:class:`BankRows` (image [B, d], text [B, d], seen_step [B]) of the ids,
  embeddings in float32, sharded like the batch (``ids``: int32 [B], rows
  over the devices). ``seen_step`` 0 means the example was never stored."""
  axes, rows = sharding.BATCH_AXES, P(sharding.BATCH_AXES)

  def local(embeddings, seen_step, ids):
    here, at = _local_rows(_gather(ids), embeddings.shape[0])
    at = jnp.where(here, at, 0)
    # Exactly one device holds each id: the others contribute zeros.
    take = lambda t: jnp.where(here.reshape(-1, *[1] * (t.ndim - 1)), t[at], 0)
    scatter = lambda x: jax.lax.psum_scatter(x, axes, scatter_dimension=0,
                                             tiled=True)
    both = _decode(scatter(take(embeddings)))
    d = embeddings.shape[1] // 2
    return BankRows(both[:, :d], both[:, d:], scatter(take(seen_step)))

  return jax.shard_map(local, mesh=mesh, in_specs=(rows, rows, rows),
                       out_specs=BankRows(rows, rows, rows))(
                           bank.embeddings, bank.seen_step, ids)


def last_occurrence(ids):
  """Bool [B]: True for the last row of each distinct id (a batch that spans
  an epoch boundary can hold an example twice; one write must win, the same
  one on every mesh)."""
  order = jnp.argsort(ids, stable=True)
  sorted_ids = ids[order]
  last = jnp.concatenate([sorted_ids[1:] != sorted_ids[:-1],
                          jnp.ones((1,), bool)])
  return jnp.zeros(ids.shape, bool).at[order].set(last)


def update(bank: Bank, ids, image_emb, text_emb, step, mesh,
           skip=None) -> Bank:
  """Writes this step's (student) embeddings of the batch into the bank.

  ``skip``: optional bool scalar; when True no row is written and the bank
  comes back as it was (a rejected step, ``train.skip_nonfinite_steps``).
  The mask drops the batch's writes instead of selecting between the old and
  the new bank, so the bank is still updated in place (a ``where`` over the
  whole bank would keep both alive: one more copy of it per step).
  """
  rows = P(sharding.BATCH_AXES)
  storage = bank.embeddings.dtype
  skip = jnp.zeros((), bool) if skip is None else jnp.asarray(skip, bool)

  def local(embeddings, seen_step, ids, new_image, new_text, step, skip):
    ids = _gather(ids)
    here, at = _local_rows(ids, embeddings.shape[0])
    # Rows another device owns (or a duplicate's earlier copy, or every row
    # of a skipped step) go out of bounds and are dropped by the scatter.
    write = here & last_occurrence(ids) & ~skip
    at = jnp.where(write, at, embeddings.shape[0])
    put = lambda t, v: t.at[at].set(v, mode="drop")
    new = _encode(jnp.concatenate([new_image, new_text], axis=1), storage)
    return (put(embeddings, _gather(new)),
            put(seen_step, jnp.broadcast_to(step + 1, ids.shape).astype(jnp.int32)))

  embeddings, seen_step = jax.shard_map(
      local, mesh=mesh, in_specs=(rows, rows, rows, rows, rows, P(), P()),
      out_specs=(rows, rows))(
          bank.embeddings, bank.seen_step, ids,
          jax.lax.stop_gradient(image_emb), jax.lax.stop_gradient(text_emb),
          jnp.asarray(step, jnp.int32), skip)
  return Bank(embeddings=embeddings, seen_step=seen_step)
