"""Causal text transformer with end-of-text pooling (CLIP's text tower)."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from cvlg_jax.models.transformer import (
    DEFAULT_ACTIVATION, DEFAULT_LAYER_NORM_EPSILON, Encoder)


def eot_positions(tokens):
  """Index of the last non-padding token of each row.

  Every tokenizer in cvlg_jax ends a row with end-of-text and pads with 0
  after it, so this is the end-of-text position whatever the tokenizer's ids
  (CLIP's ``argmax(token_id)`` trick only works when EOT has the largest id).
  """
  positions = jnp.arange(tokens.shape[1])
  return jnp.max(jnp.where(tokens != 0, positions, 0), axis=1)


class TextTransformer(nn.Module):
  """Tokens int32 [B, L] -> features [B, width] (before the projection)."""
  vocab_size: int
  width: int
  depth: int
  heads: int
  mlp_ratio: float = 4.0
  remat: bool = False
  dtype: Any = jnp.float32
  activation: str = DEFAULT_ACTIVATION
  layer_norm_epsilon: float = DEFAULT_LAYER_NORM_EPSILON

  @nn.compact
  def __call__(self, tokens):
    length = tokens.shape[1]
    x = nn.Embed(self.vocab_size, self.width,
                 embedding_init=nn.initializers.normal(0.02),
                 name="token_embedding")(tokens).astype(self.dtype)
    pos = self.param("pos_embedding", nn.initializers.normal(0.01),
                     (1, length, self.width))
    x = x + pos.astype(self.dtype)
    causal = nn.make_causal_mask(tokens, dtype=bool)
    eps = self.layer_norm_epsilon
    x = Encoder(self.depth, self.heads, self.mlp_ratio, self.remat, self.dtype,
                self.activation, eps, name="encoder")(x, causal)
    x = nn.LayerNorm(epsilon=eps, dtype=self.dtype, name="ln_final")(x)
    return x[jnp.arange(x.shape[0]), eot_positions(tokens)]
