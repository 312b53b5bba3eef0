"""Pre-LayerNorm transformer encoder shared by the image and text towers."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

Dtype = Any


class MlpBlock(nn.Module):
  mlp_dim: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    width = x.shape[-1]
    x = nn.Dense(self.mlp_dim, dtype=self.dtype, name="fc1")(x)
    x = nn.gelu(x, approximate=True)
    return nn.Dense(width, dtype=self.dtype, name="fc2")(x)


class EncoderBlock(nn.Module):
  heads: int
  mlp_ratio: float = 4.0
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, mask=None):
    y = nn.LayerNorm(dtype=self.dtype, name="ln1")(x)
    y = nn.MultiHeadDotProductAttention(
        num_heads=self.heads, dtype=self.dtype, force_fp32_for_softmax=True,
        name="attn")(y, y, mask=mask)
    x = x + y
    y = nn.LayerNorm(dtype=self.dtype, name="ln2")(x)
    y = MlpBlock(int(x.shape[-1] * self.mlp_ratio), dtype=self.dtype, name="mlp")(y)
    return x + y


class Encoder(nn.Module):
  """``depth`` blocks; ``remat`` recomputes block activations in the backward
  pass, trading ~30% more compute for activation memory that no longer grows
  with depth."""
  depth: int
  heads: int
  mlp_ratio: float = 4.0
  remat: bool = False
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, mask=None):
    block = nn.remat(EncoderBlock) if self.remat else EncoderBlock
    for i in range(self.depth):
      x = block(self.heads, self.mlp_ratio, self.dtype, name=f"block{i}")(x, mask)
    return x
