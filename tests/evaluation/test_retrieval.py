"""Retrieval recall@k with ties, against brute force; bad input refused."""

from __future__ import annotations

import numpy as np
import pytest

from cvlg_jax.evaluation.retrieval import retrieval_metrics


# 3 images x 6 captions, two captions per image. Worked by hand:
#   i2t: img0 best true 0.9, beaten by text3 (0.95)             -> rank 2
#        img1 best true 0.4, tied by false texts 0, 1, 4        -> rank 4
#        img2 best true 0.8, nothing >=                         -> rank 1
#   t2i: text0 1; text1 beaten by img1 -> 2; text2 beaten by img0 -> 2;
#        text3 beaten by img0 and img2 -> 3; text4 1;
#        text5 tied with img0 (0.7 == 0.7) -> 2 (pessimistic).
SIM = np.array([
    [0.9, 0.1, 0.5, 0.95, 0.2, 0.7],
    [0.4, 0.4, 0.4, 0.1, 0.4, 0.0],
    [0.0, 0.0, 0.1, 0.2, 0.8, 0.7],
], np.float32)


T2I = np.array([0, 0, 1, 1, 2, 2])


def test_retrieval_hand_made_with_ties():
  m = retrieval_metrics(SIM, T2I)
  expected = {
      "i2t_R@1": 1 / 3, "i2t_R@5": 1.0, "i2t_R@10": 1.0,
      "i2t_mean_rank": 7 / 3, "i2t_median_rank": 2.0,
      "t2i_R@1": 2 / 6, "t2i_R@5": 1.0, "t2i_R@10": 1.0,
      "t2i_mean_rank": 11 / 6, "t2i_median_rank": 2.0,
  }
  assert set(m) == set(expected)
  for k, v in expected.items():
    assert m[k] == pytest.approx(v), k


def test_retrieval_constant_matrix_is_worst_case():
  # 4 images x 3 captions: every true item ties with every false one.
  sim = np.zeros((4, 12), np.float32)
  m = retrieval_metrics(sim, np.repeat(np.arange(4), 3))
  assert m["i2t_mean_rank"] == 10.0  # all 9 false captions ahead
  assert m["i2t_R@5"] == 0.0 and m["i2t_R@10"] == 1.0
  assert m["t2i_mean_rank"] == 4.0 and m["t2i_R@1"] == 0.0


def _reference_ranks(sim, t2i):
  """Brute force: sort by (score desc, false before true), first true wins."""
  i2t = []
  for i in range(sim.shape[0]):
    order = sorted(range(sim.shape[1]), key=lambda j: (-sim[i, j], t2i[j] == i))
    i2t.append(1 + min(p for p, j in enumerate(order) if t2i[j] == i))
  t2i_r = []
  for j in range(sim.shape[1]):
    order = sorted(range(sim.shape[0]), key=lambda i: (-sim[i, j], i == t2i[j]))
    t2i_r.append(1 + order.index(t2i[j]))
  return np.array(i2t), np.array(t2i_r)


def test_retrieval_matches_brute_force_with_many_ties():
  rng = np.random.default_rng(0)
  n_img, caps = 17, 3
  sim = rng.integers(0, 4, size=(n_img, n_img * caps)).astype(np.float32)
  t2i = rng.permutation(np.repeat(np.arange(n_img), caps))
  ref_i2t, ref_t2i = _reference_ranks(sim, t2i)
  m = retrieval_metrics(sim, t2i)
  for name, ref in (("i2t", ref_i2t), ("t2i", ref_t2i)):
    for k in (1, 5, 10):
      assert m[f"{name}_R@{k}"] == pytest.approx(np.mean(ref <= k))
    assert m[f"{name}_mean_rank"] == pytest.approx(ref.mean())
    assert m[f"{name}_median_rank"] == pytest.approx(np.median(ref))


def test_retrieval_rejects_bad_input():
  with pytest.raises(ValueError, match="no caption"):
    retrieval_metrics(np.zeros((3, 2)), np.array([0, 1]))
  with pytest.raises(ValueError, match="text_to_image"):
    retrieval_metrics(np.zeros((2, 2)), np.array([0, 2]))
  with pytest.raises(ValueError, match="NaN"):
    retrieval_metrics(np.full((1, 1), np.nan), np.array([0]))
