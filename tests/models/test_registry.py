"""Model sizes of the registry (open_clip's parameter counts) and RN50's shapes."""

import jax
import jax.numpy as jnp
import numpy as np

from cvlg_jax.models.registry import build_model



def _count(name, image, length=77, vocab=49408, **kw):
  model = build_model(name, vocab_size=vocab, **kw)
  params = jax.eval_shape(model.init, jax.random.key(0),
                          jnp.zeros((1, image, image, 3)),
                          jnp.zeros((1, length), jnp.int32))["params"]
  return model, params, sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))


def test_clip_model_sizes_and_rn50_shapes():
  """Parameter counts of OpenAI CLIP (open_clip's table: ViT-B/16 149.62M,
  ViT-L/14 427.62M, RN50 102.01M) and RN50's outputs at 224 px in bf16."""
  assert _count("vit_b16", 224)[2] == 149_620_737
  # The CPU benchmark model (benchmarks/step_vs_open_clip.py): the count of
  # open_clip.model.CLIP(256, its vision_cfg, its text_cfg).
  assert _count("bench_s32", 224)[2] == 29_418_625
  assert round(_count("vit_l14", 224)[2] / 1e6, 2) == 427.62
  model, params, n = _count("rn50", 224, dtype="bfloat16")
  assert round(n / 1e6, 2) == 102.01
  assert {x.dtype for x in jax.tree.leaves(params)} == {np.dtype(np.float32)}
  variables = jax.eval_shape(model.init, jax.random.key(0),
                             jnp.zeros((1, 224, 224, 3)),
                             jnp.zeros((1, 77), jnp.int32))
  assert set(variables) == {"params", "batch_stats"}  # BatchNorm, as CLIP's RN50
  img, txt, scale = jax.eval_shape(
      lambda v: model.apply(v, jnp.zeros((2, 224, 224, 3)),
                            jnp.zeros((2, 77), jnp.int32)), variables)
  assert img.shape == (2, 1024) and txt.shape == (2, 1024) and scale.shape == ()
  # bf16 towers, float32 embeddings and scale (the loss runs in float32).
  assert img.dtype == txt.dtype == scale.dtype == jnp.float32
  assert params["image_tower"]["attnpool"]["positional_embedding"].shape == (50, 2048)
  # SigLIP adds exactly one scalar, the learned bias.
  _, sig_params, n_sig = _count("tiny", 32, 8, 4096, sigmoid=True)
  assert n_sig == _count("tiny", 32, 8, 4096)[2] + 1
  assert sig_params["logit_bias"].shape == ()
