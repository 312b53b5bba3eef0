"""The noise-robustness study (docs/robustness.md): one CLIP or PSD run.

    python -m cvlg_jax.main --config=configs/robustness.py --workdir=/tmp/r
    python -m cvlg_jax.main --config=configs/robustness.py:clip,noise=0.4 ...
    # real data: class-name captions of a prepared TFDS set, label noise
    python -m cvlg_jax.main --workdir=/tmp/c10 \\
        --config=configs/robustness.py:dataset=cifar10,data_dir=/data/tfds,noise=0.4

The demo model on 32x32 images, sized so that one run takes a few minutes on
2 CPU cores; studies/noise_robustness/sweep.py sweeps loss x noise x seed and
the PSD ablations over it. Args (comma-separated):
  ``clip``             the CLIP baseline (default: PSD);
  ``noise=P``          data.caption_noise (synthetic: swapped / partial /
                       corrupted captions; real data: wrong-class captions);
  ``dataset=NAME``     train on the class-name captions of a registered
                       classification set (evaluation.datasets, e.g. cifar10)
                       and evaluate zero-shot on its test split;
  ``data_dir=DIR``     TFDS data_dir (or release folder) of that set;
  ``flip=0``           real data: no random horizontal flips (digits, text);
  ``steps=N``          training steps (default 600);
  ``eval_examples=N``  real data: score a seeded N-image sample of the test
                       split (default: all of it);
  ``tiny``             a seconds-long smoke run (tests).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from configs import common, demo  # noqa: E402

ARGS = {"clip": bool, "noise": float, "dataset": str, "data_dir": str,
        "flip": bool, "steps": int, "eval_examples": int, "tiny": bool}


def get_config(arg=None):
  args = common.parse_arg(arg, ARGS, "configs/robustness.py")
  # The demo recipe (model, data, optimizer, schedule), one eval set swapped in
  # for real data, and only the last checkpoint kept (30 runs per sweep).
  c = demo.get_config("clip" if args.get("clip") else None)
  c.data.caption_noise = args.get("noise", 0.0)
  c.train.steps = args.get("steps", c.train.steps)
  c.train.keep_checkpoints = 1
  # The first study's PSD: the design's first default (same-pass teacher,
  # alpha_T 0.5 on half the batch, ramp over all steps), whatever the demo's.
  common.set_psd(c, "self", "paper", "configs/robustness.py")
  if "dataset" in args:
    c.eval = {}
    _real_data(c, args["dataset"], args.get("data_dir", ""),
               args.get("eval_examples"))
    c.data.flip = args.get("flip", True)
  if args.get("tiny"):
    c.model.name = "tiny"
    c.train.steps = args.get("steps", 6)
    c.train.batch_size = 16
    c.train.log_every = 2
    c.train.eval_every = 3
    c.train.checkpoint_every = 3
    c.optim.warmup_steps = 2
    if "synthetic" in c.eval:
      c.eval.synthetic.num_zeroshot = 80
      c.eval.synthetic.num_retrieval = 40
  return c


def _real_data(c, dataset: str, data_dir: str, eval_examples):
  """Class-name captions of ``dataset``'s training split; zero-shot on its
  test split with the same class names and templates."""
  from cvlg_jax.evaluation.datasets import CLASSIFICATION_SETS
  c.data.source = "tfds_class_captions"
  c.data.tfds_name = dataset
  spec = CLASSIFICATION_SETS.get(dataset)
  c.data.tfds_split = (spec.train_split if spec and spec.train_split
                       else "train")
  c.data.data_dir = data_dir
  c.eval.zeroshot = dict(type="zeroshot", dataset=dataset,
                         data_dir=data_dir or None,
                         max_examples=eval_examples)
