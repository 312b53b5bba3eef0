"""What every evaluator gets, and the registry that builds them from config.

An evaluator is built once per run from its ``config.eval.<name>`` entry and an
:class:`EvalContext`, then ``run(params)`` is called every eval period (``params``:
whatever the encode functions take -- the trainer passes the model's variables,
params plus BatchNorm statistics); it
returns flat ``{metric_name: float}`` that the caller prefixes with the entry
name. Keeping the model behind two encode functions means evaluators never see
meshes, shardings or Flax modules.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Protocol

import numpy as np

from cvlg_jax.data.local_sources import DatasetUnavailable  # noqa: F401
from cvlg_jax.data.tokenizers import Tokenizer

Params = Any


@dataclasses.dataclass(frozen=True)
class EvalContext:
  """encode_* take any batch size (padding/sharding is handled inside) and
  return float32 L2-normalised numpy embeddings [B, d]. Images are float32
  [B, image_size, image_size, 3], CLIP-normalised (see data.transforms).

  ``train_data`` (optional) returns the run's ``data.pipeline.TrainData``
  (the training source, its trained and held-out indices), for evaluators
  that look at the training data itself (memorisation, heldout).
  """
  encode_images: Callable[[Params, np.ndarray], np.ndarray]
  encode_texts: Callable[[Params, np.ndarray], np.ndarray]
  tokenizer: Tokenizer
  image_size: int
  batch_size: int = 256
  train_data: Callable[[], Any] | None = None


class Evaluator(Protocol):

  def run(self, params: Params) -> dict[str, float]:
    ...


_REGISTRY: dict[str, Callable[..., Evaluator]] = {}
# Types that read the run's training examples (EvalContext.train_data).
_READS_TRAIN_DATA: set[str] = set()


def register(name: str, *, reads_train_data: bool = False):
  """Decorator: ``@register("zeroshot") def make(cfg, ctx) -> Evaluator``."""
  def deco(factory):
    if name in _REGISTRY:
      raise ValueError(f"evaluator type {name!r} registered twice")
    _REGISTRY[name] = factory
    if reads_train_data:
      _READS_TRAIN_DATA.add(name)
    return factory
  return deco


def reads_train_data(eval_config) -> bool:
  """Whether any ``config.eval`` entry reads the training examples."""
  _import_builtin_evaluators()
  return any(e.type in _READS_TRAIN_DATA for e in eval_config.values())


def registered_types() -> tuple[str, ...]:
  _import_builtin_evaluators()
  return tuple(sorted(_REGISTRY))


def build(cfg, ctx: EvalContext) -> Evaluator:
  _import_builtin_evaluators()
  kind = cfg.type
  if kind not in _REGISTRY:
    raise ValueError(f"eval type {kind!r} is unknown; allowed: "
                     f"{', '.join(sorted(_REGISTRY))}")
  return _REGISTRY[kind](cfg, ctx)


def _import_builtin_evaluators():
  # Imported for their @register side effect; lazily, so that importing the
  # registry does not pull in TFDS.
  import importlib
  for mod in ("synthetic", "zeroshot", "retrieval", "linear_probe",
              "memorisation"):
    try:
      importlib.import_module(f"cvlg_jax.evaluation.{mod}")
    except ModuleNotFoundError as e:
      if e.name != f"cvlg_jax.evaluation.{mod}":
        raise


def build_all(eval_config, ctx: EvalContext) -> tuple[dict[str, Evaluator],
                                                       dict[str, str]]:
  """(evaluators, skipped) for every ``config.eval`` entry.

  An entry whose data set is not on this machine is skipped with its reason
  (what to download) instead of stopping training or the eval suite.
  """
  evaluators, skipped = {}, {}
  for name, cfg in eval_config.items():
    try:
      evaluators[name] = build(cfg, ctx)
    except DatasetUnavailable as e:
      skipped[name] = str(e)
  return evaluators, skipped


def due(eval_config, name: str, step: int, *, default_every: int,
        last_step: int) -> bool:
  """Whether evaluator ``name`` runs at ``step`` (its own ``every`` or the
  run's ``train.eval_every``; always at the last step)."""
  every = eval_config[name].get("every", default_every) or default_every
  return step % every == 0 or step == last_step


def run_all(evaluators: dict[str, Evaluator], params) -> dict[str, float]:
  """``{"<entry>/<metric>": value}`` over the given evaluators."""
  out = {}
  for name, evaluator in evaluators.items():
    out.update({f"{name}/{k}": float(v) for k, v in evaluator.run(params).items()})
  return out
