"""Contrastive losses (CLIP / PSD softmax and SigLIP sigmoid) as pure functions.

Every variant is a sum of per-row terms for query rows i against all N key
columns j, with logits x_ij = s q_i.k_j + b (b = 0 for softmax) and a teacher
P_i = sg(softmax(t_i / T)) (t = x for the self teacher, another model's
logits otherwise: the EMA copy, the embedding bank), weight w_i = alpha * m_i:

    softmax:  loss_i = lse_j x_ij            - (1 - w_i) x_ii - w_i <P_i, x_i>
    sigmoid:  loss_i = sum_j softplus(x_ij)  - (1 - w_i) x_ii - w_i <P_i, x_i>

The first is the soft-target cross entropy with targets (1 - w_i) e_i + w_i P_i
(docs/design.md §1); the second is SigLIP's -sum_j [y log sig(x) + (1-y) log
sig(-x)] with the same mixed labels y_ij = (1 - w_i) 1[i=j] + w_i P_ij, i.e.
PSD moves label mass from the positive onto the teacher's soft positives, and
every row of labels still sums to one. w = 0 gives InfoNCE and SigLIP exactly.
Both directions (i2t rows, t2i rows) are averaged, so for SigLIP without
distillation the result is its usual sum over all pairs divided by N.

Only per-row statistics need the N columns (``RowStats``); the diagonal
x_ii is the local pair's dot product. They come from one of two kernels: the
dense one here (all n x N logits at once, differentiated by autodiff: the
reference), or the streamed one of :mod:`cvlg_jax.losses.streamed`
(``chunk_size > 0``; O(n x chunk) memory, ring of devices).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from cvlg_jax.losses import streamed
from cvlg_jax.losses.streamed import RowStats, TeacherKeys

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


class LossInputs(NamedTuple):
  """What the loss takes besides the embeddings and the logit scale/bias."""
  alpha: Any                   # the current PSD weight (scalar)
  mask: Any                    # bool [N]: rows that get soft targets
  temperature: Any = 1.0       # teacher temperature T
  teacher: Teacher | None = None


class LossSpec(NamedTuple):
  """``loss.name`` parsed: the row kernel and whether PSD distils."""
  kind: str        # softmax | sigmoid
  distills: bool

  @property
  def label(self) -> str:
    return {("softmax", False): "CLIP", ("softmax", True): "PSD",
            ("sigmoid", False): "SigLIP", ("sigmoid", True): "SigLIP + PSD"}[self]


# psd = CLIP + PSD soft targets; siglip = sigmoid loss (learned bias);
# siglip_psd = SigLIP with PSD soft labels.
LOSS_NAMES = {"clip": LossSpec("softmax", False), "psd": LossSpec("softmax", True),
              "siglip": LossSpec("sigmoid", False),
              "siglip_psd": LossSpec("sigmoid", True)}


def parse_loss_name(name: str) -> LossSpec:
  """The one place the four ``loss.name`` strings are interpreted."""
  if name not in LOSS_NAMES:
    raise ValueError(f"loss.name={name!r} is unknown; allowed: "
                     f"{', '.join(LOSS_NAMES)}")
  return LOSS_NAMES[name]


def _row_terms(kind, x):
  if kind == "softmax":
    return jax.nn.logsumexp(x, axis=-1)
  return jnp.sum(jax.nn.softplus(x), axis=-1)


def _dense_stats(kind, distill, qs, keys, bias, diag, temperature,
                 teacher: TeacherKeys | None):
  """All n x N logits at once; ``teacher`` None is the student itself (self);
  its key bias is 0, or _MASKED for columns without a teacher."""
  x = qs @ keys.T + bias
  t = (_sg(x) if teacher is None
       else teacher.scaled_queries @ teacher.keys.T + teacher.key_bias)
  off = jnp.arange(keys.shape[0])[None, :] != diag[:, None]
  maxneg = jnp.max(jnp.where(off, t, -jnp.inf), axis=-1)
  zero = jnp.zeros_like(maxneg)
  if not distill:
    return RowStats(_row_terms(kind, x), zero, zero, maxneg)
  t_lse = jax.nn.logsumexp(t / temperature, axis=-1)
  p = jnp.exp(t / temperature - t_lse[:, None])
  return RowStats(_row_terms(kind, x), jnp.sum(p * x, axis=-1), t_lse, maxneg)


def _row_sums(stats, pos, t_pos, weight, mask, valid, temperature, distill):
  """Per-row loss and diagnostics from the statistics, summed over rows.

  ``mask`` is the distilled subset, already restricted to ``valid`` rows (those
  with a teacher); ``weight`` = alpha * mask.
  """
  clip = stats.row_term - pos
  if distill:
    loss = stats.row_term - (1 - weight) * pos - weight * stats.teacher_mean_logit
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


class _Directions(NamedTuple):
  """Static choices of :func:`_both_directions` (hashable)."""
  kind: str                     # softmax | sigmoid
  distill: bool                 # PSD soft targets (else plain CLIP / SigLIP)
  chunk: int                    # 0 = dense; else the streamed kernel's chunk
  unit_temperature: bool = False  # caller guarantees T = 1 (see streamed.py)
  axis: tuple | None = None     # inside shard_map: the batch's mesh axes
  size: int = 1                 # devices over those axes


def _teacher_keys(teacher: Teacher | None, n):
  """(valid [n], teacher logit of each row's pair, per-direction TeacherKeys)."""
  if teacher is None:
    return jnp.ones((n,), bool), None, (None, None)
  # The teacher is a constant here, whatever the caller passes: the dense
  # path must not differentiate into it (the streamed one never does).
  t_img, t_txt, ts = map(_sg, (teacher.image_emb, teacher.text_emb,
                               teacher.logit_scale))
  t_pos = ts * jnp.sum(t_img * t_txt, axis=-1)
  if teacher.valid is None:  # zeros_like: varying over the mesh like t_pos
    valid, key_bias = jnp.ones((n,), bool), jnp.zeros_like(t_pos)
  else:
    valid = teacher.valid
    key_bias = jnp.where(valid, 0.0, _MASKED).astype(jnp.float32)
  return valid, t_pos, (TeacherKeys(ts * t_img, t_txt, key_bias),
                        TeacherKeys(ts * t_txt, t_img, key_bias))


def _both_directions(img, txt, scale, bias, inputs: LossInputs, spec: _Directions):
  """i2t rows (local images vs all texts) + t2i rows (local texts vs images).

  With ``spec.axis`` set this runs inside ``shard_map``: dense gathers the
  other modality, streamed passes it round the ring.
  """
  n, axis = img.shape[0], spec.axis
  temperature = inputs.temperature
  pos = scale * jnp.sum(img * txt, axis=-1) + bias
  valid, t_pos, teacher_keys = _teacher_keys(inputs.teacher, n)
  if t_pos is None:
    t_pos = _sg(pos)
  mask = inputs.mask & valid
  weight = inputs.alpha * mask.astype(jnp.float32)
  gather = ((lambda x: jax.lax.all_gather(x, axis, axis=0, tiled=True))
            if axis else (lambda x: x))
  offset = jax.lax.axis_index(axis) * n if axis else 0
  total = {k: 0.0 for k in _SUM_KEYS}
  for queries, keys, t in ((img, txt, teacher_keys[0]), (txt, img, teacher_keys[1])):
    if spec.chunk:
      # The (replicated) bias joins per-device values in the kernel's carry.
      b = jax.lax.pcast(bias, axis, to="varying") if axis else bias
      kernel = streamed.KernelSpec(
          spec.kind, spec.distill,
          shared_softmax=(spec.distill and spec.unit_temperature and t is None
                          and spec.kind == "softmax"),
          chunk=spec.chunk, axis=axis, size=spec.size)
      stats = streamed.row_stats(kernel, scale * queries, keys, b, temperature, t)
    else:
      t = None if t is None else t._replace(keys=gather(t.keys),
                                            key_bias=gather(t.key_bias))
      stats = _dense_stats(spec.kind, spec.distill, scale * queries, gather(keys),
                           bias, offset + jnp.arange(n), temperature, t)
    sums = _row_sums(stats, pos, t_pos, weight, mask, valid, temperature,
                     spec.distill)
    total = {key: total[key] + sums[key] for key in _SUM_KEYS}
  return total


def _finalize(sums, num_rows):
  """Row sums of both directions -> means (the loss is the ½(i2t + t2i) mean)."""
  metrics = {k: v / (2 * num_rows) for k, v in sums.items()}
  return metrics.pop("loss"), metrics


def _check(kind, logit_bias, unit_temperature, temperature):
  if kind not in KINDS:
    raise ValueError(f"loss kind must be one of {KINDS}, got {kind!r}")
  if kind == "sigmoid" and logit_bias is None:
    raise ValueError("the sigmoid (SigLIP) loss needs logit_bias")
  if (unit_temperature and isinstance(temperature, (int, float))
      and temperature != 1):
    raise ValueError(f"unit_temperature=True but the teacher temperature is "
                     f"{temperature}")
  return jnp.float32(0.0) if logit_bias is None else logit_bias


def contrastive_loss(image_emb, text_emb, logit_scale, *, alpha=0.0,
                     distill_mask=None, teacher_temperature=1.0, teacher=None,
                     logit_bias=None, kind="softmax", chunk_size=0,
                     distill=True, unit_temperature=False):
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
    unit_temperature: the caller guarantees T = 1; the streamed kernel then
      shares the student's softmax with the self teacher (same result).
  Returns:
    (loss, metrics) with metrics averaged over both directions.
  """
  bias = _check(kind, logit_bias, unit_temperature, teacher_temperature)
  n = image_emb.shape[0]
  if distill_mask is None:
    distill_mask = jnp.ones((n,), bool)
  inputs = LossInputs(alpha, distill_mask, teacher_temperature, teacher)
  spec = _Directions(kind, distill, chunk_size, unit_temperature)
  return _finalize(_both_directions(image_emb, text_emb, logit_scale, bias,
                                    inputs, spec), n)


def sharded_contrastive_loss(mesh, batch_axes=("data", "fsdp"), *,
                             kind="softmax", chunk_size=0, distill=True,
                             unit_temperature=False):
  """The same loss with rows sharded over ``batch_axes`` of ``mesh``.

  Dense: each device gathers the other modality (``all_gather(tiled=True)``,
  whose transpose is a reduce-scatter) and computes its n x N logits; memory
  O(n N). Streamed (``chunk_size``): ring passes, memory O(n (chunk + d)).
  Each device sums its rows' terms and they are ``psum``med.
  Returns ``fn(image_emb, text_emb, logit_scale, inputs: LossInputs,
  logit_bias=None) -> (loss, metrics)``. Embeddings, ``inputs.mask`` and the
  teacher's arrays must be sharded rows-over-``batch_axes``; scalars
  replicated. ``unit_temperature=True`` (the caller guarantees T = 1) lets the
  streamed PSD kernel reuse the student's softmax as the self teacher's, at
  CLIP's cost.
  """
  rows = P(batch_axes)
  size = 1
  for a in batch_axes:
    size *= mesh.shape[a]
  spec = _Directions(kind, distill, chunk_size, unit_temperature,
                     axis=batch_axes, size=size)

  def fn(image_emb, text_emb, logit_scale, inputs: LossInputs,
         logit_bias=None):
    bias = _check(kind, logit_bias, unit_temperature, inputs.temperature)
    teacher = inputs.teacher
    inputs = inputs._replace(alpha=jnp.asarray(inputs.alpha, jnp.float32),
                             temperature=jnp.asarray(inputs.temperature,
                                                     jnp.float32))
    input_specs = LossInputs(
        alpha=P(), mask=rows, temperature=P(),
        teacher=None if teacher is None else Teacher(
            rows, rows, P(), None if teacher.valid is None else rows))

    def local(img, txt, scale, bias, inputs):
      sums = _both_directions(img, txt, scale, bias, inputs, spec)
      return jax.lax.psum(sums, batch_axes)

    sums = jax.shard_map(
        local, mesh=mesh, in_specs=(rows, rows, P(), P(), input_specs),
        out_specs=P())(image_emb, text_emb, logit_scale, bias, inputs)
    return _finalize(sums, image_emb.shape[0])

  return fn
