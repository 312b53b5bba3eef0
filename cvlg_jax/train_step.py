"""The train state and the pure, sharded train step.

``train_step(state, batch) -> (state, metrics)`` is compiled once with explicit
in/out shardings over the mesh and a donated state; nothing in it touches the
host, so the loop (``cvlg_jax.train``) stays a thin driver. The step always
takes the full global batch; gradient accumulation (``train.grad_accum_steps``)
happens inside it, so the contrastive loss still sees every pair.
"""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from cvlg_jax import bank as bank_lib, losses, sharding
from cvlg_jax.data import pipeline
from cvlg_jax.data.transforms import CLIP_MEAN, CLIP_STD
from cvlg_jax.models.registry import build_model
from cvlg_jax.optim import make_optimizer


class TrainState(flax.struct.PyTreeNode):
  step: jax.Array
  params: Any
  opt_state: Any
  rng: jax.Array                   # raw uint32 key data: checkpointable
  ema_params: Any = None           # EMA teacher (loss.psd.teacher="ema")
  # Flax collections besides params (BatchNorm's running "batch_stats" for a
  # ResNet tower); None for models without any.
  model_state: Any = None
  # Per-example embedding bank (loss.psd.teacher="bank"): cvlg_jax.bank.Bank,
  # rows sharded over the devices like the batch.
  bank: Any = None


def model_variables(params, model_state=None) -> dict:
  """What ``model.apply`` takes: params plus any non-param collections."""
  return {"params": params, **(model_state or {})}


def eval_variables(state: TrainState) -> dict:
  """The variables evaluators encode with (BatchNorm: running statistics)."""
  return model_variables(state.params, state.model_state)


def forward(model, params, model_state, images, tokens):
  """Training-mode ``(img_emb, txt_emb, new_model_state)``.

  BatchNorm normalises with the statistics of this (global) batch and returns
  updated running statistics; for a model without state this is plain apply.
  """
  if not model_state:
    img, txt, _ = model.apply({"params": params}, images, tokens, train=True)
    return img, txt, model_state
  (img, txt, _), new_state = model.apply(
      model_variables(params, model_state), images, tokens, train=True,
      mutable=list(model_state))
  return img, txt, new_state


def normalize_images(images):
  """uint8 -> CLIP-normalised float32, on device (see data.pipeline)."""
  return (images.astype(jnp.float32) / 255.0 - CLIP_MEAN) / CLIP_STD


def loss_kind(config) -> str:
  return losses.parse_loss_name(config.loss.name).kind


def distills(config) -> bool:
  """PSD soft targets on (psd, siglip_psd) or plain contrastive (clip, siglip)."""
  return losses.parse_loss_name(config.loss.name).distills


def logit_params(model, params):
  """``(logit_scale, logit_bias or None)`` of ``params``."""
  return model.apply({"params": params}, method="logit_params")


def teacher_kind(config) -> str | None:
  """``loss.psd.teacher`` when the loss distils, else None."""
  return config.loss.psd.teacher if distills(config) else None


def build(config):
  """Tokenizer, model and optimizer from config (no arrays created)."""
  tokenizer = pipeline.make_tokenizer(config)
  model = build_model(config.model.name, vocab_size=tokenizer.vocab_size,
                      dtype=config.model.dtype, remat=config.model.remat,
                      sigmoid=loss_kind(config) == "sigmoid",
                      activation=config.model.activation,
                      layer_norm_epsilon=config.model.layer_norm_epsilon)
  tx, schedule = make_optimizer(config.optim, config.train.steps)
  return tokenizer, model, tx, schedule


def init_state(config, model, tx, mesh):
  """Initialises the state directly in its target shardings; returns both."""
  s, length = config.data.image_size, config.data.context_length
  teacher = teacher_kind(config)
  num_examples = (pipeline.num_train_examples(config) if teacher == "bank"
                  else None)

  def init(rng):
    variables = dict(model.init(jax.random.fold_in(rng, 1),
                                jnp.zeros((1, s, s, 3)),
                                jnp.zeros((1, length), jnp.int32)))
    params = variables.pop("params")
    bank = None if num_examples is None else bank_lib.zeros(
        num_examples, model.embed_dim, config.loss.psd.bank_dtype, mesh.size)
    return TrainState(step=jnp.int32(0), params=params, opt_state=tx.init(params),
                      rng=jax.random.key_data(rng),
                      ema_params=params if teacher == "ema" else None,
                      model_state=variables or None, bank=bank)

  rng = jax.random.key(config.train.seed)
  shardings = sharding.state_shardings(mesh, jax.eval_shape(init, rng))
  state = jax.jit(init, out_shardings=shardings)(rng)
  return state, shardings


def _micro_split(x, k, mesh):
  """[N, ...] -> [k, N/k, ...]; micro-batch j is rows j, j+k, j+2k, ...

  Strided rather than contiguous so each micro-batch has rows on every device
  (rows are laid out device by device) and the split moves no data.
  """
  x = jnp.swapaxes(x.reshape(x.shape[0] // k, k, *x.shape[1:]), 0, 1)
  return jax.lax.with_sharding_constraint(
      x, NamedSharding(mesh, P(None, sharding.BATCH_AXES)))


def _micro_merge(x):
  """Inverse of :func:`_micro_split`: back to the original row order."""
  return jnp.swapaxes(x, 0, 1).reshape(-1, *x.shape[2:])


def make_grad_fn(model, loss_fn, accum_steps, mesh):
  """``grad_fn(params, model_state, images, tokens, inputs)
  -> ((loss, (metrics, logit_scale, new_model_state, (img, txt))), grads)``,
  with (img, txt) this step's embeddings of the batch (no gradient).

  ``inputs``: the :class:`losses.LossInputs`. With ``accum_steps`` k
  > 1 the batch is processed in k micro-batches, as open_clip accumulates:
  pass 1 embeds every micro-batch without gradients; the loss and the
  gradient of its own parameters (logit scale / bias) come from those cached
  embeddings; pass 2 re-embeds each micro-batch with gradients and
  differentiates the full-batch loss with only that micro-batch's rows live.
  The sum is the full-batch gradient, with activation memory of one
  micro-batch. (open_clip's version adds the logit scale's gradient k times;
  here it is counted once.) BatchNorm then normalises each micro-batch with
  its own statistics, in both passes alike; the running statistics are
  updated once per micro-batch, in order, as in a PyTorch accumulation loop.
  """
  def objective(img, txt, params, inputs):
    scale, bias = logit_params(model, params)
    loss, metrics = loss_fn(img, txt, scale, inputs, bias)
    return loss, (metrics, scale)

  def full_batch(params, model_state, images, tokens, inputs):
    def f(p):
      img, txt, new_state = forward(model, p, model_state, images, tokens)
      loss, (metrics, scale) = objective(img, txt, p, inputs)
      return loss, (metrics, scale, new_state,
                    jax.lax.stop_gradient((img, txt)))
    return jax.value_and_grad(f, has_aux=True)(params)

  if accum_steps == 1:
    return full_batch
  k = accum_steps

  def accumulated(params, model_state, images, tokens, inputs):
    micro = (_micro_split(images, k, mesh), _micro_split(tokens, k, mesh))
    (img_c, txt_c), new_state = embed_micro(
        model, jax.lax.stop_gradient(params), model_state, micro)
    (loss, (metrics, scale)), grads = jax.value_and_grad(
        lambda p: objective(_micro_merge(img_c), _micro_merge(txt_c), p,
                            inputs), has_aux=True)(params)

    def micro_grads(acc, xs):
      j, (im, tok) = xs
      def f(p):
        # Outputs equal pass 1's (same micro-batch statistics).
        img_j, txt_j, _ = forward(model, p, model_state, im, tok)
        img = _micro_merge(img_c.at[j].set(img_j))
        txt = _micro_merge(txt_c.at[j].set(txt_j))
        return objective(img, txt, jax.lax.stop_gradient(p), inputs)[0]
      return jax.tree.map(jnp.add, acc, jax.grad(f)(params)), None

    grads, _ = jax.lax.scan(micro_grads, grads, (jnp.arange(k), micro))
    embeddings = (_micro_merge(img_c), _micro_merge(txt_c))
    return (loss, (metrics, scale, new_state, embeddings)), grads

  return accumulated


def embed_micro(model, params, model_state, micro):
  """``((img, txt) [k, N/k, d], model_state)`` of micro-batches [k, N/k, ...],
  embedded one at a time (running statistics threaded through in order)."""
  def body(ms, mb):
    img, txt, ms = forward(model, params, ms, *mb)
    return ms, (img, txt)
  model_state, embeddings = jax.lax.scan(body, model_state, micro)
  return embeddings, model_state


def make_train_step(config, model, tx, schedule, mesh, state_shardings):
  """``train_step(state, batch) -> (state, metrics)``, jit-compiled once
  (with the bank teacher: a jitted bank read, then the jitted step).

  The state buffer is donated; the batch arrives sharded over every device.
  With ``train.skip_nonfinite_steps`` the step reports ``nonfinite`` and
  keeps the old params/optimizer state when the loss or gradient norm is
  NaN/Inf (the step counter still advances).
  """
  psd = config.loss.psd
  distill = distills(config)
  ramp = psd.ramp_steps if psd.ramp_steps > 0 else config.train.steps
  per_epoch = (pipeline.steps_per_epoch(config) if psd.ramp_unit == "epoch"
               else None)
  # The self teacher at T = 1 is the student's softmax: the streamed kernel
  # may share it (docs/design.md §3).
  loss_fn = losses.sharded_contrastive_loss(
      mesh, kind=loss_kind(config), chunk_size=config.loss.chunk_size,
      distill=distill, unit_temperature=psd.teacher_temperature == 1.0)
  k = config.train.grad_accum_steps
  grad_fn = make_grad_fn(model, loss_fn, k, mesh)
  guard = config.train.get("skip_nonfinite_steps", 0) > 0
  rows = sharding.batch_sharding(mesh)

  def bank_teacher(state, rows):
    """The batch's bank rows as a Teacher at the current logit scale, and how
    many rows have none yet (they fall back to one-hot targets)."""
    t_img, t_txt, seen_step = rows
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
    if distill:
      alpha = losses.alpha_schedule(state.step, alpha_final=psd.alpha_final,
                                    ramp_steps=ramp, steps_per_epoch=per_epoch)
      key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
      mask = losses.distill_mask(key, n, psd.subset_fraction, psd.subset)
    else:
      alpha, mask = jnp.float32(0.0), jnp.zeros((n,), bool)
    mask = jax.lax.with_sharding_constraint(mask, rows)
    teacher = None
    if state.bank is not None:
      teacher, bank_metrics = bank_teacher(state, bank_rows)
    if state.ema_params is not None:
      ema = jax.lax.stop_gradient(state.ema_params)
      # Teacher BatchNorm uses batch statistics too; its stat updates are dropped.
      if k == 1:
        t_img, t_txt, _ = forward(model, ema, state.model_state, images, tokens)
      else:
        micro = (_micro_split(images, k, mesh), _micro_split(tokens, k, mesh))
        t_img, t_txt = map(_micro_merge, embed_micro(
            model, ema, state.model_state, micro)[0])
      teacher = losses.Teacher(t_img, t_txt, logit_params(model, ema)[0])
    inputs = losses.LossInputs(jnp.float32(alpha), mask,
                               float(psd.teacher_temperature), teacher)

    (loss, (metrics, scale, model_state, embeddings)), grads = grad_fn(
        state.params, state.model_state, images, tokens, inputs)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    ema_params = state.ema_params
    if ema_params is not None:
      ema_params = optax.incremental_update(params, ema_params, 1 - psd.ema_decay)
    bank = state.bank
    if bank is not None:  # what the model (before this update) saw, for next time
      bank = bank_lib.update(bank, batch["example_id"], *embeddings, state.step,
                             mesh)
      metrics = dict(metrics, **bank_metrics)
    new_state = state.replace(step=state.step + 1, params=params,
                              opt_state=opt_state, ema_params=ema_params,
                              model_state=model_state, bank=bank)
    grad_norm = optax.global_norm(grads)
    metrics = dict(metrics, loss=loss, alpha=alpha, logit_scale=scale,
                   grad_norm=grad_norm, learning_rate=schedule(state.step))
    bias = logit_params(model, state.params)[1]
    if bias is not None:
      metrics["logit_bias"] = bias
    if guard:
      # A bad update is dropped, but the step still counts: the learning-rate
      # and PSD schedules stay aligned with the data position (loop step).
      bad = ~(jnp.isfinite(loss) & jnp.isfinite(grad_norm))
      keep_old = lambda old, new: jax.tree.map(
          lambda o, n: jnp.where(bad, o, n), old, new)
      new_state = new_state.replace(
          params=keep_old(state.params, new_state.params),
          opt_state=keep_old(state.opt_state, new_state.opt_state),
          ema_params=keep_old(state.ema_params, new_state.ema_params),
          model_state=keep_old(state.model_state, new_state.model_state),
          bank=keep_old(state.bank, new_state.bank))
      metrics["nonfinite"] = bad
    return new_state, metrics

  out = (state_shardings, sharding.replicated(mesh))
  if teacher_kind(config) != "bank":
    return jax.jit(step_fn, in_shardings=(state_shardings, rows),
                   out_shardings=out, donate_argnums=0)
  # The bank is read by its own executable, before the step that writes it.
  # Read and written in one program, XLA copies the whole (donated) bank
  # first -- twice the memory and N x d bytes moved per step -- because it
  # cannot order the gather before the in-place scatter; apart, the step's
  # scatter updates the donated bank in place (benchmarks/loss_memory.py).
  read = jax.jit(lambda bank, ids: bank_lib.lookup(bank, ids, mesh),
                 in_shardings=(state_shardings.bank, rows), out_shardings=rows)
  step = jax.jit(step_fn, in_shardings=(state_shardings, rows, rows),
                 out_shardings=out, donate_argnums=0)

  def bank_step(state, batch):
    if "example_id" not in batch:
      raise ValueError("loss.psd.teacher='bank' needs batch['example_id'] "
                       "(the data pipeline adds it)")
    return step(state, batch, read(state.bank, batch["example_id"]))

  bank_step.read, bank_step.step = read, step  # for inspection (tests)
  return bank_step
