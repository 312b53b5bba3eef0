"""The embedding-bank teacher: loss against NumPy, bank reads/writes against
NumPy on several meshes, the train step on two meshes, and the memory budget."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ml_collections import ConfigDict

from cvlg_jax.step import bank, sharding
from cvlg_jax import config as config_lib, losses
from cvlg_jax.step.plan import make_plan


def _norm(x):
  return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _embeddings(n, d, seed):
  rng = np.random.default_rng(seed)
  u = rng.normal(size=(n, d))
  return _norm(u), _norm(u + 0.8 * rng.normal(size=(n, d)))


def _log_softmax(x):
  x = x - x.max(axis=1, keepdims=True)
  return x - np.log(np.exp(x).sum(axis=1, keepdims=True))


def numpy_psd_with_teacher(u, v, s, alpha, mask, temperature, tu, tv, ts, valid):
  """PSD with another model's targets, written out as target matrices: the
  teacher's row i is softmax over the *valid* columns of ts tu_i.tv_j / T; a
  row without a teacher (not valid) keeps its one-hot target."""
  logits = s * u.astype(np.float64) @ v.astype(np.float64).T
  t = ts * tu.astype(np.float64) @ tv.astype(np.float64).T
  eye = np.eye(len(u))
  a = alpha * (mask & valid).astype(np.float64)[:, None]
  total = 0.0
  for S, T in ((logits, t), (logits.T, t.T)):
    T = np.where(valid[None, :], T / temperature, -np.inf)
    teacher = np.exp(T - T.max(axis=1, keepdims=True))
    teacher /= teacher.sum(axis=1, keepdims=True)
    targets = (1 - a) * eye + a * np.nan_to_num(teacher)
    np.testing.assert_allclose(targets.sum(1), 1.0, rtol=1e-12)
    total += -(targets * _log_softmax(S)).sum(1).mean()
  return total / 2


@pytest.mark.parametrize("chunk", [0, 4])
@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_bank_teacher_loss_equals_numpy(temperature, chunk):
  n = 16
  u, v = _embeddings(n, 8, seed=0)
  tu, tv = _embeddings(n, 8, seed=1)
  mask = np.random.default_rng(2).random(n) < 0.6
  valid = np.random.default_rng(3).random(n) < 0.7
  assert (mask & ~valid).any() and (mask & valid).any()
  teacher = losses.Teacher(tu, tv, jnp.float32(9.0), valid=jnp.asarray(valid))
  loss, metrics = losses.contrastive_loss(
      u, v, 12.0, alpha=0.5, distill_mask=mask, teacher_temperature=temperature,
      teacher=teacher, chunk_size=chunk)
  want = numpy_psd_with_teacher(u, v, 12.0, 0.5, mask, temperature, tu, tv,
                                9.0, valid)
  np.testing.assert_allclose(loss, want, rtol=1e-5)
  np.testing.assert_allclose(metrics["distilled"], (mask & valid).mean(),
                             rtol=1e-6)
  assert np.isfinite([float(x) for x in metrics.values()]).all()


def test_nothing_seen_is_exactly_clip():
  u, v = _embeddings(16, 8, seed=4)
  teacher = losses.Teacher(np.zeros_like(u), np.zeros_like(v), jnp.float32(9.0),
                           valid=jnp.zeros(16, bool))
  for chunk in (0, 4):
    loss, metrics = losses.contrastive_loss(u, v, 12.0, alpha=0.7,
                                            teacher=teacher, chunk_size=chunk)
    clip, _ = losses.contrastive_loss(u, v, 12.0)
    np.testing.assert_allclose(loss, clip, rtol=1e-6)
    assert metrics["distilled"] == 0 and metrics["positive_mass"] == 1.0
    assert metrics["teacher_top1_agreement"] == 0


@pytest.mark.parametrize("chunk", [0, 4])
def test_no_gradient_reaches_the_teacher(chunk):
  """Dense and streamed paths alike treat the teacher as a constant, whatever
  the caller does (the train step also stops it)."""
  u, v = _embeddings(16, 8, seed=5)
  tu, tv = _embeddings(16, 8, seed=6)

  def f(tu, tv, ts):
    teacher = losses.Teacher(tu, tv, ts, valid=jnp.arange(16) % 5 != 0)
    return losses.contrastive_loss(u, v, 12.0, alpha=0.5, teacher=teacher,
                                   teacher_temperature=0.7, chunk_size=chunk)[0]

  grads = jax.grad(f, argnums=(0, 1, 2))(tu, tv, jnp.float32(9.0))
  for g in grads:
    np.testing.assert_array_equal(g, np.zeros_like(g))


def test_another_models_targets_carry_gradient():
  """Unlike the same-pass teacher at T = 1 (test_losses), a bank teacher's
  targets change the gradient beyond a per-row weight: it is not CLIP's."""
  u, v = _embeddings(16, 8, seed=7)
  tu, tv = _embeddings(16, 8, seed=8)
  teacher = losses.Teacher(tu, tv, jnp.float32(12.0))
  g_bank = jax.grad(lambda u: losses.contrastive_loss(
      u, v, 12.0, alpha=0.5, teacher=teacher)[0])(u)
  g_self = jax.grad(lambda u: losses.contrastive_loss(u, v, 12.0, alpha=0.5)[0])(u)
  g_clip = jax.grad(lambda u: losses.contrastive_loss(u, v, 12.0)[0])(u)
  np.testing.assert_allclose(g_self, 0.5 * g_clip, rtol=1e-5, atol=1e-7)
  assert not np.allclose(g_bank, 0.5 * g_clip, rtol=1e-3, atol=1e-5)


def _mesh(data, fsdp):
  return sharding.make_mesh(ConfigDict(dict(data=data, fsdp=fsdp)))


@pytest.mark.parametrize("data,fsdp", [(8, 1), (4, 2), (2, 4)])
def test_bank_reads_and_writes_equal_numpy(data, fsdp):
  """Two updates (the second with duplicate ids, as a batch spanning an epoch
  boundary has) then a lookup, against plain NumPy indexing; the last copy of
  a duplicate wins."""
  mesh = _mesh(data, fsdp)
  rows = sharding.batch_sharding(mesh)
  num_examples, dim, batch = 45, 4, 16
  state = jax.jit(lambda: bank.zeros(num_examples, dim, "float32", 8),
                  out_shardings=bank.shardings(mesh))()
  assert state.image.shape == (48, 4)  # rounded up to the 8 devices
  assert state.image.sharding.spec == rows.spec
  rng = np.random.default_rng(0)
  ref_img, ref_txt = np.zeros((48, dim), np.float32), np.zeros((48, dim), np.float32)
  ref_seen = np.zeros(48, np.int32)
  write = jax.jit(lambda b, i, x, y, s: bank.update(b, i, x, y, s, mesh))
  for step, ids in ((3, rng.permutation(num_examples)[:batch]),
                    (7, np.r_[rng.permutation(num_examples)[:12], [0, 5, 0, 44]])):
    ids = ids.astype(np.int32)
    img = rng.normal(size=(batch, dim)).astype(np.float32)
    txt = rng.normal(size=(batch, dim)).astype(np.float32)
    for row, i in enumerate(ids):   # in order: a later duplicate overwrites
      ref_img[i], ref_txt[i], ref_seen[i] = img[row], txt[row], step + 1
    put = lambda x: jax.device_put(x, rows)  # noqa: E731
    state = write(state, put(ids), put(img), put(txt), step)
  np.testing.assert_array_equal(np.asarray(state.image), ref_img)
  np.testing.assert_array_equal(np.asarray(state.text), ref_txt)
  np.testing.assert_array_equal(np.asarray(state.seen_step), ref_seen)
  query = rng.integers(0, num_examples, batch).astype(np.int32)
  got = jax.jit(lambda b, i: bank.lookup(b, i, mesh))(state, jax.device_put(query, rows))
  for a, b in zip(got, (ref_img[query], ref_txt[query], ref_seen[query])):
    np.testing.assert_array_equal(np.asarray(a), b)
  assert got[0].sharding.spec == rows.spec


def test_bfloat16_bank_rounds_what_it_stores():
  mesh = _mesh(8, 1)
  rows = sharding.batch_sharding(mesh)
  state = jax.jit(lambda: bank.zeros(8, 4, "bfloat16", 8),
                  out_shardings=bank.shardings(mesh))()
  emb = np.random.default_rng(1).normal(size=(8, 4)).astype(np.float32)
  ids = np.arange(8, dtype=np.int32)[::-1].copy()
  put = lambda x: jax.device_put(x, rows)  # noqa: E731
  state = bank.update(state, put(ids), put(emb), put(emb), 0, mesh)
  img, _, seen = bank.lookup(state, put(ids), mesh)
  assert state.image.dtype == jnp.uint16 and img.dtype == jnp.float32  # bf16 bits
  np.testing.assert_array_equal(img, emb.astype(jnp.bfloat16).astype(np.float32))
  assert (np.asarray(seen) == 1).all()


def test_bank_memory_budget():
  assert bank.bytes_per_device(3_300_000, 512, "bfloat16", 1) == 3_300_000 * 2052
  # CC3M at d = 512 in bf16: ~6.3 GiB over the slice, split over its devices.
  total = bank.bytes_per_device(3_300_000, 512, "bfloat16", 8) * 8 / 2 ** 30
  assert 6.2 < total < 6.4
  c = config_lib.base_config()
  c.model.name, c.train.batch_size, c.data.num_train = "tiny", 64, 100_000
  c.loss.psd.teacher = "bank"
  make_plan(c, 8)  # 100k x 2 x 64 x 2 B: ~3 MiB/device
  c.loss.psd.bank_max_gib = 0.001
  with pytest.raises(config_lib.ConfigError, match=(
      r"bank_max_gib=0.001: the embedding bank needs 0.00[0-9]+ GiB per device "
      r"\(100000 examples x 2 x 64 bfloat16 over 8 devices\)")):
    make_plan(c, 8)
  c.loss.name = "clip"  # no teacher at all: no bank, no budget to check
  make_plan(c, 8)
