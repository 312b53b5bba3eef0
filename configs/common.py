"""Shared recipe for the paper's pre-training setups (CC3M, CC12M, YFCC15M).

``get_config`` of each data set file calls :func:`pretrain_config` with the
data set's size; the comma-separated config arg picks the rest:

    --config=configs/cc3m.py:data_dir=/data/cc3m_ar,vocab=/data/bpe_simple_vocab_16e6.txt.gz
    --config=configs/cc12m.py:data_dir=...,vocab=...,model=rn50,loss=clip
    --config=configs/yfcc15m.py:data_dir=...,vocab=...,epochs=25,batch=4096

Keys: ``data_dir`` (ArrayRecord shards from ``python -m cvlg_jax.data.convert``),
``vocab`` (CLIP BPE merges file; or ``tokenizer=builtin``), ``model``
(vit_b32 | rn50 | any registry name), ``loss`` (psd | clip), ``epochs``,
``batch`` (global), ``eval_data_dir`` (TFDS data_dir for the eval sets),
``evals=paper`` (the full benchmark suite of configs/eval_suite.py instead
of the cheap during-training set),
``smoke`` (a seconds-long run for tests).

The schedule below is this project's default, not a number from the paper:
AdamW (b2 0.98, eps 1e-6, wd 0.1), peak lr 5e-4 with a 2,000-step warm-up and
cosine decay, batch 1024 — the open_clip/SLIP recipe for data of this size.
PSD uses the design defaults (alpha_T 0.5, half the batch distilled,
linear ramp over all of training, teacher temperature 1).
"""

from cvlg_jax.config import base_config

from configs import eval_suite


def parse_arg(arg):
  """``"a=1,b,c=x"`` -> {"a": "1", "b": "1", "c": "x"}."""
  return dict(a.split("=", 1) if "=" in a else (a, "1")
              for a in (arg or "").split(",") if a)


def pretrain_config(num_examples: int, arg=None, *, epochs: int = 30):
  args = parse_arg(arg)
  c = base_config()
  c.model.name = args.get("model", "vit_b32")
  c.model.dtype = args.get("dtype", "bfloat16")
  c.loss.name = args.get("loss", "psd")

  c.data.source = "arrayrecord"
  c.data.data_dir = args.get("data_dir", "")
  c.data.image_size = int(args.get("image_size", 224))
  c.data.context_length = 77
  c.data.tokenizer = args.get("tokenizer", "clip_bpe")
  c.data.tokenizer_path = args.get("vocab", "")
  c.data.crop_min_scale = 0.9
  c.data.worker_count = int(args.get("workers", 16))
  c.data.prefetch_buffer_size = 4

  batch = int(args.get("batch", 1024))
  epochs = int(args.get("epochs", epochs))
  c.train.batch_size = batch
  c.train.steps = max(1, epochs * num_examples // batch)
  c.train.log_every = 100
  c.train.eval_every = max(1, num_examples // batch)  # once per epoch
  c.train.checkpoint_every = 1000
  c.train.keep_checkpoints = 3

  c.optim.learning_rate = 5e-4
  c.optim.warmup_steps = 2000
  c.optim.weight_decay = 0.1
  c.optim.grad_clip_norm = 1.0

  eval_dir = args.get("eval_data_dir") or None
  suite = (eval_suite.paper_suite(eval_dir) if args.get("evals") == "paper"
           else eval_suite.during_training(eval_dir))
  for name, entry in suite.items():
    c.eval[name] = entry

  if "smoke" in args:  # tests: tiny model, tiny images, builtin tokenizer
    c.model.name, c.model.dtype = args.get("model", "tiny"), "float32"
    c.data.image_size, c.data.context_length = 32, 16
    c.data.tokenizer = args.get("tokenizer", "builtin")
    c.data.worker_count = int(args.get("workers", 0))
    c.train.batch_size, c.train.steps = 16, int(args.get("steps", 4))
    c.train.log_every = c.train.eval_every = c.train.checkpoint_every = 2
    c.optim.warmup_steps = 1
    c.eval = {}
  return c
