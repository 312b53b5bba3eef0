"""What a sweep is: a base config plus a list of override dicts, one per run.

A sweep file (``launch/sweeps/<name>.py``) defines ``get_sweep()``::

    from launch.spec import Sweep, grid

    def get_sweep():
      return Sweep(config="configs/demo.py:noise=0.2",
                   runs=grid(**{"loss.name": ["clip", "psd"],
                                "train.seed": [0, 1, 2]}))

``runs`` is a plain list of dicts mapping dotted config keys to values, so
sweeps combine with ``+`` (concatenation), :func:`grid` (product of axes),
:func:`zip_` (axes advanced together) and :func:`product` (product of two or
more run lists). Each run's workdir is named from its overrides, so the same
run always lands in the same directory and finished runs can be skipped.

Like config files, a sweep file may take an argument: ``--sweep=FILE:ARG``
calls ``get_sweep(ARG)`` (e.g. to pick the data set). A sweep may also carry
a ``report`` hook, ``report(results, root) -> [paths written]``, that
``launch.sweep --report`` calls after the generic table (tables and plots
specific to the study).
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import inspect
import itertools
import json
import os
import re
from typing import Callable

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAX_NAME_LEN = 120
_UNSAFE = re.compile(r"[^A-Za-z0-9._=,+-]")
_VALUE_TYPES = (bool, int, float, str)


class SweepError(ValueError):
  """A mistake in a sweep file, reported before anything is launched."""


@dataclasses.dataclass(frozen=True)
class Sweep:
  """``config``: config file relative to the repo root, optionally ``:arg``;
  ``report``: optional ``(list[report.Result], root) -> list[str]`` hook."""
  config: str
  runs: list[dict]
  report: Callable[[list, str], list[str]] | None = None


@dataclasses.dataclass(frozen=True)
class Run:
  index: int
  name: str
  overrides: dict
  workdir: str
  steps: int           # train.steps after overrides: "finished" means this


def _axes(positional, kwargs) -> dict:
  axes = dict(positional or {}, **kwargs)
  for key, values in axes.items():
    if isinstance(values, (str, bytes)) or not hasattr(values, "__len__"):
      raise SweepError(f"axis {key!r} must be a list of values, got {values!r}")
    if not values:
      raise SweepError(f"axis {key!r} has no values")
  return axes


def grid(axes: dict | None = None, /, **kwargs) -> list[dict]:
  """Every combination, the last axis varying fastest.

  Dotted keys need dict syntax: ``grid(**{"loss.name": ["clip", "psd"]})`` or
  ``grid({"loss.name": [...]})``.
  """
  axes = _axes(axes, kwargs)
  return [dict(zip(axes, combo)) for combo in itertools.product(*axes.values())]


def zip_(axes: dict | None = None, /, **kwargs) -> list[dict]:
  """Axes advanced together (all must have the same length)."""
  axes = _axes(axes, kwargs)
  lengths = {k: len(v) for k, v in axes.items()}
  if len(set(lengths.values())) > 1:
    raise SweepError(f"zip_ axes must have equal lengths, got {lengths}")
  return [dict(zip(axes, combo)) for combo in zip(*axes.values())]


def product(*run_lists: list[dict]) -> list[dict]:
  """Every combination of one run from each list, their overrides merged."""
  out = []
  for combo in itertools.product(*run_lists):
    merged = {}
    for overrides in combo:
      clash = set(merged) & set(overrides)
      if clash:
        raise SweepError(f"product: key(s) {sorted(clash)} set by more than one "
                         "factor")
      merged.update(overrides)
    out.append(merged)
  return out


def format_value(value) -> str:
  """The ``--config.key=value`` text; ml_collections parses it by field type."""
  if isinstance(value, bool):
    return "true" if value else "false"
  if isinstance(value, float):
    return repr(value)
  if isinstance(value, (int, str)):
    return str(value)
  raise SweepError(f"override values must be bool, int, float or str; got "
                   f"{type(value).__name__} {value!r}")


def run_name(overrides: dict) -> str:
  """``key=value,key=value`` in override order; filesystem-safe and stable.

  Unsafe characters become ``_``; then (and when the name is too long) a hash
  of the exact overrides is appended, so different runs never share a name.
  """
  if not overrides:
    return "base"
  raw = ",".join(f"{k}={format_value(v)}" for k, v in overrides.items())
  safe = _UNSAFE.sub("_", raw)
  if safe == raw and len(raw) <= MAX_NAME_LEN and not raw.startswith("."):
    return raw
  digest = hashlib.sha1(json.dumps(
      [[k, format_value(v)] for k, v in overrides.items()]).encode()).hexdigest()
  return f"{safe.lstrip('.')[:MAX_NAME_LEN - 11]}-{digest[:10]}"


def safe_name(text: str) -> str:
  """``text`` as one path component: unsafe characters become ``_`` and, when
  that changed anything or the name is too long, a hash of ``text`` follows."""
  safe = _UNSAFE.sub("_", text).lstrip(".")
  if safe == text and len(text) <= MAX_NAME_LEN:
    return text
  digest = hashlib.sha1(text.encode()).hexdigest()[:10]
  return f"{safe[:MAX_NAME_LEN - 11]}-{digest}"


def split_sweep_arg(arg: str | None, own_keys) -> tuple[dict, str]:
  """``"seeds=2,dataset=x"`` -> ({"seeds": "2"}, ``"dataset=x"``): the keys
  a sweep file reads itself (``own_keys``), and the rest -- its config's
  argument -- in order."""
  own, rest = {}, []
  for item in (arg or "").split(","):
    key, _, value = item.partition("=")
    if key in own_keys:
      own[key] = value
    elif item:
      rest.append(item)
  return own, ",".join(rest)


def split_config(spec: str) -> tuple[str, str | None]:
  path, _, arg = spec.partition(":")
  return path, (arg or None)


def load_config(spec: str):
  """``get_config(arg)`` of a config file given relative to the repo root."""
  path, arg = split_config(spec)
  full = path if os.path.isabs(path) else os.path.join(REPO, path)
  if not os.path.isfile(full):
    raise SweepError(f"config file {path!r} not found (paths are relative to "
                     f"the repo root {REPO})")
  module = _load_module(full, "cvlg_sweep_config")
  return module.get_config(arg) if arg is not None else module.get_config()


def _load_module(path, name):
  import sys
  if REPO not in sys.path:  # config and sweep files import cvlg_jax / launch
    sys.path.insert(0, REPO)
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def apply_overrides(config, overrides: dict):
  """Sets dotted keys on a ConfigDict copy; unknown keys and type errors raise."""
  config = config.copy_and_resolve_references()
  for key, value in overrides.items():
    format_value(value)
    *groups, leaf = key.split(".")
    node = config
    for i, group in enumerate(groups):
      if group not in node or not hasattr(node[group], "keys"):
        raise SweepError(f"override {key!r}: the config has no group "
                         f"{'.'.join(groups[:i + 1])!r}")
      node = node[group]
    if leaf not in node:
      raise SweepError(f"override {key!r}: the config has no such key; keys "
                       f"here: {', '.join(sorted(node.keys()))}")
    if hasattr(node[leaf], "keys"):
      raise SweepError(f"override {key!r} names a group, not a value")
    try:
      node[leaf] = value
    except TypeError as e:
      raise SweepError(f"override {key}={value!r}: {e}") from None
  return config


def load_sweep(path_and_arg: str) -> Sweep:
  """``FILE`` -> ``get_sweep()``; ``FILE:ARG`` -> ``get_sweep(ARG)``."""
  path, arg = split_config(path_and_arg)
  if not os.path.isfile(path):
    raise SweepError(f"sweep file {path!r} not found")
  module = _load_module(os.path.abspath(path), "cvlg_sweep_file")
  if not hasattr(module, "get_sweep"):
    raise SweepError(f"{path} defines no get_sweep()")
  if arg is not None and not inspect.signature(module.get_sweep).parameters:
    raise SweepError(f"{path}: get_sweep() takes no argument, but the sweep "
                     f"was given {arg!r}")
  sweep = module.get_sweep() if arg is None else module.get_sweep(arg)
  if not isinstance(sweep, Sweep):
    raise SweepError(f"{path}: get_sweep() must return a launch.spec.Sweep, "
                     f"got {type(sweep).__name__}")
  return sweep


def check_unique(runs: list[dict]) -> None:
  """Two runs with the same overrides would share (and clobber) a workdir."""
  seen = {}
  for i, overrides in enumerate(runs):
    if not isinstance(overrides, dict):
      raise SweepError(f"run {i}: overrides must be a dict, got {overrides!r}")
    key = frozenset((k, format_value(v)) for k, v in overrides.items())
    if key in seen:
      raise SweepError(f"duplicate runs: #{seen[key]} and #{i} have the same "
                       f"overrides {overrides}")
    seen[key] = i


def expand(sweep: Sweep, root: str, validate=None) -> list[Run]:
  """Runs with workdirs under ``root``; every override checked against the
  config (and by ``validate(config)`` when given) before anything runs."""
  check_unique(sweep.runs)
  base = load_config(sweep.config)
  runs, names = [], {}
  for i, overrides in enumerate(sweep.runs):
    config = apply_overrides(base, overrides)
    if validate is not None:
      try:
        validate(config)
      except ValueError as e:
        raise SweepError(f"run #{i} ({run_name(overrides)}): {e}") from None
    name = run_name(overrides)
    if name in names:
      raise SweepError(f"runs #{names[name]} and #{i} map to the same workdir "
                       f"name {name!r}")
    names[name] = i
    runs.append(Run(i, name, dict(overrides), join(root, name),
                    int(config.train.steps)))
  return runs


def join(root: str, *parts: str) -> str:
  """Path join that keeps ``gs://`` roots intact."""
  if "://" in root:
    return "/".join([root.rstrip("/"), *parts])
  return os.path.join(root, *parts)


def trainer_flags(config: str, workdir: str, overrides: dict) -> list[str]:
  """``cvlg_jax.main`` flags for one run (each one argv element, unquoted)."""
  return [f"--config={config}", f"--workdir={workdir}",
          *(f"--config.{k}={format_value(v)}" for k, v in overrides.items())]


def default_root(sweep_path: str) -> str:
  """``runs/<sweep name>``: the file's name, or its folder's for a study's
  ``studies/<study>/sweep.py``. A sweep argument (``FILE:ARG``) is part of
  the name, so e.g. another data set's runs never land on (and skip) these."""
  path, arg = split_config(sweep_path)
  name = os.path.splitext(os.path.basename(path))[0]
  if name == "sweep":
    name = os.path.basename(os.path.dirname(os.path.abspath(path)))
  return os.path.join("runs", name + (f"-{safe_name(arg)}" if arg else ""))
