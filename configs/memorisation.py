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

  * ``probe``: a linear probe (frozen image features) on the clean classes
    (synthetic: fit on 2,000 single-object scenes, scored on the zero-shot
    images; digits: the folder's train / test splits), every 200 steps.

Args (comma-separated): ``clip`` (the baseline) or ``teacher=self|ema|bank``
(PSD's teacher, default self), ``schedule=paper|early|epochs`` (below),
``T=`` (teacher temperature, default 1), ``noise=P``, ``kinds=partial``
(synthetic noise kinds, data.noise_kinds: partial alone = many-to-many
captions), ``steps=N`` or ``epochs=E`` (synthetic: E x num_train / batch
steps), ``num_train=N`` (synthetic), ``dataset=``/``data_dir=``/``flip=0``
(real data, as configs/robustness.py), ``probe=0`` (no linear probe),
``tiny``.

PSD's schedule (configs/common.py ``PSD_SCHEDULES``): ``paper`` is the design
default (alpha_T 0.5 ramped over all steps, half of each batch distilled);
``early`` is PS-KD's alpha_T 0.8 with every row distilled, ramped over the
first quarter of training, so that the soft targets are at full weight
before the noisy pairs are memorised (CLIP has fitted ~25 % of them after 10
epochs here); ``epochs`` is the same ramped over 12.5 epochs whatever the
run's length. The study picks per teacher on the held-out pairs, the length
study (studies/psd_schedule) across run lengths. The EMA teacher
averages over about one epoch (decay 1 - 1 / steps per epoch), the horizon the
bank teacher's entries have, so the two teachers are equally stale.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from configs import common, robustness  # noqa: E402

ARGS = {"clip": bool, "teacher": str, "schedule": str, "T": float,
        "noise": float, "kinds": str, "steps": int, "epochs": float,
        "num_train": int, "dataset": str, "data_dir": str, "flip": bool,
        "probe": bool, "tiny": bool}
# What configs/robustness.py reads of these.
_PASSED = ("clip", "noise", "dataset", "data_dir", "flip", "tiny")
NUM_TRAIN = 2048
NUM_HELDOUT = 256
STEPS = 800
# The linear probe (frozen image features, clean classes) every this many
# steps: L-BFGS over the l2 grid costs several evaluations' time.
PROBE_EVERY = 200


def get_config(arg=None):
  args = common.parse_arg(arg, ARGS, "configs/memorisation.py")
  c = robustness.get_config(common.format_arg(
      {k: v for k, v in args.items() if k in _PASSED}) or None)
  c.data.num_heldout = NUM_HELDOUT
  real = "dataset" in args
  if not real:
    c.data.num_train = args.get("num_train", NUM_TRAIN)
  c.train.steps = args.get("steps", STEPS)
  if "epochs" in args:
    if real or "steps" in args:
      raise ValueError("configs/memorisation.py: epochs= sets the steps of "
                       "the synthetic set; with dataset= (or steps=) give "
                       "steps= alone")
    per_epoch = max(1, c.data.num_train // c.train.batch_size)
    c.train.steps = max(1, round(args["epochs"] * per_epoch))
  if "kinds" in args:
    c.data.noise_kinds = args["kinds"]
  c.train.eval_every = 50
  c.train.checkpoint_every = c.train.steps
  c.loss.psd.teacher_temperature = args.get("T", 1.0)
  c.eval.memorisation = dict(type="memorisation", num_examples=500)
  c.eval.heldout = dict(type="heldout")
  if args.get("probe", True):
    probe_set = args["dataset"] if real else "synthetic"
    c.eval.probe = dict(type="linear_probe", dataset=probe_set,
                        data_dir=args.get("data_dir") or None,
                        every=min(PROBE_EVERY, c.train.steps),
                        l2_grid=(1e-4, 1e-3, 1e-2, 1e-1))
  if args.get("tiny"):
    c.data.num_train, c.data.num_heldout = 64, 16
    c.train.steps = args.get("steps", 6)
    c.train.eval_every = c.train.checkpoint_every = 3
    c.eval.memorisation.num_examples = 20
    if "probe" in c.eval:
      c.eval.probe.every = 3
      c.eval.probe.max_train_examples, c.eval.probe.max_examples = 80, 40
  common.set_psd(c, args.get("teacher", "self"), args.get("schedule", "paper"),
                 "configs/memorisation.py")
  # Decay 1 - 1 / steps per epoch, resolved when the run starts (the config
  # file opens no data).
  c.loss.psd.ema_horizon_epochs = 1.0
  return c
