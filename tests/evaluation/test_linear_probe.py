"""Linear probe: separable data is learned, random labels stay at chance, and
the JAX L-BFGS reaches the same optimum as scipy.

Every test uses 400 training rows x 16 features x 4 classes, so the whole
file pays for one L-BFGS compilation.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.optimize
import scipy.special

from cvlg_jax.evaluation import linear_probe as lp


def _clusters(rng, n, num_classes, dim, sep):
  centres = rng.normal(size=(num_classes, dim)) * sep
  y = rng.integers(0, num_classes, size=n)
  return (centres[y] + rng.normal(size=(n, dim))).astype(np.float32), y


def test_separable_features_reach_full_accuracy():
  rng = np.random.default_rng(0)
  x, y = _clusters(rng, 600, 4, 16, sep=6.0)
  m = lp.linear_probe(x[:400], y[:400], x[400:], y[400:], num_classes=4,
                      l2_grid=(1e-4, 1e-2, 1.0), seed=0)
  assert m["top1"] >= 0.99
  assert m["val_top1"] >= 0.99
  assert m["l2"] in (1e-4, 1e-2, 1.0)


def test_random_labels_stay_near_chance():
  rng = np.random.default_rng(1)
  x = rng.normal(size=(1000, 16)).astype(np.float32)
  y = rng.integers(0, 4, size=1000)
  m = lp.linear_probe(x[:400], y[:400], x[400:], y[400:], num_classes=4,
                      l2_grid=(1e-3, 1e-1), seed=0)
  assert abs(m["top1"] - 0.25) < 0.07


def test_deterministic():
  rng = np.random.default_rng(2)
  x, y = _clusters(rng, 500, 4, 16, sep=0.5)
  kw = dict(num_classes=4, l2_grid=(1e-3, 1e-1), seed=3)
  a = lp.linear_probe(x[:400], y[:400], x[400:], y[400:], **kw)
  b = lp.linear_probe(x[:400], y[:400], x[400:], y[400:], **kw)
  assert a == b


def test_lbfgs_matches_scipy_optimum():
  rng = np.random.default_rng(3)
  n, d, c, l2 = 400, 16, 4, 1e-2
  x, y = _clusters(rng, n, c, d, sep=0.7)
  x = (x - x.mean(0)) / x.std(0)
  # Only the first 300 rows are fitted: the zero-weight rows must not count.
  weight = (np.arange(n) < 300).astype(np.float32)
  params, iters = lp._fit(x, y.astype(np.int32), weight, np.float32(l2),
                          num_classes=c, max_iters=500, tol=1e-5)
  w, b = np.asarray(params["w"]), np.asarray(params["b"])

  def loss(theta):
    w_, b_ = theta[:-c].reshape(d, c), theta[-c:]
    logits = x[:300].astype(np.float64) @ w_ + b_
    ce = scipy.special.logsumexp(logits, axis=1) - logits[np.arange(300), y[:300]]
    return ce.mean() + 0.5 * l2 * np.sum(w_ ** 2)

  ref = scipy.optimize.minimize(loss, np.zeros(d * c + c), method="L-BFGS-B",
                                options=dict(gtol=1e-10, ftol=1e-14))
  ours = loss(np.concatenate([w.ravel(), b]))
  assert ours == pytest.approx(ref.fun, abs=1e-5)
  assert int(iters) < 500


def test_split_is_seeded_and_disjoint():
  tr, va = lp.split_train_val(10, 0.3, seed=0)
  tr2, va2 = lp.split_train_val(10, 0.3, seed=0)
  assert len(va) == 3 and len(tr) == 7
  assert set(tr) | set(va) == set(range(10)) and not set(tr) & set(va)
  np.testing.assert_array_equal(va, va2)
  with pytest.raises(ValueError, match="too few"):
    lp.split_train_val(2, 0.1, seed=0)
