"""PSD's two per-step choices: how much weight the soft targets get (alpha)
and which rows get them (the distilled subset)."""

from __future__ import annotations

import jax
import jax.numpy as jnp


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
