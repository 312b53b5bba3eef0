"""A run's own config, read back from ``WORKDIR/config.json``.

The trainer writes the resolved config there at every start, so tools that
look at a finished run (evaluation) can use exactly what it trained with
instead of trusting a config file that may have changed since, and can say
which keys differ when a checkpoint does not fit a given config.
"""

from __future__ import annotations

import json
import os

import ml_collections

from cvlg_jax import fileio
from cvlg_jax.config import ConfigError, base_config

CONFIG_FILE = "config.json"
# Listed first in a mismatch: what decides the shapes of the parameters.
_SHAPE_GROUPS = ("model.", "data.", "loss.")


class ConfigMismatchError(ValueError):
  """A checkpoint does not fit the given config (one line naming the keys)."""


def read_run_dict(workdir: str) -> dict | None:
  path = os.path.join(workdir, CONFIG_FILE)
  return json.loads(fileio.read_text(path)) if fileio.exists(path) else None


def load_run_config(workdir: str) -> ml_collections.ConfigDict:
  """``config.json`` on top of :func:`base_config` (keys added to the schema
  since the run keep their defaults); raises if there is none."""
  recorded = read_run_dict(workdir)
  if recorded is None:
    raise FileNotFoundError(f"{os.path.join(workdir, CONFIG_FILE)} does not exist "
                            "(the trainer writes it at start); pass --config")
  config = base_config()
  _merge(config, recorded, "")
  return config


def _merge(config, values: dict, prefix: str):
  for key, value in values.items():
    path = prefix + key
    if path == "eval":
      config.eval = ml_collections.ConfigDict(value)
    elif key not in config:
      raise ConfigError(f"{CONFIG_FILE}: config.{path} is unknown to this version "
                        "of cvlg_jax; pass --config")
    elif isinstance(config[key], ml_collections.ConfigDict):
      _merge(config[key], value, path + ".")
    else:
      config[key] = tuple(value) if isinstance(config[key], tuple) else value


def _flat(d: dict, prefix: str = "") -> dict:
  out = {}
  for key, value in d.items():
    if isinstance(value, dict):
      out.update(_flat(value, f"{prefix}{key}."))
    else:
      out[prefix + key] = list(value) if isinstance(value, tuple) else value
  return out


def differing_keys(config, workdir: str, limit: int = 6) -> str:
  """``"model.name ('tiny' in config.json, 'demo' here), ..."`` for the keys
  (evaluators aside) where ``config`` and the run's config.json differ; ""
  when they agree or there is no config.json."""
  recorded = read_run_dict(workdir)
  if recorded is None:
    return ""
  ours = _flat(config.to_dict())
  theirs = _flat(recorded)
  keys = sorted((k for k in ours.keys() | theirs.keys()
                 if not k.startswith("eval.") and ours.get(k) != theirs.get(k)),
                key=lambda k: (not k.startswith(_SHAPE_GROUPS), k))
  shown = [f"{k} ({theirs.get(k)!r} in {CONFIG_FILE}, {ours.get(k)!r} here)"
           for k in keys[:limit]]
  more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
  return ", ".join(shown) + more


# What a resumed run may not change: the shapes of the train state (model,
# tokenizer, image size, the bank's rows and storage, which parameters have
# optimizer state) and which example each
# batch row is (data order, the held-out split, caption noise, the seed).
FROZEN_ON_RESUME = (
    "model.", "data.source", "data.data_dir", "data.tfds_name", "data.tfds_split",
    "data.image_key", "data.caption_key", "data.num_train", "data.num_heldout",
    "data.caption_noise", "data.noise_kinds", "data.tokenizer", "data.tokenizer_path",
    "data.vocab_size", "data.context_length", "data.image_size", "loss.name",
    "loss.psd.teacher", "loss.psd.bank_dtype", "train.batch_size", "train.seed",
    "train.freeze")


# Under those prefixes but free to change: no state depends on it (FLIP's
# unmasked tuning resumes a patch-dropout run with model.patch_dropout=0).
CHANGEABLE_ON_RESUME = ("model.patch_dropout",)


def _resume_differences(config, workdir: str) -> tuple[dict, dict]:
  """``({key: [old, new]} refused, {key: [old, new]} allowed)``: the keys of
  :data:`FROZEN_ON_RESUME` that differ from the run's config.json, and the
  others that differ. Both empty without a config.json."""
  recorded = read_run_dict(workdir)
  if recorded is None:
    return {}, {}
  ours = _flat(json.loads(config.to_json_best_effort()))
  # Keys added to the schema since the run have their defaults there (as
  # load_run_config reads it), so a new key is no difference by itself.
  theirs = {**_flat(json.loads(base_config().to_json_best_effort())),
            **_flat(recorded)}
  refused, allowed = {}, {}
  for k in sorted(ours.keys() | theirs.keys()):
    if ours.get(k) != theirs.get(k):
      side = (refused if k.startswith(FROZEN_ON_RESUME)
              and k not in CHANGEABLE_ON_RESUME else allowed)
      side[k] = [theirs.get(k), ours.get(k)]
  return refused, allowed


def resume_changes(config, workdir: str) -> tuple[list[str], dict]:
  """``(refused, allowed)`` between ``config`` and the run's config.json:
  the keys of :data:`FROZEN_ON_RESUME` that differ (a resume cannot honour
  them), and ``{key: [old, new]}`` of the others that differ (it can, with a
  warning). Both empty without a config.json."""
  refused, allowed = _resume_differences(config, workdir)
  return list(refused), allowed


def check_resume(config, workdir: str, limit: int = 6) -> dict:
  """Raises :class:`ConfigMismatchError` (one line naming the keys, old and
  new values) when ``config`` changes what a resume cannot honour; returns
  the changes it can (to warn about and record)."""
  refused, allowed = _resume_differences(config, workdir)
  if refused:
    shown = ", ".join(f"{k} ({old!r} -> {new!r})"
                      for k, (old, new) in list(refused.items())[:limit])
    more = f" and {len(refused) - limit} more" if len(refused) > limit else ""
    raise ConfigMismatchError(
        f"{workdir} holds a run whose {shown}{more} differ from this config; "
        "a resume cannot change them (they shape the state or the data order): "
        "use the run's own values or a new --workdir")
  return allowed
