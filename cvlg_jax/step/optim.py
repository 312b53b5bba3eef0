"""AdamW with linear warmup + cosine decay, decoupled weight decay on weight
matrices only, and optional global-norm clipping — CLIP's recipe in optax."""

from __future__ import annotations

import jax
import optax

from cvlg_jax.step import freeze as freeze_lib


def decay_mask(params):
  """True for tensors that get weight decay: matrices and embeddings (ndim >= 2).

  Biases, LayerNorm/GroupNorm scales (ndim 1) and the logit scale (ndim 0) are
  left alone, as in CLIP and open_clip: decaying them only hurts.
  """
  return jax.tree.map(lambda p: p.ndim >= 2, params)


def learning_rate_schedule(optim_cfg, total_steps: int,
                           warmup_steps: int | None = None) -> optax.Schedule:
  """``warmup_steps``: the run's resolved warm-up (default the config's)."""
  warmup = optim_cfg.warmup_steps if warmup_steps is None else warmup_steps
  warmup = min(warmup, max(total_steps - 1, 0))
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=optim_cfg.learning_rate, warmup_steps=warmup,
      decay_steps=max(total_steps, warmup + 1),
      end_value=optim_cfg.learning_rate * optim_cfg.min_lr_ratio)


def make_optimizer(optim_cfg, total_steps: int, warmup_steps: int | None = None,
                   freeze: str = ""):
  """(optax transformation, learning-rate schedule). ``freeze`` (a
  ``train.freeze`` spec, step/freeze.py): those parameters get
  ``set_to_zero`` instead, so no optimizer state is allocated for them and
  clipping sees only the trained gradients."""
  schedule = learning_rate_schedule(optim_cfg, total_steps, warmup_steps)
  parts = []
  if optim_cfg.grad_clip_norm and optim_cfg.grad_clip_norm > 0:
    parts.append(optax.clip_by_global_norm(optim_cfg.grad_clip_norm))
  parts.append(optax.adamw(schedule, b1=optim_cfg.b1, b2=optim_cfg.b2,
                           eps=optim_cfg.eps, weight_decay=optim_cfg.weight_decay,
                           mask=decay_mask))
  tx = optax.chain(*parts)
  if freeze:
    tx = optax.multi_transform({"trained": tx, "frozen": optax.set_to_zero()},
                               freeze_lib.optimizer_labels(freeze))
  return tx, schedule
