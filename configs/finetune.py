"""PSD fine-tuning of a released CLIP (imported with ``cvlg_jax.pretrained``).

    python -m cvlg_jax.pretrained import --model=vit_b32 --checkpoint=ViT-B-32.pt \\
        --out=/ckpt/vit_b32_openai
    python -m cvlg_jax.main --workdir=/runs/ft \\
        --config=configs/finetune.py:init_from=/ckpt/vit_b32_openai,\\
data_dir=/data/mine_ar,vocab=/data/bpe_simple_vocab_16e6.txt.gz,num_examples=500000

The imported params (logit scale included) and BatchNorm statistics start
the run; the optimizer, the PSD α ramp and the learning-rate schedule start
at step 0. A restart resumes the run's own newest checkpoint, not the import.

Keys (comma-separated): ``init_from`` (the import's workdir or any cvlg_jax
checkpoint), ``data_dir`` (ArrayRecord shards from ``cvlg_jax.data.convert``),
``vocab`` (CLIP's BPE merges file; open_clip ships it), ``num_examples``
(rows in the shards: sets steps per epoch), ``model`` (vit_b32 | vit_b16 |
vit_l14 | rn50), ``activation`` (quick_gelu for OpenAI's weights, gelu for
open_clip's own), ``loss`` (psd | clip), ``epochs``, ``batch``, ``lr``,
``dtype``, ``image_size``, ``teacher`` / ``schedule`` (PSD),
``eval_data_dir`` (TFDS data_dir of the eval sets), ``evals=paper``,
``eval_only`` (for ``cvlg_jax.evaluate`` without training data), ``smoke``
(a seconds-long run on synthetic data, for tests).

Recipe: the usual CLIP fine-tuning one (open_clip / WiSE-FT): AdamW with a
small peak learning rate (1e-5) after a 500-step warm-up, cosine decay, weight
decay 0.1, batch 512; PSD with the project's default (configs/common.py
DEFAULT_PSD: the embedding bank with the rule by length; at 5 epochs alpha
ramps over 12.5 epochs, ending at 0.32). The bank holds nothing in the first epoch (one-hot
targets); ``teacher=ema`` distils from step 0, since a released model is
already a good teacher, at the cost of one more forward pass.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from configs import eval_suite  # noqa: E402
from configs.common import DEFAULT_PSD, parse_arg, set_psd  # noqa: E402
from cvlg_jax.config import base_config  # noqa: E402


ARGS = {"init_from": str, "data_dir": str, "vocab": str, "num_examples": int,
        "model": str, "activation": str, "loss": str, "epochs": int,
        "batch": int, "lr": float, "dtype": str, "image_size": int,
        "context_length": int, "workers": int, "eval_data_dir": str,
        "evals": str, "eval_only": bool, "smoke": bool, "steps": int,
        "teacher": str, "schedule": str}


def get_config(arg=None):
  args = parse_arg(arg, ARGS, "configs/finetune.py")
  c = base_config()
  c.model.name = args.get("model", "vit_b32")
  c.model.activation = args.get("activation", "quick_gelu")
  c.model.layer_norm_epsilon = 1e-5  # PyTorch's, as every released CLIP
  c.model.dtype = args.get("dtype", "bfloat16")
  c.train.init_from = args.get("init_from", "")
  c.loss.name = args.get("loss", "psd")

  # eval_only: `cvlg_jax.evaluate` of an import needs no training data (the
  # synthetic source only satisfies validation; never train with it here).
  c.data.source = "synthetic" if args.get("eval_only") else "arrayrecord"
  c.data.data_dir = args.get("data_dir", "")
  c.data.image_size = args.get("image_size", 224)  # the release's
  c.data.context_length = 77
  c.data.tokenizer = "clip_bpe"
  c.data.tokenizer_path = args.get("vocab", "")
  c.data.crop_min_scale = 0.9
  c.data.flip = False  # captions name left and right
  c.data.worker_count = args.get("workers", 16)

  num_examples = args.get("num_examples", 100_000)
  batch = args.get("batch", 512)
  epochs = args.get("epochs", 5)
  c.train.batch_size = batch
  c.train.steps = max(1, epochs * num_examples // batch)
  c.train.log_every = 50
  c.train.eval_every_epochs = 1.0  # once per epoch, whatever the batch
  c.train.checkpoint_every = 500

  c.optim.learning_rate = args.get("lr", 1e-5)
  c.optim.warmup_fraction = 0.1  # of the run's steps, resolved at its start
  c.optim.weight_decay = 0.1

  eval_suite.add_to(c, args)

  if args.get("smoke"):  # tests: synthetic data, float32, a few steps
    c.model.dtype = "float32"
    c.data.source = "synthetic"
    c.data.image_size = args.get("image_size", 32)
    c.data.context_length = args.get("context_length", 77)
    c.data.worker_count = 0
    c.train.batch_size, c.train.steps = 8, args.get("steps", 2)
    c.train.log_every = c.train.checkpoint_every = 1
    c.train.eval_every, c.train.eval_every_epochs = 1000, 0.0
    c.optim.warmup_steps, c.optim.warmup_fraction = 0, 0.0
    c.eval = {}
  set_psd(c, args.get("teacher", DEFAULT_PSD[0]),
          args.get("schedule", DEFAULT_PSD[1]), "configs/finetune.py")
  return c
