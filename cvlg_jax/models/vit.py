"""Vision Transformer image tower (CLIP flavour: pre-LN, learned positions)."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from cvlg_jax.models.transformer import (
    DEFAULT_ACTIVATION, DEFAULT_LAYER_NORM_EPSILON, Encoder)


class VisionTransformer(nn.Module):
  """Images [B, H, W, 3] -> features [B, width] (before the projection).

  ``pool="cls"`` reads a learned class token (CLIP); ``"gap"`` averages the
  patch tokens (often more stable for small models).
  """
  patch_size: int
  width: int
  depth: int
  heads: int
  mlp_ratio: float = 4.0
  pool: str = "cls"
  remat: bool = False
  dtype: Any = jnp.float32
  activation: str = DEFAULT_ACTIVATION
  layer_norm_epsilon: float = DEFAULT_LAYER_NORM_EPSILON

  @nn.compact
  def __call__(self, images, *, train: bool = False):
    del train  # no dropout or BatchNorm: train and eval are the same function
    if self.pool not in ("cls", "gap"):
      raise ValueError(f"pool must be 'cls' or 'gap', got {self.pool!r}")
    p = self.patch_size
    if images.shape[1] % p or images.shape[2] % p:
      raise ValueError(f"image size {images.shape[1:3]} is not divisible by "
                       f"patch size {p}")
    x = nn.Conv(self.width, (p, p), strides=(p, p), padding="VALID",
                use_bias=False, dtype=self.dtype, name="patch_embed")(
                    images.astype(self.dtype))
    b, h, w, c = x.shape
    x = x.reshape(b, h * w, c)
    if self.pool == "cls":
      cls = self.param("cls", nn.initializers.normal(c ** -0.5), (1, 1, c))
      x = jnp.concatenate([jnp.tile(cls.astype(x.dtype), (b, 1, 1)), x], axis=1)
    pos = self.param("pos_embedding", nn.initializers.normal(c ** -0.5),
                     (1, x.shape[1], c))
    x = x + pos.astype(x.dtype)
    eps = self.layer_norm_epsilon
    x = nn.LayerNorm(epsilon=eps, dtype=self.dtype, name="ln_pre")(x)
    x = Encoder(self.depth, self.heads, self.mlp_ratio, self.remat, self.dtype,
                self.activation, eps, name="encoder")(x)
    x = x[:, 0] if self.pool == "cls" else x.mean(axis=1)
    return nn.LayerNorm(epsilon=eps, dtype=self.dtype, name="ln_post")(x)
