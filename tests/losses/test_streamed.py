"""The streamed kernel (losses_streamed.py) against the dense loss for every
loss and teacher, sharded and on one device; its explicit shared-softmax
path; and its memory."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ml_collections import ConfigDict

from cvlg_jax import losses
from cvlg_jax.step import sharding


def _embeddings(n, d, seed):
  rng = np.random.default_rng(seed)
  u = rng.normal(size=(n, d))
  v = u + 0.8 * rng.normal(size=(n, d))
  norm = lambda x: (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
  return norm(u), norm(v)


# (kind, distill, teacher, temperature, mesh, chunk): CLIP, PSD with the self
# teacher (T = 1 and T != 1), the EMA teacher and the bank teacher (some pairs
# without embeddings), SigLIP and SigLIP + PSD. T is passed as a Python
# float, as the train step does; T = 1 runs with unit_temperature=True.
CASES = [
    ("softmax", False, None, 1.0, (8, 1), 2),
    ("softmax", True, None, 1.0, (8, 1), 8),   # T = 1: shared-softmax kernel
    ("softmax", True, None, 0.5, (4, 2), 4),
    ("softmax", True, "ema", 0.7, (8, 1), 1),
    ("softmax", True, "bank", 1.0, (8, 1), 2),
    ("softmax", True, "bank", 0.5, (2, 4), 4),
    ("sigmoid", False, None, 1.0, (4, 2), 2),
    ("sigmoid", True, "ema", 2.0, (4, 2), 4),
    ("sigmoid", True, "bank", 1.0, (4, 2), 2),
]


@pytest.mark.parametrize("kind,distill,teacher,temperature,mesh_shape,chunk", CASES)
def test_chunked_equals_unchunked(kind, distill, teacher, temperature,
                                  mesh_shape, chunk):
  """Loss, every metric and the gradients w.r.t. both embeddings, the logit
  scale and the bias: streamed == dense, sharded and on one device."""
  n = 32
  mesh = sharding.make_mesh(ConfigDict(dict(data=mesh_shape[0],
                                            fsdp=mesh_shape[1])))
  rows = sharding.batch_sharding(mesh)
  u, v = _embeddings(n, 16, seed=5)
  tu, tv = _embeddings(n, 16, seed=6)
  mask = np.asarray(losses.distill_mask(jax.random.key(7), n, 0.5))
  put = lambda x: jax.device_put(x, rows)  # noqa: E731
  # A bank teacher has no embeddings yet for every 3rd pair.
  valid = put(np.arange(n) % 3 != 1) if teacher == "bank" else None
  t = (None if teacher is None
       else losses.Teacher(put(tu), put(tv), jnp.float32(9.0), valid))
  bias = jnp.float32(-4.0) if kind == "sigmoid" else None

  def sharded(c):
    fn = losses.sharded_contrastive_loss(mesh, kind=kind, chunk_size=c,
                                         distill=distill, unit_temperature=unit)
    return lambda u, v, s, b: fn(u, v, s, losses.LossInputs(
        jnp.float32(0.5), put(mask), temperature, t), b)

  def single(c):
    return lambda u, v, s, b: losses.contrastive_loss(
        u, v, s, alpha=0.5, distill_mask=mask, teacher_temperature=temperature,
        teacher=t, logit_bias=b, kind=kind, chunk_size=c, distill=distill,
        unit_temperature=unit)

  unit = temperature == 1.0  # the caller's promise: the shared-softmax path
  argnums = (0, 1, 2) if bias is None else (0, 1, 2, 3)
  run = lambda f, *x: jax.jit(jax.value_and_grad(  # noqa: E731
      f, argnums=argnums, has_aux=True))(*x, jnp.float32(11.0), bias)
  for dense, streamed, inputs in ((sharded(0), sharded(chunk), (put(u), put(v))),
                                  (single(0), single(chunk), (u, v))):
    (loss_d, m_d), g_d = run(dense, *inputs)
    (loss_s, m_s), g_s = run(streamed, *inputs)
    np.testing.assert_allclose(loss_s, loss_d, rtol=1e-5)
    assert m_s.keys() == m_d.keys()
    for key in m_d:
      np.testing.assert_allclose(m_s[key], m_d[key], rtol=1e-5, atol=1e-7,
                                 err_msg=key)
    for a, b in zip(g_s[:2], g_d[:2]):  # image and text embeddings
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    # Scale and bias gradients are means of O(1) per-row terms that cancel to
    # O(1e-3): rtol 1e-5 of the terms, not of the small result.
    for a, b in zip(g_s[2:], g_d[2:]):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  if distill:  # the diagnostics are live, so their equality means something
    assert 0 < m_d["hardest_negative_mass"] and 0 < m_d["positive_mass"] < 1
  if teacher:
    assert 0 < m_d["teacher_top1_agreement"] < 1


def _temp_bytes(mesh, n, d, chunk):
  fn = losses.sharded_contrastive_loss(mesh, chunk_size=chunk)
  f = lambda u, v, s, m: fn(u, v, s, losses.LossInputs(  # noqa: E731
      jnp.float32(0.5), m, jnp.float32(1.0)))[0]
  rows = sharding.batch_sharding(mesh)
  emb = jax.ShapeDtypeStruct((n, d), jnp.float32, sharding=rows)
  mask = jax.ShapeDtypeStruct((n,), jnp.bool_, sharding=rows)
  compiled = jax.jit(jax.grad(f, argnums=(0, 1, 2))).lower(
      emb, emb, jax.ShapeDtypeStruct((), jnp.float32), mask).compile()
  return compiled.memory_analysis().temp_size_in_bytes


def test_streamed_loss_memory_is_linear_in_the_batch():
  """Dense per-device temporaries grow ~4x when N doubles (n x N logits);
  streamed ones ~2x (n x chunk and n x d)."""
  mesh = sharding.make_mesh(ConfigDict(dict(data=8, fsdp=1)))
  dense = [_temp_bytes(mesh, n, 32, 0) for n in (1024, 2048)]
  streamed = [_temp_bytes(mesh, n, 32, 32) for n in (1024, 2048)]
  assert dense[1] / dense[0] > 3.2, dense
  assert streamed[1] / streamed[0] < 2.3, streamed
  assert streamed[1] < 0.25 * dense[1], (streamed, dense)


def test_shared_softmax_path_is_chosen_explicitly():
  """unit_temperature=True (the caller's promise that T = 1) selects the
  shared-softmax kernel; with the same result as the general one, and a
  contradicting concrete T is refused rather than silently ignored."""
  u, v = _embeddings(16, 8, seed=9)
  kw = dict(alpha=0.5, chunk_size=4)
  shared = losses.contrastive_loss(u, v, 11.0, unit_temperature=True, **kw)
  general = losses.contrastive_loss(u, v, 11.0, **kw)
  np.testing.assert_allclose(shared[0], general[0], rtol=1e-6)
  with pytest.raises(ValueError, match="unit_temperature=True but the teacher "
                     "temperature is 0.5"):
    losses.contrastive_loss(u, v, 11.0, unit_temperature=True,
                            teacher_temperature=0.5, **kw)
