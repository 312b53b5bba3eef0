"""Offline demo: PSD (or CLIP with ``:clip``) on the built-in synthetic data.

    python -m cvlg_jax.main --config=configs/demo.py --workdir=/tmp/demo
    python -m cvlg_jax.main --config=configs/demo.py:clip --workdir=/tmp/demo_clip

Sized to finish in a few minutes on a 2-core CPU; see README for numbers.
PSD uses the project's one default (configs/common.py DEFAULT_PSD: the
embedding bank with the rule by length, which at 3.8 epochs ramps alpha over
12.5 epochs and so ends at 0.24). Args
(comma-separated): ``clip`` for the CLIP baseline, ``noise=0.2`` for caption
noise, ``teacher=`` / ``schedule=`` for another PSD, ``tiny`` for a
seconds-long smoke run.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from configs.common import DEFAULT_PSD, parse_arg, set_psd  # noqa: E402
from cvlg_jax.config import base_config  # noqa: E402


ARGS = {"clip": bool, "noise": float, "teacher": str, "schedule": str,
        "tiny": bool}


def get_config(arg=None):
  args = parse_arg(arg, ARGS, "configs/demo.py")
  c = base_config()
  c.model.name = "demo"
  c.data.image_size = 32
  c.data.context_length = 24
  c.data.num_train = 20_000
  c.data.caption_noise = args.get("noise", 0.0)
  c.loss.name = "clip" if args.get("clip") else "psd"
  c.train.steps = 600
  c.train.batch_size = 128
  c.train.log_every = 25
  c.train.eval_every = 200
  c.train.checkpoint_every = 200
  c.optim.learning_rate = 1e-3
  c.optim.warmup_steps = 60
  c.optim.weight_decay = 0.1
  c.eval.synthetic = dict(type="synthetic", num_zeroshot=1000, num_retrieval=500)
  if args.get("tiny"):
    c.model.name = "tiny"
    c.train.steps = 20
    c.train.batch_size = 32
    c.train.log_every = 5
    c.train.eval_every = 10
    c.train.checkpoint_every = 10
    c.eval.synthetic.num_zeroshot = 100
    c.eval.synthetic.num_retrieval = 50
  set_psd(c, args.get("teacher", DEFAULT_PSD[0]),
          args.get("schedule", DEFAULT_PSD[1]), "configs/demo.py")
  return c
