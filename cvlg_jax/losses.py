"""Contrastive losses (CLIP / PSD softmax and SigLIP sigmoid) as pure functions.

Every variant is a sum of per-row terms for query rows i against all N key
columns j, with logits x_ij = s q_i.k_j + b (b = 0 for softmax) and a teacher
P_i = sg(softmax(t_i / T)) (t = x for the self teacher, the EMA model's logits
otherwise), weight w_i = alpha * m_i:

    softmax:  loss_i = lse_j x_ij            - (1 - w_i) x_ii - w_i <P_i, x_i>
    sigmoid:  loss_i = sum_j softplus(x_ij)  - (1 - w_i) x_ii - w_i <P_i, x_i>

The first is the soft-target cross entropy with targets (1 - w_i) e_i + w_i P_i
(docs/design.md §1); the second is SigLIP's -sum_j [y log sig(x) + (1-y) log sig(-x)]
with the same mixed labels y_ij = (1 - w_i) 1[i=j] + w_i P_ij, i.e. PSD moves
label mass from the positive onto the teacher's soft positives, and every row
of labels still sums to one. w = 0 gives InfoNCE and SigLIP exactly. Both
directions (i2t rows, t2i rows) are averaged, so for SigLIP without
distillation the result is its usual sum over all pairs divided by N.

Only per-row statistics need the N columns (:class:`_Stats`); the diagonal
x_ii is the local pair's dot product. They come from one of two kernels:
  * dense: the n x N logits at once, differentiated by autodiff (reference);
  * streamed (``chunk_size > 0``): the columns in chunks with running
    log-sum-exps and an online teacher mean (flash-attention style, so one
    pass serves PSD too; docs/design.md §3), and a custom VJP that
    recomputes each chunk, so forward *and* backward hold O(n x chunk)
    logits. Sharded, the key blocks travel round a ring of devices
    (``ppermute``) instead of being all-gathered, and in the backward pass each
    block's gradient travels with it back to its owner: no device ever holds
    N x d embeddings either.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

KINDS = ("softmax", "sigmoid")
# Per-row quantities summed over rows; divided by the row count at the end.
_SUM_KEYS = ("loss", "clip_loss", "positive_mass", "hardest_negative_mass",
             "teacher_top1_agreement", "distilled")
_sg = jax.lax.stop_gradient


# Teacher logit of a column the teacher has no embedding for (a bank row never
# filled): finite, so running maxima and their differences never turn NaN,
# yet exp(_MASKED / T - lse) underflows to exactly 0 for any sane T.
_MASKED = -1e9


class Teacher(NamedTuple):
  """Another model's embeddings of the batch (EMA copy, embedding bank);
  ``teacher=None`` means the student's own logits (self).

  ``valid`` (bool [N], optional) marks the pairs the teacher has embeddings
  for: an invalid pair's column gets no teacher mass and its row falls back to
  the one-hot target. All fields are constants to the loss (stop-gradient).
  """
  image_emb: jax.Array
  text_emb: jax.Array
  logit_scale: jax.Array
  valid: jax.Array | None = None


class _Stats(NamedTuple):
  """Per-row statistics over all key columns j of a query row i."""
  a: jax.Array         # lse_j x_ij (softmax) | sum_j softplus(x_ij) (sigmoid)
  b: jax.Array         # sum_j P_ij x_ij (0 without distillation)
  t_lse: jax.Array     # lse_j t_ij / T (no gradient)
  t_maxneg: jax.Array  # max_{j != i} t_ij (no gradient)


def _row_terms(kind, x):
  if kind == "softmax":
    return jax.nn.logsumexp(x, axis=-1)
  return jnp.sum(jax.nn.softplus(x), axis=-1)


def _dense_stats(kind, distill, qs, keys, bias, diag, temperature, teacher):
  """All n x N logits at once; ``teacher`` = (s_t q_t, k_t, key bias) or None
  (self); the key bias is 0, or _MASKED for columns without a teacher."""
  x = qs @ keys.T + bias
  t = _sg(x) if teacher is None else teacher[0] @ teacher[1].T + teacher[2]
  off = jnp.arange(keys.shape[0])[None, :] != diag[:, None]
  maxneg = jnp.max(jnp.where(off, t, -jnp.inf), axis=-1)
  zero = jnp.zeros_like(maxneg)
  if not distill:
    return _Stats(_row_terms(kind, x), zero, zero, maxneg)
  t_lse = jax.nn.logsumexp(t / temperature, axis=-1)
  p = jnp.exp(t / temperature - t_lse[:, None])
  return _Stats(_row_terms(kind, x), jnp.sum(p * x, axis=-1), t_lse, maxneg)


def _ring(axis, size):
  """Passes a block to the next device on ``axis`` (identity on one device)."""
  if axis is None or size == 1:
    return lambda x: x
  perm = [(i, (i + 1) % size) for i in range(size)]
  return lambda x: jax.tree.map(lambda y: jax.lax.ppermute(y, axis, perm), x)


def _chunks(k, chunk):
  """[n, ...] -> [n / c, c, ...] with c = min(chunk, n)."""
  n = k.shape[0]
  c = min(chunk, n)
  if n % c:
    raise ValueError(f"loss.chunk_size={chunk} must divide the {n} key rows "
                     "each device holds (global batch / devices)")
  return k.reshape(n // c, c, *k.shape[1:]), c


def _teacher_chunks(tkb, chunk):
  """Teacher key block (k_t, key bias) in chunks, or None (self teacher)."""
  return None if tkb is None else jax.tree.map(lambda a: _chunks(a, chunk)[0], tkb)


def _stream_forward(kind, distill, shared, chunk, axis, size, qs, k, bias,
                    temperature, teacher):
  """Streams key blocks (ring steps) and chunks (within a block) past ``qs``.

  ``shared``: the teacher is the student's own softmax (self teacher, T = 1,
  softmax loss), so P needs no exponentials of its own.
  """
  n = qs.shape[0]
  rows = jnp.arange(n)
  vary = ((lambda v: jax.lax.pcast(v, axis, to="varying")) if axis and size > 1
          else (lambda v: v))
  ninf, zero = vary(jnp.full((n,), -jnp.inf)), vary(jnp.zeros((n,)))
  ring = _ring(axis, size)

  def chunk_step(carry, xs):
    kc, tkc, start, first_block = xs
    x = qs @ kc.T + bias
    t = x if teacher is None else teacher[0] @ tkc[0].T + tkc[1]
    diag = first_block & (start + jnp.arange(kc.shape[0])[None, :] == rows[:, None])
    st = dict(carry, maxneg=jnp.maximum(
        carry["maxneg"], jnp.max(jnp.where(diag, -jnp.inf, t), axis=-1)))
    if kind == "softmax":
      m = jnp.maximum(carry["m"], jnp.max(x, axis=-1))
      decay, e = jnp.exp(carry["m"] - m), jnp.exp(x - m[:, None])
      st.update(m=m, s=carry["s"] * decay + jnp.sum(e, axis=-1))
      if shared:
        st.update(wt=carry["wt"] * decay + jnp.sum(e * x, axis=-1))
    else:
      st.update(s=carry["s"] + jnp.sum(jax.nn.softplus(x), axis=-1))
    if distill and not shared:  # online softmax(t / T), its running mean of x
      y = t / temperature
      mt = jnp.maximum(carry["mt"], jnp.max(y, axis=-1))
      decay, e = jnp.exp(carry["mt"] - mt), jnp.exp(y - mt[:, None])
      st.update(mt=mt, st=carry["st"] * decay + jnp.sum(e, axis=-1),
                wt=carry["wt"] * decay + jnp.sum(e * x, axis=-1))
    return st, None

  def block_step(carry, step):
    st, kb, tkb = carry
    kcs, c = _chunks(kb, chunk)
    tkcs = _teacher_chunks(tkb, chunk)
    starts = jnp.arange(kcs.shape[0]) * c
    first = jnp.broadcast_to(step == 0, starts.shape)
    st, _ = jax.lax.scan(chunk_step, st, (kcs, tkcs, starts, first))
    kb, tkb = ring((kb, tkb))
    return (st, kb, tkb), None

  init = dict(s=zero, maxneg=ninf)
  if kind == "softmax":
    init.update(m=ninf)
  if distill:
    init.update(wt=zero) if shared else init.update(mt=ninf, st=zero, wt=zero)
  tk = None if teacher is None else teacher[1:]
  (st, _, _), _ = jax.lax.scan(block_step, (init, k, tk), jnp.arange(size))
  a = st["m"] + jnp.log(st["s"]) if kind == "softmax" else st["s"]
  if not distill:
    return _Stats(a, zero, zero, st["maxneg"])
  if shared:
    return _Stats(a, st["wt"] / st["s"], a, st["maxneg"])
  return _Stats(a, st["wt"] / st["st"], st["mt"] + jnp.log(st["st"]),
                st["maxneg"])


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2, 3, 4, 5))
def _stream_stats(kind, distill, shared, chunk, axis, size, qs, k, bias,
                  temperature, teacher):
  return _stream_forward(kind, distill, shared, chunk, axis, size, qs, k, bias,
                         temperature, teacher)


def _stream_fwd(kind, distill, shared, chunk, axis, size, qs, k, bias,
                temperature, teacher):
  stats = _stream_forward(kind, distill, shared, chunk, axis, size, qs, k, bias,
                          temperature, teacher)
  return stats, (qs, k, bias, temperature, teacher, stats.a, stats.t_lse)


def _stream_bwd(kind, distill, shared, chunk, axis, size, res, ct):
  """dx_ij = g_a,i da_i/dx_ij + g_b,i P_ij, one chunk at a time; dk rides the
  ring with its block and is home after ``size`` steps."""
  qs, k, bias, temperature, teacher, a, t_lse = res
  ga, gb = ct.a, ct.b            # t_lse, t_maxneg carry no gradient
  ring = _ring(axis, size)

  def chunk_step(carry, xs):
    dqs, dbias = carry
    kc, tkc = xs
    x = qs @ kc.T + bias
    if shared:
      g = (ga + gb)[:, None] * jnp.exp(x - a[:, None])
    elif kind == "softmax":
      g = ga[:, None] * jnp.exp(x - a[:, None])
    else:
      g = ga[:, None] * jax.nn.sigmoid(x)
    if distill and not shared:
      t = x if teacher is None else teacher[0] @ tkc[0].T + tkc[1]
      g = g + gb[:, None] * jnp.exp(t / temperature - t_lse[:, None])
    return (dqs + g @ kc, dbias + jnp.sum(g)), g.T @ qs

  def block_step(carry, _):
    dqs, dbias, kb, tkb, dkb = carry
    kcs, _ = _chunks(kb, chunk)
    tkcs = _teacher_chunks(tkb, chunk)
    (dqs, dbias), dks = jax.lax.scan(chunk_step, (dqs, dbias), (kcs, tkcs))
    kb, tkb, dkb = ring((kb, tkb, dkb + dks.reshape(kb.shape)))
    return (dqs, dbias, kb, tkb, dkb), None

  tk = None if teacher is None else teacher[1:]
  init = (jnp.zeros_like(qs), jnp.zeros_like(bias), k, tk, jnp.zeros_like(k))
  (dqs, dbias, _, _, dk), _ = jax.lax.scan(block_step, init, jnp.arange(size))
  return (dqs, dk, dbias, jnp.zeros_like(temperature),
          jax.tree.map(jnp.zeros_like, teacher))


_stream_stats.defvjp(_stream_fwd, _stream_bwd)


def _row_sums(stats, pos, t_pos, weight, mask, valid, temperature, distill):
  """Per-row loss and diagnostics from the statistics, summed over rows.

  ``mask`` is the distilled subset, already restricted to ``valid`` rows (those
  with a teacher); ``weight`` = alpha * mask.
  """
  clip = stats.a - pos
  if distill:
    loss = stats.a - (1 - weight) * pos - weight * stats.b
    # A row without a teacher may have every teacher column masked, where
    # these ratios overflow; its weight is 0, so define them as 0 there.
    p_pos = jnp.where(valid, jnp.exp(t_pos / temperature - stats.t_lse), 0.0)
    p_neg = jnp.where(valid, jnp.exp(stats.t_maxneg / temperature - stats.t_lse),
                      0.0)
    positive_mass, hardest = (1 - weight) + weight * p_pos, weight * p_neg
  else:
    loss, positive_mass, hardest = clip, jnp.ones_like(clip), jnp.zeros_like(clip)
  sums = dict(loss=loss, clip_loss=clip, positive_mass=positive_mass,
              hardest_negative_mass=hardest,
              # Ties count as agreement (argmax picks no favourite among them);
              # a row without a teacher never agrees.
              teacher_top1_agreement=valid & (t_pos >= stats.t_maxneg),
              distilled=mask)
  return {k: jnp.sum(v.astype(jnp.float32)) for k, v in sums.items()}


def _both_directions(img, txt, scale, bias, alpha, mask, temperature, teacher, *,
                     kind, distill, chunk, unit_temperature=False, axis=None,
                     size=1):
  """i2t rows (local images vs all texts) + t2i rows (local texts vs images).

  With ``axis`` set this runs inside ``shard_map``: dense gathers the other
  modality, streamed passes it round the ring. ``unit_temperature``: T is
  statically 1 (lets the streamed kernel share the teacher's softmax).
  """
  n = img.shape[0]
  pos = scale * jnp.sum(img * txt, axis=-1) + bias
  valid = jnp.ones((n,), bool)
  if teacher is None:
    t_pos, t_pairs = _sg(pos), (None, None)
  else:
    # The teacher is a constant here, whatever the caller passes: the dense
    # path must not differentiate into it (the streamed one never does).
    t_img, t_txt, ts = map(_sg, teacher[:3])
    t_pos = ts * jnp.sum(t_img * t_txt, axis=-1)
    if teacher.valid is None:  # zeros_like: varying over the mesh like t_pos
      key_bias = jnp.zeros_like(t_pos)
    else:
      valid = teacher.valid
      key_bias = jnp.where(valid, 0.0, _MASKED).astype(jnp.float32)
    t_pairs = ((ts * t_img, t_txt, key_bias), (ts * t_txt, t_img, key_bias))
  mask = mask & valid
  weight = alpha * mask.astype(jnp.float32)
  gather = ((lambda x: jax.lax.all_gather(x, axis, axis=0, tiled=True))
            if axis else (lambda x: x))
  offset = jax.lax.axis_index(axis) * n if axis else 0
  total = {k: 0.0 for k in _SUM_KEYS}
  for q, k, t in ((img, txt, t_pairs[0]), (txt, img, t_pairs[1])):
    if chunk:
      b = jax.lax.pcast(bias, axis, to="varying") if axis else bias
      shared = distill and unit_temperature and t is None and kind == "softmax"
      stats = _stream_stats(kind, distill, shared, chunk, axis, size, scale * q,
                            k, b, temperature, t)
    else:
      t = None if t is None else (t[0], gather(t[1]), gather(t[2]))
      stats = _dense_stats(kind, distill, scale * q, gather(k), bias,
                           offset + jnp.arange(n), temperature, t)
    sums = _row_sums(stats, pos, t_pos, weight, mask, valid, temperature,
                     distill)
    total = {key: total[key] + sums[key] for key in _SUM_KEYS}
  return total


def _finalize(sums, num_rows):
  """Row sums of both directions -> means (the loss is the ½(i2t + t2i) mean)."""
  metrics = {k: v / (2 * num_rows) for k, v in sums.items()}
  return metrics.pop("loss"), metrics


def _is_one(temperature):
  """T known to be 1 at trace time (a Python number, not a traced value)."""
  return isinstance(temperature, (int, float)) and temperature == 1


def _check(kind, logit_bias):
  if kind not in KINDS:
    raise ValueError(f"loss kind must be one of {KINDS}, got {kind!r}")
  if kind == "sigmoid" and logit_bias is None:
    raise ValueError("the sigmoid (SigLIP) loss needs logit_bias")
  return jnp.float32(0.0) if logit_bias is None else logit_bias


def contrastive_loss(image_emb, text_emb, logit_scale, *, alpha=0.0,
                     distill_mask=None, teacher_temperature=1.0, teacher=None,
                     logit_bias=None, kind="softmax", chunk_size=0,
                     distill=True):
  """Single-device reference on [N, d] embeddings.

  Args:
    image_emb, text_emb: L2-normalised [N, d]; row i of each is a pair.
    logit_scale: the already exponentiated and clamped scale s.
    alpha: current PSD weight; 0 is plain CLIP / SigLIP.
    distill_mask: bool [N], rows that get soft targets; None = every row.
    teacher_temperature: T in softmax(S / T) for the teacher.
    teacher: optional :class:`Teacher` (EMA copy, embedding bank); default is
      the model itself.
    logit_bias: SigLIP's learned bias b (sigmoid only).
    kind: "softmax" (CLIP/PSD) or "sigmoid" (SigLIP).
    chunk_size: 0 = dense; else the streamed kernel, this many keys at a time.
    distill: False skips the teacher entirely (plain CLIP/SigLIP cost).
  Returns:
    (loss, metrics) with metrics averaged over both directions.
  """
  bias = _check(kind, logit_bias)
  n = image_emb.shape[0]
  if distill_mask is None:
    distill_mask = jnp.ones((n,), bool)
  sums = _both_directions(image_emb, text_emb, logit_scale, bias, alpha,
                          distill_mask, teacher_temperature, teacher, kind=kind,
                          distill=distill, chunk=chunk_size,
                          unit_temperature=_is_one(teacher_temperature))
  return _finalize(sums, n)


def sharded_contrastive_loss(mesh, batch_axes=("data", "fsdp"), *,
                             kind="softmax", chunk_size=0, distill=True):
  """The same loss with rows sharded over ``batch_axes`` of ``mesh``.

  Dense: each device gathers the other modality (``all_gather(tiled=True)``,
  whose transpose is a reduce-scatter) and computes its n x N logits; memory
  O(n N). Streamed (``chunk_size``): ring passes, memory O(n (chunk + d)).
  Each device sums its rows' terms and they are ``psum``med.
  Inputs must be sharded rows-over-``batch_axes`` (mask included); the scalar
  inputs replicated. Returns ``fn(image_emb, text_emb, logit_scale, alpha,
  distill_mask, temperature, teacher=None, logit_bias=None) -> (loss,
  metrics)``; a Python ``temperature`` of 1 lets the streamed PSD kernel reuse
  the student's softmax as the (self) teacher's, at CLIP's cost.
  """
  rows = P(batch_axes)
  size = 1
  for a in batch_axes:
    size *= mesh.shape[a]

  def fn(image_emb, text_emb, logit_scale, alpha, distill_mask, temperature,
         teacher=None, logit_bias=None):
    bias = _check(kind, logit_bias)
    teacher_spec = None if teacher is None else Teacher(
        rows, rows, P(), None if teacher.valid is None else rows)

    def local(img, txt, scale, bias, alpha, mask, temp, teacher):
      sums = _both_directions(img, txt, scale, bias, alpha, mask, temp, teacher,
                              kind=kind, distill=distill, chunk=chunk_size,
                              unit_temperature=_is_one(temperature),
                              axis=batch_axes, size=size)
      return jax.lax.psum(sums, batch_axes)

    sums = jax.shard_map(
        local, mesh=mesh,
        in_specs=(rows, rows, P(), P(), P(), rows, P(), teacher_spec),
        out_specs=P())(image_emb, text_emb, logit_scale, bias, alpha,
                       distill_mask, jnp.asarray(temperature, jnp.float32),
                       teacher)
    return _finalize(sums, image_emb.shape[0])

  return fn


def alpha_schedule(step, *, alpha_final, ramp_steps, steps_per_epoch=None):
  """alpha(step) = alpha_T * min(1, progress / ramp_steps).

  With ``steps_per_epoch`` the progress advances per epoch (PS-KD's schedule):
  alpha is constant within an epoch.
  """
  progress = jnp.asarray(step, jnp.float32)
  if steps_per_epoch:
    progress = jnp.floor(progress / steps_per_epoch) * steps_per_epoch
  return alpha_final * jnp.minimum(1.0, progress / max(ramp_steps, 1))


def distill_mask(key, num_rows, fraction, subset="random"):
  """Bool [num_rows] choosing exactly floor(fraction * num_rows) rows.

  Drawn over *global* rows from a key that depends only on (seed, step), so
  every mesh layout distils the same pairs.
  """
  if subset == "all":
    return jnp.ones((num_rows,), bool)
  if subset != "random":
    raise ValueError(f"psd.subset must be 'random' or 'all', got {subset!r}")
  k = int(fraction * num_rows)
  order = jax.random.permutation(key, num_rows)
  return jnp.zeros((num_rows,), bool).at[order[:k]].set(True)
