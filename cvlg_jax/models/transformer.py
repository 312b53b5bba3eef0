"""Pre-LayerNorm transformer encoder shared by the image and text towers.

``activation`` and ``layer_norm_epsilon`` exist so released CLIP weights run
with the semantics they were trained with: OpenAI's models use QuickGELU
(``x * sigmoid(1.702 x)``), open_clip's non-``quickgelu`` configs exact
(erf) GELU, and both PyTorch's LayerNorm epsilon 1e-5. The defaults (tanh
GELU, Flax's 1e-6) are what cvlg_jax models have always been trained with.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any
DEFAULT_ACTIVATION = "gelu_tanh"
DEFAULT_LAYER_NORM_EPSILON = 1e-6

ACTIVATIONS = {
    "gelu_tanh": lambda x: nn.gelu(x, approximate=True),
    "gelu": lambda x: nn.gelu(x, approximate=False),
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
}


def activation_fn(name: str):
  if name not in ACTIVATIONS:
    raise ValueError(f"activation={name!r} is unknown; allowed: "
                     f"{', '.join(ACTIVATIONS)}")
  return ACTIVATIONS[name]


class MlpBlock(nn.Module):
  mlp_dim: int
  dtype: Dtype = jnp.float32
  activation: str = DEFAULT_ACTIVATION

  @nn.compact
  def __call__(self, x):
    width = x.shape[-1]
    x = nn.Dense(self.mlp_dim, dtype=self.dtype, name="fc1")(x)
    x = activation_fn(self.activation)(x)
    return nn.Dense(width, dtype=self.dtype, name="fc2")(x)


class EncoderBlock(nn.Module):
  heads: int
  mlp_ratio: float = 4.0
  dtype: Dtype = jnp.float32
  activation: str = DEFAULT_ACTIVATION
  layer_norm_epsilon: float = DEFAULT_LAYER_NORM_EPSILON

  @nn.compact
  def __call__(self, x, mask=None):
    eps = self.layer_norm_epsilon
    y = nn.LayerNorm(epsilon=eps, dtype=self.dtype, name="ln1")(x)
    y = nn.MultiHeadDotProductAttention(
        num_heads=self.heads, dtype=self.dtype, force_fp32_for_softmax=True,
        name="attn")(y, y, mask=mask)
    x = x + y
    y = nn.LayerNorm(epsilon=eps, dtype=self.dtype, name="ln2")(x)
    y = MlpBlock(int(x.shape[-1] * self.mlp_ratio), dtype=self.dtype,
                 activation=self.activation, name="mlp")(y)
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
  activation: str = DEFAULT_ACTIVATION
  layer_norm_epsilon: float = DEFAULT_LAYER_NORM_EPSILON

  @nn.compact
  def __call__(self, x, mask=None):
    block = nn.remat(EncoderBlock) if self.remat else EncoderBlock
    for i in range(self.depth):
      x = block(self.heads, self.mlp_ratio, self.dtype, self.activation,
                self.layer_norm_epsilon, name=f"block{i}")(x, mask)
    return x
