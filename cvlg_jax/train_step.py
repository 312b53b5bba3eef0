"""The train state and the pure, sharded train step.

``train_step(state, batch) -> (state, metrics)`` is compiled once with explicit
in/out shardings over the mesh and a donated state; nothing in it touches the
host, so the loop (``cvlg_jax.train``) stays a thin driver.
"""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

from cvlg_jax import losses, sharding
from cvlg_jax.data import pipeline
from cvlg_jax.data.tokenizers import get_tokenizer
from cvlg_jax.data.transforms import CLIP_MEAN, CLIP_STD
from cvlg_jax.models.registry import build_model
from cvlg_jax.optim import make_optimizer


class TrainState(flax.struct.PyTreeNode):
  step: jax.Array
  params: Any
  opt_state: Any
  rng: jax.Array                   # raw uint32 key data: checkpointable
  ema_params: Any = None           # EMA teacher (loss.psd.teacher="ema")


def normalize_images(images):
  """uint8 -> CLIP-normalised float32, on device (see data.pipeline)."""
  return (images.astype(jnp.float32) / 255.0 - CLIP_MEAN) / CLIP_STD


def build(config):
  """Tokenizer, model and optimizer from config (no arrays created)."""
  data = config.data
  tokenizer = get_tokenizer(data.tokenizer, context_length=data.context_length,
                            vocab_size=data.vocab_size, path=data.tokenizer_path)
  model = build_model(config.model.name, vocab_size=tokenizer.vocab_size,
                      dtype=config.model.dtype, remat=config.model.remat)
  tx, schedule = make_optimizer(config.optim, config.train.steps)
  return tokenizer, model, tx, schedule


def init_state(config, model, tx, mesh):
  """Initialises the state directly in its target shardings; returns both."""
  s, length = config.data.image_size, config.data.context_length
  ema = config.loss.name == "psd" and config.loss.psd.teacher == "ema"

  def init(rng):
    params = model.init(jax.random.fold_in(rng, 1), jnp.zeros((1, s, s, 3)),
                        jnp.zeros((1, length), jnp.int32))["params"]
    return TrainState(step=jnp.int32(0), params=params, opt_state=tx.init(params),
                      rng=jax.random.key_data(rng),
                      ema_params=params if ema else None)

  rng = jax.random.key(config.train.seed)
  shardings = sharding.state_shardings(mesh, jax.eval_shape(init, rng))
  state = jax.jit(init, out_shardings=shardings)(rng)
  return state, shardings


def make_train_step(config, model, tx, schedule, mesh, state_shardings):
  """``train_step(state, batch) -> (state, metrics)``, jit-compiled once.

  The state buffer is donated; the batch arrives sharded over every device.
  """
  psd = config.loss.psd
  use_psd = config.loss.name == "psd"
  ramp = psd.ramp_steps if psd.ramp_steps > 0 else config.train.steps
  per_epoch = (pipeline.steps_per_epoch(config) if psd.ramp_unit == "epoch"
               else None)
  loss_fn = losses.sharded_contrastive_loss(mesh)
  rows = sharding.batch_sharding(mesh)

  def step_fn(state: TrainState, batch):
    images, tokens = normalize_images(batch["image"]), batch["tokens"]
    n = images.shape[0]
    if use_psd:
      alpha = losses.alpha_schedule(state.step, alpha_final=psd.alpha_final,
                                    ramp_steps=ramp, steps_per_epoch=per_epoch)
      key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
      mask = losses.distill_mask(key, n, psd.subset_fraction, psd.subset)
    else:
      alpha, mask = jnp.float32(0.0), jnp.zeros((n,), bool)
    mask = jax.lax.with_sharding_constraint(mask, rows)
    teacher = None
    if state.ema_params is not None:
      t_img, t_txt, t_scale = jax.lax.stop_gradient(
          model.apply({"params": state.ema_params}, images, tokens))
      teacher = losses.Teacher(t_img, t_txt, t_scale)

    def objective(params):
      img, txt, scale = model.apply({"params": params}, images, tokens)
      loss, metrics = loss_fn(img, txt, scale, jnp.float32(alpha), mask,
                              jnp.float32(psd.teacher_temperature), teacher)
      return loss, (metrics, scale)

    (loss, (metrics, scale)), grads = jax.value_and_grad(
        objective, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    ema_params = state.ema_params
    if ema_params is not None:
      ema_params = optax.incremental_update(params, ema_params, 1 - psd.ema_decay)
    new_state = state.replace(step=state.step + 1, params=params,
                              opt_state=opt_state, ema_params=ema_params)
    metrics = dict(metrics, loss=loss, alpha=alpha, logit_scale=scale,
                   grad_norm=optax.global_norm(grads),
                   learning_rate=schedule(state.step))
    return new_state, metrics

  return jax.jit(step_fn, in_shardings=(state_shardings, rows),
                 out_shardings=(state_shardings, sharding.replicated(mesh)),
                 donate_argnums=0)
