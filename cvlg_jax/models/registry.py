"""Named model sizes, so configs say ``model.name="vit_b32"`` and nothing else.

A model is an image tower + a text tower + the shared embedding size. Tower
sizes follow the CLIP paper (Radford et al. 2021, Tables 19-20).
"""

from __future__ import annotations

import jax.numpy as jnp

from cvlg_jax.models import clip
from cvlg_jax.models.clip import CLIP
from cvlg_jax.models.resnet import ModifiedResNet
from cvlg_jax.models.text import TextTransformer
from cvlg_jax.models.transformer import (
    ACTIVATIONS, DEFAULT_ACTIVATION, DEFAULT_LAYER_NORM_EPSILON)
from cvlg_jax.models.vit import VisionTransformer

VISION_TOWERS = {
    "vit_tiny": dict(kind="vit", patch_size=8, width=64, depth=2, heads=2, pool="gap"),
    "vit_small_demo": dict(kind="vit", patch_size=8, width=128, depth=4, heads=4, pool="gap"),
    "vit_s16": dict(kind="vit", patch_size=16, width=384, depth=12, heads=6),
    "vit_b32": dict(kind="vit", patch_size=32, width=768, depth=12, heads=12),
    "vit_b16": dict(kind="vit", patch_size=16, width=768, depth=12, heads=12),
    "vit_l14": dict(kind="vit", patch_size=14, width=1024, depth=24, heads=16),
    # Half-depth ViT-S/32 (6 x 384) with a half-size text tower: the CPU
    # train-step comparison with open_clip (benchmarks/step_vs_open_clip.py).
    "vit_bench_s32": dict(kind="vit", patch_size=32, width=384, depth=6, heads=6),
    "rn50": dict(kind="resnet", layers=(3, 4, 6, 3), width=64, heads=32),
    "rn_tiny": dict(kind="resnet", layers=(1, 1, 1, 1), width=16, heads=2),
}

TEXT_TOWERS = {
    "text_tiny": dict(width=64, depth=2, heads=2),
    "text_small_demo": dict(width=128, depth=2, heads=4),
    "text_base": dict(width=512, depth=12, heads=8),   # CLIP ViT-B and RN50
    "text_large": dict(width=768, depth=12, heads=12),  # CLIP ViT-L/14
    "text_bench": dict(width=256, depth=6, heads=4),
}

MODELS = {
    "tiny": dict(image="vit_tiny", text="text_tiny", embed_dim=64),
    "demo": dict(image="vit_small_demo", text="text_small_demo", embed_dim=128),
    "rn_tiny": dict(image="rn_tiny", text="text_tiny", embed_dim=64),
    "vit_s16": dict(image="vit_s16", text="text_base", embed_dim=512),
    "vit_b32": dict(image="vit_b32", text="text_base", embed_dim=512),
    "vit_b16": dict(image="vit_b16", text="text_base", embed_dim=512),
    "vit_l14": dict(image="vit_l14", text="text_large", embed_dim=768),
    "bench_s32": dict(image="vit_bench_s32", text="text_bench", embed_dim=256),
    "rn50": dict(image="rn50", text="text_base", embed_dim=1024),
}

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def _vit(cfg, *, embed_dim, remat, dtype, block_opts, patch_dropout):
  """A ViT tower, then a learned projection to the embedding size."""
  del embed_dim
  return VisionTransformer(**cfg, remat=remat, dtype=dtype,
                           patch_dropout=patch_dropout, **block_opts), True


def _resnet(cfg, *, embed_dim, remat, dtype, block_opts, patch_dropout):
  """CLIP's ModifiedResNet: its attention pool already projects to the
  embedding size; BatchNorm as in CLIP (running statistics live in
  TrainState.model_state)."""
  del block_opts  # no transformer blocks
  if patch_dropout:
    raise ValueError("model.patch_dropout needs a ViT image tower (a ResNet "
                     "has no patch tokens)")
  return ModifiedResNet(**cfg, output_dim=embed_dim, norm="batch", remat=remat,
                        dtype=dtype), False


# VISION_TOWERS[...]["kind"] -> builder(cfg, ...) -> (module, project_image).
IMAGE_TOWER_KINDS = {"vit": _vit, "resnet": _resnet}


def build_model(name: str, *, vocab_size: int, dtype: str = "float32",
                remat: bool = False, sigmoid: bool = False,
                activation: str = DEFAULT_ACTIVATION,
                layer_norm_epsilon: float = DEFAULT_LAYER_NORM_EPSILON,
                patch_dropout: float = 0.0) -> CLIP:
  """CLIP two-tower model for a registered size. Params are always float32;
  ``dtype`` is the compute dtype of the towers (embeddings, the logit scale
  and the loss stay float32). ``sigmoid`` adds SigLIP's learned logit bias
  and uses SigLIP's initial scale and bias. ``activation`` (transformer MLPs)
  and ``layer_norm_epsilon`` change no parameter, only the function: released
  CLIP weights need ``"quick_gelu"`` (OpenAI) or ``"gelu"`` (open_clip) and
  1e-5 (see models/pretrained.py). ``patch_dropout``: FLIP's fraction of
  image patches dropped in training (a ViT only; models/vit.py)."""
  if name not in MODELS:
    raise ValueError(f"model.name={name!r} is unknown; allowed: {', '.join(MODELS)}")
  if dtype not in DTYPES:
    raise ValueError(f"model.dtype={dtype!r} is unknown; allowed: {', '.join(DTYPES)}")
  if activation not in ACTIVATIONS:
    raise ValueError(f"model.activation={activation!r} is unknown; allowed: "
                     f"{', '.join(ACTIVATIONS)}")
  spec, cdtype = MODELS[name], DTYPES[dtype]
  block_opts = dict(activation=activation, layer_norm_epsilon=layer_norm_epsilon)
  image_cfg = dict(VISION_TOWERS[spec["image"]])
  image_tower, project_image = IMAGE_TOWER_KINDS[image_cfg.pop("kind")](
      image_cfg, embed_dim=spec["embed_dim"], remat=remat, dtype=cdtype,
      block_opts=block_opts, patch_dropout=patch_dropout)
  text_tower = TextTransformer(vocab_size=vocab_size, **TEXT_TOWERS[spec["text"]],
                               remat=remat, dtype=cdtype, **block_opts)
  init = (dict(init_logit_scale=clip.SIGLIP_INIT_LOGIT_SCALE,
               init_logit_bias=clip.SIGLIP_INIT_LOGIT_BIAS) if sigmoid else {})
  return CLIP(image_tower, text_tower, spec["embed_dim"], project_image, **init)
