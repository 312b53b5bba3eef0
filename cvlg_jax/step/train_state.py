"""The train state, the model's training-mode forward pass, and how both are
built from a :class:`~cvlg_jax.step.plan.RunPlan` (initialised directly in
their target shardings, or only described, for ahead-of-time compilation)."""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp

from cvlg_jax.config import ConfigError
from cvlg_jax.data import pipeline
from cvlg_jax.data.transforms import CLIP_MEAN, CLIP_STD
from cvlg_jax.models.registry import build_model
from cvlg_jax.step import bank as bank_lib, sharding
from cvlg_jax.step.freeze import FreezeSpecError
from cvlg_jax.step.optim import make_optimizer


class TrainState(flax.struct.PyTreeNode):
  step: jax.Array
  params: Any
  opt_state: Any
  rng: jax.Array                   # raw uint32 key data: checkpointable
  ema_params: Any = None           # EMA teacher (loss.psd.teacher="ema")
  # Flax collections besides params (BatchNorm's running "batch_stats" for a
  # ResNet tower); None for models without any.
  model_state: Any = None
  # Per-example embedding bank (loss.psd.teacher="bank"): step.bank.Bank,
  # rows sharded over the devices like the batch.
  bank: Any = None


def model_variables(params, model_state=None) -> dict:
  """What ``model.apply`` takes: params plus any non-param collections."""
  return {"params": params, **(model_state or {})}


def eval_variables(state: TrainState) -> dict:
  """The variables evaluators encode with (BatchNorm: running statistics)."""
  return model_variables(state.params, state.model_state)


def forward(model, params, model_state, images, tokens, patch_noise=None):
  """Training-mode ``(img_emb, txt_emb, new_model_state)``.

  BatchNorm normalises with the statistics of this (global) batch and returns
  updated running statistics; for a model without state this is plain apply.
  ``patch_noise`` [N, num_patches]: which patches each row keeps
  (``model.patch_dropout``); None without patch dropout.
  """
  if not model_state:
    img, txt, _ = model.apply({"params": params}, images, tokens, train=True,
                              patch_noise=patch_noise)
    return img, txt, model_state
  (img, txt, _), new_state = model.apply(
      model_variables(params, model_state), images, tokens, train=True,
      mutable=list(model_state), patch_noise=patch_noise)
  return img, txt, new_state


def normalize_images(images):
  """uint8 -> CLIP-normalised float32, on device (see data.pipeline)."""
  return (images.astype(jnp.float32) / 255.0 - CLIP_MEAN) / CLIP_STD


def logit_params(model, params):
  """``(logit_scale, logit_bias or None)`` of ``params``."""
  return model.apply({"params": params}, method="logit_params")


def build(plan, tokenizer=None):
  """Tokenizer, model and optimizer of the plan (no arrays created);
  ``tokenizer`` replaces the config's (only its ``vocab_size`` is used)."""
  config = plan.config
  tokenizer = pipeline.make_tokenizer(config) if tokenizer is None else tokenizer
  model = build_model(config.model.name, vocab_size=tokenizer.vocab_size,
                      dtype=config.model.dtype, remat=config.model.remat,
                      sigmoid=plan.loss.kind == "sigmoid",
                      activation=config.model.activation,
                      layer_norm_epsilon=config.model.layer_norm_epsilon,
                      patch_dropout=config.model.patch_dropout)
  tx, schedule = make_optimizer(config.optim, plan.total_steps, plan.warmup_steps,
                                config.train.freeze)
  return tokenizer, model, tx, schedule


def _init_fn(plan, model, tx, num_devices):
  """rng -> the fresh TrainState (to be traced under jit or eval_shape)."""
  config = plan.config
  s, length = config.data.image_size, config.data.context_length

  def init(rng):
    variables = dict(model.init(jax.random.fold_in(rng, 1),
                                jnp.zeros((1, s, s, 3)),
                                jnp.zeros((1, length), jnp.int32)))
    params = variables.pop("params")
    bank = None if not plan.uses_bank else bank_lib.zeros(
        plan.num_examples, model.embed_dim, config.loss.psd.bank_dtype,
        num_devices)
    return TrainState(step=jnp.int32(0), params=params, opt_state=tx.init(params),
                      rng=jax.random.key_data(rng),
                      ema_params=params if plan.uses_ema else None,
                      model_state=variables or None, bank=bank)
  return init


def _state_shapes(init, rng):
  """The state's shapes; a ``train.freeze`` spec that does not fit the model
  (seen only once the parameters exist) is a one-line ConfigError."""
  try:
    return jax.eval_shape(init, rng)
  except FreezeSpecError as e:
    raise ConfigError(str(e)) from None


def abstract_state(plan, model, tx, mesh):
  """``(state of ShapeDtypeStructs carrying their shardings, shardings)``:
  the state's description only, nothing allocated (ahead-of-time compiles)."""
  init = _init_fn(plan, model, tx, mesh.size)
  rng = jax.random.key(plan.config.train.seed)
  shapes = _state_shapes(init, rng)
  shardings = sharding.state_shardings(mesh, shapes)
  abstract = jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
      shapes, shardings)
  return abstract, shardings


def init_state(plan, model, tx, mesh):
  """Initialises the state directly in its target shardings; returns both."""
  init = _init_fn(plan, model, tx, mesh.size)
  rng = jax.random.key(plan.config.train.seed)
  shardings = sharding.state_shardings(mesh, _state_shapes(init, rng))
  state = jax.jit(init, out_shardings=shardings)(rng)
  return state, shardings
