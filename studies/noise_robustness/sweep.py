"""The noise-robustness study of docs/robustness.md: CLIP vs PSD under noise.

    # synthetic data (30 runs of a few CPU-minutes each), then the report
    python -m launch.sweep --sweep=studies/noise_robustness/sweep.py --parallel=1
    python -m launch.sweep --sweep=studies/noise_robustness/sweep.py --report
    # real data: class-name captions of a prepared TFDS set, label noise
    python -m launch.sweep \\
        --sweep=studies/noise_robustness/sweep.py:dataset=cifar10,data_dir=/data/tfds
    python -m launch.sweep --report \\
        --sweep=studies/noise_robustness/sweep.py:dataset=cifar10,data_dir=/data/tfds

Runs of ``configs/robustness.py``. The sweep argument is passed on as the
config argument (``dataset=``, ``data_dir=``, ``steps=``, ...), except three
keys the sweep itself reads, to make a cheaper study (slow data, long runs):
``seeds=N`` (the first N of the seeds), ``ablations=0`` (main grid only) and
``noises=0.2+0.4`` (these caption-noise levels of the main grid only).
The runs:
  * main grid: loss {clip, psd} x data.caption_noise {0, 0.2, 0.4} x 3 seeds;
  * PSD ablations at noise 0.4, each against the main PSD run there
    (r = 0.5, alpha_T = 0.5, teacher = self, T = 1): subset fraction r in
    {0.25, 1.0}, alpha_T = 0.8, teacher = ema, teacher temperature T = 0.5;
    3 seeds each.
``--report`` writes the generic report.{csv,md} and, through this sweep's
hook, robustness.md with the study's tables and two figures (accuracy vs
caption noise; PSD's soft-target mass on the positive during training).
"""

from __future__ import annotations

from studies.noise_robustness import report as robustness_report
from launch import spec
from launch.spec import Sweep, grid, product

CONFIG = "configs/robustness.py"
LOSSES = ("clip", "psd")
NOISE = (0.0, 0.2, 0.4)
SEEDS = (0, 1, 2)
ABLATION_NOISE = 0.4
# Each differs from the main PSD run in one knob.
ABLATIONS = (
    {"loss.psd.subset_fraction": 0.25},
    {"loss.psd.subset_fraction": 1.0},
    {"loss.psd.alpha_final": 0.8},
    {"loss.psd.teacher": "ema"},
    # With the same-pass teacher at T = 1 the soft targets carry no gradient
    # (d CE / d logits on a distilled row = (1 - alpha) (softmax - onehot)):
    # PSD is then CLIP with those rows down-weighted. T != 1 lets the model's
    # own (sharpened) belief into the gradient; see docs/robustness.md.
    {"loss.psd.teacher_temperature": 0.5},
)


SWEEP_ARGS = ("seeds", "ablations", "noises")


def split_arg(arg: str | None) -> tuple[dict, str]:
  """This sweep's own keys, and the rest for its config, in order."""
  return spec.split_sweep_arg(arg, SWEEP_ARGS)


def get_sweep(arg: str | None = None) -> Sweep:
  """``arg``: ``seeds=N``, ``ablations=0``, ``noises=A+B``, the rest passed
  to configs/robustness.py (e.g. ``dataset=cifar10``)."""
  own, arg = split_arg(arg)
  num_seeds = int(own.get("seeds", len(SEEDS)))
  if not 1 <= num_seeds <= len(SEEDS):
    raise ValueError(f"noise_robustness: seeds={num_seeds}, must be in "
                     f"[1, {len(SEEDS)}]")
  if own.get("ablations", "1") not in ("0", "1"):
    raise ValueError("noise_robustness: ablations= must be 0 or 1, got "
                     f"{own['ablations']!r}")
  noise = ([float(n) for n in own["noises"].split("+")] if "noises" in own
           else list(NOISE))
  if not all(0.0 <= n <= 1.0 for n in noise):
    raise ValueError(f"noise_robustness: noises={own['noises']!r}, each must "
                     "be in [0, 1]")
  seed_list = list(SEEDS[:num_seeds])
  seeds = grid(**{"train.seed": seed_list})
  main = grid(**{"loss.name": list(LOSSES), "data.caption_noise": noise,
                 "train.seed": seed_list})
  ablations = product(
      [{"loss.name": "psd", "data.caption_noise": ABLATION_NOISE, **knob}
       for knob in ABLATIONS], seeds) if own.get("ablations", "1") == "1" else []
  # Seed-major order: an interrupted sweep has whole seeds of every setting
  # rather than every seed of a few settings.
  runs = sorted(main + ablations, key=lambda run: run["train.seed"])
  return Sweep(config=CONFIG + (f":{arg}" if arg else ""),
               runs=runs, report=robustness_report.write)
