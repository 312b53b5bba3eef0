"""Helpers for the open_clip parity tests (import only after importorskip)."""

import os

import pytest
import torch


def randomize_batch_norm(model, seed=0):
  """Random running statistics and affine terms in every BatchNorm2d, so
  that none is an identity (open_clip zero-inits each block's last scale)."""
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for m in model.modules():
      if isinstance(m, torch.nn.BatchNorm2d):
        n = m.num_features
        m.weight.copy_(1 + 0.2 * torch.randn(n, generator=gen))
        m.bias.copy_(0.1 * torch.randn(n, generator=gen))
        m.running_mean.copy_(0.1 * torch.randn(n, generator=gen))
        m.running_var.copy_(0.5 + torch.rand(n, generator=gen))


def open_clip_bpe():
  """The CLIP merges file the installed open_clip ships."""
  import open_clip
  path = os.path.join(os.path.dirname(open_clip.__file__),
                      "bpe_simple_vocab_16e6.txt.gz")
  if not os.path.exists(path):
    pytest.skip("this open_clip install ships no merges file")
  return path
