"""Tests for the CLIP ModifiedResNet image tower."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cvlg_jax.models.resnet import (RESNET_SIZES, AttentionPool2d, Bottleneck,
                                    ModifiedResNet)

TINY = RESNET_SIZES["rn_tiny"]
PLAIN = ModifiedResNet(**TINY)
GROUP = ModifiedResNet(**TINY, norm="group")


# Shared jitted entry points (modules are static, hashable): each distinct
# program compiles once per file, which is most of this file's runtime.
@functools.partial(jax.jit, static_argnums=0)
def _forward(model, variables, x):
  return model.apply(variables, x)


@functools.partial(jax.jit, static_argnums=0)
def _mse_and_grad(model, params, x, target):
  """Stateless (group-norm) train-mode loss, as a pure train step sees it."""
  def loss(p):
    return jnp.mean((model.apply({"params": p}, x, train=True) - target) ** 2)
  return jax.value_and_grad(loss)(params)


def _normal(shape, seed=0):
  # NumPy, not jax.random: eager jax.random compiles a program per shape.
  return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def _images(batch, size, seed=0):
  return _normal((batch, size, size, 3), seed)


def _count(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


@pytest.fixture(scope="module")
def tiny_vars():
  """One real init shared by the file: XLA:CPU compiles initialisers slowly.

  Params do not depend on `norm` (GroupNorm and BatchNorm both have
  scale/bias) nor on resolution except the positional embedding, so tests
  re-use them with `_with_pos` and by dropping `batch_stats`. Non-partitionable
  threefry (different random values, same init) compiles ~3x faster on CPU.
  """
  with jax.threefry_partitionable(False):
    return jax.jit(ModifiedResNet(**TINY).init)(jax.random.key(0),
                                                _images(2, 32))


def _with_pos(variables, size, seed=2):
  params = variables["params"]
  pos = params["attnpool"]["positional_embedding"]
  rows = (size // 32) ** 2 + 1
  new = _normal((rows, pos.shape[1]), seed) * 0.05
  attn = {**params["attnpool"], "positional_embedding": new}
  return {**variables, "params": {**params, "attnpool": attn}}


def _perturb(params, seed=1, scale=0.05):
  """Random params everywhere, so zero-initialised residual scales are live."""
  rng = np.random.default_rng(seed)
  return jax.tree.map(
      lambda x: x + scale * rng.normal(size=x.shape).astype(np.float32), params)


@pytest.mark.parametrize("size", [32, 64])
def test_tiny_forward_shapes(tiny_vars, size):
  x = _images(2, size)
  # Init really infers the positional table from the input resolution...
  shapes = jax.eval_shape(PLAIN.init, jax.random.key(0), x)
  pos = shapes["params"]["attnpool"]["positional_embedding"]
  assert pos.shape == ((size // 32) ** 2 + 1, TINY["width"] * 32)
  # ...and a forward pass at that resolution gives one embedding per image.
  out = _forward(PLAIN, _with_pos(tiny_vars, size), x)
  assert out.shape == (2, TINY["output_dim"]) and out.dtype == jnp.float32
  assert np.all(np.isfinite(out))
  assert not np.allclose(out[0], out[1])


def _analytic_count(layers, width, output_dim, image_size):
  """CLIP's PyTorch parameter count: convs (no bias), BN weight+bias, attnpool.

  BN running mean/var are buffers in PyTorch, not parameters, so they are
  left out here as well; in Flax they live in `batch_stats`.
  """
  half, n = width // 2, 0
  n += 3 * 9 * half + half * 9 * half + half * 9 * width + 2 * (half * 2 + width)
  inplanes = width
  for stage, blocks in enumerate(layers):
    planes = width * 2 ** stage
    for j in range(blocks):
      n += inplanes * planes + planes * 9 * planes + planes * 4 * planes
      n += 2 * (planes + planes + 4 * planes)
      if j == 0:  # every stage's first block has a projection shortcut
        n += inplanes * 4 * planes + 2 * 4 * planes
      inplanes = 4 * planes
  embed = width * 32
  n += ((image_size // 32) ** 2 + 1) * embed + 3 * (embed * embed + embed)
  n += embed * output_dim + output_dim
  return n


@pytest.mark.parametrize("name,expected", [("rn50", 38_316_896),
                                           ("rn101", 56_259_936)])
def test_param_count_matches_clip(name, expected):
  # 38,316,896 is the published count of CLIP RN50's `visual` parameters
  # (sum of p.numel() over model.visual.parameters()), RN101 likewise. It
  # counts BN weight/bias but not the running-stat buffers, which in Flax are
  # the separate `batch_stats` collection. The count comes out exact: Flax BN
  # scale/bias match PyTorch weight/bias one to one and convs have no bias.
  cfg = RESNET_SIZES[name]
  assert _analytic_count(cfg["layers"], cfg["width"], cfg["output_dim"],
                         224) == expected
  shapes = jax.eval_shape(ModifiedResNet(**cfg).init, jax.random.key(0),
                          jnp.zeros((1, 224, 224, 3)))
  assert _count(shapes["params"]) == expected
  # Running mean + var: one pair per BN scale/bias pair (everything 1-D in
  # params except the attnpool biases).
  norm_params = sum(
      int(np.prod(x.shape)) for path, x in
      jax.tree_util.tree_leaves_with_path(shapes["params"])
      if "norm" in jax.tree_util.keystr(path))
  assert _count(shapes["batch_stats"]) == norm_params


def test_attention_pool_known_answer():
  b, h, w, c, heads, out_dim = 2, 2, 3, 8, 2, 5
  rng = np.random.default_rng(0)
  x = rng.normal(size=(b, h, w, c)).astype(np.float32)
  pool = AttentionPool2d(num_heads=heads, output_dim=out_dim)
  shapes = jax.eval_shape(pool.init, jax.random.key(0), x)["params"]
  p = jax.tree.map(
      lambda s: (0.3 * rng.normal(size=s.shape)).astype(np.float32), shapes)
  got = pool.apply({"params": p}, x)

  # NumPy reference in CLIP's layout: full self-attention over all L tokens,
  # keep the row of the mean token.
  t = x.reshape(b, h * w, c)
  t = np.concatenate([t.mean(1, keepdims=True), t], 1) + p["positional_embedding"]
  proj = {n: t @ p[n]["kernel"] + p[n]["bias"]
          for n in ("q_proj", "k_proj", "v_proj")}
  d = c // heads
  outs = []
  for hd in range(heads):
    sl = slice(hd * d, (hd + 1) * d)
    q, k, v = (proj[n][..., sl] for n in ("q_proj", "k_proj", "v_proj"))
    logits = q @ k.transpose(0, 2, 1) / np.sqrt(d)
    a = np.exp(logits - logits.max(-1, keepdims=True))
    a /= a.sum(-1, keepdims=True)
    outs.append(a @ v)
  want = (np.concatenate(outs, -1)[:, 0] @ p["c_proj"]["kernel"]
          + p["c_proj"]["bias"])
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_strided_bottleneck_is_antialiased(tiny_vars):
  # With CLIP's init (norm3 scale = 0) a block is exactly its shortcut:
  # relu(BN(conv1x1(avgpool2(x)))); eval-mode BN at init is x / sqrt(1 + eps).
  # layer2_0 of rn_tiny is a stride-2 block, 64 -> 128 channels.
  variables = {k: v["layer2_0"] for k, v in tiny_vars.items()}
  assert np.all(variables["params"]["norm3"]["scale"] == 0)
  x = _normal((2, 8, 8, 64), seed=4)
  out = jax.jit(Bottleneck(planes=32, stride=2).apply)(variables, x)
  kernel = np.asarray(variables["params"]["downsample_conv"]["kernel"])[0, 0]
  pooled = x.reshape(2, 4, 2, 4, 2, 64).mean((2, 4))
  want = np.maximum(pooled @ kernel / np.sqrt(1 + 1e-5), 0)
  assert out.shape == (2, 4, 4, 128)
  np.testing.assert_allclose(out, want, rtol=1e-4, atol=1e-5)
  # A strided 1x1 conv (torchvision) would sample, not average: differs.
  strided = np.maximum(
      x[:, ::2, ::2] @ kernel / np.sqrt(1 + 1e-5), 0)
  assert not np.allclose(out, strided, atol=1e-3)


def test_stage_layout_and_stem_padding(tiny_vars):
  x = _images(1, 64, seed=5)
  _, inter = jax.jit(lambda v, x: PLAIN.apply(
      v, x, capture_intermediates=True, mutable=["intermediates"]))(
          _with_pos(tiny_vars, 64), x)
  inter = inter["intermediates"]
  w = TINY["width"]
  # Stem halves twice (s2 conv, 2x2 pool); stages 2-4 halve again: /32 total.
  assert inter["stem_conv1"]["__call__"][0].shape == (1, 32, 32, w // 2)
  for stage, (size, ch) in enumerate([(16, 4 * w), (8, 8 * w), (4, 16 * w),
                                      (2, 32 * w)], start=1):
    assert inter[f"layer{stage}_0"]["__call__"][0].shape == (1, size, size, ch)
  # PyTorch's padding=1 on a stride-2 3x3 conv pads both sides, so output
  # (0, 0) sees input rows/cols -1..1. ("SAME" would pad only the far side.)
  kernel = np.asarray(tiny_vars["params"]["stem_conv1"]["kernel"])
  padded = np.pad(x[0], ((1, 1), (1, 1), (0, 0)))
  got = inter["stem_conv1"]["__call__"][0][0]
  for i, j in [(0, 0), (5, 9), (31, 31)]:
    patch = padded[2 * i:2 * i + 3, 2 * j:2 * j + 3]
    want = np.einsum("hwc,hwco->o", patch, kernel)
    np.testing.assert_allclose(got[i, j], want, rtol=1e-4, atol=1e-5)


def test_bf16_compute_float32_params(tiny_vars):
  x = _images(2, 32)
  model16 = ModifiedResNet(**TINY, dtype=jnp.bfloat16)
  shapes = jax.eval_shape(model16.init, jax.random.key(0), x)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(shapes))
  variables = {**tiny_vars, "params": _perturb(tiny_vars["params"])}
  out16 = _forward(model16, variables, x)
  assert out16.dtype == jnp.bfloat16
  out32 = _forward(PLAIN, variables, x)
  # Same function, bf16 rounding only: close, but not bit-identical.
  np.testing.assert_allclose(np.asarray(out16, np.float32), out32,
                             rtol=0.1, atol=0.05 * np.abs(out32).max())
  assert not np.array_equal(np.asarray(out16, np.float32), out32)


def test_group_norm_is_stateless(tiny_vars):
  x = _images(2, 32)
  shapes = jax.eval_shape(GROUP.init, jax.random.key(0), x)
  assert set(shapes) == {"params"}
  # Same param tree as the BatchNorm variant: only `batch_stats` goes away.
  assert (jax.tree.structure(shapes["params"])
          == jax.tree.structure(tiny_vars["params"]))
  # Train mode needs no mutable collection (the gradient-step test runs it).
  out = jax.eval_shape(lambda v: GROUP.apply(v, x, train=True), shapes)
  assert out.shape == (2, TINY["output_dim"])


def test_batch_norm_train_updates_stats(tiny_vars):
  model = ModifiedResNet(**TINY)
  x = _images(4, 32) * 3.0 + 1.0
  apply = jax.jit(lambda v, x: model.apply(v, x, train=True,
                                           mutable=["batch_stats"]))
  out, updates = apply(tiny_vars, x)
  assert out.shape == (4, TINY["output_dim"])
  mean0 = tiny_vars["batch_stats"]["stem_norm1"]["mean"]
  mean1 = updates["batch_stats"]["stem_norm1"]["mean"]
  assert np.all(mean0 == 0) and not np.allclose(mean1, 0)
  # Train mode needs the mutable collection: forgetting it must fail loudly.
  with pytest.raises(Exception, match="batch_stats"):
    jax.eval_shape(lambda v: model.apply(v, x, train=True), tiny_vars)


def _regression_batch():
  x = _images(4, 32)
  target = _normal((4, TINY["output_dim"]), seed=7)
  return x, target


def test_remat_matches_plain(tiny_vars):
  x, target = _regression_batch()
  remat = ModifiedResNet(**TINY, norm="group", remat=True)
  # Same parameter tree, so checkpoints and optimiser state carry over.
  shapes = jax.eval_shape(remat.init, jax.random.key(0), x)
  assert (jax.tree.structure(shapes["params"])
          == jax.tree.structure(tiny_vars["params"]))
  # remat also lifts BatchNorm's mutable statistics in train mode.
  bn_remat = ModifiedResNet(**TINY, remat=True)
  _, stats = jax.eval_shape(
      lambda v: bn_remat.apply(v, x, train=True, mutable=["batch_stats"]),
      tiny_vars)
  assert (jax.tree.structure(stats["batch_stats"])
          == jax.tree.structure(tiny_vars["batch_stats"]))

  params = _perturb(tiny_vars["params"])
  l_plain, g_plain = _mse_and_grad(GROUP, params, x, target)
  l_remat, g_remat = _mse_and_grad(remat, params, x, target)
  np.testing.assert_allclose(l_plain, l_remat, rtol=1e-6)
  # Same maths, possibly different fusion: agree to float32 round-off. (A
  # per-leaf check would trip on k_proj's bias, whose true gradient is 0.)
  flat = lambda g: np.concatenate([np.ravel(x) for x in jax.tree.leaves(g)])
  a, b = flat(g_plain), flat(g_remat)
  assert np.linalg.norm(a - b) <= 1e-5 * np.linalg.norm(a)


def test_gradient_step_reduces_loss(tiny_vars):
  x, target = _regression_batch()
  params = tiny_vars["params"]
  loss0, grads = _mse_and_grad(GROUP, params, x, target)
  # Gradients reach the stem through every stage (not only the pool head).
  assert np.abs(grads["stem_conv1"]["kernel"]).max() > 0
  new = jax.tree.map(lambda p, g: p - 0.01 * g, params, grads)
  loss1, _ = _mse_and_grad(GROUP, new, x, target)
  assert loss1 < 0.95 * loss0


def test_rejects_bad_inputs(tiny_vars):
  model = PLAIN
  with pytest.raises(ValueError, match="divisible by 32"):
    model.apply(tiny_vars, _images(1, 48))
  with pytest.raises(ValueError, match="NHWC"):
    model.apply(tiny_vars, jnp.zeros((1, 3, 32, 32)))
  # Params built for 32 px carry 2 positional rows; 64 px needs 5.
  with pytest.raises(Exception, match="positional_embedding"):
    jax.eval_shape(model.apply, tiny_vars, _images(1, 64))
  with pytest.raises(ValueError, match="norm must be"):
    jax.eval_shape(ModifiedResNet(**TINY, norm="layer").init,
                   jax.random.key(0), _images(1, 32))


def test_sizes_table():
  assert set(RESNET_SIZES) >= {"rn50", "rn101", "rn_tiny"}
  for cfg in RESNET_SIZES.values():
    assert (cfg["width"] * 32) % cfg["heads"] == 0
