"""Zero-shot accuracy and prompt-ensembled class embeddings."""

from __future__ import annotations

import numpy as np
import pytest

from cvlg_jax.evaluation.zeroshot import class_text_embeddings
from cvlg_jax.evaluation.zeroshot import zeroshot_accuracy
from cvlg_jax.evaluation.zeroshot import zeroshot_metrics


def test_zeroshot_perfect_and_adversarial():
  rng = np.random.default_rng(1)
  num_classes = 10
  class_emb = np.eye(num_classes, 16, dtype=np.float32)
  labels = rng.integers(0, num_classes, size=50)
  perfect = class_emb[labels] + 0.01 * rng.normal(size=(50, 16))
  m = zeroshot_accuracy(perfect, class_emb, labels)
  assert m == {"top1": 1.0, "top5": 1.0}
  # Pointing away from the true class puts it last of 10: not even in top 5.
  m = zeroshot_accuracy(-class_emb[labels], class_emb, labels)
  assert m == {"top1": 0.0, "top5": 0.0}
  # All scores tied: pessimistic ties give 0, not an argsort accident.
  m = zeroshot_accuracy(np.zeros((50, 16)), class_emb, labels, topk=(1, 5))
  assert m == {"top1": 0.0, "top5": 0.0}


def test_zeroshot_topk_known_partial():
  class_emb = np.eye(6, dtype=np.float32)
  # Image 0: true class 0 scored 3rd; image 1: true class 1 first;
  # image 2: true class 2 scored 6th (last).
  img = np.array([[0.5, 0.0, 0.9, 0.8, 0.0, 0.0],
                  [0.0, 1.0, 0.2, 0.0, 0.0, 0.0],
                  [0.1, 0.1, 0.0, 0.1, 0.1, 0.1]], np.float32)
  m = zeroshot_accuracy(img, class_emb, np.array([0, 1, 2]), topk=(1, 2, 3, 5))
  assert m == pytest.approx({"top1": 1 / 3, "top2": 1 / 3, "top3": 2 / 3,
                             "top5": 2 / 3})


class _LookupTokenizer:
  """Each whole prompt is one token, so a table gives its embedding."""

  def __init__(self, prompts):
    self.ids = {p: i for i, p in enumerate(prompts)}
    self.calls = []

  def __call__(self, texts):
    self.calls.append(len(texts))
    return np.array([[self.ids[t]] for t in texts], np.int32)


def test_class_text_embeddings_prompt_ensemble():
  prompts = ["a cat", "the cat", "a dog", "the dog"]
  table = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [0, 0, 1]], np.float32)
  tok = _LookupTokenizer(prompts)
  encode = lambda params, tokens: table[tokens[:, 0]] * params
  emb = class_text_embeddings(encode, 3.0, tok, ["cat", "dog"],
                              ["a {}", lambda c: f"the {c}"], batch_size=3)
  # cat: mean of e0, e1 renormalised; dog: both prompts give e2. The params
  # scale (3.0) must not matter because each prompt is normalised first.
  np.testing.assert_allclose(emb, [[2 ** -0.5, 2 ** -0.5, 0], [0, 0, 1]],
                             atol=1e-6)
  assert tok.calls == [3, 1]  # batched by batch_size
  assert emb.dtype == np.float32


def _balanced_accuracy_reference(labels, pred):
  """Per-class recall from a confusion matrix, averaged over the classes that
  occur in ``labels`` (sklearn's balanced_accuracy_score, written out)."""
  classes = np.unique(labels)
  confusion = np.zeros((labels.max() + 1, max(labels.max(), pred.max()) + 1))
  np.add.at(confusion, (labels, pred), 1)
  return np.mean([confusion[c, c] / confusion[c].sum() for c in classes])


def test_mean_per_class_recall_matches_a_confusion_matrix_reference():
  rng = np.random.default_rng(3)
  num_classes, n = 7, 200
  class_emb = rng.normal(size=(num_classes, 16)).astype(np.float32)
  # Unbalanced classes, class 6 never occurs: balanced accuracy differs from
  # top-1 and must average over the 6 classes present only.
  labels = rng.choice(6, size=n, p=[0.5, 0.2, 0.1, 0.1, 0.05, 0.05])
  image_emb = (class_emb[labels] + 2.0 * rng.normal(size=(n, 16))).astype(np.float32)
  m = zeroshot_metrics(image_emb, class_emb, labels)
  pred = np.argmax(image_emb @ class_emb.T, axis=1)  # continuous: no ties
  assert m["mean_per_class_recall"] == pytest.approx(
      _balanced_accuracy_reference(labels, pred), abs=1e-12)
  assert m["top1"] == pytest.approx(np.mean(pred == labels), abs=1e-12)
  assert m["mean_per_class_recall"] != pytest.approx(m["top1"], abs=1e-3)
  assert {k: m[k] for k in ("top1", "top5")} == zeroshot_accuracy(
      image_emb, class_emb, labels)


def test_mean_per_class_recall_known_answer_and_pessimistic_ties():
  class_emb = np.eye(3, dtype=np.float32)
  # Class 0: 2 of 3 right; class 1: 1 of 1; class 2: 0 of 1 (a tie with
  # class 0 counts against the model, as top1 does).
  img = np.array([[1, 0, 0], [1, 0, 0], [0, 1, 0], [0, 1, 0], [1, 0, 1]],
                 np.float32)
  m = zeroshot_metrics(img, class_emb, np.array([0, 0, 0, 1, 2]), topk=(1,))
  assert m == pytest.approx({"top1": 3 / 5,
                             "mean_per_class_recall": (2 / 3 + 1 + 0) / 3})
