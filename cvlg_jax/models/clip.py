"""Two-tower CLIP model: image tower, text tower, projections, logit scale."""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

MAX_LOGIT_SCALE = 100.0
INIT_LOGIT_SCALE = math.log(1 / 0.07)
# SigLIP (Zhai et al. 2023, §3): t' = log 10 and b = -10, so that at init the
# many negatives' sigmoid terms are small and the loss starts near its prior.
SIGLIP_INIT_LOGIT_SCALE = math.log(10.0)
SIGLIP_INIT_LOGIT_BIAS = -10.0


def l2_normalize(x, eps=1e-6):
  x = x.astype(jnp.float32)
  return x / jnp.sqrt(jnp.sum(x * x, axis=-1, keepdims=True) + eps)


class CLIP(nn.Module):
  """``(images, tokens) -> (image_emb, text_emb, logit_scale)``.

  Either input may be None (its output is then None), so evaluators encode one
  modality at a time with the same ``apply``. ``train`` reaches the image
  tower: a BatchNorm ResNet then normalises with batch statistics and, applied
  with ``mutable=["batch_stats"]``, returns updated running statistics; a ViT
  with ``patch_dropout`` drops the patches ``patch_noise`` picks (FLIP).
  Embeddings are float32 and L2-normalised; ``logit_scale = min(exp(t), 100)``
  with ``t`` learned.
  With ``init_logit_bias`` set (SigLIP) the params also hold a learned scalar
  ``logit_bias``. What the loss needs besides the embeddings comes from
  :meth:`logit_params` (``model.apply(variables, method="logit_params")``).
  """
  image_tower: nn.Module
  text_tower: nn.Module
  embed_dim: int
  project_image: bool = True
  init_logit_scale: float = INIT_LOGIT_SCALE
  init_logit_bias: float | None = None

  def setup(self):
    self.image_proj = (nn.Dense(self.embed_dim, use_bias=False, name="image_proj")
                       if self.project_image else None)
    self.text_proj = nn.Dense(self.embed_dim, use_bias=False, name="text_proj")
    self.logit_scale_log = self.param(
        "logit_scale", nn.initializers.constant(self.init_logit_scale), ())
    self.logit_bias = (None if self.init_logit_bias is None else self.param(
        "logit_bias", nn.initializers.constant(self.init_logit_bias), ()))

  def logit_params(self):
    """``(logit_scale, logit_bias)``: the scale s = min(exp(t), 100), and
    SigLIP's learned bias (None for a model without one)."""
    return jnp.minimum(jnp.exp(self.logit_scale_log), MAX_LOGIT_SCALE), self.logit_bias

  def encode_image(self, images, train: bool = False, patch_noise=None):
    extra = {} if patch_noise is None else {"patch_noise": patch_noise}
    x = self.image_tower(images, train=train, **extra)
    if self.image_proj is not None:
      x = self.image_proj(x)
    return l2_normalize(x)

  def encode_text(self, tokens):
    return l2_normalize(self.text_proj(self.text_tower(tokens)))

  def __call__(self, images: Any = None, tokens: Any = None, *,
               train: bool = False, patch_noise: Any = None):
    image_emb = (None if images is None
                 else self.encode_image(images, train, patch_noise))
    text_emb = None if tokens is None else self.encode_text(tokens)
    return image_emb, text_emb, self.logit_params()[0]
