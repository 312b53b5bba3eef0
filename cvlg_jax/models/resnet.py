"""CLIP's ModifiedResNet image tower (Radford et al. 2021) in Flax linen.

Differences from a torchvision ResNet, kept exactly as CLIP has them so that
RN50/RN101 numbers (and parameter counts) are comparable with the paper:
  * a 3-conv stem (3x3 s2 -> 3x3 -> 3x3, each norm + ReLU) then a 2x2 avg-pool
    instead of one 7x7 conv and a max-pool;
  * anti-aliased downsampling: every conv has stride 1, and a stride-s block
    avg-pools by s after its 3x3 conv (and before its 1x1 shortcut conv);
  * the global average pool is replaced by `AttentionPool2d`, one multi-head
    attention query (the mean token) over the positional-embedded feature map.

Layout is NHWC. The positional embedding has (H/32)*(W/32)+1 rows, taken from
the image shape seen at `init`, so the same code serves 32 px tests and 224 px
RN50; applying params to another resolution fails with Flax's shape error.

Normalisation (`norm`), and which one the trainer should use:
  * "batch" (default): `nn.BatchNorm`, as CLIP trains RN50, and what the
    registry builds. The trainer applies it with `train=True,
    mutable=["batch_stats"]`, keeps the running `batch_stats` in
    `TrainState.model_state` (so they are checkpointed) and evaluates with
    `train=False`. Under `jax.jit` with the batch sharded over the mesh, the
    statistics are over the *global* batch (XLA inserts the reduction; no
    `axis_name` needed), i.e. SyncBN, and deterministic.
  * "group": `nn.GroupNorm` (32 groups, fewer when a layer has fewer channels).
    No mutable state, so `train` is ignored and the train step needs no
    `batch_stats`. It changes the architecture: use it for quick stateless runs,
    not for numbers meant to match CLIP's RN50.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import flax.linen as nn
import jax.numpy as jnp

# CLIP's released ResNet towers plus a tiny one for tests and the CPU demo.
RESNET_SIZES = {
    "rn50": dict(layers=(3, 4, 6, 3), width=64, output_dim=1024, heads=32),
    "rn101": dict(layers=(3, 4, 23, 3), width=64, output_dim=512, heads=32),
    "rn50x4": dict(layers=(4, 6, 10, 6), width=80, output_dim=640, heads=40),
    "rn50x16": dict(layers=(6, 8, 18, 8), width=96, output_dim=768, heads=48),
    "rn50x64": dict(layers=(3, 15, 36, 10), width=128, output_dim=1024,
                    heads=64),
    "rn_tiny": dict(layers=(1, 1, 1, 1), width=16, output_dim=64, heads=2),
}

EXPANSION = 4
NORMS = ("batch", "group")

# He-normal over fan-out: what torchvision uses for ReLU ResNets.
_conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def _make_norm(norm: str, channels: int, train: bool, dtype: Any, name: str,
               zero_scale: bool = False) -> nn.Module:
  """One normalisation layer; `zero_scale` starts a residual branch at zero."""
  scale_init = nn.initializers.zeros if zero_scale else nn.initializers.ones
  if norm == "batch":
    # PyTorch BatchNorm2d defaults: eps 1e-5, running-stat momentum 0.1.
    return nn.BatchNorm(use_running_average=not train, momentum=0.9,
                        epsilon=1e-5, dtype=dtype, scale_init=scale_init,
                        name=name)
  if norm == "group":
    return nn.GroupNorm(num_groups=math.gcd(32, channels), epsilon=1e-5,
                        dtype=dtype, scale_init=scale_init, name=name)
  raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")


def _avg_pool(x, stride: int):
  return nn.avg_pool(x, (stride, stride), strides=(stride, stride))


class Bottleneck(nn.Module):
  """1x1 -> 3x3 -> [avgpool] -> 1x1 (x4 channels) with an anti-aliased shortcut.

  `train` is a field rather than a call argument so that `nn.remat` can wrap
  the class without static-argument bookkeeping.
  """
  planes: int
  stride: int = 1
  norm: str = "batch"
  train: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    out_ch = self.planes * EXPANSION
    conv = lambda f, k, name: nn.Conv(  # noqa: E731
        f, (k, k), padding=[(k // 2, k // 2)] * 2, use_bias=False,
        dtype=self.dtype, kernel_init=_conv_init, name=name)
    norm = lambda c, name, zero=False: _make_norm(  # noqa: E731
        self.norm, c, self.train, self.dtype, name, zero)

    y = nn.relu(norm(self.planes, "norm1")(conv(self.planes, 1, "conv1")(x)))
    y = nn.relu(norm(self.planes, "norm2")(conv(self.planes, 3, "conv2")(y)))
    if self.stride > 1:
      y = _avg_pool(y, self.stride)
    # CLIP zero-inits the last norm's scale: each block starts as its shortcut.
    y = norm(out_ch, "norm3", zero=True)(conv(out_ch, 1, "conv3")(y))

    shortcut = x
    if self.stride > 1 or x.shape[-1] != out_ch:
      if self.stride > 1:
        shortcut = _avg_pool(shortcut, self.stride)
      shortcut = conv(out_ch, 1, "downsample_conv")(shortcut)
      shortcut = norm(out_ch, "downsample_norm")(shortcut)
    return nn.relu(y + shortcut)


class AttentionPool2d(nn.Module):
  """Pools [B, H, W, C] to [B, output_dim] with a single attention query.

  The tokens are the H*W positions plus their mean, prepended; all get a
  learned positional embedding, and only the mean token queries (CLIP computes
  every row and keeps row 0, which gives the same result).
  """
  num_heads: int
  output_dim: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    b, h, w, c = x.shape
    if c % self.num_heads:
      raise ValueError(f"embed dim {c} not divisible by heads={self.num_heads}")
    head_dim = c // self.num_heads
    tokens = x.reshape(b, h * w, c)
    tokens = jnp.concatenate([tokens.mean(1, keepdims=True), tokens], axis=1)
    pos = self.param("positional_embedding",
                     nn.initializers.normal(stddev=c ** -0.5),
                     (h * w + 1, c))
    tokens = tokens + pos.astype(self.dtype)

    dense = lambda f, name: nn.Dense(  # noqa: E731
        f, dtype=self.dtype, kernel_init=nn.initializers.normal(c ** -0.5),
        name=name)
    split = lambda t: t.reshape(b, -1, self.num_heads, head_dim)  # noqa: E731
    q = split(dense(c, "q_proj")(tokens[:, :1]))
    k = split(dense(c, "k_proj")(tokens))
    v = split(dense(c, "v_proj")(tokens))
    logits = jnp.einsum("bqhd,bkhd->bhqk", q * head_dim ** -0.5, k)
    # Softmax in float32 so bf16 compute keeps a well-normalised distribution.
    attn = nn.softmax(logits.astype(jnp.float32), axis=-1).astype(self.dtype)
    out = jnp.einsum("bhqk,bkhd->bqhd", attn, v).reshape(b, c)
    return dense(self.output_dim, "c_proj")(out)


class ModifiedResNet(nn.Module):
  """CLIP ResNet image tower: NHWC images [B, H, W, 3] -> [B, output_dim].

  The output is not L2-normalised; the two-tower model does that. `dtype` is
  the compute dtype; params stay float32. `remat` rematerialises each
  bottleneck in the backward pass (same params and outputs, less memory).
  See the module docstring for the choice of `norm`.
  """
  layers: tuple[int, ...] = (3, 4, 6, 3)
  width: int = 64
  output_dim: int = 1024
  heads: int = 32
  dtype: Any = jnp.float32
  norm: str = "batch"
  remat: bool = False

  @nn.compact
  def __call__(self, images, *, train: bool = False):
    if images.ndim != 4 or images.shape[-1] != 3:
      raise ValueError(f"expected NHWC images [B, H, W, 3], got {images.shape}")
    if images.shape[1] % 32 or images.shape[2] % 32:
      raise ValueError(
          f"image height/width must be divisible by 32, got {images.shape}")
    if self.norm not in NORMS:
      raise ValueError(f"norm must be one of {NORMS}, got {self.norm!r}")

    x = images.astype(self.dtype)
    stem = ((self.width // 2, 2), (self.width // 2, 1), (self.width, 1))
    for i, (features, stride) in enumerate(stem, start=1):
      x = nn.Conv(features, (3, 3), strides=(stride, stride),
                  padding=[(1, 1), (1, 1)],  # PyTorch's symmetric padding=1
                  use_bias=False, dtype=self.dtype, kernel_init=_conv_init,
                  name=f"stem_conv{i}")(x)
      x = _make_norm(self.norm, features, train, self.dtype,
                     f"stem_norm{i}")(x)
      x = nn.relu(x)
    x = _avg_pool(x, 2)

    block_cls: Callable[..., nn.Module] = (
        nn.remat(Bottleneck) if self.remat else Bottleneck)
    for stage, num_blocks in enumerate(self.layers):
      for j in range(num_blocks):
        x = block_cls(
            planes=self.width * 2 ** stage,
            stride=2 if (stage > 0 and j == 0) else 1,
            norm=self.norm, train=train, dtype=self.dtype,
            name=f"layer{stage + 1}_{j}")(x)

    return AttentionPool2d(num_heads=self.heads, output_dim=self.output_dim,
                           dtype=self.dtype, name="attnpool")(x)
