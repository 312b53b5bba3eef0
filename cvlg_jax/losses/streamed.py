"""The streamed kernel of the contrastive losses (``loss.chunk_size > 0``).

A row's loss needs only a few statistics over all N key columns
(:class:`RowStats`); this kernel accumulates them one chunk of columns at a
time, flash-attention style, so forward *and* backward hold O(n x chunk)
logits instead of n x N. Sharded (inside ``shard_map``), the key blocks
travel round a ring of devices (``ppermute``) instead of being all-gathered,
and in the backward pass each block's gradient travels with it back to its
owner: no device ever holds N x d embeddings either. docs/design.md §3.

The teacher (:class:`TeacherKeys`, or None for the student's own logits)
streams alongside the keys. ``shared_softmax``: the
teacher *is* the student's softmax (self teacher, T = 1, softmax loss), so
its statistics reuse the student's exponentials; the caller says so
explicitly (``losses`` takes it from the config), it is not inferred.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp


class RowStats(NamedTuple):
  """Per-row statistics over all key columns j of a query row i."""
  row_term: jax.Array       # lse_j x_ij (softmax) | sum_j softplus(x_ij) (sigmoid)
  teacher_mean_logit: jax.Array  # sum_j P_ij x_ij (0 without distillation)
  t_lse: jax.Array          # lse_j t_ij / T (no gradient)
  t_maxneg: jax.Array       # max_{j != i} t_ij (no gradient)


class TeacherKeys(NamedTuple):
  """A teacher's side of one direction, as the kernels consume it: teacher
  logits t_ij = scaled_queries_i . keys_j + key_bias_j (constants)."""
  scaled_queries: jax.Array  # [n, d] s_t q_t of this device's query rows
  keys: jax.Array            # [n or N, d] k_t, this device's block (or gathered)
  key_bias: jax.Array        # [n or N] 0, or _MASKED where the teacher has no row


class KernelSpec(NamedTuple):
  """The static (hashable) choices of the streamed kernel."""
  kind: str                # softmax | sigmoid
  distill: bool            # compute the teacher's statistics
  shared_softmax: bool     # the teacher is the student's softmax (self, T = 1)
  chunk: int               # key columns per chunk
  axis: tuple | None       # mesh axes the keys ring over (None: one device)
  size: int = 1            # devices on the ring


class Carry(NamedTuple):
  """Running per-row values while the columns stream past (shape [n] each).

  Online softmax: a running maximum and a sum of exponentials taken relative
  to it; when a new chunk raises the maximum, the old sum is rescaled by
  exp(old max - new max). Fields a configuration does not need stay at their
  initial value and are never read.
  """
  row_max: jax.Array             # softmax: max_j x_ij so far
  exp_sum: jax.Array             # softmax: sum_j exp(x_ij - row_max); sigmoid: sum_j softplus(x_ij)
  teacher_max: jax.Array         # max_j t_ij / T so far
  teacher_exp_sum: jax.Array     # sum_j exp(t_ij / T - teacher_max)
  weighted_logit_sum: jax.Array  # sum_j exp(t_ij / T - teacher_max) x_ij (shared: relative to row_max)
  max_negative: jax.Array        # max_{j != i} t_ij so far (the hardest negative)


def ring(axis, size):
  """Passes a block to the next device on ``axis`` (identity on one device)."""
  if axis is None or size == 1:
    return lambda x: x
  perm = [(i, (i + 1) % size) for i in range(size)]
  return lambda x: jax.tree.map(lambda y: jax.lax.ppermute(y, axis, perm), x)


def _chunks(block, chunk):
  """[n, ...] -> ([n / c, c, ...], c) with c = min(chunk, n)."""
  n = block.shape[0]
  c = min(chunk, n)
  if n % c:
    raise ValueError(f"loss.chunk_size={chunk} must divide the {n} key rows "
                     "each device holds (global batch / devices)")
  return block.reshape(n // c, c, *block.shape[1:]), c


def _teacher_chunks(teacher_block, chunk):
  """Teacher key block (keys, key_bias) in chunks, or None (self teacher)."""
  if teacher_block is None:
    return None
  return jax.tree.map(lambda a: _chunks(a, chunk)[0], teacher_block)


def _teacher_logits(x, teacher, teacher_chunk):
  """t for one chunk: the student's logits (self) or s_t q_t . k_t + bias."""
  if teacher is None:
    return x
  keys, key_bias = teacher_chunk
  return teacher.scaled_queries @ keys.T + key_bias


def _teacher_block(teacher):
  """What travels the ring with the keys: (keys, key_bias), or None."""
  return None if teacher is None else (teacher.keys, teacher.key_bias)


def _forward(spec: KernelSpec, qs, key_block, bias, temperature, teacher):
  """Streams key blocks (ring steps) and chunks (within a block) past ``qs``."""
  kind, distill, shared_softmax, chunk, axis, size = spec
  n = qs.shape[0]
  rows = jnp.arange(n)
  # Inside shard_map every carry entry must be "varying" over the mesh axes
  # (it will hold per-device values); constants start out invariant, so
  # pcast them once, or scan rejects the carry's type change.
  vary = ((lambda v: jax.lax.pcast(v, axis, to="varying")) if axis and size > 1
          else (lambda v: v))
  ninf, zero = vary(jnp.full((n,), -jnp.inf)), vary(jnp.zeros((n,)))
  pass_on = ring(axis, size)

  def chunk_step(c: Carry, xs):
    keys, teacher_chunk, start, first_block = xs
    x = qs @ keys.T + bias
    t = _teacher_logits(x, teacher, teacher_chunk)
    # The diagonal (the row's own pair) is in the first ring step's block.
    diag = first_block & (start + jnp.arange(keys.shape[0])[None, :] == rows[:, None])
    c = c._replace(max_negative=jnp.maximum(
        c.max_negative, jnp.max(jnp.where(diag, -jnp.inf, t), axis=-1)))
    if kind == "softmax":
      row_max = jnp.maximum(c.row_max, jnp.max(x, axis=-1))
      rescale, e = jnp.exp(c.row_max - row_max), jnp.exp(x - row_max[:, None])
      c = c._replace(row_max=row_max, exp_sum=c.exp_sum * rescale + jnp.sum(e, axis=-1))
      if shared_softmax:  # P = softmax(x): its weights are these same e
        c = c._replace(weighted_logit_sum=c.weighted_logit_sum * rescale
                       + jnp.sum(e * x, axis=-1))
    else:
      c = c._replace(exp_sum=c.exp_sum + jnp.sum(jax.nn.softplus(x), axis=-1))
    if distill and not shared_softmax:  # online softmax(t / T) and its mean of x
      y = t / temperature
      teacher_max = jnp.maximum(c.teacher_max, jnp.max(y, axis=-1))
      rescale = jnp.exp(c.teacher_max - teacher_max)
      e = jnp.exp(y - teacher_max[:, None])
      c = c._replace(teacher_max=teacher_max,
                     teacher_exp_sum=c.teacher_exp_sum * rescale + jnp.sum(e, axis=-1),
                     weighted_logit_sum=c.weighted_logit_sum * rescale
                     + jnp.sum(e * x, axis=-1))
    return c, None

  def block_step(state, step):
    c, keys, teacher_block = state
    key_chunks, width = _chunks(keys, chunk)
    starts = jnp.arange(key_chunks.shape[0]) * width
    first = jnp.broadcast_to(step == 0, starts.shape)
    c, _ = jax.lax.scan(chunk_step, c, (key_chunks,
                                        _teacher_chunks(teacher_block, chunk),
                                        starts, first))
    keys, teacher_block = pass_on((keys, teacher_block))
    return (c, keys, teacher_block), None

  init = Carry(row_max=ninf, exp_sum=zero, teacher_max=ninf,
               teacher_exp_sum=zero, weighted_logit_sum=zero, max_negative=ninf)
  (c, _, _), _ = jax.lax.scan(
      block_step, (init, key_block, _teacher_block(teacher)),
                              jnp.arange(size))
  a = c.row_max + jnp.log(c.exp_sum) if kind == "softmax" else c.exp_sum
  if not distill:
    return RowStats(a, zero, zero, c.max_negative)
  if shared_softmax:  # the teacher's lse is the student's
    return RowStats(a, c.weighted_logit_sum / c.exp_sum, a, c.max_negative)
  return RowStats(a, c.weighted_logit_sum / c.teacher_exp_sum,
                  c.teacher_max + jnp.log(c.teacher_exp_sum), c.max_negative)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def row_stats(spec: KernelSpec, qs, key_block, bias, temperature,
              teacher: TeacherKeys | None) -> RowStats:
  """:class:`RowStats` of the rows ``qs`` (already scaled by s) against this
  device's keys ``key_block``, ``spec.chunk`` columns at a time; on
  ``spec.axis`` (inside shard_map) the keys of all ``spec.size`` devices pass
  by on the ring."""
  return _forward(spec, qs, key_block, bias, temperature, teacher)


def _fwd(spec, qs, key_block, bias, temperature, teacher):
  stats = _forward(spec, qs, key_block, bias, temperature, teacher)
  return stats, (qs, key_block, bias, temperature, teacher, stats.row_term,
                 stats.t_lse)


def _bwd(spec: KernelSpec, res, ct):
  """dL/dx_ij = g_a,i da_i/dx_ij + g_b,i P_ij, recomputed one chunk at a time;
  each key block's gradient rides the ring with it and is home after
  ``size`` steps."""
  kind, distill, shared_softmax, chunk, axis, size = spec
  qs, key_block, bias, temperature, teacher, a, t_lse = res
  # t_lse and t_maxneg carry no gradient.
  ga, gb = ct.row_term, ct.teacher_mean_logit
  pass_on = ring(axis, size)

  def chunk_step(carry, xs):
    dqs, dbias = carry
    keys, teacher_chunk = xs
    x = qs @ keys.T + bias
    if shared_softmax:
      # a = lse(x) and b = sum_j softmax(x)_j x_j share softmax(x): with P
      # held constant, d(g_a a + g_b b)/dx_j = (g_a + g_b) exp(x_j - a).
      g = (ga + gb)[:, None] * jnp.exp(x - a[:, None])
    elif kind == "softmax":
      g = ga[:, None] * jnp.exp(x - a[:, None])      # d lse / dx = softmax
    else:
      g = ga[:, None] * jax.nn.sigmoid(x)            # d softplus / dx = sigmoid
    if distill and not shared_softmax:
      t = _teacher_logits(x, teacher, teacher_chunk)
      g = g + gb[:, None] * jnp.exp(t / temperature - t_lse[:, None])  # P_ij
    return (dqs + g @ keys, dbias + jnp.sum(g)), g.T @ qs

  def block_step(state, _):
    dqs, dbias, keys, teacher_block, dkeys = state
    key_chunks, _ = _chunks(keys, chunk)
    (dqs, dbias), dk_chunks = jax.lax.scan(
        chunk_step, (dqs, dbias), (key_chunks, _teacher_chunks(teacher_block, chunk)))
    keys, teacher_block, dkeys = pass_on(
        (keys, teacher_block, dkeys + dk_chunks.reshape(keys.shape)))
    return (dqs, dbias, keys, teacher_block, dkeys), None

  init = (jnp.zeros_like(qs), jnp.zeros_like(bias), key_block,
          _teacher_block(teacher), jnp.zeros_like(key_block))
  (dqs, dbias, _, _, dk), _ = jax.lax.scan(block_step, init, jnp.arange(size))
  return (dqs, dk, dbias, jnp.zeros_like(temperature),
          jax.tree.map(jnp.zeros_like, teacher))


row_stats.defvjp(_fwd, _bwd)
