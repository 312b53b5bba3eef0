"""Start from another checkpoint's weights (``train.init_from``).

The source is any step directory whose ``state`` item has params: a cvlg_jax
run's checkpoint or the output of ``python -m cvlg_jax.pretrained import``
(given as the step directory or as its workdir, whose newest step is used).
Only the params (logit scale included) and the model state (BatchNorm
statistics) are taken; the optimizer state, step counter and RNG stay as
``init_state`` made them, so fine-tuning starts its schedules at step 0.
``train.init_from_params`` (the ``train.freeze`` syntax) loads only some of
them, e.g. ``image`` for LiT's pretrained image tower and a text tower (any
tokenizer) from scratch; the rest keep their fresh initialisation. The
EMA teacher (``loss.psd.teacher="ema"``) starts from the loaded params, as it
starts from the initial params of a fresh run.

Mistakes surface as one-line :class:`ConfigError`\\ s before anything
compiles: weights whose shapes differ from the configured model, or a model
recorded (in the source workdir's ``config.json``) with another
``model.activation`` / ``model.layer_norm_epsilon``, which would run the same
weights as a different function.
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
from flax import traverse_util

from cvlg_jax.run import checkpointing
from cvlg_jax import fileio
from cvlg_jax.config import ConfigError, base_config
from cvlg_jax.step import freeze as freeze_lib

# Function-defining model options recorded in config.json (defaults for
# runs recorded before the option existed).
FUNCTION_OPTIONS = ("activation", "layer_norm_epsilon")
# Params a source may lack: SigLIP's bias when fine-tuning a CLIP checkpoint
# with the sigmoid loss keeps its initial value.
OPTIONAL_PARAMS = (("logit_bias",),)


# Not cvlg_jax.evaluate's helper: importing that CLI module from `python -m
# cvlg_jax.main` (or from itself run as __main__) would define its flags twice.
find_step_dir = checkpointing.find_step_dir


def recorded_model(step_dir: str) -> dict | None:
  """``model`` group of the source's ``WORKDIR/config.json``, if recorded."""
  record = os.path.join(os.path.dirname(os.path.dirname(step_dir)), "config.json")
  if not fileio.exists(record):
    return None
  model = json.loads(fileio.read_text(record)).get("model", {})
  defaults = base_config().model
  return {k: model.get(k, defaults[k]) for k in ("name", *FUNCTION_OPTIONS)}


def _shape_mismatches(saved, target) -> tuple[list[str], list[tuple]]:
  """(differences, optional paths the source lacks) of two flat shape maps."""
  saved = {p: tuple(m.shape) for p, m in saved.items()}
  target = {p: tuple(m.shape) for p, m in target.items()}
  lacking = [p for p in target if p not in saved and p[1:] in OPTIONAL_PARAMS]
  diffs = [f"{'/'.join(p[1:])} {saved.get(p, 'missing')} in checkpoint vs "
           f"{target.get(p, 'missing')} in model"
           for p in sorted(set(saved) | set(target), key=str)
           if saved.get(p) != target.get(p) and p not in lacking]
  return diffs, lacking


def _flat(tree) -> dict:
  return traverse_util.flatten_dict(
      {k: v for k, v in tree.items() if v is not None})


def check_options(config, step_dir: str, source: str) -> None:
  """ConfigError if the source's recorded activation / LayerNorm epsilon
  differ from the config's: the same weights would compute another function."""
  recorded = recorded_model(step_dir)
  for key in FUNCTION_OPTIONS if recorded else ():
    if recorded[key] != config.model[key]:
      raise ConfigError(
          f"{source} was saved with model.{key}={recorded[key]!r}, this "
          f"config has {config.model[key]!r}: set config.model.{key}="
          f"{recorded[key]!r} (the weights were trained with it)")


def _name(path: tuple) -> str:
  """A flat key's name in the train.freeze syntax: the parameter path, for
  model state without its collection (``batch_stats``)."""
  return "/".join(path[1:] if path[0] == "params" else path[2:])


def _included(config, target: dict) -> set:
  """The flat keys of ``target`` that ``train.init_from_params`` loads."""
  spec = config.train.init_from_params
  if not spec:
    return set(target)
  names = {key: _name(key) for key in target}
  try:
    chosen = freeze_lib.selected_names(sorted(names.values()), spec,
                                       "train.init_from_params")
  except freeze_lib.FreezeSpecError as e:
    raise ConfigError(str(e)) from None
  return {key for key, name in names.items() if name in chosen}


def check(config, step_dir: str, state, source: str) -> set:
  """Raises ConfigError unless the source's weights fit ``state``'s model
  (where ``train.init_from_params`` loads them); returns the flat keys to
  load (without the optional params the source lacks)."""
  check_options(config, step_dir, source)
  try:
    meta = checkpointing.weights_metadata(step_dir)
  except Exception as e:  # pylint: disable=broad-except
    reason = str(e).strip().splitlines()[0][:300]
    raise ConfigError(f"{source}: {step_dir} is not a readable "
                      f"checkpoint ({type(e).__name__}: {reason})") from None
  target = _flat({"params": state.params, "model_state": state.model_state})
  wanted = _included(config, target)
  # A key the model lacks is a mismatch, unless only some keys are loaded:
  # what is not loaded need not fit.
  partial = bool(config.train.init_from_params)
  saved = {k: v for k, v in _flat(meta).items()
           if k in wanted or (not partial and k not in target)}
  diffs, lacking = _shape_mismatches(saved, {k: target[k] for k in wanted})
  if diffs:
    more = f" (+{len(diffs) - 3} more)" if len(diffs) > 3 else ""
    raise ConfigError(f"{source}: the checkpoint's weights do not fit "
                      f"model.name={config.model.name!r}: "
                      f"{'; '.join(diffs[:3])}{more}")
  return wanted - set(lacking)


def load(config, state, shardings, path: str, source: str | None = None):
  """(``state`` with params / model state / EMA teacher from ``path``, the
  step directory read). ``source`` names ``path`` in error messages."""
  source = source or f"config.train.init_from={path!r}"
  try:
    step_dir = find_step_dir(path)
  except FileNotFoundError as e:
    raise ConfigError(f"{source}: {e}") from None
  loaded = check(config, step_dir, state, source)
  kept = _flat({"params": state.params, "model_state": state.model_state})
  abstract = _flat(checkpointing.abstract_like(
      {"params": state.params, "model_state": state.model_state},
      {"params": shardings.params, "model_state": shardings.model_state}))
  restored = _flat(checkpointing.restore_weights(
      step_dir, traverse_util.unflatten_dict(
          {k: v for k, v in abstract.items() if k in loaded})))
  merged = traverse_util.unflatten_dict(
      {k: restored[k] if k in loaded else v for k, v in kept.items()})
  params, model_state = merged["params"], merged.get("model_state")
  ema = state.ema_params
  if ema is not None:  # a separate copy: the train step donates both buffers
    ema = jax.jit(lambda p: jax.tree.map(jnp.copy, p),
                  out_shardings=shardings.ema_params)(params)
  return state.replace(params=params, model_state=model_state,
                       ema_params=ema), step_dir
