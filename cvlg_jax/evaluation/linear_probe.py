"""Linear probe: multinomial logistic regression on frozen image features.

Follows the CLIP paper's protocol in spirit (L-BFGS logistic regression, L2
strength picked on a held-out part of train, refit on all of train), but in
JAX so it runs on the accelerator next to the model instead of in sklearn:
  * features are standardised with the fitting split's mean / std, so one L2
    grid suits any backbone's feature scale;
  * loss = mean cross-entropy + l2/2 * ||W||^2 (bias not penalised);
  * full-batch optax L-BFGS from zero init, so results are deterministic;
  * every fit (grid search and refit) shares one compilation per shape.
Full-batch means train features must fit in one device's memory (ImageNet-1k
at d=512 in f32 is ~2.6 GB).
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from cvlg_jax.evaluation.common import register

DEFAULT_L2_GRID = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)


@functools.partial(jax.jit, static_argnames=("num_classes", "max_iters"))
def _fit(x, y, weight, l2, *, num_classes: int, max_iters: int, tol: float):
  """One L-BFGS fit -> (params, iterations used).

  ``weight`` (0/1 per row) selects the fitting rows, so the held-out search
  and the refit share one array shape and hence one compilation.
  """

  def loss(p):
    logits = x @ p["w"] + p["b"]
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, y)
    return (jnp.sum(weight * ce) / jnp.sum(weight)
            + 0.5 * l2 * jnp.sum(p["w"] ** 2))

  opt = optax.lbfgs()
  value_and_grad = optax.value_and_grad_from_state(loss)
  params = {"w": jnp.zeros((x.shape[1], num_classes), x.dtype),
            "b": jnp.zeros((num_classes,), x.dtype)}

  def cond(carry):
    _, state = carry
    count = optax.tree_utils.tree_get(state, "count")
    grad = optax.tree_utils.tree_get(state, "grad")
    return (count == 0) | ((count < max_iters) &
                           (optax.tree_utils.tree_norm(grad) > tol))

  def body(carry):
    p, state = carry
    value, grad = value_and_grad(p, state=state)
    updates, state = opt.update(grad, state, p, value=value, grad=grad,
                                value_fn=loss)
    return optax.apply_updates(p, updates), state

  p, state = jax.lax.while_loop(cond, body, (params, opt.init(params)))
  return p, optax.tree_utils.tree_get(state, "count")


def fit_logistic_regression(x: np.ndarray, y: np.ndarray, num_classes: int,
                            l2: float, *, rows: np.ndarray | None = None,
                            max_iters: int = 500, tol: float = 1e-5):
  """Fits on ``x[rows]`` (default all), standardised by those rows' stats.

  Returns ``predict(x) -> int labels``, which applies the same
  standardisation so callers never handle the statistics.
  """
  x = np.asarray(x, np.float32)
  weight = np.zeros(len(x), np.float32)
  weight[slice(None) if rows is None else rows] = 1.0
  fit_rows = x[weight > 0]
  mean = fit_rows.mean(axis=0)
  std = fit_rows.std(axis=0)
  std = np.where(std < 1e-8, 1.0, std)
  params, _ = _fit(jnp.asarray((x - mean) / std), jnp.asarray(y, jnp.int32),
                   jnp.asarray(weight), jnp.float32(l2),
                   num_classes=num_classes, max_iters=max_iters, tol=tol)
  w, b = np.asarray(params["w"]), np.asarray(params["b"])

  def predict(xs):
    logits = ((np.asarray(xs, np.float32) - mean) / std) @ w + b
    return np.argmax(logits, axis=1)

  return predict


def split_train_val(num: int, val_fraction: float, seed: int):
  """Seeded random (train_idx, val_idx) split of ``range(num)``."""
  if not 0.0 < val_fraction < 1.0:
    raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
  num_val = int(round(num * val_fraction))
  if num_val < 1 or num_val >= num:
    raise ValueError(f"{num} training examples are too few to hold out "
                     f"val_fraction={val_fraction}")
  perm = np.random.default_rng(seed).permutation(num)
  return np.sort(perm[num_val:]), np.sort(perm[:num_val])


def linear_probe(train_x: np.ndarray, train_y: np.ndarray,
                 test_x: np.ndarray, test_y: np.ndarray, *,
                 num_classes: int | None = None,
                 l2_grid: Sequence[float] = DEFAULT_L2_GRID,
                 val_fraction: float = 0.2, seed: int = 0,
                 max_iters: int = 500) -> dict[str, float]:
  """Picks l2 on a seeded held-out part of train, refits on all of train.

  Returns ``top1`` (test accuracy, a fraction), ``val_top1`` of the chosen l2,
  and ``l2``. Ties in validation accuracy go to the stronger l2 (the simpler
  model), so the choice does not depend on the grid's order.
  """
  train_x, test_x = np.asarray(train_x), np.asarray(test_x)
  train_y = np.asarray(train_y, np.int64)
  test_y = np.asarray(test_y, np.int64)
  if train_x.ndim != 2 or test_x.ndim != 2 or train_x.shape[1] != test_x.shape[1]:
    raise ValueError(f"features must be [n, d] with equal d, got "
                     f"{train_x.shape} and {test_x.shape}")
  if train_y.shape != (len(train_x),) or test_y.shape != (len(test_x),):
    raise ValueError("labels must be [n] matching their features")
  if not l2_grid:
    raise ValueError("l2_grid is empty")
  if num_classes is None:
    num_classes = int(max(train_y.max(), test_y.max())) + 1
  grid = sorted((float(v) for v in l2_grid), reverse=True)

  tr, va = split_train_val(len(train_x), val_fraction, seed)
  val_acc = []
  for l2 in grid:
    predict = fit_logistic_regression(train_x, train_y, num_classes, l2,
                                      rows=tr, max_iters=max_iters)
    val_acc.append(float(np.mean(predict(train_x[va]) == train_y[va])))
  best = int(np.argmax(val_acc))  # first max = strongest l2 among ties

  predict = fit_logistic_regression(train_x, train_y, num_classes, grid[best],
                                    max_iters=max_iters)
  return {"top1": float(np.mean(predict(test_x) == test_y)),
          "val_top1": val_acc[best], "l2": grid[best]}


class LinearProbeEvaluator:
  """``config.eval.<name> = dict(type="linear_probe", dataset=...,
  split=None, train_split=None, data_dir=None, max_examples=None,
  max_train_examples=None, l2_grid=DEFAULT_L2_GRID, val_fraction=0.2,
  seed=0, max_iters=500)``. Features are the context's normalised image
  embeddings (the only view of the model evaluators get), so numbers sit a
  little below probes on pre-projection features."""

  KEYS = ("dataset", "split", "train_split", "data_dir", "max_examples",
          "max_train_examples", "l2_grid", "val_fraction", "seed", "max_iters")

  def __init__(self, cfg, ctx):
    from cvlg_jax.evaluation import datasets
    datasets.check_config(cfg, self.KEYS, "linear_probe")
    self._ctx, self._cfg = ctx, cfg
    seed = cfg.get("seed", 0)
    self._train = datasets.open_classification(
        cfg.dataset, cfg.get("train_split"), cfg.get("data_dir"), train=True)
    self._test = datasets.open_classification(
        cfg.dataset, cfg.get("split"), cfg.get("data_dir"))
    if self._train.classnames != self._test.classnames:
      raise ValueError(f"linear probe on {cfg.dataset!r}: train and test splits "
                       "have different classes")
    self._train_idx = datasets.sample_indices(
        len(self._train.source), cfg.get("max_train_examples"), seed)
    self._test_idx = datasets.sample_indices(
        len(self._test.source), cfg.get("max_examples"), seed)

  def _features(self, params, data, indices, skipped):
    from cvlg_jax.evaluation import datasets
    emb, labels = datasets.embed_source(
        self._ctx.encode_images, params, data.source, indices,
        batch_size=self._ctx.batch_size, image_size=self._ctx.image_size,
        skipped=skipped)
    labels = np.asarray(labels)
    return emb[labels >= 0], labels[labels >= 0]

  def run(self, params) -> dict[str, float]:
    from cvlg_jax.evaluation import datasets
    cfg = self._cfg
    skips = {s: datasets.Skipped(f"linear probe on {cfg.dataset} ({s} split)")
             for s in ("train", "test")}
    train_x, train_y = self._features(params, self._train, self._train_idx,
                                      skips["train"])
    test_x, test_y = self._features(params, self._test, self._test_idx,
                                    skips["test"])
    metrics = linear_probe(
        train_x, train_y, test_x, test_y,
        num_classes=len(self._train.classnames),
        l2_grid=tuple(cfg.get("l2_grid", DEFAULT_L2_GRID)),
        val_fraction=cfg.get("val_fraction", 0.2), seed=cfg.get("seed", 0),
        max_iters=cfg.get("max_iters", 500))
    metrics["num_train"] = float(len(train_y))
    metrics["num_test"] = float(len(test_y))
    for split, skipped in skips.items():  # images that did not decode
      metrics.update(skipped.metrics(f"num_{split}_skipped"))
    return metrics


@register("linear_probe")
def make_linear_probe(cfg, ctx) -> LinearProbeEvaluator:
  return LinearProbeEvaluator(cfg, ctx)
