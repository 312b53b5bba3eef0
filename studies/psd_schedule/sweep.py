"""Which PSD schedule to ship: CLIP vs PSD-bank with each schedule of
configs/common.py (``PSD_SCHEDULES``) across run lengths, data sizes and
noise kinds, on the memorisation study's setup (configs/memorisation.py).

    S=studies/psd_schedule/sweep.py
    python -m launch.sweep --sweep=$S --parallel=2             # stage=length
    python -m launch.sweep --sweep=$S:stage=scale --parallel=2
    python -m launch.sweep --sweep=$S:stage=m2m --parallel=2
    python -m launch.sweep --sweep=$S --report                 # tables + verdict
    # digits (studies/memorisation/prepare_digits.py): 942 pairs, 7 steps/epoch
    python -m launch.sweep --sweep=$S:dataset=folder:/tmp/digits,flip=0,per_epoch=7,noises=0.4

Stages (``stage=``), each CLIP and the bank teacher with every schedule:
  * ``length`` (default): runs of {4, 10, 25, 50} epochs, synthetic caption
    noise {0, 0.4}; the question is one schedule that is >= CLIP and within
    a point of the best schedule at every length (studies/psd_schedule/report.py).
  * ``scale``: 512, 2,048 and 8,192 synthetic training pairs at noise 0.4,
    each for ``SCALE_EPOCHS`` epochs: does PSD's gain grow with data?
  * ``m2m``: many-to-many captions (``data.noise_kinds=partial``: every noisy
    caption is true but names only part of the scene, and is shared by many
    scenes) at noise {0.2, 0.4}, 50 epochs.
Every run warms the learning rate up over the same 7.5 % of its steps (60 of
800, the memorisation study's), so a 4-epoch run is not all warm-up.
Sweep keys: ``stage``, ``seeds=N`` (first N of 0, 1, 2), ``noises=A+B``,
``lengths=4+10`` (epochs), ``sizes=512+2048``, ``schedules=by_length+early``
(the PSD schedules to run beside CLIP; default all), ``per_epoch=N`` (real
data: its steps per epoch, which the config file cannot know); the rest goes to
configs/memorisation.py (``dataset=``, ``flip=0``, ...).
"""

from __future__ import annotations

import functools
import os
import sys
import types

from cvlg_jax.step import plan
from launch import spec
from launch.spec import Sweep
from studies.psd_schedule import report as schedule_report

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))))
from configs import common  # noqa: E402
from configs import memorisation as memorisation_config  # noqa: E402

CONFIG = "configs/memorisation.py"
STAGES = ("length", "scale", "m2m")
SEEDS = (0, 1, 2)
LENGTHS = (4, 10, 25, 50)              # epochs
SIZES = (512, 2048, 8192)              # synthetic training pairs
SCALE_EPOCHS = 30                      # the pre-training configs' length
NOISES = {"length": (0.0, 0.4), "scale": (0.4,), "m2m": (0.2, 0.4)}
M2M_KINDS = "partial"
WARMUP_FRACTION = 0.075
SWEEP_ARGS = ("stage", "seeds", "noises", "lengths", "sizes", "per_epoch",
              "schedules")


def methods(schedules=None) -> list[tuple[str, dict]]:
  """(name, overrides): ``clip``, then the bank teacher with each named
  schedule (``schedules``: a subset of ``PSD_SCHEDULES``, default all, in
  that order)."""
  names = list(common.PSD_SCHEDULES)
  unknown = sorted(set(schedules or ()) - set(names))
  if unknown:
    raise ValueError(f"psd_schedule: schedules {unknown} unknown; allowed: "
                     f"{', '.join(names)}")
  out = [("clip", {"loss.name": "clip"})]
  for name in names:
    if schedules and name not in schedules:
      continue
    knobs = common.schedule_knobs(name, "psd_schedule sweep")
    out.append((name, {"loss.name": "psd", "loss.psd.teacher": "bank",
                       **{f"loss.psd.{k}": v for k, v in knobs.items()}}))
  return out


def effective(method: dict, steps: int, per_epoch: int) -> tuple:
  """What a method does on a run of ``steps`` steps, ``per_epoch`` each: its
  loss, alpha_T, distilled rows and the ramp the plan resolves. Two
  schedules with the same value at a length train the same run."""
  if method["loss.name"] == "clip":
    return ("clip",)
  knobs = {**common.PSD_SCHEDULE_DEFAULTS,
           **{k[len("loss.psd."):]: v for k, v in method.items()
              if k.startswith("loss.psd.")}}
  return ("psd", knobs["alpha_final"], knobs["subset_fraction"],
          plan.ramp_steps(types.SimpleNamespace(**knobs), steps, per_epoch))


def _floats(text: str) -> list[float]:
  return [float(v) for v in text.split("+") if v]


def get_sweep(arg: str | None = None) -> Sweep:
  own, config_arg = spec.split_sweep_arg(arg, SWEEP_ARGS)
  stage = own.get("stage", "length")
  if stage not in STAGES:
    raise ValueError(f"psd_schedule: stage={stage!r}; allowed: {', '.join(STAGES)}")
  real = "dataset=" in config_arg
  if real and "per_epoch" not in own:
    raise ValueError("psd_schedule: real data needs per_epoch=N (its steps "
                     "per epoch: training pairs // batch; digits: 7)")
  if real and stage != "length":
    raise ValueError(f"psd_schedule: stage={stage} is synthetic-only")
  base = memorisation_config.get_config(config_arg or None)
  seeds = SEEDS[:int(own.get("seeds", len(SEEDS)))]
  chosen = methods([n for n in own.get("schedules", "").split("+") if n])
  noises = _floats(own["noises"]) if "noises" in own else NOISES[stage]
  if stage == "length":
    lengths = _floats(own["lengths"]) if "lengths" in own else LENGTHS
    sizes = [None]
  elif stage == "scale":
    lengths = [SCALE_EPOCHS]
    sizes = ([int(v) for v in _floats(own["sizes"])] if "sizes" in own
             else SIZES)
  else:
    lengths, sizes = [max(LENGTHS)], [None]
  runs = []
  for seed in seeds:
    for noise in noises:
      for size in sizes:
        examples = size or base.data.num_train
        per_epoch = (int(own["per_epoch"]) if real
                     else max(1, examples // base.train.batch_size))
        for epochs in lengths:
          data = {"data.num_train": size} if size else {}
          if stage == "m2m":
            data["data.noise_kinds"] = M2M_KINDS
          steps, seen = max(1, round(epochs * per_epoch)), set()
          for _, method in chosen:
            # A schedule that is an earlier one step for step at this length
            # is not trained twice; the report counts that run for both.
            what = effective(method, steps, per_epoch)
            if what in seen:
              continue
            seen.add(what)
            runs.append({**method, **data, "data.caption_noise": noise,
                         "train.seed": seed, "train.steps": steps,
                         "optim.warmup_fraction": WARMUP_FRACTION})
  return Sweep(config=CONFIG + (f":{config_arg}" if config_arg else ""),
               runs=runs, report=functools.partial(
                   schedule_report.write,
                   schedules=[name for name, _ in chosen[1:]]))
