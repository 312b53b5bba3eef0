"""The PSD loss against plain NumPy, and the sharded path against the reference."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ml_collections import ConfigDict

from cvlg_jax import losses
from cvlg_jax.step import sharding


def _log_softmax(x):
  x = x - x.max(axis=1, keepdims=True)
  return x - np.log(np.exp(x).sum(axis=1, keepdims=True))


def _softmax(x):
  return np.exp(_log_softmax(x))


def numpy_infonce(u, v, s):
  logits = s * u.astype(np.float64) @ v.astype(np.float64).T
  eye = np.eye(len(u))
  return 0.5 * (-(eye * _log_softmax(logits)).sum(1).mean()
                - (eye * _log_softmax(logits.T)).sum(1).mean())


def numpy_psd(u, v, s, alpha, mask, temperature):
  """docs/design.md §1 with the target matrices written out explicitly."""
  logits = s * u.astype(np.float64) @ v.astype(np.float64).T
  eye = np.eye(len(u))
  total = 0.0
  for S in (logits, logits.T):
    teacher = _softmax(S / temperature)
    a = alpha * mask.astype(np.float64)[:, None]
    targets = (1 - a) * eye + a * teacher
    np.testing.assert_allclose(targets.sum(1), 1.0, rtol=1e-12)
    total += -(targets * _log_softmax(S)).sum(1).mean()
  return total / 2


def _embeddings(n=16, d=8, seed=0):
  rng = np.random.default_rng(seed)
  u = rng.normal(size=(n, d)).astype(np.float32)
  v = (u + 0.8 * rng.normal(size=(n, d))).astype(np.float32)
  norm = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)
  return norm(u), norm(v)


def test_clip_equals_numpy_infonce():
  u, v = _embeddings()
  loss, metrics = losses.contrastive_loss(u, v, 10.0)
  np.testing.assert_allclose(loss, numpy_infonce(u, v, 10.0), rtol=1e-5)
  np.testing.assert_allclose(metrics["clip_loss"], loss, rtol=1e-6)
  assert metrics["distilled"] == 1.0 and metrics["positive_mass"] == 1.0


@pytest.mark.parametrize("temperature", [1.0, 0.5, 2.0])
def test_psd_equals_numpy_reference(temperature):
  u, v = _embeddings(seed=1)
  mask = np.random.default_rng(2).random(16) < 0.5
  loss, metrics = losses.contrastive_loss(
      u, v, 14.0, alpha=0.4, distill_mask=mask, teacher_temperature=temperature)
  np.testing.assert_allclose(loss, numpy_psd(u, v, 14.0, 0.4, mask, temperature),
                             rtol=1e-5)
  np.testing.assert_allclose(metrics["distilled"], mask.mean(), rtol=1e-6)
  np.testing.assert_allclose(metrics["clip_loss"], numpy_infonce(u, v, 14.0),
                             rtol=1e-5)
  assert 0 < metrics["positive_mass"] < 1


def test_psd_with_zero_alpha_or_empty_mask_is_exactly_clip():
  u, v = _embeddings(seed=3)
  clip, _ = losses.contrastive_loss(u, v, 12.0)
  zero_alpha, _ = losses.contrastive_loss(u, v, 12.0, alpha=0.0,
                                          distill_mask=np.ones(16, bool))
  empty_mask, _ = losses.contrastive_loss(u, v, 12.0, alpha=0.7,
                                          distill_mask=np.zeros(16, bool))
  assert zero_alpha == clip and empty_mask == clip


def test_no_gradient_leaks_through_the_teacher():
  u, v = _embeddings(seed=4)
  mask = np.arange(16) % 3 == 0
  alpha, s = 0.6, 9.0

  def psd(u, v):
    return losses.contrastive_loss(u, v, s, alpha=alpha, distill_mask=mask)[0]

  # The same loss with the teacher distributions fed in as constants.
  logits = s * u @ v.T
  p_const = jax.nn.softmax(logits, axis=1)
  q_const = jax.nn.softmax(logits.T, axis=1)

  def constant_teacher(u, v):
    S = s * u @ v.T
    a = alpha * mask[:, None]
    eye = jnp.eye(16)
    ce = lambda S, T: -(T * jax.nn.log_softmax(S, axis=1)).sum(1).mean()
    return 0.5 * (ce(S, (1 - a) * eye + a * p_const)
                  + ce(S.T, (1 - a) * eye + a * q_const))

  g = jax.grad(psd, argnums=(0, 1))(u, v)
  g_ref = jax.grad(constant_teacher, argnums=(0, 1))(u, v)
  for a, b in zip(g, g_ref):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
  # ... and it differs from the gradient that *does* flow through softmax(S).
  def leaky(u, v):
    S = s * u @ v.T
    a = alpha * mask[:, None]
    eye = jnp.eye(16)
    ce = lambda S, T: -(T * jax.nn.log_softmax(S, axis=1)).sum(1).mean()
    return 0.5 * (ce(S, (1 - a) * eye + a * jax.nn.softmax(S, 1))
                  + ce(S.T, (1 - a) * eye + a * jax.nn.softmax(S.T, 1)))
  assert not np.allclose(jax.grad(leaky)(u, v), g[0], rtol=1e-4)


def test_same_pass_teacher_at_unit_temperature_only_reweights_clip_rows():
  """The identity behind docs/robustness.md's reading: with the teacher from
  the same forward pass at T = 1, d CE(S_i, (1 - a m_i) e_i + a m_i
  sg(softmax S_i)) / d S_i = (1 - a m_i) (softmax S_i - e_i). PSD's gradient
  is then CLIP's with the distilled rows down-weighted by (1 - alpha): the
  soft targets themselves carry none. T != 1 (or an EMA teacher) breaks it."""
  u, v = _embeddings(seed=5)
  mask = np.arange(16) % 2 == 0
  alpha, s = 0.5, 12.0
  weight = 1.0 - alpha * mask

  def reweighted_clip(u, v):
    S = s * u @ v.T
    rows = lambda S: -jnp.diagonal(jax.nn.log_softmax(S, axis=1))
    return 0.5 * ((weight * rows(S)).mean() + (weight * rows(S.T)).mean())

  def psd(temperature):
    return lambda u, v: losses.contrastive_loss(
        u, v, s, alpha=alpha, distill_mask=mask,
        teacher_temperature=temperature)[0]

  g_ref = jax.grad(reweighted_clip, argnums=(0, 1))(u, v)
  for a, b in zip(jax.grad(psd(1.0), argnums=(0, 1))(u, v), g_ref):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
  sharpened = jax.grad(psd(0.5), argnums=(0, 1))(u, v)
  assert not np.allclose(sharpened[0], g_ref[0], rtol=1e-3, atol=1e-5)
  # With every row distilled it is CLIP's gradient times (1 - alpha): what
  # Adam, being scale-invariant, cannot tell from CLIP.
  clip_grad = jax.grad(lambda u, v: losses.contrastive_loss(u, v, s)[0])(u, v)
  all_rows = jax.grad(lambda u, v: losses.contrastive_loss(
      u, v, s, alpha=alpha, distill_mask=np.ones(16, bool))[0])(u, v)
  np.testing.assert_allclose(all_rows, (1 - alpha) * clip_grad, rtol=1e-5,
                             atol=1e-7)


@pytest.mark.parametrize("data,fsdp", [(8, 1), (4, 2), (2, 4)])
@pytest.mark.parametrize("alpha", [0.0, 0.5])
def test_sharded_loss_and_grads_equal_single_device(data, fsdp, alpha):
  mesh = sharding.make_mesh(ConfigDict(dict(data=data, fsdp=fsdp)))
  u, v = _embeddings(n=32, d=16, seed=5)
  mask = np.asarray(losses.distill_mask(jax.random.key(7), 32, 0.5))
  scale = jnp.float32(11.0)

  def reference(u, v, s):
    return losses.contrastive_loss(u, v, s, alpha=alpha, distill_mask=mask,
                                   teacher_temperature=0.7)

  sharded_fn = losses.sharded_contrastive_loss(mesh)

  def sharded(u, v, s):
    return sharded_fn(u, v, s, losses.LossInputs(jnp.float32(alpha), mask,
                                                 jnp.float32(0.7)))

  rows = sharding.batch_sharding(mesh)
  u_s, v_s, mask_s = (jax.device_put(x, rows) for x in (u, v, mask))
  mask = mask_s
  grad = lambda f: jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2), has_aux=True))
  (loss_ref, m_ref), g_ref = grad(reference)(u, v, scale)
  (loss_sh, m_sh), g_sh = grad(sharded)(u_s, v_s, scale)
  np.testing.assert_allclose(loss_sh, loss_ref, rtol=1e-5)
  for k in m_ref:
    np.testing.assert_allclose(m_sh[k], m_ref[k], rtol=1e-5, err_msg=k)
  for a, b in zip(g_sh, g_ref):  # image grads, text grads, logit-scale grad
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_distill_mask_is_mesh_independent_and_exact_size():
  key = jax.random.fold_in(jax.random.key(0), 123)
  mask = losses.distill_mask(key, 64, 0.5)
  assert int(mask.sum()) == 32
  for data, fsdp in [(8, 1), (4, 2)]:
    mesh = sharding.make_mesh(ConfigDict(dict(data=data, fsdp=fsdp)))
    sharded = jax.jit(lambda k: losses.distill_mask(k, 64, 0.5),
                      out_shardings=sharding.batch_sharding(mesh))(key)
    np.testing.assert_array_equal(np.asarray(sharded), np.asarray(mask))
  assert losses.distill_mask(key, 64, 0.3, "all").all()
  other = losses.distill_mask(jax.random.fold_in(jax.random.key(0), 124), 64, 0.5)
  assert not np.array_equal(other, mask)


def test_alpha_schedule():
  f = lambda s, **kw: float(losses.alpha_schedule(s, alpha_final=0.5, ramp_steps=100, **kw))
  assert f(0) == 0.0 and f(50) == 0.25 and f(100) == 0.5 and f(500) == 0.5
  assert f(15, steps_per_epoch=10) == pytest.approx(0.05)
  assert f(19, steps_per_epoch=10) == pytest.approx(0.05)
  assert f(20, steps_per_epoch=10) == pytest.approx(0.1)


# ------------------------------------------------------------------ SigLIP ---

def _log_sigmoid(x):
  return -np.logaddexp(0.0, -x)


def numpy_siglip(u, v, s, b, alpha, mask, temperature):
  """Sigmoid loss with explicit PSD-mixed label matrices, both directions."""
  x = s * u.astype(np.float64) @ v.astype(np.float64).T + b
  eye = np.eye(len(u))
  a = alpha * mask.astype(np.float64)[:, None]
  total = 0.0
  for X in (x, x.T):
    labels = (1 - a) * eye + a * _softmax((X - b) / temperature)
    pair = -(labels * _log_sigmoid(X) + (1 - labels) * _log_sigmoid(-X))
    total += pair.sum(1).mean()
  return total / 2


@pytest.mark.parametrize("chunk", [0, 4])
@pytest.mark.parametrize("alpha,temperature", [(0.0, 1.0), (0.6, 0.5)])
def test_siglip_equals_numpy_reference(alpha, temperature, chunk):
  u, v = _embeddings(16, 8, seed=0)
  mask = np.random.default_rng(1).random(16) < 0.5
  loss, metrics = losses.contrastive_loss(
      u, v, 10.0, logit_bias=jnp.float32(-3.0), alpha=alpha, distill_mask=mask,
      teacher_temperature=temperature, kind="sigmoid", chunk_size=chunk)
  np.testing.assert_allclose(
      loss, numpy_siglip(u, v, 10.0, -3.0, alpha, mask, temperature), rtol=1e-5)
  # Without distillation it is SigLIP's sum over pairs / N with z = 2I - 1.
  x = 10.0 * u.astype(np.float64) @ v.T - 3.0
  siglip = -_log_sigmoid((2 * np.eye(16) - 1) * x).sum() / 16
  np.testing.assert_allclose(metrics["clip_loss"], siglip, rtol=1e-5)
  if alpha:
    assert abs(loss - siglip) > 1e-3  # the soft labels really change the loss


def test_sigmoid_needs_a_bias_and_chunks_must_divide():
  u, v = _embeddings(12, 4, seed=2)
  with pytest.raises(ValueError, match="logit_bias"):
    losses.contrastive_loss(u, v, 10.0, kind="sigmoid")
  with pytest.raises(ValueError, match="chunk_size=5 must divide the 12"):
    losses.contrastive_loss(u, v, 10.0, chunk_size=5)


def test_plain_clip_path_equals_psd_with_zero_alpha():
  """distill=False (no teacher work) is CLIP exactly; so is alpha = 0."""
  u, v = _embeddings(16, 8, seed=3)
  f = lambda distill, **kw: jax.value_and_grad(  # noqa: E731
      lambda u: losses.contrastive_loss(u, v, 12.0, distill=distill, **kw)[0])(u)
  (plain, g_plain), (psd, g_psd) = f(False), f(True, alpha=0.0)
  np.testing.assert_allclose(plain, psd, rtol=1e-6)
  np.testing.assert_allclose(g_plain, g_psd, rtol=1e-5, atol=1e-7)
