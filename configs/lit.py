"""LiT (Zhai et al. 2022): a released image tower, locked; a text tower
learns to read it, with CLIP or PSD.

    python -m cvlg_jax.pretrained import --model=vit_b32 --checkpoint=ViT-B-32.pt \\
        --out=/ckpt/vit_b32_openai
    python -m cvlg_jax.main --workdir=/runs/lit \\
        --config=configs/lit.py:init_from=/ckpt/vit_b32_openai,\\
data_dir=/data/cc3m_ar,vocab=/data/bpe_simple_vocab_16e6.txt.gz,num_examples=2800000

Only the image tower (and its projection) comes from ``init_from``
(``train.init_from_params="image"``); the text tower starts from scratch,
LiT's best recipe ("Lu"), so any tokenizer works. ``text=pretrained`` loads
and tunes the released text tower as well. ``lock=image_except_last=N``
leaves the last N image blocks, the post-LN and the projection trainable.
A locked tower has no optimizer state and no backward pass (step/freeze.py):
the step costs its forward only. For a BatchNorm (ResNet) tower the running
statistics still follow the new data, as with open_clip's ``--lock-image``.

Keys: those of configs/finetune.py, plus ``lock`` (a ``train.freeze`` spec,
default ``image``) and ``text`` (scratch | pretrained). The recipe: the
finetune one, but a from-scratch text tower needs a pre-training learning
rate (5e-4 by default, 1e-5 with ``text=pretrained``) and more epochs (10).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from configs import finetune  # noqa: E402
from configs.common import format_arg, parse_arg  # noqa: E402

ARGS = dict(finetune.ARGS, lock=str, text=str)
TEXT_INIT = ("scratch", "pretrained")


def get_config(arg=None):
  args = parse_arg(arg, ARGS, "configs/lit.py")
  lock, text = args.pop("lock", "image"), args.pop("text", "scratch")
  if text not in TEXT_INIT:
    raise ValueError(f"configs/lit.py: text={text!r}; allowed: {', '.join(TEXT_INIT)}")
  pretrained_text = text == "pretrained"
  args.setdefault("lr", 1e-5 if pretrained_text else 5e-4)
  args.setdefault("epochs", 5 if pretrained_text else 10)
  c = finetune.get_config(format_arg(args))
  c.train.freeze = lock
  c.train.init_from_params = "" if pretrained_text else "image"
  if not c.train.init_from:  # e.g. eval_only / smoke without weights
    c.train.init_from_params = ""
  return c
