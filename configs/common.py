"""Shared recipe for the paper's pre-training setups (CC3M, CC12M, YFCC15M).

``get_config`` of each data set file calls :func:`pretrain_config` with the
data set's size; the comma-separated config arg picks the rest:

    --config=configs/cc3m.py:data_dir=/data/cc3m_ar,vocab=/data/bpe_simple_vocab_16e6.txt.gz
    --config=configs/cc12m.py:data_dir=...,vocab=...,model=rn50,loss=clip
    --config=configs/yfcc15m.py:data_dir=...,vocab=...,epochs=25,batch=4096

Keys: ``data_dir`` (ArrayRecord shards from ``python -m cvlg_jax.data.convert``),
``vocab`` (CLIP BPE merges file; or ``tokenizer=builtin``), ``model``
(vit_b32 | rn50 | any registry name), ``loss`` (psd | clip), ``epochs``,
``batch`` (global), ``num_examples`` (rows in your shards, if they differ
from the data set's nominal size: sets the steps per epoch), ``dtype``,
``image_size``, ``workers``, ``eval_data_dir`` (TFDS data_dir for the eval sets),
``evals=paper`` (the full benchmark suite of configs/eval_suite.py instead
of the cheap during-training set),
``teacher`` (bank | ema | self) and ``schedule`` (by_length | paper | early |
epochs | guarded) of PSD,
``smoke`` (a seconds-long run for tests).

The schedule below is this project's default, not a number from the paper:
AdamW (b2 0.98, eps 1e-6, wd 0.1), peak lr 5e-4 with a 2,000-step warm-up and
cosine decay, batch 1024 — the open_clip/SLIP recipe for data of this size.
PSD uses :data:`DEFAULT_PSD`, the teacher and schedule the memorisation and
length studies (docs/robustness.md) chose on held-out training pairs: the
embedding bank (PS-KD's previous-epoch teacher, no extra FLOPs), alpha_T 0.8
on every row, ramped over the first quarter of training in runs of 10 epochs
or more (these configs' 30), over 12.5 epochs in shorter ones. ``teacher=``
picks another teacher, ``schedule=paper`` the design's first default
(alpha_T 0.5, half the batch, ramp over all of training).
"""

from cvlg_jax.config import base_config

from configs import eval_suite


_TRUE, _FALSE = ("1", "true", "yes"), ("0", "false", "no")
_KIND = {int: "an int", float: "a float", bool: "0 or 1", str: "a string"}


def _convert(text: str, kind: type, key: str, where: str):
  try:
    if kind is bool:
      if text.lower() not in _TRUE + _FALSE:
        raise ValueError(text)
      return text.lower() in _TRUE
    return kind(text)
  except ValueError:
    raise ValueError(f"{where}: arg {key}={text!r} must be {_KIND[kind]}"
                     ) from None


def parse_arg(arg, spec: dict[str, type], where: str) -> dict:
  """``"a=1,b,c=x"`` -> typed values of the keys present, by ``spec`` (name ->
  str | int | float | bool). A bool key given alone (``b``) is True; ``b=0``
  is False. An unknown key or an unparsable value is a one-line ValueError,
  never silently dropped."""
  out = {}
  for item in (arg or "").split(","):
    if not item:
      continue
    key, has_value, text = item.partition("=")
    if key not in spec:
      raise ValueError(f"{where}: unknown arg {key!r}; allowed: "
                       f"{', '.join(sorted(spec))}")
    kind = spec[key]
    if not has_value and kind is not bool:
      raise ValueError(f"{where}: arg {key!r} needs a value ({key}=...)")
    out[key] = True if not has_value else _convert(text, kind, key, where)
  return out


def format_arg(args: dict) -> str:
  """The inverse of :func:`parse_arg` (for configs that extend another)."""
  return ",".join(k if v is True else f"{k}={int(v) if isinstance(v, bool) else v}"
                  for k, v in args.items())


# name -> the loss.psd knobs of one PSD schedule (docs/design.md 8.1).
# ``paper``: the design's first default (alpha_T 0.5 on half the batch,
# ramped over the whole run); ``early``: PS-KD's alpha_T 0.8 on every row, at
# full weight after a quarter of the run; ``epochs``: the same alpha_T and
# rows ramped over a fixed 12.5 epochs (= ``early`` at 50 epochs), so a short
# run ends far below full weight; ``guarded``: ``early``, but the ramp lasts
# at least 2.5 epochs (= ``early`` from 10 epochs on), so a short run never
# puts full weight on a bank written by the first epochs' model;
# ``by_length``: the rule the length study supports (docs/robustness.md):
# ``epochs`` for runs under 10 epochs, ``early`` from 10 on. Each ramp is
# resolved when the run starts (from train.steps and the steps per epoch), so
# overriding either rescales it. A knob a schedule leaves out keeps the
# default of PSD_SCHEDULE_DEFAULTS.
PSD_SCHEDULES = {
    "paper": dict(alpha_final=0.5, subset_fraction=0.5, ramp_fraction=1.0,
                  ramp_epochs=0.0),
    "early": dict(alpha_final=0.8, subset_fraction=1.0, ramp_fraction=0.25,
                  ramp_epochs=0.0),
    "epochs": dict(alpha_final=0.8, subset_fraction=1.0, ramp_fraction=1.0,
                   ramp_epochs=12.5),
    "guarded": dict(alpha_final=0.8, subset_fraction=1.0, ramp_fraction=0.25,
                    ramp_epochs=0.0, ramp_min_epochs=2.5),
    "by_length": dict(alpha_final=0.8, subset_fraction=1.0, ramp_fraction=0.25,
                      ramp_epochs=12.5, ramp_epochs_for_runs_under=10.0),
}
PSD_SCHEDULE_DEFAULTS = dict(ramp_min_epochs=0.0, ramp_epochs_for_runs_under=0.0)
# (teacher, schedule) of every shipped PSD config, from the pre-training
# configs (30 epochs) to the demo (3.8) and fine-tuning (5): the bank teacher
# with the rule by length, chosen on held-out training pairs by the length
# study (docs/robustness.md, "Which schedule to ship"; docs/design.md 8.1).
DEFAULT_PSD = ("bank", "by_length")


def schedule_knobs(schedule: str, where: str = "config") -> dict:
  """The ``loss.psd`` values of a named schedule (ramp_steps -1: resolved
  from the run, never a frozen count)."""
  if schedule not in PSD_SCHEDULES:
    raise ValueError(f"{where}: schedule={schedule!r}; allowed: "
                     f"{', '.join(PSD_SCHEDULES)}")
  return {**PSD_SCHEDULES[schedule], "ramp_steps": -1}


def schedule_matches(schedule: str, psd_overrides: dict) -> bool:
  """Whether ``{knob: value}`` (a run's loss.psd overrides) is ``schedule``."""
  knobs = {**PSD_SCHEDULE_DEFAULTS, **schedule_knobs(schedule)}
  return all(psd_overrides.get(k, PSD_SCHEDULE_DEFAULTS.get(k)) == v
             for k, v in knobs.items())


def set_psd(c, teacher: str = DEFAULT_PSD[0], schedule: str = DEFAULT_PSD[1],
            where: str = "config") -> None:
  """PSD's teacher and schedule (:data:`PSD_SCHEDULES`)."""
  knobs = {**PSD_SCHEDULE_DEFAULTS, **schedule_knobs(schedule, where)}
  c.loss.psd.teacher = teacher
  for key, value in knobs.items():
    c.loss.psd[key] = value


PRETRAIN_ARGS = {"model": str, "dtype": str, "loss": str, "data_dir": str,
                 "vocab": str, "tokenizer": str, "image_size": int,
                 "workers": int, "batch": int, "epochs": int,
                 "num_examples": int, "eval_data_dir": str, "evals": str,
                 "smoke": bool, "steps": int, "teacher": str,
                 "schedule": str}


def pretrain_config(num_examples: int, arg=None, *, epochs: int = 30):
  args = parse_arg(arg, PRETRAIN_ARGS, "pre-training config (configs/common.py)")
  num_examples = args.get("num_examples", num_examples)
  c = base_config()
  c.model.name = args.get("model", "vit_b32")
  c.model.dtype = args.get("dtype", "bfloat16")
  c.loss.name = args.get("loss", "psd")

  c.data.source = "arrayrecord"
  c.data.data_dir = args.get("data_dir", "")
  c.data.image_size = args.get("image_size", 224)
  c.data.context_length = 77
  c.data.tokenizer = args.get("tokenizer", "clip_bpe")
  c.data.tokenizer_path = args.get("vocab", "")
  c.data.crop_min_scale = 0.9
  c.data.worker_count = args.get("workers", 16)
  c.data.prefetch_buffer_size = 4

  batch = args.get("batch", 1024)
  epochs = args.get("epochs", epochs)
  c.train.batch_size = batch
  c.train.steps = max(1, epochs * num_examples // batch)
  c.train.log_every = 100
  c.train.eval_every_epochs = 1.0  # once per epoch, whatever the batch
  c.train.checkpoint_every = 1000
  c.train.keep_checkpoints = 3

  c.optim.learning_rate = 5e-4
  c.optim.warmup_steps = 2000
  c.optim.weight_decay = 0.1
  c.optim.grad_clip_norm = 1.0

  eval_suite.add_to(c, args)

  if args.get("smoke"):  # tests: tiny model, tiny images, builtin tokenizer
    c.model.name, c.model.dtype = args.get("model", "tiny"), "float32"
    c.data.image_size, c.data.context_length = 32, 16
    c.data.tokenizer = args.get("tokenizer", "builtin")
    c.data.worker_count = args.get("workers", 0)
    c.train.batch_size, c.train.steps = 16, args.get("steps", 4)
    c.train.log_every = c.train.eval_every = c.train.checkpoint_every = 2
    c.train.eval_every_epochs = 0.0
    c.optim.warmup_steps = 1
    c.eval = {}
  set_psd(c, args.get("teacher", DEFAULT_PSD[0]),
          args.get("schedule", DEFAULT_PSD[1]), "configs/common.py")
  return c
