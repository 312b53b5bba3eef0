"""Contrastive losses (CLIP and PSD) as pure functions.

One row-wise kernel, :func:`_row_losses`, serves both the single-device
reference and the sharded training path, so the two cannot drift apart: the
reference calls it with local == global, the sharded path calls it inside
``jax.shard_map`` on each device's rows against the gathered other modality.

PSD (DESIGN §1) per row i with logits S_i, teacher P_i = sg(softmax(S_i / T)),
weight a_i = alpha * m_i:

    target_i = (1 - a_i) e_i + a_i P_i
    loss_i   = lse(S_i) - (1 - a_i) S_ii - a_i <P_i, S_i>

which is the soft-target cross entropy written so that no N x N target matrix
is ever built. alpha = 0 or m = 0 gives CLIP's InfoNCE exactly.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

# Per-row quantities summed over rows; divided by the row count at the end.
_SUM_KEYS = ("loss", "clip_loss", "positive_mass", "hardest_negative_mass",
             "teacher_top1_agreement", "distilled")


class Teacher(NamedTuple):
  """Embeddings of an EMA teacher (DESIGN §1 ablation); None means self."""
  image_emb: jax.Array
  text_emb: jax.Array
  logit_scale: jax.Array


def _row_losses(query, keys, scale, row_offset, alpha, mask, temperature,
                teacher_query=None, teacher_keys=None, teacher_scale=None):
  """Sums of per-row PSD quantities for ``query`` rows against all ``keys``.

  query [n, d] are global rows ``row_offset .. row_offset + n``; keys [N, d].
  """
  logits = scale * (query @ keys.T)                          # [n, N]
  n = query.shape[0]
  diag = row_offset + jnp.arange(n)
  if teacher_query is None:
    teacher_logits = logits
  else:
    teacher_logits = teacher_scale * (teacher_query @ teacher_keys.T)
  teacher = jax.lax.stop_gradient(
      jax.nn.softmax(teacher_logits.astype(jnp.float32) / temperature, axis=-1))
  lse = jax.nn.logsumexp(logits, axis=-1)
  positive = jnp.take_along_axis(logits, diag[:, None], axis=-1)[:, 0]
  teacher_dot = jnp.sum(teacher * logits, axis=-1)
  weight = alpha * mask.astype(logits.dtype)
  loss = lse - (1 - weight) * positive - weight * teacher_dot

  teacher_positive = jnp.take_along_axis(teacher, diag[:, None], axis=-1)[:, 0]
  is_positive = jnp.arange(keys.shape[0])[None, :] == diag[:, None]
  hardest_negative = jnp.max(jnp.where(is_positive, 0.0, teacher), axis=-1)
  sums = dict(
      loss=loss,
      clip_loss=lse - positive,
      positive_mass=(1 - weight) + weight * teacher_positive,
      hardest_negative_mass=weight * hardest_negative,
      teacher_top1_agreement=(jnp.argmax(teacher, axis=-1) == diag),
      distilled=mask,
  )
  return {k: jnp.sum(v.astype(jnp.float32)) for k, v in sums.items()}


def _both_directions(img, txt, img_all, txt_all, scale, offset, alpha, mask,
                     temperature, teacher_local, teacher_all):
  """i2t rows (local images vs all texts) + t2i rows (local texts vs all images)."""
  if teacher_local is None:
    t_i2t = t_t2i = dict()
  else:
    t_i2t = dict(teacher_query=teacher_local.image_emb,
                 teacher_keys=teacher_all.text_emb,
                 teacher_scale=teacher_local.logit_scale)
    t_t2i = dict(teacher_query=teacher_local.text_emb,
                 teacher_keys=teacher_all.image_emb,
                 teacher_scale=teacher_local.logit_scale)
  i2t = _row_losses(img, txt_all, scale, offset, alpha, mask, temperature, **t_i2t)
  t2i = _row_losses(txt, img_all, scale, offset, alpha, mask, temperature, **t_t2i)
  return {k: i2t[k] + t2i[k] for k in _SUM_KEYS}


def _finalize(sums, num_rows):
  """Row sums of both directions -> means (the loss is the ½(i2t + t2i) mean)."""
  metrics = {k: v / (2 * num_rows) for k, v in sums.items()}
  return metrics.pop("loss"), metrics


def contrastive_loss(image_emb, text_emb, logit_scale, *, alpha=0.0,
                     distill_mask=None, teacher_temperature=1.0, teacher=None):
  """Single-device reference: CLIP (alpha=0) or PSD loss on [N, d] embeddings.

  Args:
    image_emb, text_emb: L2-normalised [N, d]; row i of each is a pair.
    logit_scale: the already exponentiated and clamped scale s.
    alpha: current PSD weight; 0 is plain CLIP.
    distill_mask: bool [N], rows that get soft targets; None = every row.
    teacher_temperature: T in softmax(S / T) for the teacher.
    teacher: optional :class:`Teacher` (EMA); default is the model itself.
  Returns:
    (loss, metrics) with metrics averaged over both directions.
  """
  n = image_emb.shape[0]
  if distill_mask is None:
    distill_mask = jnp.ones((n,), bool)
  sums = _both_directions(image_emb, text_emb, image_emb, text_emb, logit_scale,
                          0, alpha, distill_mask, teacher_temperature,
                          teacher, teacher)
  return _finalize(sums, n)


def sharded_contrastive_loss(mesh, batch_axes=("data", "fsdp")):
  """The same loss with rows sharded over ``batch_axes`` of ``mesh``.

  Each device gathers the other modality (``all_gather(tiled=True)``, whose
  transpose is a reduce-scatter, so gradients flow back to their owners),
  computes its local n x N logits in both directions, sums its rows' losses
  and ``psum``s. Memory is O(n N) per device instead of O(N^2).
  Inputs must be sharded rows-over-``batch_axes`` (mask included); the scalar
  inputs replicated. Returns ``fn(image_emb, text_emb, logit_scale, alpha,
  distill_mask, temperature, teacher=None) -> (loss, metrics)``.
  """
  rows = P(batch_axes)

  def local(img, txt, scale, alpha, mask, temperature, teacher):
    gather = lambda x: jax.lax.all_gather(x, batch_axes, axis=0, tiled=True)
    img_all, txt_all = gather(img), gather(txt)
    offset = jax.lax.axis_index(batch_axes) * img.shape[0]
    teacher_all = None
    if teacher is not None:
      teacher_all = Teacher(gather(teacher.image_emb), gather(teacher.text_emb),
                            teacher.logit_scale)
    sums = _both_directions(img, txt, img_all, txt_all, scale, offset, alpha,
                            mask, temperature, teacher, teacher_all)
    return jax.lax.psum(sums, batch_axes)

  def fn(image_emb, text_emb, logit_scale, alpha, distill_mask, temperature,
         teacher=None):
    teacher_spec = None if teacher is None else Teacher(rows, rows, P())
    sums = jax.shard_map(
        local, mesh=mesh,
        in_specs=(rows, rows, P(), P(), rows, P(), teacher_spec),
        out_specs=P())(image_emb, text_emb, logit_scale, alpha, distill_mask,
                       temperature, teacher)
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
