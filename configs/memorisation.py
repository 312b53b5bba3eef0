"""The memorisation regime (docs/robustness.md): a small, noisy training set
seen for many epochs, where CLIP learns its noisy pairs by heart.

    python -m cvlg_jax.main --config=configs/memorisation.py:teacher=bank,noise=0.4 --workdir=/tmp/m
    python -m cvlg_jax.main --config=configs/memorisation.py:clip,noise=0.4 --workdir=/tmp/c
    # real data: the digits folder set (studies/memorisation/prepare_digits.py)
    python -m cvlg_jax.main --workdir=/tmp/d \\
        --config=configs/memorisation.py:dataset=folder:/tmp/digits,flip=0,teacher=bank

Web-scale pre-training sees each pair tens of times; a model with enough
capacity then fits the noisy pairs too, and its clean accuracy peaks and
falls. This config reproduces that on a laptop: the robustness study's
recipe (configs/robustness.py) on a finite set (synthetic: 2,048 scenes, 50
epochs in 800 steps; digits: the folder's training split less the held-out
pairs, ~110 epochs), evaluated every 50 steps so the curves show the peak and
the fall:
  * ``synthetic`` (clean zero-shot top-1, retrieval R@1) or ``zeroshot``
    (digits): the clean evaluation sets;
  * ``memorisation``: the fraction of noisy *training* pairs the model ranks
    its wrong caption first for (cvlg_jax/evaluation/memorisation.py);
  * ``heldout``: 256 held-out training pairs with their (noisy) captions --
    the validation set the study picks its default teacher on, so nothing is
    chosen on the evaluation sets.

Args (comma-separated): ``clip`` (the baseline) or ``teacher=self|ema|bank``
(PSD's teacher, default self), ``schedule=paper|early`` (below), ``T=``
(teacher temperature, default 1), ``noise=P``, ``steps=N``, ``num_train=N``
(synthetic), ``dataset=``/``data_dir=``/``flip=0`` (real data, as
configs/robustness.py), ``tiny``.

PSD's schedule (``SCHEDULES``): ``paper`` is the design default (alpha_T 0.5
ramped over all steps, half of each batch distilled); ``early`` is PS-KD's
alpha_T 0.8 with every row distilled, ramped over the first quarter of
training, so that the soft targets are at full weight before the noisy pairs
are memorised (CLIP has fitted ~25 % of them after 10 epochs here). The study
picks between them per teacher on the held-out pairs. The EMA teacher
averages over about one epoch (decay 1 - 1 / steps per epoch), the horizon the
bank teacher's entries have, so the two teachers are equally stale.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from configs import common, robustness  # noqa: E402

ARGS = {"clip": bool, "teacher": str, "schedule": str, "T": float,
        "noise": float, "steps": int, "num_train": int, "dataset": str,
        "data_dir": str, "flip": bool, "tiny": bool}
# What configs/robustness.py reads of these.
_PASSED = ("clip", "noise", "dataset", "data_dir", "flip", "tiny")
NUM_TRAIN = 2048
NUM_HELDOUT = 256
STEPS = 800
# name -> (alpha_final, subset_fraction, ramp as a fraction of train.steps)
SCHEDULES = common.PSD_SCHEDULES


def get_config(arg=None):
  args = common.parse_arg(arg, ARGS, "configs/memorisation.py")
  c = robustness.get_config(common.format_arg(
      {k: v for k, v in args.items() if k in _PASSED}) or None)
  c.data.num_heldout = NUM_HELDOUT
  real = "dataset" in args
  if not real:
    c.data.num_train = args.get("num_train", NUM_TRAIN)
  c.train.steps = args.get("steps", STEPS)
  c.train.eval_every = 50
  c.train.checkpoint_every = c.train.steps
  c.loss.psd.teacher_temperature = args.get("T", 1.0)
  c.eval.memorisation = dict(type="memorisation", num_examples=500)
  c.eval.heldout = dict(type="heldout")
  if args.get("tiny"):
    c.data.num_train, c.data.num_heldout = 64, 16
    c.train.steps = args.get("steps", 6)
    c.train.eval_every = c.train.checkpoint_every = 3
    c.eval.memorisation.num_examples = 20
  common.set_psd(c, args.get("teacher", "self"), args.get("schedule", "paper"),
                 "configs/memorisation.py")
  # Decay 1 - 1 / steps per epoch, resolved when the run starts (the config
  # file opens no data).
  c.loss.psd.ema_horizon_epochs = 1.0
  return c
