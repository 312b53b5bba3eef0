"""The run plan: every decision the config implies, made once at the start.

A config says *what* to train; the plan says what that means on these
devices and this data: which loss kernel and teacher, how many examples one
epoch has, how many steps an epoch is, over how many steps PSD's weight
ramps, and the mesh. :func:`make_plan` opens the training source once and
checks what depends on the device count; everything below it (state, step,
input pipeline, evaluators) reads the plan instead of re-reading the config
to decide the same thing, or reopening the source.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from cvlg_jax import config as config_lib
from cvlg_jax.data import pipeline
from cvlg_jax.losses import LossSpec, parse_loss_name
from cvlg_jax.models.registry import MODELS
from cvlg_jax.step import bank, sharding


@dataclasses.dataclass(frozen=True, eq=False)
class RunPlan:
  """What a run does, resolved from its config and its opened data."""
  config: Any                  # the (validated) config it was made from
  loss: LossSpec               # the row kernel and whether PSD distils
  teacher: str | None          # self | ema | bank when the loss distils, else None
  mesh_shape: tuple[int, int]  # (data, fsdp)
  # The opened training source and its held-out split (None: not opened,
  # e.g. an evaluation that needs no training data).
  data: pipeline.TrainData | None
  num_examples: int | None     # examples trained on (one epoch); None if unopened
  steps_per_epoch: int | None
  ramp_steps: int              # PSD: alpha reaches alpha_final after this many steps
  ramp_epoch_steps: int | None  # PSD ramp_unit=epoch: alpha moves once per epoch
  ema_decay: float             # the EMA teacher's decay per step
  warmup_steps: int            # learning-rate warm-up
  eval_every: int              # steps between evaluations (every evaluator's default)

  @property
  def total_steps(self) -> int:
    return self.config.train.steps

  @property
  def accum_steps(self) -> int:
    return self.config.train.grad_accum_steps

  @property
  def uses_bank(self) -> bool:
    return self.teacher == "bank"

  @property
  def uses_ema(self) -> bool:
    return self.teacher == "ema"


def make_plan(config, num_devices: int, *, open_data: bool = True,
              num_examples: int | None = None) -> RunPlan:
  """The plan of ``config`` (already :func:`config.validate`-d) on
  ``num_devices`` devices; raises :class:`config.ConfigError` in one line.

  ``open_data=False`` skips the training source where nothing needs it (an
  evaluation of a run without the bank teacher). ``num_examples`` stands in
  for the source's size where the data is not on this host (ahead-of-time
  compilation for a slice, ``cvlg_jax.aot --num_examples``); the source is
  then not opened.
  """
  spec = parse_loss_name(config.loss.name)
  teacher = config.loss.psd.teacher if spec.distills else None
  shape = _check_devices(config, num_devices)
  data = None
  psd = config.loss.psd
  needs_size = (teacher == "bank" or psd.ramp_unit == "epoch"
                or (spec.distills and psd.ramp_steps <= 0
                    and (psd.ramp_epochs > 0 or psd.ramp_min_epochs > 0))
                or (teacher == "ema" and psd.ema_horizon_epochs > 0)
                or config.train.eval_every_epochs > 0)
  if num_examples is None and (open_data or needs_size):
    try:
      data = pipeline.train_data(config)
    except (ValueError, FileNotFoundError) as e:
      raise config_lib.ConfigError(
          f"config.data.source={config.data.source!r}: the training data did "
          f"not open: {e}") from None
  examples = num_examples if data is None else len(data.trained_indices())
  per_epoch = None if examples is None else max(1, examples // config.train.batch_size)
  plan = RunPlan(
      config=config, loss=spec, teacher=teacher, mesh_shape=shape, data=data,
      num_examples=examples, steps_per_epoch=per_epoch,
      ramp_epoch_steps=per_epoch if psd.ramp_unit == "epoch" else None,
      **resolve_steps(config, per_epoch))
  if plan.uses_bank:
    _check_bank_fits(plan, num_devices)
  return plan


def _fraction_of_steps(fraction: float, steps: int) -> int:
  return max(1, round(fraction * steps))


def ramp_steps(psd, steps: int, per_epoch: int) -> int:
  """PSD's ramp in steps for ``config.loss.psd`` on a run of ``steps`` steps
  of ``per_epoch`` each: a fixed count, else epochs (for runs under
  ``ramp_epochs_for_runs_under`` epochs, when set), else a fraction of the
  run, and at least ``ramp_min_epochs`` epochs. An epoch ramp may outlast
  the run: alpha then ends below alpha_final, which is the point (a short
  run never puts full weight on a bank written by a weak model;
  docs/design.md, "The default schedule")."""
  if psd.ramp_steps > 0:
    return psd.ramp_steps
  under = psd.ramp_epochs_for_runs_under
  if psd.ramp_epochs > 0 and (under <= 0 or steps < under * per_epoch):
    ramp = max(1, round(psd.ramp_epochs * per_epoch))
  else:
    ramp = _fraction_of_steps(psd.ramp_fraction, steps)
  return max(ramp, round(psd.ramp_min_epochs * per_epoch))


def resolve_steps(config, steps_per_epoch: int | None) -> dict:
  """The step counts a config gives as fractions of the run or in epochs,
  from this run's ``train.steps`` and steps per epoch: so an override of
  either rescales them (nothing is frozen when the config file is built)."""
  psd, optim, train = config.loss.psd, config.optim, config.train
  steps = train.steps
  per_epoch = steps_per_epoch or 1  # unopened data: the epoch keys are unused
  ema = psd.ema_decay
  if psd.ema_horizon_epochs > 0:
    ema = 1.0 - 1.0 / max(1.0, psd.ema_horizon_epochs * per_epoch)
  return dict(
      ramp_steps=ramp_steps(psd, steps, per_epoch),
      ema_decay=ema,
      warmup_steps=(round(optim.warmup_fraction * steps)
                    if optim.warmup_fraction > 0 else optim.warmup_steps),
      eval_every=(max(1, round(train.eval_every_epochs * per_epoch))
                  if train.eval_every_epochs > 0 else train.eval_every))


def resolved(plan: RunPlan) -> dict:
  """What the run record lists as resolved at the start (run_info.json)."""
  return dict(num_examples=plan.num_examples, steps_per_epoch=plan.steps_per_epoch,
              teacher=plan.teacher, psd_ramp_steps=plan.ramp_steps,
              ema_decay=plan.ema_decay if plan.uses_ema else None,
              warmup_steps=plan.warmup_steps, eval_every=plan.eval_every,
              mesh=dict(zip(sharding.AXES, plan.mesh_shape)))


def _check_devices(config, num_devices: int) -> tuple[int, int]:
  """What depends on the device count: the mesh, and how the global batch,
  micro-batches and loss chunks split over it."""
  ConfigError = config_lib.ConfigError
  try:
    shape = sharding.mesh_shape(config.mesh.data, config.mesh.fsdp, num_devices)
  except ValueError as e:
    raise ConfigError(f"config.{e}; allowed: sizes whose product is "
                      f"{num_devices}, one of them may be -1 (= the rest)") from None
  batch_devices = shape[0] * shape[1]
  if config.train.batch_size % batch_devices:
    raise ConfigError(
        f"config.train.batch_size={config.train.batch_size} is not divisible "
        f"by the {batch_devices} devices the batch is split over "
        f"(mesh data={shape[0]} x fsdp={shape[1]})")
  per_device = config.train.batch_size // batch_devices
  accum = config.train.grad_accum_steps
  if per_device % accum:
    raise ConfigError(
        f"config.train.grad_accum_steps={accum} must divide the {per_device} "
        "examples per device, so every micro-batch spans all devices")
  chunk = config.loss.chunk_size
  if chunk and per_device % min(chunk, per_device):
    raise ConfigError(
        f"config.loss.chunk_size={chunk} must divide the {per_device} "
        "examples per device (the key block each device streams)")
  return shape


def _check_bank_fits(plan: RunPlan, num_devices: int) -> None:
  """The embedding bank (one row per training example) within its budget."""
  psd = plan.config.loss.psd
  dim = MODELS[plan.config.model.name]["embed_dim"]
  gib = bank.bytes_per_device(plan.num_examples, dim, psd.bank_dtype,
                              num_devices) / 2 ** 30
  if gib > psd.bank_max_gib:
    raise config_lib.ConfigError(
        f"config.loss.psd.bank_max_gib={psd.bank_max_gib}: the embedding bank "
        f"needs {gib:.3g} GiB per device ({plan.num_examples} examples x 2 x "
        f"{dim} {psd.bank_dtype} over {num_devices} devices); raise the "
        "budget, use more devices or bank_dtype=bfloat16, or teacher=ema/self")
