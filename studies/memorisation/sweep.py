"""The memorisation study of docs/robustness.md: CLIP vs PSD's teachers on a
small noisy training set seen for many epochs (configs/memorisation.py).

    S=studies/memorisation/sweep.py
    python -m launch.sweep --sweep=$S:stage=select   # schedules, held-out pairs
    python -m launch.sweep --sweep=$S                 # the main grid
    python -m launch.sweep --sweep=$S --report        # tables + curves
    # real data: the digits folder set (studies/memorisation/prepare_digits.py)
    python -m launch.sweep --sweep=$S:dataset=folder:/tmp/digits,flip=0

Two stages on one root (runs shared between them are run once):
  * ``stage=select``: at caption noise 0.4, seed 0, each distilling teacher
    that has a schedule to choose (ema, bank) with each schedule of
    configs/common.py (paper, early), beside CLIP and the self
    teacher. The report's selection table ranks them by the final held-out
    score (``heldout/mean_top1``: training-distribution pairs never trained
    on), and ``SCHEDULE`` below records the winner: nothing is chosen on the
    evaluation sets.
  * main grid: CLIP and PSD with each teacher (self, ema, bank; schedule from
    ``SCHEDULE``) x caption noise {0, 0.2, 0.4} x seeds {0, 1, 2}, plus the
    selection runs it does not hold (the schedules not chosen), so its report
    shows the selection table too; after ``stage=select`` they are done.
Other sweep-argument keys go to the config (``dataset=``, ``steps=``, ...);
``seeds=N``, ``noises=A+B`` and ``teachers=bank+ema`` (the sweep's own: PSD
teachers beside CLIP, default all) make a cheaper grid.
"""

from __future__ import annotations

import os
import sys

from studies.memorisation import report as memorisation_report
from launch import spec
from launch.spec import Sweep

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))))
from configs import common  # noqa: E402
from configs import memorisation as memorisation_config  # noqa: E402

CONFIG = "configs/memorisation.py"
NOISE = (0.0, 0.2, 0.4)
SEEDS = (0, 1, 2)
TEACHERS = ("self", "ema", "bank")
SELECT_NOISE, SELECT_SEED = 0.4, 0
# The schedule each teacher runs with in the main grid, chosen by the
# stage=select runs on the held-out pairs (docs/robustness.md, "Schedule
# selection"). The self teacher at T = 1 only reweights CLIP's rows, whatever
# the schedule (docs/design.md), so it keeps the design default.
SCHEDULE = {"self": "paper", "ema": "early", "bank": "early"}
# The schedules the selection stage compares (at 50 epochs the ``epochs``
# schedule is ``early``, step for step; the length study compares all three).
SELECT_SCHEDULES = ("paper", "early")
SWEEP_ARGS = ("stage", "seeds", "noises", "teachers")


def variant_overrides(variant: str, schedule: str, steps: int) -> dict:
  """Overrides of one method: ``clip`` or a PSD teacher with a schedule."""
  if variant == "clip":
    return {"loss.name": "clip"}
  del steps  # every ramp is resolved when the run starts
  knobs = common.schedule_knobs(schedule, "memorisation sweep")
  return {"loss.name": "psd", "loss.psd.teacher": variant,
          **{f"loss.psd.{k}": v for k, v in knobs.items()}}


def _run(variant, schedule, noise, seed, steps) -> dict:
  return {**variant_overrides(variant, schedule, steps),
          "data.caption_noise": noise, "train.seed": seed}


def split_arg(arg: str | None) -> tuple[dict, str]:
  """This sweep's own keys, and the rest for its config, in order."""
  return spec.split_sweep_arg(arg, SWEEP_ARGS)


def get_sweep(arg: str | None = None) -> Sweep:
  own, config_arg = split_arg(arg)
  stage = own.get("stage", "main")
  if stage not in ("select", "main"):
    raise ValueError(f"memorisation: stage={stage!r}; allowed: select, main")
  steps = memorisation_config.get_config(config_arg or None).train.steps
  teachers = [t for t in own.get("teachers", "").split("+") if t] or TEACHERS
  unknown = sorted(set(teachers) - set(TEACHERS))
  if unknown:
    raise ValueError(f"memorisation: teachers {unknown} unknown; allowed: "
                     f"{', '.join(TEACHERS)}")
  teachers = [t for t in TEACHERS if t in teachers]
  select = [_run("clip", None, SELECT_NOISE, SELECT_SEED, steps)]
  if "self" in teachers:
    select.append(_run("self", SCHEDULE["self"], SELECT_NOISE, SELECT_SEED,
                       steps))
  select += [_run(teacher, schedule, SELECT_NOISE, SELECT_SEED, steps)
             for teacher in ("ema", "bank") if teacher in teachers
             for schedule in SELECT_SCHEDULES]
  if stage == "select":
    runs = select
  else:
    seeds = SEEDS[:int(own.get("seeds", len(SEEDS)))]
    noises = ([float(n) for n in own["noises"].split("+")] if "noises" in own
              else NOISE)
    runs = [_run(variant, SCHEDULE.get(variant), noise, seed, steps)
            for seed in seeds for noise in noises
            for variant in ("clip", *teachers)]
    # The selection runs the grid does not hold (the schedules not chosen)
    # come last, so that one report shows the choice beside its outcome.
    if SELECT_SEED in seeds and SELECT_NOISE in noises:
      runs += [r for r in select if r not in runs]
  return Sweep(config=CONFIG + (f":{config_arg}" if config_arg else ""),
               runs=runs, report=memorisation_report.write)
