"""Vision Transformer image tower (CLIP flavour: pre-LN, learned positions)."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from cvlg_jax.models.transformer import (
    DEFAULT_ACTIVATION, DEFAULT_LAYER_NORM_EPSILON, Encoder)


def kept_patches(num_patches: int, rate: float) -> int:
  return max(1, int(num_patches * (1 - rate)))


def drop_patches(tokens, noise, rate: float, num_prefix: int):
  """FLIP (Li et al. 2023): each example keeps ``kept_patches(n, rate)`` of
  its n patch tokens, those with the largest ``noise`` [B, n]; the first
  ``num_prefix`` tokens (the class token) always stay. Positions are already
  added, so the encoder still knows where each kept patch was; fewer tokens
  is the whole saving. The noise comes with the batch (one row per example),
  so a micro-batch drops exactly what the full batch would."""
  prefix, patches = tokens[:, :num_prefix], tokens[:, num_prefix:]
  if noise.shape != patches.shape[:2]:
    raise ValueError(f"patch_noise {noise.shape} does not match the "
                     f"{patches.shape[:2]} patch tokens")
  _, idx = jax.lax.top_k(noise, kept_patches(patches.shape[1], rate))
  kept = jnp.take_along_axis(patches, idx[..., None], axis=1)
  return jnp.concatenate([prefix, kept], axis=1)


class VisionTransformer(nn.Module):
  """Images [B, H, W, 3] -> features [B, width] (before the projection).

  ``pool="cls"`` reads a learned class token (CLIP); ``"gap"`` averages the
  patch tokens (often more stable for small models). ``patch_dropout`` > 0
  drops that fraction of patch tokens per example when ``train`` (FLIP),
  chosen by ``patch_noise`` [B, num_patches] (the step draws it); evaluation
  always sees every patch.
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
  patch_dropout: float = 0.0

  def num_patches(self, image_size: int) -> int:
    return (image_size // self.patch_size) ** 2

  @nn.compact
  def __call__(self, images, *, train: bool = False, patch_noise=None):
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
    if train and self.patch_dropout > 0:
      if patch_noise is None:
        raise ValueError("patch_dropout > 0 in training needs patch_noise")
      x = drop_patches(x, patch_noise, self.patch_dropout,
                       num_prefix=int(self.pool == "cls"))
    eps = self.layer_norm_epsilon
    x = nn.LayerNorm(epsilon=eps, dtype=self.dtype, name="ln_pre")(x)
    x = Encoder(self.depth, self.heads, self.mlp_ratio, self.remat, self.dtype,
                self.activation, eps, name="encoder")(x)
    x = x[:, 0] if self.pool == "cls" else x.mean(axis=1)
    return nn.LayerNorm(epsilon=eps, dtype=self.dtype, name="ln_post")(x)
