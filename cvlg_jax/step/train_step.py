"""The pure, sharded train step: ``(state, batch) -> (state, metrics)``.

Compiled once with explicit in/out shardings over the mesh and a donated
state; nothing in it touches the host, so the loop (``cvlg_jax.run.loop``)
stays a thin driver. The step always takes the full global batch; gradient
accumulation (``train.grad_accum_steps``) happens inside it
(``step.accumulation``), so the contrastive loss still sees every pair.
Which teacher, which ramp and how many micro-batches come from the
:class:`~cvlg_jax.step.plan.RunPlan`, decided once.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from cvlg_jax import losses
from cvlg_jax.step import bank as bank_lib, freeze as freeze_lib, sharding
from cvlg_jax.step.accumulation import (embed_micro, make_grad_fn, micro_merge,
                                        split_inputs)
from cvlg_jax.step.train_state import (TrainState, forward, logit_params,
                                 normalize_images)


# fold_in constant of the patch-dropout key (the step key itself picks PSD's
# distilled rows).
PATCH_DROPOUT_STREAM = 0xF11


@dataclasses.dataclass(frozen=True)
class TrainStep:
  """``train_step(state, batch) -> (state, metrics)``: the jitted programs
  one training step runs, whatever the teacher.

  ``update`` is the step itself; with the bank teacher ``read_bank`` (a
  separate executable, see :func:`make_train_step`) first fetches the batch's
  bank rows and ``update`` takes them as a third argument; otherwise
  ``read_bank`` is None.
  """
  update: Callable
  read_bank: Callable | None = None
  rows: Any = None      # the batch's sharding (rows over every device)

  def __call__(self, state, batch):
    if self.read_bank is None:
      return self.update(state, batch)
    if "example_id" not in batch:
      raise ValueError("loss.psd.teacher='bank' needs batch['example_id'] "
                       "(the data pipeline adds it)")
    return self.update(state, batch, self.read_bank(state.bank,
                                                    batch["example_id"]))

  def lower(self, state, batch) -> dict:
    """``{name: jax.stages.Lowered}`` of every program, for abstract (or
    concrete) ``state`` and ``batch``; compiles nothing."""
    if self.read_bank is None:
      return {"train_step": self.update.lower(state, batch)}
    rows = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=self.rows),
        jax.eval_shape(self.read_bank, state.bank, batch["example_id"]))
    return {"bank_read": self.read_bank.lower(state.bank, batch["example_id"]),
            "train_step": self.update.lower(state, batch, rows)}


def make_train_step(plan, model, tx, schedule, mesh, state_shardings) -> TrainStep:
  """The :class:`TrainStep` of ``plan``, jit-compiled once (with the bank
  teacher: a jitted bank read, then the jitted step).

  The state buffer is donated; the batch arrives sharded over every device.
  With ``train.skip_nonfinite_steps`` the step reports ``nonfinite`` and
  keeps the old params/optimizer state when the loss or gradient norm is
  NaN/Inf (the step counter still advances).
  """
  config = plan.config
  psd = config.loss.psd
  distill = plan.loss.distills
  # The self teacher at T = 1 is the student's softmax: the streamed kernel
  # may share it (docs/design.md §3).
  loss_fn = losses.sharded_contrastive_loss(
      mesh, kind=plan.loss.kind, chunk_size=config.loss.chunk_size,
      distill=distill, unit_temperature=psd.teacher_temperature == 1.0)
  micro_batches = plan.accum_steps
  freeze_spec = config.train.freeze
  frozen_of = lambda params: freeze_lib.mask(params, freeze_spec)  # noqa: E731
  lock = ((lambda p: freeze_lib.stop_frozen(p, frozen_of(p)))
          if freeze_spec else None)
  grad_fn = make_grad_fn(model, loss_fn, micro_batches, mesh, lock)
  guard = config.train.skip_nonfinite_steps > 0
  rows = sharding.batch_sharding(mesh)

  def bank_teacher(state, bank_rows: bank_lib.BankRows):
    """The batch's bank rows as a Teacher at the current logit scale, and how
    many rows have none yet (they fall back to one-hot targets)."""
    t_img, t_txt, seen_step = bank_rows
    scale = logit_params(model, state.params)[0]
    seen = seen_step > 0
    age = jnp.where(seen, state.step + 1 - seen_step, 0)  # steps since stored
    seen_f = seen.astype(jnp.float32)
    metrics = dict(bank_unseen=1.0 - jnp.mean(seen_f),
                   bank_age_steps=jnp.sum(age) / jnp.maximum(jnp.sum(seen_f), 1))
    return losses.Teacher(t_img, t_txt, scale, valid=seen), metrics

  def step_fn(state: TrainState, batch, bank_rows=None):
    images, tokens = normalize_images(batch["image"]), batch["tokens"]
    n = images.shape[0]
    key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
    # The patches dropped this step: a function of (seed, step), so a resumed
    # run drops the same ones; one noise row per example, split with the batch.
    patch_noise = None
    if config.model.patch_dropout > 0:
      patch_noise = jax.lax.with_sharding_constraint(jax.random.uniform(
          jax.random.fold_in(key, PATCH_DROPOUT_STREAM),
          (n, model.image_tower.num_patches(images.shape[1]))), rows)
    if distill:
      alpha = losses.alpha_schedule(state.step, alpha_final=psd.alpha_final,
                                    ramp_steps=plan.ramp_steps,
                                    steps_per_epoch=plan.ramp_epoch_steps)
      mask = losses.distill_mask(key, n, psd.subset_fraction, psd.subset)
    else:
      alpha, mask = jnp.float32(0.0), jnp.zeros((n,), bool)
    mask = jax.lax.with_sharding_constraint(mask, rows)
    teacher = None
    if plan.uses_bank:
      teacher, bank_metrics = bank_teacher(state, bank_rows)
    if plan.uses_ema:
      ema = jax.lax.stop_gradient(state.ema_params)
      # Teacher BatchNorm uses batch statistics too; its stat updates are
      # dropped. With patch dropout it sees the student's patches.
      if micro_batches == 1:
        t_img, t_txt, _ = forward(model, ema, state.model_state, images, tokens,
                                  patch_noise)
      else:
        micro = split_inputs(images, tokens, patch_noise, micro_batches, mesh)
        t_img, t_txt = map(micro_merge, embed_micro(
            model, ema, state.model_state, micro)[0])
      teacher = losses.Teacher(t_img, t_txt, logit_params(model, ema)[0])
    inputs = losses.LossInputs(jnp.float32(alpha), mask,
                               float(psd.teacher_temperature), teacher)

    (loss, aux), grads = grad_fn(state.params, state.model_state, images,
                                 tokens, inputs, patch_noise)
    metrics, scale = aux.metrics, aux.logit_scale
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    ema_params = state.ema_params
    if plan.uses_ema:
      ema_params = optax.incremental_update(params, ema_params, 1 - plan.ema_decay)
    if freeze_spec:  # bit for bit, in the student and its EMA alike
      frozen = frozen_of(state.params)
      params = freeze_lib.keep_frozen(state.params, params, frozen)
      if plan.uses_ema:
        ema_params = freeze_lib.keep_frozen(state.ema_params, ema_params, frozen)
    grad_norm = optax.tree.norm(grads)
    # A bad update is dropped, but the step still counts: the learning-rate
    # and PSD schedules stay aligned with the data position (loop step).
    bad = ~(jnp.isfinite(loss) & jnp.isfinite(grad_norm)) if guard else None
    bank = state.bank
    if plan.uses_bank:  # what the model (before this update) saw, for next time
      # A bad step writes no row: masked in the scatter, so the bank is still
      # updated in place (a `where` over it would keep two banks alive).
      bank = bank_lib.update(bank, batch["example_id"], aux.embeddings.image,
                             aux.embeddings.text, state.step, mesh, skip=bad)
      metrics = dict(metrics, **bank_metrics)
    new_state = state.replace(step=state.step + 1, params=params,
                              opt_state=opt_state, ema_params=ema_params,
                              model_state=aux.model_state, bank=bank)
    metrics = dict(metrics, loss=loss, alpha=alpha, logit_scale=scale,
                   grad_norm=grad_norm, learning_rate=schedule(state.step))
    bias = logit_params(model, state.params)[1]
    if bias is not None:
      metrics["logit_bias"] = bias
    if guard:
      keep_old = lambda old, new: jax.tree.map(
          lambda o, n: jnp.where(bad, o, n), old, new)
      new_state = new_state.replace(
          params=keep_old(state.params, new_state.params),
          opt_state=keep_old(state.opt_state, new_state.opt_state),
          ema_params=keep_old(state.ema_params, new_state.ema_params),
          model_state=keep_old(state.model_state, new_state.model_state))
      metrics["nonfinite"] = bad
    return new_state, metrics

  out = (state_shardings, sharding.replicated(mesh))
  if not plan.uses_bank:
    return TrainStep(jax.jit(step_fn, in_shardings=(state_shardings, rows),
                             out_shardings=out, donate_argnums=0), rows=rows)
  # The bank is read by its own executable, before the step that writes it.
  # Read and written in one program, XLA copies the whole (donated) bank
  # first -- twice the memory and N x d bytes moved per step -- because it
  # cannot order the gather before the in-place scatter; apart, the step's
  # scatter updates the donated bank in place (benchmarks/loss_memory.py).
  read = jax.jit(lambda bank, ids: bank_lib.lookup(bank, ids, mesh),
                 in_shardings=(state_shardings.bank, rows), out_shardings=rows)
  update = jax.jit(step_fn, in_shardings=(state_shardings, rows, rows),
                   out_shardings=out, donate_argnums=0)
  return TrainStep(update, read, rows)
